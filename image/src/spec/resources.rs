//! The cgroup resources: the device rules (runc's default devices),
//! memory, cpu and pids limits.

use oci_spec::runtime::{
    LinuxCpu, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemory,
    LinuxMemoryBuilder, LinuxPids, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
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
    let limits = limits(rc.memory_bytes, rc.cpus, rc.pids_limit)?;
    if let Some(m) = limits.memory {
        r = r.memory(m);
    }
    if let Some(c) = limits.cpu {
        r = r.cpu(c);
    }
    if let Some(p) = limits.pids {
        r = r.pids(p);
    }
    r.build().map_err(internal)
}

/// The memory, CPU and PIDs limits `run` and `update` take.
#[derive(Debug, Default)]
pub struct Limits {
    pub memory: Option<LinuxMemory>,
    pub cpu: Option<LinuxCpu>,
    pub pids: Option<LinuxPids>,
}

impl Limits {
    /// Sets what is given here on `r`, keeping the rest.
    pub fn apply_to(self, r: &mut LinuxResources) {
        if self.memory.is_some() {
            r.set_memory(self.memory);
        }
        if self.cpu.is_some() {
            r.set_cpu(self.cpu);
        }
        if self.pids.is_some() {
            r.set_pids(self.pids);
        }
    }
}

/// `--memory` (swap limited to it, as docker's default), `--cpus` (a CFS
/// quota), `--pids-limit` (0 or less: none), checked as docker checks them.
pub fn limits(
    memory_bytes: Option<i64>,
    cpus: Option<f64>,
    pids_limit: Option<i64>,
) -> Result<Limits> {
    let mut out = Limits::default();
    if let Some(m) = memory_bytes {
        if m < 6 * 1024 * 1024 {
            return Err(bad(format!(
                "memory limit {m} bytes is too small: the minimum is 6 MiB"
            )));
        }
        out.memory = Some(
            LinuxMemoryBuilder::default()
                .limit(m)
                .swap(m)
                .build()
                .map_err(internal)?,
        );
    }
    if let Some(c) = cpus {
        let period: u64 = 100_000;
        let quota = (c * period as f64).round() as i64;
        if !c.is_finite() || quota < 1000 {
            return Err(bad(format!(
                "--cpus {c} is out of range: give at least 0.01"
            )));
        }
        out.cpu = Some(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .map_err(internal)?,
        );
    }
    if let Some(p) = pids_limit.filter(|p| *p > 0) {
        out.pids = Some(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(internal)?,
        );
    }
    Ok(out)
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
