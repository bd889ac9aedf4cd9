//! Pods in VM mode: the containers of one sandbox share the sandbox's VM.
//!
//! containerd's CRI plugin marks the pod's first container (the "pause"
//! container) `io.kubernetes.cri.container-type=sandbox` and the others
//! `container`, with `io.kubernetes.cri.sandbox-id` naming the sandbox.
//! The sandbox's VM boots with one more virtio-fs share, the pod directory
//! (`<sandbox's dir>/pod`, the guest's `/run/capsa/pod`), as Kata does. A
//! container that joins the pod gets its root directory and each of its
//! bind mounts bind-mounted under `pod/<id>/` on the host; the pod
//! directory is a shared mount and the share's virtiofsd sits in a slave
//! copy of this mount namespace, so they appear in the guest at once, live
//! and writable as with runc. No VMM support for hot-plugging is needed,
//! and nothing is copied.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capsa_container::is_bind_mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Memory of a sandbox VM in MiB (default [`SANDBOX_MEM_MIB`]): the pod's
/// containers share it.
pub const VM_MEMORY_ANNOTATION: &str = "io.capsa.vm-memory-mib";
pub const SANDBOX_MEM_MIB: u64 = 1024;

/// The virtio-fs tag of a sandbox VM's pod directory.
pub const POD_TAG: &str = "capsa-pod";
/// Where the guest mounts the pod directory.
pub const GUEST_POD_DIR: &str = "/run/capsa/pod";
/// In a joined container's directory: the guest path of its root.
pub const DEVICE_FILE: &str = "rootfs.device";

/// The value of annotation `key` of the spec, if set.
pub(crate) fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The bundle is a pod's sandbox container.
pub fn is_sandbox(spec: &Spec) -> bool {
    annotation(spec, CONTAINER_TYPE) == Some("sandbox")
}

/// The sandbox a pod's (non-sandbox) container belongs to.
pub fn sandbox_of(spec: &Spec) -> Option<String> {
    match annotation(spec, CONTAINER_TYPE) {
        Some("container") => annotation(spec, SANDBOX_ID).map(str::to_string),
        _ => None,
    }
}

/// Memory of a sandbox VM.
pub fn memory_mib(spec: &Spec) -> Result<u64> {
    match annotation(spec, VM_MEMORY_ANNOTATION) {
        None => Ok(SANDBOX_MEM_MIB),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 128 => Ok(n),
            _ => bail!("annotation {VM_MEMORY_ANNOTATION}={v}: give a number of MiB, at least 128"),
        },
    }
}

/// The pod directory of the sandbox whose container directory is `dir`.
pub fn pod_dir(dir: &Path) -> PathBuf {
    dir.join("pod")
}

fn bind(src: &Path, dst: &Path) -> Result<()> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {} on {}", src.display(), dst.display()))
}

/// Makes the sandbox's pod directory: a bind mount of itself, shared, so
/// that what is mounted under it later reaches the share's virtiofsd.
pub fn make_pod_dir(dir: &Path) -> Result<PathBuf> {
    let pod = pod_dir(dir);
    fs::create_dir_all(&pod).with_context(|| format!("creating {}", pod.display()))?;
    bind(&pod, &pod)?;
    mount(
        None::<&str>,
        &pod,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .with_context(|| format!("making {} a shared mount", pod.display()))?;
    Ok(pod)
}

/// Unmounts (lazily) every mount at or below `dir`, deepest first.
pub fn detach_under(dir: &Path) -> Result<()> {
    let mut points: Vec<PathBuf> = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .context("reading this process's mounts")?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", p.display())),
        }
    }
    Ok(())
}

/// Joins container `id` to the pod whose sandbox directory is `dir`: its
/// root directory `rootfs` and its bind mounts' sources are bind-mounted
/// under `pod/<id>/` and the spec's mounts point at their guest paths (an
/// engine's /dev/shm becomes the container's own tmpfs). Returns the guest
/// path of its root.
pub fn join(dir: &Path, id: &str, rootfs: &Path, spec: &mut Spec) -> Result<String> {
    let pod = pod_dir(dir);
    if !pod.is_dir() {
        bail!("the sandbox's VM has no pod directory (was it created as a pod sandbox?)");
    }
    let mine = pod.join(id);
    let guest = format!("{GUEST_POD_DIR}/{id}");
    let result = (|| {
        fs::create_dir_all(mine.join("rootfs"))?;
        bind(rootfs, &mine.join("rootfs"))?;
        let Some(mut mounts) = spec.mounts().clone() else {
            return Ok(());
        };
        for (n, m) in mounts.iter_mut().enumerate() {
            let Some(src) = m.source().clone().filter(|_| is_bind_mount(m)) else {
                continue;
            };
            if m.destination() == Path::new("/dev/shm") {
                super::shm_as_tmpfs(m);
                continue;
            }
            let at = mine.join(format!("m{n}"));
            if src.is_dir() {
                fs::create_dir(&at)?;
            } else {
                fs::File::create(&at)?;
            }
            bind(&src, &at)?;
            m.set_source(Some(PathBuf::from(format!("{guest}/m{n}"))));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    })();
    if let Err(e) = result {
        leave(dir, id);
        return Err(e);
    }
    Ok(format!("{guest}/rootfs"))
}

/// Takes container `id`'s mounts out of the pod directory of the sandbox
/// whose directory is `dir`, then its (now empty) directory there.
pub fn leave(dir: &Path, id: &str) {
    let mine = pod_dir(dir).join(id);
    if !mine.exists() {
        return;
    }
    if detach_under(&mine).is_ok() {
        // Only placeholders are left: a directory that still held a mount
        // is not emptied through it (remove_dir refuses non-empty ones).
        if let Ok(rd) = fs::read_dir(&mine) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = fs::remove_dir(&p).or_else(|_| fs::remove_file(&p));
            }
        }
        let _ = fs::remove_dir(&mine);
    }
}
