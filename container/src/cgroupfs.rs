//! The container's view of its cgroups stays read-only when its spec says
//! so. youki's libcontainer mounts each cgroup v1 hierarchy read-write
//! whatever the spec's `/sys/fs/cgroup` options say (runc honours `ro`),
//! which would let the container's root raise its own limits (pids.max,
//! memory.limit_in_bytes); cgroup v2 it mounts as asked.

use std::os::fd::AsFd;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

/// Whether `spec` mounts the cgroup file system read-only.
pub fn wants_read_only(spec: &Spec) -> bool {
    spec.mounts().iter().flatten().any(|m| {
        m.destination().as_os_str() == "/sys/fs/cgroup"
            && m.typ().as_deref().is_some_and(|t| t.starts_with("cgroup"))
            && m.options().iter().flatten().any(|o| o == "ro")
    })
}

/// The mount points at and under /sys/fs/cgroup in `mountinfo` (as the
/// process sees them), outermost first.
fn cgroup_mounts(mountinfo: &str) -> Vec<String> {
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| *p == "/sys/fs/cgroup" || p.starts_with("/sys/fs/cgroup/"))
        .map(str::to_string)
        .collect();
    points.sort();
    points.dedup();
    points
}

/// Remounts every mount at and under /sys/fs/cgroup of process `pid`'s
/// mount namespace read-only (and nosuid, nodev, noexec), before the
/// container's process starts. Runs in a thread of its own that leaves our
/// file system context first, since only such a thread may enter another
/// mount namespace.
pub fn make_read_only(pid: i32) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .with_context(|| format!("the mount namespace of process {pid}"))?;
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("the mounts of process {pid}"))?;
    let points = cgroup_mounts(&mountinfo);
    std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
            .context("a file system context of our own")?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
            .context("entering the container's mount namespace")?;
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        for p in &points {
            mount(None::<&str>, p.as_str(), None::<&str>, flags, None::<&str>)
                .with_context(|| format!("making {p} read-only in the container"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread remounting the cgroup file system panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup_mounts_outermost_first() {
        let mi = "\
22 1 0:20 / / rw - overlay overlay rw
30 22 0:25 / /sys rw - sysfs sysfs ro
31 30 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
33 31 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
32 31 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 22 0:30 / /sys/fs/cgroupish rw - tmpfs tmpfs rw
";
        assert_eq!(
            cgroup_mounts(mi),
            [
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids"
            ]
        );
    }
}
