//! `create`: a container from a bundle, and for VM mode the container
//! directory the microVM backend boots from (the spec, the root filesystem
//! as a disk image, the files an engine binds into a pod member).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

use super::common::{
    check_id, error, invalid_bundle, isolation_of, load_spec, record, release_slot, rootfs_of,
    spawn_monitor, status_of, KERNEL_ANNOTATION,
};
use crate::backend::ProcessIo;
use crate::microvm::nics::NETNS_ANNOTATION;
use crate::microvm::sandbox;
use crate::monitor::bundle::{BundleJob, BundleOp};
use crate::paths::{ContainerPaths, Roots};
use crate::record::Isolation;
use crate::record::{Record, Status};
use capsa_container::is_bind_mount;

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
/// as config.json and the root filesystem: the bundle's root directory
/// itself (shared into the guest with virtio-fs, written in place as runc
/// does), or, for a member of a VM-mode pod, a disk image made from it.
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
    if sandbox.is_some() {
        // A joined container gets no disks or shares besides its slot: its
        // root is copied into that, with the files the engine binds in.
        let disk = paths.dir.join("rootfs.ext4");
        capsa_image::filesystem_image_of(&rootfs, &disk, capsa_image::RootfsFormat::Ext4)
            .with_context(|| format!("making a disk image of {}", rootfs.display()))?;
        let id = paths.dir.file_name().unwrap_or_default().to_string_lossy();
        embed_bound_files(&mut spec, &disk, &id)?;
    } else {
        // Shared with virtio-fs, not copied: creating takes the same time
        // for any size of root, and the guest's writes land in it.
        let rootfs = rootfs
            .canonicalize()
            .with_context(|| format!("resolving {}", rootfs.display()))?;
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
/// A path as one argument of a debugfs script line: quoted (a space would
/// split it), and refused where no quoting helps (a newline would start
/// another command).
fn debugfs_arg(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .filter(|t| !t.contains(['\n', '\r', '"']))
        .ok_or_else(|| {
            error(format!(
                "cannot copy a bound file named {path:?} into the VM"
            ))
        })?;
    Ok(format!("\"{text}\""))
}

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
            script.push_str(&format!("write {} /.capsa-files/{n}\n", debugfs_arg(&src)?));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_file_paths_are_quoted_for_debugfs_and_newlines_refused() {
        assert_eq!(
            debugfs_arg(Path::new("/run/a b/hosts")).unwrap(),
            "\"/run/a b/hosts\""
        );
        for bad in ["/tmp/x\nwrite /etc/shadow /leak", "/tmp/q\"x", "/tmp/r\rx"] {
            assert!(debugfs_arg(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
