//! `stats` and `pids`: a container's resource usage and its processes on
//! the host.

use anyhow::Result;
use capsa_proto::Stats;
use libcgroups::common::CgroupManager;

use super::common::{error, record, status_of, vmm_pid};
use crate::microvm::MicroVmBackend;
use crate::paths::Roots;
use crate::record::Isolation;
use crate::record::Status;

/// Resource usage of a container: its cgroup on the host, or (VM mode) in
/// the guest, in the one type both modes report.
pub fn stats(roots: &Roots, id: &str) -> Result<Stats> {
    let rec = record(roots, id)?;
    match rec.isolation {
        Isolation::Container => {
            let s = crate::namespace::runtime(roots)
                .cgroup(id)?
                .stats()
                .map_err(|e| error(format!("reading the cgroup of {id}: {e}")))?;
            let limit = s.memory.memory.limit;
            let mut out = Stats::default();
            // libcgroups reports CPU time in nanoseconds on both layouts.
            out.cpu.usage_usec = s.cpu.usage.usage_total / 1000;
            out.cpu.user_usec = s.cpu.usage.usage_user / 1000;
            out.cpu.system_usec = s.cpu.usage.usage_kernel / 1000;
            out.memory.usage_bytes = s.memory.memory.usage;
            out.memory.max_usage_bytes = Some(s.memory.memory.max_usage).filter(|m| *m > 0);
            // Unlimited reads as a huge number on cgroup v1.
            out.memory.limit_bytes = (limit > 0 && limit < (1 << 62)).then_some(limit);
            out.pids.current = s.pids.current;
            out.pids.limit = Some(s.pids.limit).filter(|l| *l > 0);
            Ok(out)
        }
        Isolation::Vm => MicroVmBackend::new(roots).stats(&rec),
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
