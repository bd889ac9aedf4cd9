//! The OCI runtime operations on a bundle someone else prepared: what
//! `runc create/start/state/kill/delete/exec/pause/resume` do, for both
//! isolation modes. The runc-compatible commands of the `capsa` binary and
//! `containerd-shim-capsa-v2` are thin layers over this module.
//!
//! The bundle's annotation `io.capsa.isolation` picks the backend
//! (`container`, the default, or `vm`). Each container gets a [`Record`]
//! like the ones `capsa run` makes, with `bundle` set, so `capsa ps -a`
//! shows them too.
//!
//! Who owns the processes: [`create`](fn@create) returns a PID that is the
//! caller's child, and the caller (or its subreaper, once `capsa create`
//! has exited) reaps it and learns the exit status from it, as with runc.
//! In container mode that is the container's first process. In VM mode it
//! is a small monitor process ([`crate::monitor::bundle`]) that boots the
//! VM, holds the connection to the guest agent, passes the standard
//! streams through and exits with the container's exit status.
//!
//! One file per verb, as runc's own commands are: `create` (with the VM
//! bundle preparation), `start`, `state` and `list`, `kill`, `delete`,
//! `exec`, `pause` and `resume`, `stats` and `pids`. This file holds what
//! they share: the record lookup, the ID check, the spec loading and the
//! container's current status.

mod create;
mod delete;
mod exec;
mod kill;
mod pause;
mod start;
mod state;
mod stats;

pub use create::create;
pub use delete::delete;
pub use exec::exec;
pub use kill::kill;
pub use pause::{pause, resume};
pub use start::start;
pub use state::{list, state, State};
pub use stats::{pids, stats, Stats};

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use libcontainer::container::ContainerStatus;
use oci_spec::runtime::Spec;

use crate::backend::ProcessIo;
use crate::lifecycle::Isolation;
use crate::microvm::sandbox;
use crate::monitor::bundle::BundleJob;
use crate::monitor::spawn::Job;
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};
use crate::CodedError;

/// Picks the isolation mode of a bundle: `container` (default) or `vm`.
pub const ISOLATION_ANNOTATION: &str = "io.capsa.isolation";
/// VM mode: the guest kernel to boot instead of capsa's own (a
/// PVM-enabled one on a PVM host).
pub const KERNEL_ANNOTATION: &str = "io.capsa.kernel";

/// runc's exit code for a failed command.
pub const EXIT_RUNC_ERROR: i32 = 1;

fn error(message: impl Into<String>) -> anyhow::Error {
    CodedError::new(EXIT_RUNC_ERROR, message).into()
}

/// runc's rule for container IDs, which also keeps them safe as path names.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if !ok {
        return Err(error(format!(
            "invalid container ID {id:?}: use letters, digits, '_', '+', '-' and '.'"
        )));
    }
    Ok(())
}

fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text =
        fs::read_to_string(&path).map_err(|e| error(format!("reading {}: {e}", path.display())))?;
    crate::spec_check::parse(&text).map_err(invalid_bundle)
}

fn invalid_bundle(e: crate::spec_check::Invalid) -> anyhow::Error {
    error(format!("invalid bundle config.json: {e}"))
}

pub fn isolation_of(spec: &Spec) -> Result<Isolation> {
    match sandbox::annotation(spec, ISOLATION_ANNOTATION) {
        None => Ok(Isolation::Container),
        Some(v) => v
            .parse()
            .map_err(|e| error(format!("annotation {ISOLATION_ANNOTATION}: {e}"))),
    }
}

fn rootfs_of(bundle: &Path, spec: &Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
    bundle.join(root)
}

/// Finds a container made by [`create`](fn@create).
fn record(roots: &Roots, id: &str) -> Result<Record> {
    check_id(id)?;
    match Record::load(roots, id) {
        Ok(r) if r.bundle.is_some() => Ok(r),
        Ok(_) => Err(error(format!(
            "container {id} was made by `capsa run`; use the docker-style commands for it"
        ))),
        Err(_) => Err(error(format!("container {id} does not exist"))),
    }
}

/// Starts the monitor for `job` (see [`crate::monitor::bundle`]); its
/// failure is a runc error, on one line.
fn spawn_monitor(job: BundleJob, io: ProcessIo) -> Result<i32> {
    crate::monitor::spawn::spawn(&Job::Bundle(job), io).map_err(|e| {
        let message = match e.downcast_ref::<CodedError>() {
            Some(c) => c.message.clone(),
            None => format!("{e:#}"),
        };
        error(message.replace('\n', " "))
    })
}

/// Loads, changes and saves a record under its lock, so the monitor (which
/// records the exit) and `capsa start` (which records the start) cannot
/// overwrite each other.
pub(crate) fn with_record(roots: &Roots, id: &str, f: impl FnOnce(&mut Record)) -> Option<Record> {
    let dir = ContainerPaths::new(roots, id).dir;
    let lock = fs::File::open(&dir).ok()?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).ok()?;
    let mut rec = Record::load(roots, id).ok()?;
    f(&mut rec);
    rec.save(roots).ok()?;
    Some(rec)
}

/// The container's status as it is now: libcontainer's view of a
/// namespace container (its process may have died since the record was
/// written), the record's for a VM.
fn status_of(roots: &Roots, rec: &Record) -> Status {
    match rec.isolation {
        Isolation::Container => match crate::namespace::runtime(roots).container(&rec.id) {
            Ok(c) => match c.status() {
                ContainerStatus::Creating | ContainerStatus::Created => Status::Created,
                ContainerStatus::Running => Status::Running,
                ContainerStatus::Paused => Status::Paused,
                ContainerStatus::Stopped => Status::Stopped,
            },
            Err(_) => Status::Stopped,
        },
        Isolation::Vm => rec.status(),
    }
}

/// Gives a pod member's slot in its sandbox's VM back.
fn release_slot(roots: &Roots, rec: &Record) {
    if let Some(sb) = &rec.sandbox {
        sandbox::release(&ContainerPaths::new(roots, sb).dir, &rec.id);
    }
}

/// The capsa-vmm process under a VM-mode container's monitor.
fn vmm_pid(rec: &Record) -> Option<i32> {
    let monitor = rec.monitor_pid?;
    let children = fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| crate::microvm::is_vmm(*p))
}
