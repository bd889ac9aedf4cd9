//! What a container uses and runs, from its record, in both modes: its
//! resource figures (`capsa stats`, runc's `events --stats`), its
//! processes (`capsa top`) and their host PIDs (runc's `ps`).

use anyhow::Result;
pub use capsa_proto::{ProcessInfo, Stats};
use libcgroups::common::CgroupManager;

use crate::microvm::MicroVmBackend;
use crate::paths::Roots;
use crate::record::{Isolation, Record, Status};
use crate::CodedError;

/// Resource usage of a container: its cgroup on the host, or (VM mode) in
/// the guest, in the one type both modes report.
pub fn stats(roots: &Roots, rec: &Record) -> Result<Stats> {
    let id = rec.id.as_str();
    match rec.isolation {
        Isolation::Container => {
            // Pure cgroup v2: its files, as the guest reads them.
            let v2 = capsa_container::cgroup::v2_dir(id);
            if v2.join("cgroup.procs").exists() {
                return Ok(capsa_container::cgroup::v2_stats(&v2));
            }
            let s = crate::namespace::runtime(roots)
                .cgroup(id)?
                .stats()
                .map_err(|e| {
                    CodedError::new(
                        crate::EXIT_CAPSA_ERROR,
                        format!("reading the cgroup of {id}: {e}"),
                    )
                })?;
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
            let mut block = capsa_proto::BlockStats::default();
            for d in &s.blkio.service_bytes {
                match d.op_type.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("read") => block.read_bytes += d.value,
                    Some("write") => block.write_bytes += d.value,
                    _ => {}
                }
            }
            out.block = Some(block);
            if let Some(pid) = rec.pid {
                out.net = capsa_container::procfs::net_dev(pid);
            }
            Ok(out)
        }
        Isolation::Vm => MicroVmBackend::new(roots).stats(rec),
    }
}

/// The container's processes as `ps -ef` shows them: read from the
/// host's /proc, or (VM mode) the guest's.
pub fn top(roots: &Roots, rec: &Record) -> Result<Vec<ProcessInfo>> {
    match rec.isolation {
        Isolation::Container => Ok(pids(roots, rec)?
            .into_iter()
            .filter_map(capsa_container::procfs::process)
            .collect()),
        Isolation::Vm => MicroVmBackend::new(roots).top(rec),
    }
}

/// Host PIDs of the container's processes. In VM mode its processes live
/// in the guest; the host-side ones are the monitor and the VMM.
pub fn pids(roots: &Roots, rec: &Record) -> Result<Vec<i32>> {
    let id = rec.id.as_str();
    match rec.isolation {
        Isolation::Container => Ok(crate::namespace::runtime(roots)
            .cgroup(id)?
            .get_all_pids()
            .map_err(|e| {
                CodedError::new(
                    crate::EXIT_CAPSA_ERROR,
                    format!("reading the cgroup of {id}: {e}"),
                )
            })?
            .into_iter()
            .map(|p| p.as_raw())
            .collect()),
        Isolation::Vm => {
            if rec.status() == Status::Stopped {
                return Ok(vec![]);
            }
            Ok(rec
                .monitor_pid
                .into_iter()
                .chain(crate::microvm::vmm_pid(rec))
                .collect())
        }
    }
}
