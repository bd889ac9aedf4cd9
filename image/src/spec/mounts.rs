//! Mounts: runc's standard mounts, the user's bind and tmpfs mounts (with
//! their destination checks), and docker's masked and read-only paths.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::{bad, internal, strings, RunConfig};
use crate::error::Result;

/// Paths masked (over-mounted) inside the container, as docker does.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only inside the container, as docker does.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn mount(
    dst: impl Into<PathBuf>,
    typ: &str,
    src: impl Into<PathBuf>,
    options: Vec<String>,
) -> Result<Mount> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(options)
        .build()
        .map_err(internal)
}

/// The kernel file systems every container gets; /sys and its cgroup
/// read-write only with `--privileged`. `bind_sys`: /sys is the host's,
/// bound (as podman does): a user namespace cannot mount a sysfs for a
/// network namespace it does not own.
fn default_mounts(privileged: bool, bind_sys: bool) -> Result<Vec<Mount>> {
    #[rustfmt::skip]
    const MOUNTS: &[(&str, &str, &str, &[&str])] = &[
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        ("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        ("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        ("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        ("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ];
    MOUNTS
        .iter()
        .map(|&(dst, typ, src, opts)| {
            let (typ, src, bind) = match (dst, bind_sys) {
                ("/sys", true) => ("bind", "/sys", &["rbind", "rprivate"][..]),
                _ => (typ, src, &[][..]),
            };
            let opts = bind
                .iter()
                .chain(opts)
                .filter(|o| !(privileged && **o == "ro"));
            mount(dst, typ, src, opts.map(|o| o.to_string()).collect())
        })
        .collect()
}

fn check_dest(dst: &str, what: &str) -> Result<()> {
    if !dst.starts_with('/') {
        return Err(bad(format!(
            "{what} destination {dst:?} must be an absolute path"
        )));
    }
    if Path::new(dst)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad(format!(
            "{what} destination {dst:?} must not contain '..'"
        )));
    }
    if dst.trim_end_matches('/').is_empty() {
        return Err(bad(format!("{what} cannot be mounted over /")));
    }
    Ok(())
}

fn user_mounts(rc: &RunConfig) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in &rc.mounts {
        check_dest(&m.dst, "bind mount")?;
        if !m.src.is_absolute() {
            return Err(bad(format!(
                "bind mount source {} must be an absolute path",
                m.src.display()
            )));
        }
        if !m.src.exists() {
            return Err(bad(format!(
                "bind mount source {} does not exist; create it first",
                m.src.display()
            )));
        }
        // Read-only all the way down, mounts inside the source included
        // (docker's default since 25: "rro", mount_setattr's AT_RECURSIVE).
        let mode: &[&str] = if m.readonly { &["ro", "rro"] } else { &["rw"] };
        let flags: Vec<&str> = m.flags.iter().map(String::as_str).collect();
        out.push(mount(
            &m.dst,
            "bind",
            &m.src,
            strings(&[&["rbind", "rprivate"][..], mode, &flags].concat()),
        )?);
    }
    for t in &rc.tmpfs {
        let (dst, opts) = match t.split_once(':') {
            Some((d, o)) => (d, o),
            None => (t.as_str(), ""),
        };
        check_dest(dst, "tmpfs")?;
        let user_opts: Vec<&str> = opts
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into()];
        if !user_opts.contains(&"exec") {
            options.push("noexec".into());
        }
        if !user_opts.iter().any(|o| o.starts_with("mode=")) {
            options.push("mode=1777".into());
        }
        options.extend(
            user_opts
                .iter()
                .filter(|o| **o != "exec")
                .map(|o| o.to_string()),
        );
        out.push(mount(dst, "tmpfs", "tmpfs", options)?);
    }
    Ok(out)
}

/// runc's standard mounts, then the user's bind and tmpfs mounts.
pub(super) fn mounts(rc: &RunConfig) -> Result<Vec<Mount>> {
    // A user mount replaces the default one on the same destination,
    // compared as written (as strings: `Path`'s `==` ignores a trailing `/`).
    let extra = user_mounts(rc)?;
    let bind_sys = rc.userns.is_some() && !super::own_network(rc);
    let mut mounts: Vec<Mount> = default_mounts(rc.privileged, bind_sys)?
        .into_iter()
        .filter(|d| {
            !extra
                .iter()
                .any(|e| e.destination().as_os_str() == d.destination().as_os_str())
        })
        .collect();
    mounts.extend(extra);
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{gen, image, rc, rootfs};
    use crate::spec::{generate, BindMount};
    use serde_json::json;

    #[test]
    fn bind_and_tmpfs_mounts() {
        let img = image(json!({"Cmd": ["x"]}));
        let host = tempfile::tempdir().unwrap();
        let mut r = rc();
        r.mounts = vec![
            BindMount {
                src: host.path().into(),
                dst: "/data".into(),
                readonly: true,
                volume: None,
                ..Default::default()
            },
            BindMount {
                src: host.path().into(),
                dst: "/rw".into(),
                readonly: false,
                volume: None,
                ..Default::default()
            },
        ];
        r.tmpfs = vec![
            "/scratch".into(),
            "/run:size=1m,exec".into(),
            "/dev/shm:size=128m".into(),
        ];
        let s = gen(&img, &r);
        let mounts = s.mounts().clone().unwrap();
        let find = |d: &str| {
            let v: Vec<_> = mounts
                .iter()
                .filter(|m| m.destination() == Path::new(d))
                .collect();
            assert_eq!(v.len(), 1, "{d} mounted {} times", v.len());
            v[0].clone()
        };
        let data = find("/data");
        assert_eq!(data.typ().as_deref(), Some("bind"));
        assert_eq!(data.source().as_deref(), Some(host.path()));
        let o = data.options().clone().unwrap();
        assert!(o.contains(&"rbind".into()) && o.contains(&"ro".into()));
        assert!(o.contains(&"rro".into()), "read-only recursively: {o:?}");
        assert!(find("/rw")
            .options()
            .clone()
            .unwrap()
            .contains(&"rw".into()));
        let scratch = find("/scratch").options().clone().unwrap();
        assert!(scratch.contains(&"noexec".into()) && scratch.contains(&"mode=1777".into()));
        let run = find("/run").options().clone().unwrap();
        assert!(run.contains(&"size=1m".into()) && !run.contains(&"noexec".into()));
        let shm = find("/dev/shm").options().clone().unwrap();
        assert!(
            shm.contains(&"size=128m".into()),
            "user tmpfs replaces the default /dev/shm"
        );

        for m in [
            BindMount {
                src: "/nonexistent-capsa".into(),
                dst: "/x".into(),
                readonly: false,
                volume: None,
                ..Default::default()
            },
            BindMount {
                src: host.path().into(),
                dst: "relative".into(),
                readonly: false,
                volume: None,
                ..Default::default()
            },
            BindMount {
                src: host.path().into(),
                dst: "/".into(),
                readonly: false,
                volume: None,
                ..Default::default()
            },
            BindMount {
                src: "rel".into(),
                dst: "/x".into(),
                readonly: false,
                volume: None,
                ..Default::default()
            },
        ] {
            let r = RunConfig {
                mounts: vec![m.clone()],
                ..rc()
            };
            assert!(
                generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err(),
                "{m:?} accepted"
            );
        }
        let r = RunConfig {
            tmpfs: vec!["x:size=1m".into()],
            ..rc()
        };
        assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err());
    }
}
