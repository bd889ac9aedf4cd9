//! What runc's verbs share: the annotations and exit code, finding a
//! container's record, checking IDs and bundles, a container's current
//! status, and starting a bundle's monitor.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use libcontainer::container::ContainerStatus;
use oci_spec::runtime::Spec;

use crate::backend::ProcessIo;
use crate::microvm::sandbox;
use crate::monitor::bundle::BundleJob;
use crate::monitor::spawn::Job;
use crate::paths::{ContainerPaths, Roots};
use crate::record::Isolation;
use crate::record::{Record, Status};
use crate::CodedError;

/// Picks the isolation mode of a bundle: `container` (default) or `vm`.
pub const ISOLATION_ANNOTATION: &str = "io.capsa.isolation";
/// VM mode: the guest kernel to boot instead of capsa's own (a
/// PVM-enabled one on a PVM host).
pub const KERNEL_ANNOTATION: &str = "io.capsa.kernel";

/// runc's exit code for a failed command.
pub const EXIT_RUNC_ERROR: i32 = 1;

pub(super) fn error(message: impl Into<String>) -> anyhow::Error {
    CodedError::new(EXIT_RUNC_ERROR, message).into()
}

/// runc's rule for container IDs, which also keeps them safe as path names.
pub(super) fn check_id(id: &str) -> Result<()> {
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

pub(crate) fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text =
        fs::read_to_string(&path).map_err(|e| error(format!("reading {}: {e}", path.display())))?;
    crate::spec_check::parse(&text).map_err(invalid_bundle)
}

pub(super) fn invalid_bundle(e: crate::spec_check::Invalid) -> anyhow::Error {
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

pub(super) fn rootfs_of(bundle: &Path, spec: &Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
    bundle.join(root)
}

/// Finds a container made by [`create`](fn@create).
pub(super) fn record(roots: &Roots, id: &str) -> Result<Record> {
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
pub(super) fn spawn_monitor(job: BundleJob, io: ProcessIo) -> Result<i32> {
    crate::monitor::spawn::spawn(&Job::Bundle(job), io).map_err(|e| {
        let message = match e.downcast_ref::<CodedError>() {
            Some(c) => c.message.clone(),
            None => format!("{e:#}"),
        };
        error(message.replace('\n', " "))
    })
}

/// The container's status as it is now: libcontainer's view of a
/// namespace container (its process may have died since the record was
/// written), the record's for a VM.
pub(super) fn status_of(roots: &Roots, rec: &Record) -> Status {
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

/// Takes a pod member's root and mounts out of its sandbox's pod
/// directory.
pub(super) fn leave_pod(roots: &Roots, rec: &Record) {
    if let Some(sb) = &rec.sandbox {
        sandbox::leave(&ContainerPaths::new(roots, sb).dir, &rec.id);
    }
}
