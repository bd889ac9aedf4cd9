//! Mount flags fixed in the created container before its process starts:
//!
//! - its root file system is `nodev`: a device node an image layer carries
//!   opens nothing. On cgroup v2 (every VM guest, modern hosts) youki's
//!   libcontainer enforces no device allow-list without its eBPF feature,
//!   so this is what keeps an image's `disk` node off the disk; the
//!   container's `/dev` is a mount of its own and keeps working.
//! - its view of its cgroups stays read-only when its spec says so. youki
//!   mounts each cgroup v1 hierarchy read-write whatever the spec's
//!   `/sys/fs/cgroup` options say (runc honours `ro`), which would let the
//!   container's root raise its own limits (pids.max, memory.limit_in_bytes).
//! - a /sys bound from the host (a user-namespaced container's, as podman
//!   binds it) is read-only with every mount under it: a bind's `ro`
//!   reaches only its top mount.

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

/// The trees `spec` mounts read-only whose every mount must be made so:
/// the cgroup file system, and a /sys bound from the host.
pub fn read_only_trees(spec: &Spec) -> Vec<&'static str> {
    let ro = |dest: &str, typ: fn(&str) -> bool| {
        spec.mounts().iter().flatten().any(|m| {
            m.destination().as_os_str() == dest
                && m.typ().as_deref().is_some_and(typ)
                && m.options().iter().flatten().any(|o| o == "ro")
        })
    };
    let mut trees = vec![];
    if ro("/sys/fs/cgroup", |t| t.starts_with("cgroup")) {
        trees.push("/sys/fs/cgroup");
    }
    if ro("/sys", |t| t == "bind") {
        trees.push("/sys");
    }
    trees
}

/// The mount points at and under each of `trees` in `mountinfo` (as the
/// process sees them), outermost first.
fn mounts_under(mountinfo: &str, trees: &[&str]) -> Vec<String> {
    let under = |p: &str| {
        trees
            .iter()
            .any(|t| p == *t || p.strip_prefix(t).is_some_and(|r| r.starts_with('/')))
    };
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| under(p))
        .map(str::to_string)
        .collect();
    points.sort();
    points.dedup();
    points
}

/// The per-mount flags of `options` (mountinfo's sixth field) that a
/// bind remount must repeat to keep them.
fn kept_flags(options: &str) -> MsFlags {
    options
        .split(',')
        .map(|o| match o {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        })
        .fold(MsFlags::empty(), |a, b| a | b)
}

/// The root mount's per-mount options in `mountinfo`.
fn root_options(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 5 && f[4] == "/").then_some(f[5])
    })
}

/// In process `pid`'s mount namespace: the root remounted `nodev`, and
/// every mount at and under each of `read_only` ([`read_only_trees`])
/// read-only (and nosuid, nodev, noexec).
pub fn harden(pid: i32, read_only: &[&str]) -> Result<()> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("the mounts of process {pid}"))?;
    let root = kept_flags(root_options(&mountinfo).unwrap_or(""));
    let points = mounts_under(&mountinfo, read_only);
    crate::namespaces::in_namespace_of(pid, nix::sched::CloneFlags::CLONE_NEWNS, move || {
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            remount | root | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .context("making the container's root nodev")?;
        let read_only =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        for p in &points {
            match mount(
                None::<&str>,
                p.as_str(),
                None::<&str>,
                remount | read_only,
                None::<&str>,
            ) {
                // Covered by a later mount (the host's cgroup mounts in a
                // bound /sys, under the container's own): out of reach.
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("making {p} read-only in the container"))
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remount_keeps_the_roots_flags() {
        let mi = "22 1 0:20 / / ro,nosuid,relatime - overlay overlay rw\n30 22 0:25 / /sys rw - sysfs sysfs ro\n";
        assert_eq!(root_options(mi), Some("ro,nosuid,relatime"));
        assert_eq!(
            kept_flags("ro,nosuid,relatime"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_RELATIME
        );
    }

    #[test]
    fn finds_the_mounts_under_a_tree_outermost_first() {
        let mi = "\
22 1 0:20 / / rw - overlay overlay rw
30 22 0:25 / /sys rw - sysfs sysfs ro
31 30 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
33 31 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
32 31 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 22 0:30 / /sys/fs/cgroupish rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_under(mi, &["/sys/fs/cgroup"]),
            [
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids"
            ]
        );
    }
}
