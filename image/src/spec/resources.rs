//! The cgroup resources: the device rules (runc's default devices),
//! memory, cpu and pids limits.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::{bad, internal, RunConfig};
use crate::error::Result;

/// The cgroup resources for `rc`: runc's default device rules and the
/// memory, cpu and pids limits.
pub(super) fn resources(rc: &RunConfig) -> Result<LinuxResources> {
    let allow_char = |major: i64, minor: Option<i64>| {
        let b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rwm");
        match minor {
            Some(minor) => b.minor(minor),
            None => b,
        }
        .build()
        .map_err(internal)
    };
    // Deny all, then allow runc's default devices: null, zero, full, random,
    // urandom, tty, console, ptmx and the pty slaves (136:*).
    let mut devices = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(internal)?];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        devices.push(allow_char(major, Some(minor))?);
    }
    devices.push(allow_char(136, None)?);
    let mut r = LinuxResourcesBuilder::default().devices(devices);
    if let Some(m) = rc.memory_bytes {
        if m < 6 * 1024 * 1024 {
            return Err(bad(format!(
                "memory limit {m} bytes is too small: the minimum is 6 MiB"
            )));
        }
        let memory = LinuxMemoryBuilder::default()
            .limit(m)
            .swap(m)
            .build()
            .map_err(internal)?;
        r = r.memory(memory);
    }
    if let Some(c) = rc.cpus {
        let period: u64 = 100_000;
        let quota = (c * period as f64).round() as i64;
        if !c.is_finite() || quota < 1000 {
            return Err(bad(format!(
                "--cpus {c} is out of range: give at least 0.01"
            )));
        }
        let cpu = LinuxCpuBuilder::default()
            .quota(quota)
            .period(period)
            .build()
            .map_err(internal)?;
        r = r.cpu(cpu);
    }
    if let Some(p) = rc.pids_limit {
        if p > 0 {
            r = r.pids(
                LinuxPidsBuilder::default()
                    .limit(p)
                    .build()
                    .map_err(internal)?,
            );
        }
    }
    r.build().map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::generate;
    use crate::spec::tests::{gen, image, rc, rootfs};
    use serde_json::json;

    #[test]
    fn resources_and_read_only() {
        let img = image(json!({"Cmd": ["x"]}));
        let mut r = rc();
        r.memory_bytes = Some(64 << 20);
        r.cpus = Some(1.5);
        r.pids_limit = Some(50);
        r.read_only = true;
        r.annotations
            .insert("io.capsa.isolation".into(), "container".into());
        let s = gen(&img, &r);
        let res = s.linux().as_ref().unwrap().resources().clone().unwrap();
        let mem = res.memory().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(64 << 20));
        let cpu = res.cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(res.pids().unwrap().limit(), 50);
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            s.annotations()
                .as_ref()
                .unwrap()
                .get("io.capsa.isolation")
                .map(String::as_str),
            Some("container")
        );
        for bad_rc in [
            RunConfig {
                memory_bytes: Some(1000),
                ..rc()
            },
            RunConfig {
                cpus: Some(0.0),
                ..rc()
            },
            RunConfig {
                cpus: Some(-1.0),
                ..rc()
            },
        ] {
            assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &bad_rc).is_err());
        }
        let s = gen(
            &img,
            &RunConfig {
                pids_limit: Some(-1),
                ..rc()
            },
        );
        assert!(s
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .pids()
            .is_none());
    }
}
