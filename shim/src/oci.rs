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
//! Who owns the processes: [`create`] returns a PID that is the caller's
//! child, and the caller (or its subreaper, once `capsa create` has exited)
//! reaps it and learns the exit status from it, as with runc. In container
//! mode that is the container's first process. In VM mode it is a small
//! monitor process ([`crate::monitor::bundle`]) that boots the VM, holds
//! the connection to the guest agent, passes the standard streams through
//! and exits with the container's exit status.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use libcgroups::common::CgroupManager;
use libcontainer::container::ContainerStatus;
use nix::sys::signal::Signal;
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ProcessIo};
use crate::lifecycle::Isolation;
use crate::microvm::{sandbox, MicroVmBackend};
use crate::monitor::bundle::{BundleJob, BundleOp};
use crate::monitor::spawn::Job;
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};
use crate::CodedError;
use capsa_container::is_bind_mount;

/// Picks the isolation mode of a bundle: `container` (default) or `vm`.
pub const ISOLATION_ANNOTATION: &str = "io.capsa.isolation";
/// VM mode: the guest kernel to boot instead of capsa's own (a
/// PVM-enabled one on a PVM host).
pub const KERNEL_ANNOTATION: &str = "io.capsa.kernel";

/// runc's exit code for a failed command.
pub const EXIT_RUNC_ERROR: i32 = 1;

/// What `runc state` prints.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    /// The PID the caller reaps; 0 once the container stopped.
    pub pid: i32,
    /// created, running, paused or stopped.
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: DateTime<Utc>,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

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

/// Finds a container made by [`create`].
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

/// Removes what a failed create made, unless disarmed.
struct Undo<'a> {
    roots: &'a Roots,
    rec: Option<Record>,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            if rec.isolation == Isolation::Container {
                let _ = crate::namespace::runtime(self.roots).delete(&rec.id);
            }
            release_slot(self.roots, &rec);
            let _ = crate::lifecycle::remove_files(self.roots, &rec);
        }
    }
}

/// Creates container `id` from the bundle; its process waits for
/// [`start`]. Returns the PID the caller must reap (see the module docs).
pub fn create(roots: &Roots, id: &str, bundle: &Path, io: ProcessIo) -> Result<i32> {
    check_id(id)?;
    let bundle =
        fs::canonicalize(bundle).map_err(|e| error(format!("bundle {}: {e}", bundle.display())))?;
    let spec = load_spec(&bundle)?;
    // Before anything touches the host, in either mode.
    crate::spec_check::check(&spec).map_err(invalid_bundle)?;
    let isolation = isolation_of(&spec)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| error("the bundle's config.json has no process"))?;
    let paths = ContainerPaths::new(roots, id);
    let mut rec = Record::new(
        id,
        id,
        isolation,
        process.args().clone().unwrap_or_default(),
    );
    rec.image = bundle.display().to_string();
    rec.tty = process.terminal().unwrap_or(false);
    rec.interactive = io.stdin.is_some();
    rec.kernel = sandbox::annotation(&spec, KERNEL_ANNOTATION).map(PathBuf::from);
    rec.bundle = Some(bundle.clone());
    if let Err(e) = rec.create_dir(roots) {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists)
        {
            return Err(error(format!("container with ID {id} already exists")));
        }
        return Err(e);
    }
    let mut undo = Undo {
        roots,
        rec: Some(rec.clone()),
    };
    let pid = match isolation {
        Isolation::Container if !crate::keeper::can_fork() => {
            let job = BundleJob::new(roots, id, &io, BundleOp::NamespaceCreate(bundle.clone()));
            spawn_monitor(job, io)?
        }
        Isolation::Container => crate::namespace::runtime(roots).create(id, &bundle, io)?,
        Isolation::Vm => {
            crate::microvm::check_host(rec.kernel.as_deref())
                .map_err(|e| error(format!("{e:#}")))?;
            let sandbox = sandbox::sandbox_of(&spec);
            if let Some(sb) = &sandbox {
                check_sandbox(roots, sb)?;
                rec.sandbox = Some(sb.clone());
                rec.save(roots)?;
                undo.rec = Some(rec.clone());
            }
            prepare_vm_bundle(&paths, &bundle, spec, sandbox.as_deref())?;
            if let Some(sb) = &sandbox {
                let image = paths.dir.join("rootfs.ext4");
                let device = sandbox::claim(&ContainerPaths::new(roots, sb).dir, id, &image)?;
                fs::write(paths.dir.join(sandbox::DEVICE_FILE), device)?;
                fs::remove_file(&image)?;
            }
            let pid = spawn_monitor(BundleJob::new(roots, id, &io, BundleOp::Run), io)?;
            rec.monitor_pid = Some(pid);
            pid
        }
    };
    rec.pid = Some(pid);
    rec.save(roots)?;
    undo.rec = None;
    Ok(pid)
}

