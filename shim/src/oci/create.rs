//! `create`: a container from a bundle, and for VM mode the container
//! directory the microVM backend boots from (the spec, and the root
//! directory it shares with virtio-fs; a pod member's goes into its
//! sandbox's pod directory with its bind mounts).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

use super::common::{
    check_id, error, invalid_bundle, isolation_of, leave_pod, load_spec, record, rootfs_of,
    spawn_monitor, status_of, KERNEL_ANNOTATION,
};
use crate::backend::ProcessIo;
use crate::microvm::nics::NETNS_ANNOTATION;
use crate::microvm::sandbox;
use crate::monitor::bundle::{BundleJob, BundleOp};
use crate::paths::{ContainerPaths, Roots};
use crate::record::Isolation;
use crate::record::{Record, Status};

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
            leave_pod(self.roots, &rec);
            let _ = crate::backends::remove_files(self.roots, &rec);
        }
    }
}

/// Creates container `id` from the bundle; its process waits for
/// [`start`](fn@super::start). Returns the PID the caller must reap (see
/// the [module docs](super)).
pub fn create(roots: &Roots, id: &str, bundle: &Path, io: ProcessIo) -> Result<i32> {
    check_id(id)?;
    let bundle =
        fs::canonicalize(bundle).map_err(|e| error(format!("bundle {}: {e}", bundle.display())))?;
    let spec = load_spec(&bundle)?;
    // Before anything touches the host, in either mode.
    crate::spec_check::check(&spec).map_err(invalid_bundle)?;
    let isolation = isolation_of(&spec)?;
    if io.preserve_fds > 0 {
        // A host descriptor cannot be handed to a process in a guest, nor
        // through the monitor a threaded caller needs.
        if isolation == Isolation::Vm {
            bail!(error(
                "--preserve-fds is not available in VM mode (host descriptors cannot reach the guest)"
            ));
        }
        if !crate::monitor::keeper::can_fork() {
            bail!(error("--preserve-fds needs a single-threaded caller"));
        }
    }
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
        Isolation::Container if !crate::monitor::keeper::can_fork() => {
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
            let pod = sandbox
                .as_ref()
                .map(|sb| (sb.as_str(), ContainerPaths::new(roots, sb).dir));
            prepare_vm_bundle(
                &paths,
                &bundle,
                spec,
                pod.as_ref().map(|(sb, dir)| (*sb, dir.as_path())),
            )?;
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
/// as config.json and the root: the bundle's root directory itself,
/// shared into the guest with virtio-fs and written in place as runc does
/// (a pod member's goes into its sandbox's pod directory, with its bind
/// mounts; microvm::sandbox).
fn prepare_vm_bundle(
    paths: &ContainerPaths,
    bundle: &Path,
    mut spec: Spec,
    pod: Option<(&str, &Path)>,
) -> Result<()> {
    let rootfs = rootfs_of(bundle, &spec);
    if !rootfs.is_dir() {
        bail!(error(format!(
            "the root filesystem {} is not a directory",
            rootfs.display()
        )));
    }
    let rootfs = rootfs
        .canonicalize()
        .with_context(|| format!("resolving {}", rootfs.display()))?;
    let sandbox = pod.map(|(sb, _)| sb);
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        capsa_container::rootfs::create_mount_points(&rootfs, &spec)
            .map_err(|e| error(format!("{e:#}")))?;
    }
    if let Some((_, dir)) = pod {
        let id = paths.dir.file_name().unwrap_or_default().to_string_lossy();
        let guest_root = sandbox::join(dir, &id, &rootfs, &mut spec)?;
        fs::write(paths.dir.join(sandbox::DEVICE_FILE), guest_root)?;
    } else {
        // Shared with virtio-fs, not copied: creating takes the same time
        // for any size of root, and the guest's writes land in it.
        std::os::unix::fs::symlink(&rootfs, paths.dir.join(crate::microvm::SHARED_ROOT))?;
    }
    // The guest has namespaces of its own: paths to the host's mean
    // nothing there. A network namespace the engine prepared is kept aside
    // for the VM to join (its NICs stand in for the namespace's
    // interfaces). A pod member's paths to its pod's namespaces name the
    // sandbox container instead, whose namespaces in the guest the agent
    // joins.
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.remove(NETNS_ANNOTATION);
    if sandbox.is_none() {
        let engine_netns = capsa_container::network_namespace(&spec).and_then(|n| n.path().clone());
        if let Some(path) = engine_netns {
            annotations.insert(NETNS_ANNOTATION.into(), path.display().to_string());
        }
    }
    spec.set_annotations(Some(annotations));
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
    crate::hooks::guest_only(&mut spec);
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
