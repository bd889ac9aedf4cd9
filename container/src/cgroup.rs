//! Where a container's cgroup lives, and what it counted.

use std::fs;
use std::path::{Path, PathBuf};

/// The cgroup path capsa gives each container (relative to each hierarchy).
pub fn cgroup_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/capsa/{id}"))
}

/// The container's directory in the unified (cgroup v2) hierarchy, as the
/// guest mounts it.
pub fn v2_dir(id: &str) -> PathBuf {
    in_unified(&cgroup_path(id))
}

/// Cgroup path `cgroup` (relative to each hierarchy) in the unified one.
fn in_unified(cgroup: &Path) -> PathBuf {
    Path::new(UNIFIED).join(cgroup.strip_prefix("/").unwrap_or(cgroup))
}

const UNIFIED: &str = "/sys/fs/cgroup";

/// Whether this is a unified (cgroup v2 only) host.
fn unified() -> bool {
    nix::sys::statfs::statfs(UNIFIED)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// For runc's `exec --cgroup` on a unified (cgroup v2 only) host: makes
/// `sub` (relative, checked by the caller) under the container's cgroup
/// `cgroup` and opens its `cgroup.procs` for the new process to join
/// itself, last before it executes (see [`crate::workload`]). None on a
/// v1 or hybrid host, where libcontainer places the process.
///
/// libcontainer's v2 manager would enable the container's controllers in
/// its cgroup's `cgroup.subtree_control` on the way down, and the kernel
/// then refuses to move a process there (EOPNOTSUPP): a cgroup that holds
/// processes, as the container's holds its own, cannot hand controllers
/// down. runc leaves the sub-cgroup's controllers alone, and so does
/// this: its processes stay bounded by the container's cgroup above it.
pub fn v2_sub_cgroup_procs(cgroup: &Path, sub: &str) -> std::io::Result<Option<fs::File>> {
    if !unified() {
        return Ok(None);
    }
    let dir = in_unified(cgroup).join(sub);
    fs::create_dir_all(&dir)?;
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map(Some)
}

/// The mount points of the host's cgroup hierarchies (v1 controllers and
/// the unified one).
pub fn hierarchies() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Removes the cgroups below `cgroup` (a container's path, relative to each
/// hierarchy; runc's `exec --cgroup` makes them), deepest first, so that
/// the container's own can be removed. Their processes must be dead; one
/// still exiting is waited for a little. Returns how many were removed.
pub fn remove_sub_cgroups(cgroup: &Path) -> std::io::Result<usize> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let mut subs = Vec::new();
    for h in hierarchies() {
        let mut stack = vec![h.join(rel)];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                    subs.push(e.path());
                }
            }
        }
    }
    subs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &subs {
        let mut tries = 0;
        while let Err(e) = fs::remove_dir(d) {
            tries += 1;
            if tries == 20 || e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(subs.len())
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

/// Resource usage from a container's cgroup v2 files (read directly:
/// libcgroups insists on pressure files a kernel without PSI lacks).
pub fn v2_stats(cgroup: &Path) -> capsa_proto::Stats {
    let read = |f: &str| fs::read_to_string(cgroup.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().ok();
    let keyed = |f: &str, key: &str| {
        read(f).lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    let mut s = capsa_proto::Stats::default();
    s.memory.usage_bytes = num("memory.current").unwrap_or(0);
    s.memory.max_usage_bytes = num("memory.peak");
    s.memory.limit_bytes = num("memory.max");
    s.cpu.usage_usec = keyed("cpu.stat", "usage_usec").unwrap_or(0);
    s.cpu.user_usec = keyed("cpu.stat", "user_usec").unwrap_or(0);
    s.cpu.system_usec = keyed("cpu.stat", "system_usec").unwrap_or(0);
    s.pids.current = num("pids.current").unwrap_or(0);
    s.pids.limit = num("pids.max");
    // "MAJ:MIN rbytes=N wbytes=N rios=N …", one line per device; no file
    // without the io controller.
    if let Ok(io) = fs::read_to_string(cgroup.join("io.stat")) {
        let mut b = capsa_proto::BlockStats::default();
        for word in io.split_whitespace() {
            let value = |k: &str| word.strip_prefix(k).and_then(|v| v.parse::<u64>().ok());
            b.read_bytes += value("rbytes=").unwrap_or(0);
            b.write_bytes += value("wbytes=").unwrap_or(0);
        }
        s.block = Some(b);
    }
    if let Some(pid) = v2_pids(cgroup).first() {
        s.net = crate::procfs::net_dev(*pid);
    }
    s
}

/// The processes in a container's cgroup, as `ps -ef` shows them.
pub fn v2_processes(cgroup: &Path) -> Vec<capsa_proto::ProcessInfo> {
    v2_pids(cgroup)
        .into_iter()
        .filter_map(crate::procfs::process)
        .collect()
}

fn v2_pids(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A cgroup capsa makes for a process it starts itself (a VMM): made in
/// the unified hierarchy, or in the v1 memory and pids ones, with those
/// two limits; [`LimitedCgroup::procs`] are its `cgroup.procs`, which the
/// process writes "0" (itself) to before it executes, so that all it
/// allocates is counted there.
pub struct LimitedCgroup {
    dirs: Vec<PathBuf>,
    pub procs: Vec<fs::File>,
}

/// Makes `cgroup` (relative to each hierarchy) with a memory limit of
/// `memory` bytes and at most `pids` tasks. A half-made one is removed.
pub fn make_limited(cgroup: &Path, memory: u64, pids: u64) -> std::io::Result<LimitedCgroup> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let mut made = LimitedCgroup {
        dirs: Vec::new(),
        procs: Vec::new(),
    };
    let mut make = |dir: PathBuf, limits: &[(&str, String)]| -> std::io::Result<()> {
        fs::create_dir_all(&dir)?;
        made.dirs.push(dir.clone());
        for (file, value) in limits {
            fs::write(dir.join(file), value)?;
        }
        made.procs.push(
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?,
        );
        Ok(())
    };
    let result = if unified() {
        // Each ancestor hands the two controllers down (the root, and
        // capsa's own level, which holds no process).
        let mut parent = PathBuf::from(UNIFIED);
        let mut step = || -> std::io::Result<()> {
            for part in rel.parent().into_iter().flat_map(Path::components) {
                fs::write(parent.join("cgroup.subtree_control"), "+memory +pids")?;
                parent.push(part);
                fs::create_dir_all(&parent)?;
            }
            fs::write(parent.join("cgroup.subtree_control"), "+memory +pids")
        };
        step().and_then(|()| {
            make(
                in_unified(cgroup),
                &[
                    ("memory.max", memory.to_string()),
                    ("pids.max", pids.to_string()),
                ],
            )
        })
    } else {
        [
            ("memory", "memory.limit_in_bytes", memory),
            ("pids", "pids.max", pids),
        ]
        .into_iter()
        .filter(|(ctrl, ..)| hierarchies().contains(&Path::new(UNIFIED).join(ctrl)))
        .try_for_each(|(ctrl, file, value)| {
            make(
                Path::new(UNIFIED).join(ctrl).join(rel),
                &[(file, value.to_string())],
            )
        })
    };
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            made.remove(std::time::Duration::ZERO);
            Err(e)
        }
    }
}

impl LimitedCgroup {
    /// Removes the cgroup, waiting up to `patience` for its processes to
    /// be gone. Whether it is.
    pub fn remove(&self, patience: std::time::Duration) -> bool {
        remove_dirs(&self.dirs, patience)
    }
}

/// Removes `cgroup` (relative to each hierarchy) made by
/// [`make_limited`], by a process that did not make it (a VMM's cgroup,
/// when the monitor that made it died), waiting up to `patience` for its
/// processes to end. Whether it is gone.
pub fn remove_limited(cgroup: &Path, patience: std::time::Duration) -> bool {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let dirs: Vec<PathBuf> = hierarchies()
        .iter()
        .map(|h| h.join(rel))
        .filter(|d| d.exists())
        .collect();
    remove_dirs(&dirs, patience)
}

fn remove_dirs(dirs: &[PathBuf], patience: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    dirs.iter().rev().all(|d| loop {
        match fs::remove_dir(d) {
            Ok(()) => break true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break true,
            // EBUSY: a process still exiting.
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(_) => break false,
        }
    })
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

    #[test]
    fn stats_read_cgroup_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, t: &str| fs::write(d.path().join(f), t).unwrap();
        w("memory.current", "1234\n");
        w("memory.max", "max\n");
        w("memory.peak", "2000\n");
        w("cpu.stat", "usage_usec 10\nuser_usec 7\nsystem_usec 3\n");
        w("pids.current", "2\n");
        w("pids.max", "100\n");
        w(
            "io.stat",
            "254:0 rbytes=4096 wbytes=512 rios=1 wios=1\n254:16 rbytes=10 wbytes=0\n",
        );
        let s = v2_stats(d.path());
        let b = s.block.unwrap();
        assert_eq!((b.read_bytes, b.write_bytes), (4106, 512));
        assert_eq!(s.memory.usage_bytes, 1234);
        assert_eq!(s.memory.limit_bytes, None, "max means unlimited");
        assert_eq!(s.memory.max_usage_bytes, Some(2000));
        assert_eq!(
            (s.cpu.usage_usec, s.cpu.user_usec, s.cpu.system_usec),
            (10, 7, 3)
        );
        assert_eq!((s.pids.current, s.pids.limit), (2, Some(100)));
    }
}
