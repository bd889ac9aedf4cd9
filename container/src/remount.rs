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

/// In process `pid`'s mount namespace: the root remounted `nodev`, and,
/// with `cgroup_read_only`, every mount at and under /sys/fs/cgroup
/// read-only (and nosuid, nodev, noexec).
pub fn harden(pid: i32, cgroup_read_only: bool) -> Result<()> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("the mounts of process {pid}"))?;
    let root = kept_flags(root_options(&mountinfo).unwrap_or(""));
    let points = match cgroup_read_only {
        true => cgroup_mounts(&mountinfo),
        false => vec![],
    };
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
            mount(
                None::<&str>,
                p.as_str(),
                None::<&str>,
                remount | read_only,
                None::<&str>,
            )
            .with_context(|| format!("making {p} read-only in the container"))?;
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
