//! `stats` and `pids`: a container's resource usage and its processes on
//! the host.

use anyhow::Result;
use libcgroups::common::CgroupManager;
use serde::Serialize;

use super::common::{error, record, status_of, vmm_pid};
use crate::microvm::MicroVmBackend;
use crate::paths::Roots;
use crate::record::Isolation;
use crate::record::Status;

/// Resource usage of a container (its cgroup on the host, or in the guest).
#[derive(Serialize, Clone, Debug, Default)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: u64,
}

pub fn stats(roots: &Roots, id: &str) -> Result<Stats> {
    let rec = record(roots, id)?;
    match rec.isolation {
        Isolation::Container => {
            let s = crate::namespace::runtime(roots)
                .cgroup(id)?
                .stats()
                .map_err(|e| error(format!("reading the cgroup of {id}: {e}")))?;
            let limit = s.memory.memory.limit;
            Ok(Stats {
                cpu_usage_ns: s.cpu.usage.usage_total,
                cpu_user_ns: s.cpu.usage.usage_user,
                cpu_system_ns: s.cpu.usage.usage_kernel,
                memory_usage_bytes: s.memory.memory.usage,
                // Unlimited reads as a huge number on cgroup v1.
                memory_limit_bytes: (limit > 0 && limit < (1 << 62)).then_some(limit),
                pids_current: s.pids.current,
            })
        }
        Isolation::Vm => {
            let s = MicroVmBackend::new(roots).stats(&rec)?;
            Ok(Stats {
                cpu_usage_ns: s.cpu.usage_usec * 1000,
                cpu_user_ns: s.cpu.user_usec * 1000,
                cpu_system_ns: s.cpu.system_usec * 1000,
                memory_usage_bytes: s.memory.usage_bytes,
                memory_limit_bytes: s.memory.limit_bytes,
                pids_current: s.pids.current,
            })
        }
    }
}

/// Host PIDs of the container's processes. In VM mode its processes live
/// in the guest; the host-side ones are the monitor and the VMM.
pub fn pids(roots: &Roots, id: &str) -> Result<Vec<i32>> {
    let rec = record(roots, id)?;
    match rec.isolation {
        Isolation::Container => Ok(crate::namespace::runtime(roots)
            .cgroup(id)?
            .get_all_pids()
            .map_err(|e| error(format!("reading the cgroup of {id}: {e}")))?
            .into_iter()
            .map(|p| p.as_raw())
            .collect()),
        Isolation::Vm => {
            if status_of(roots, &rec) == Status::Stopped {
                return Ok(vec![]);
            }
            Ok(rec.monitor_pid.into_iter().chain(vmm_pid(&rec)).collect())
        }
    }
}