/// What the microVM backend reads from a container's directory: the spec
/// as config.json and the root filesystem as a disk image, made here from
/// the bundle's root directory (a snapshot: the guest's writes go to its
/// own writable layer, not back to that directory).
fn prepare_vm_bundle(
    paths: &ContainerPaths,
    bundle: &Path,
    mut spec: Spec,
    sandbox: Option<&str>,
) -> Result<()> {
    let rootfs = rootfs_of(bundle, &spec);
    if !rootfs.is_dir() {
        bail!(error(format!(
            "the root filesystem {} is not a directory",
            rootfs.display()
        )));
    }
    let disk = paths.dir.join("rootfs.ext4");
    capsa_image::filesystem_image_of(&rootfs, &disk, capsa_image::RootfsFormat::Ext4)
        .with_context(|| format!("making a disk image of {}", rootfs.display()))?;
    if sandbox.is_some() {
        // A joined container gets no disks besides its slot: the files
        // the engine binds in go into its root image.
        let id = paths.dir.file_name().unwrap_or_default().to_string_lossy();
        embed_bound_files(&mut spec, &disk, &id)?;
    } else {
        std::os::unix::fs::symlink(&disk, paths.dir.join("rootfs.disk"))?;
    }
    // The guest has namespaces of its own: paths to the host's (a network
    // namespace the engine prepared) mean nothing there. A pod member's
    // paths to its pod's namespaces name the sandbox container instead,
    // whose namespaces in the guest the agent joins.
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces().clone() {
            use oci_spec::runtime::LinuxNamespaceType as T;
            let ns = ns
                .into_iter()
                .map(|mut n| {
                    let pod_shared = matches!(n.typ(), T::Network | T::Ipc | T::Uts | T::Pid);
                    let path = match sandbox {
                        Some(sb) if n.path().is_some() && pod_shared => {
                            Some(PathBuf::from(format!("container:{sb}")))
                        }
                        _ => None,
                    };
                    n.set_path(path);
                    n
                })
                .collect();
            linux.set_namespaces(Some(ns));
        }
    }
    fs::create_dir_all(paths.bundle())?;
    spec.save(paths.config())?;
    Ok(())
}

/// The sandbox a pod container joins must be a live VM-mode pod sandbox.
fn check_sandbox(roots: &Roots, sandbox_id: &str) -> Result<()> {
    let sb = record(roots, sandbox_id)
        .map_err(|_| error(format!("the pod sandbox {sandbox_id} does not exist")))?;
    if sb.isolation != Isolation::Vm {
        bail!(error(format!(
            "the pod sandbox {sandbox_id} runs in container mode; a VM-mode container can only join a VM-mode pod"
        )));
    }
    match status_of(roots, &sb) {
        Status::Created | Status::Running => Ok(()),
        other => Err(error(format!(
            "the pod sandbox {sandbox_id} is {}",
            other.runc_name()
        ))),
    }
}

/// Where the agent mounts a container's root image in the guest (its
/// `assemble_rootfs`); files embedded in the image are bound from there.
fn guest_image_dir(id: &str) -> String {
    format!("/run/capsa-agent/disks/{id}/image")
}

