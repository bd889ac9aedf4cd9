//! Where a container's cgroup lives, and what it counted.

use std::path::{Path, PathBuf};

/// The cgroup path capsa gives each container (relative to each hierarchy).
pub fn cgroup_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/capsa/{id}"))
}

/// The container's directory in the unified (cgroup v2) hierarchy, as the
/// guest mounts it.
pub fn v2_dir(id: &str) -> PathBuf {
    let rel = cgroup_path(id);
    Path::new("/sys/fs/cgroup").join(rel.strip_prefix("/").unwrap_or(&rel))
}

/// How many times the kernel's OOM killer killed a process of container
/// `id`, on either cgroup layout. Read it before the cgroup is deleted.
pub fn oom_kill_count(id: &str) -> u64 {
    let rel = cgroup_path(id);
    let rel = rel.strip_prefix("/").unwrap_or(&rel);
    let candidates = [
        // cgroup v1 (and hybrid hosts): memory.oom_control has "oom_kill N".
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        // cgroup v2: memory.events has "oom_kill N".
        v2_dir(id).join("memory.events"),
    ];
    candidates
        .iter()
        .find_map(|file| oom_kills_in(&std::fs::read_to_string(file).ok()?))
        .unwrap_or(0)
}

/// The `oom_kill N` line of memory.oom_control (v1) or memory.events (v2).
fn oom_kills_in(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_lines_of_both_layouts_are_read() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills_in(v1), Some(3));
        assert_eq!(oom_kills_in(v2), Some(2));
        assert_eq!(oom_kills_in("low 0\n"), None);
    }

    #[test]
    fn a_container_s_cgroup_is_under_capsa() {
        assert_eq!(cgroup_path("abc"), PathBuf::from("/capsa/abc"));
        assert_eq!(v2_dir("abc"), PathBuf::from("/sys/fs/cgroup/capsa/abc"));
    }
}