/// Writes the single files an engine binds into a joined container
/// (/etc/hosts, /etc/resolv.conf, /dev/termination-log…) into its root
/// image under /.capsa-files (debugfs, from e2fsprogs) and points the
/// mounts there. A copy: changes stay in the guest. /dev/shm becomes the
/// container's own tmpfs; other host directories cannot reach the VM.
fn embed_bound_files(spec: &mut Spec, image: &Path, id: &str) -> Result<()> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let mut script = String::from("mkdir /.capsa-files\n");
    let mut n = 0;
    for m in mounts.iter_mut() {
        let Some(src) = m.source().clone().filter(|_| is_bind_mount(m)) else {
            continue;
        };
        if m.destination() == Path::new("/dev/shm") {
            crate::microvm::shm_as_tmpfs(m);
        } else if src.is_file() {
            script.push_str(&format!("write {} /.capsa-files/{n}\n", src.display()));
            m.set_source(Some(PathBuf::from(format!(
                "{}/.capsa-files/{n}",
                guest_image_dir(id)
            ))));
            n += 1;
        } else {
            bail!(error(format!(
                "a container in a VM-mode pod cannot mount the host directory {} (at {})",
                src.display(),
                m.destination().display()
            )));
        }
    }
    spec.set_mounts(Some(mounts));
    if n == 0 {
        return Ok(());
    }
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .expect("piped")
                .write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .context("running debugfs (e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "writing the bound files into the root image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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

/// Lets the created container run its process.
pub fn start(roots: &Roots, id: &str) -> Result<()> {
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    if !status.can_start() {
        bail!(error(format!(
            "cannot start a container that is {}",
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container => crate::namespace::runtime(roots).start(id)?,
        Isolation::Vm => MicroVmBackend::new(roots).start(&rec)?,
    }
    with_record(roots, id, |r| {
        if r.status().can_start() {
            let _ = r.transition(Status::Running);
        }
        r.started = Some(Utc::now());
    });
    Ok(())
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

fn state_of(roots: &Roots, rec: &Record) -> Result<State> {
    let bundle = rec.bundle.clone().unwrap_or_default();
    let spec = load_spec(&bundle).ok();
    let status = status_of(roots, rec);
    Ok(State {
        oci_version: spec
            .as_ref()
            .map_or_else(|| "1.0.2".into(), |s| s.version().clone()),
        id: rec.id.clone(),
        pid: if status == Status::Stopped {
            0
        } else {
            rec.pid.unwrap_or(0)
        },
        status: status.runc_name().into(),
        rootfs: spec
            .as_ref()
            .map_or_else(|| bundle.join("rootfs"), |s| rootfs_of(&bundle, s)),
        annotations: spec
            .as_ref()
            .and_then(|s| s.annotations().clone())
            .unwrap_or_default(),
        bundle,
        created: rec.created,
        owner: owner_of(&ContainerPaths::new(roots, &rec.id).dir),
    })
}

/// The user who owns the container's state, by name, as runc reports it.
fn owner_of(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(dir) else {
        return String::new();
    };
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid())) {
        Ok(Some(u)) => u.name,
        _ => meta.uid().to_string(),
    }
}

pub fn state(roots: &Roots, id: &str) -> Result<State> {
    state_of(roots, &record(roots, id)?)
}

/// Every container made by [`create`], oldest first.
pub fn list(roots: &Roots) -> Result<Vec<State>> {
    Record::list(roots)?
        .iter()
        .filter(|r| r.bundle.is_some())
        .map(|r| state_of(roots, r))
        .collect()
}

/// Sends `signal` to the container's first process, or with `all` to every
/// process of the container.
pub fn kill(roots: &Roots, id: &str, signal: Signal, all: bool) -> Result<()> {
    let rec = record(roots, id)?;
    if !status_of(roots, &rec).can_kill() {
        bail!(error(format!("container {id} is not running")));
    }
    match rec.isolation {
        Isolation::Container => {
            let mut c = crate::namespace::runtime(roots).container(id)?;
            c.kill(signal, all)
                .map_err(|e| error(format!("sending {signal} to {id}: {e}")))?;
        }
        // In the guest the container is alone in its VM: `all` only
        // differs for processes that escaped its namespace, and there are
        // none to escape to.
        Isolation::Vm => MicroVmBackend::new(roots).kill(&rec, signal)?,
    }
    Ok(())
}

/// Deletes a stopped container and everything it has on the host; with
/// `force`, kills a running one first.
pub fn delete(roots: &Roots, id: &str, force: bool) -> Result<()> {
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    if !status.can_delete() && !force {
        bail!(error(format!(
            "cannot delete container {id} that is {}: stop it first or use --force",
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container => crate::namespace::runtime(roots).delete(id)?,
        Isolation::Vm => {
            if let Some(pid) = rec.monitor_pid.filter(|p| crate::record::pid_alive(*p)) {
                let _ = MicroVmBackend::new(roots).kill(&rec, Signal::SIGKILL);
                // The monitor is the caller's child: it exits once the VM
                // is gone; the caller reaps it.
                let deadline = Instant::now() + Duration::from_secs(10);
                while monitor_running(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if monitor_running(pid) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
    release_slot(roots, &rec);
    crate::lifecycle::remove_files(roots, &rec)
}

/// Gives a pod member's slot in its sandbox's VM back.
fn release_slot(roots: &Roots, rec: &Record) {
    if let Some(sb) = &rec.sandbox {
        sandbox::release(&ContainerPaths::new(roots, sb).dir, &rec.id);
    }
}

/// Alive and not yet a zombie.
fn monitor_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Runs `process` in the running container. Returns the PID of a process
/// that is the caller's child and exits with the process's status.
pub fn exec(roots: &Roots, id: &str, process: &Process, io: ProcessIo) -> Result<i32> {
    crate::spec_check::check_process(process, "")
        .map_err(|e| error(format!("invalid process: {e}")))?;
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    if !status.can_exec() {
        bail!(error(format!(
            "cannot exec in a container that is {}",
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container if !crate::keeper::can_fork() => {
            let op = BundleOp::NamespaceExec(Box::new(process.clone()));
            spawn_monitor(BundleJob::new(roots, id, &io, op), io)
        }
        Isolation::Container => crate::namespace::runtime(roots).exec(id, process, io),
        Isolation::Vm => {
            let op = BundleOp::VmExec(Box::new(process.clone()));
            spawn_monitor(BundleJob::new(roots, id, &io, op), io)
        }
    }
}

/// Freezes every process of the container (the whole VM in VM mode).
pub fn pause(roots: &Roots, id: &str) -> Result<()> {
    set_paused(roots, id, true)
}

pub fn resume(roots: &Roots, id: &str) -> Result<()> {
    set_paused(roots, id, false)
}

fn set_paused(roots: &Roots, id: &str, pause: bool) -> Result<()> {
    let rec = record(roots, id)?;
    let status = status_of(roots, &rec);
    let allowed = if pause {
        status.can_pause()
    } else {
        status.can_resume()
    };
    if !allowed {
        bail!(error(format!(
            "cannot {} container {id} that is {}",
            if pause { "pause" } else { "resume" },
            status.runc_name()
        )));
    }
    match rec.isolation {
        Isolation::Container => {
            let mut c = crate::namespace::runtime(roots).container(id)?;
            if pause { c.pause() } else { c.resume() }.map_err(|e| error(format!("{e}")))?;
        }
        Isolation::Vm if rec.sandbox.is_some() => {
            bail!(error(format!(
                "container {id} shares its pod's VM: pause the pod's sandbox container instead"
            )));
        }
        Isolation::Vm => {
            // Stopping the VMM stops the vCPUs: the guest, and with it
            // the container, is frozen as a whole.
            let vmm = vmm_pid(&rec).ok_or_else(|| error(format!("the VM of {id} is gone")))?;
            let sig = if pause {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(vmm), sig)?;
            with_record(roots, id, |r| {
                // Only if it did not stop meanwhile.
                let _ = r.transition(if pause {
                    Status::Paused
                } else {
                    Status::Running
                });
            });
        }
    }
    Ok(())
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
