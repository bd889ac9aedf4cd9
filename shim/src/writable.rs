//! A container's writable layer on an ext4 disk of its own, in the
//! container's directory.
//!
//! - VM mode always has one: the overlay's upper layer in the guest. On the
//!   host's disk like container mode's upper directory, so the container's
//!   writes survive `stop`/`start` and a restarted VM, and large writes
//!   (a pip install) cost disk, not the VM's memory.
//! - Container mode has one with `--storage-opt size=…`, which is how the
//!   layer is bounded without project quotas (this host's ext4 has none):
//!   the disk is loop-mounted (nosuid, nodev) at `writable/` while the
//!   root is, and holds the overlay's upper and work directories. The
//!   loop device goes with the mount (mount(8)'s autoclear).
//!
//! With `--storage-opt size`, the disk is that size in both modes, so a
//! container that fills it gets ENOSPC in either.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use capsa_container::rootfs::is_mountpoint;

use crate::paths::ContainerPaths;

/// A VM's disk's apparent size without `--storage-opt size`. The file is
/// sparse: the host's disk holds only what the guest wrote (about 5 MB
/// when new); what the container deletes goes back (the agent mounts it
/// with `discard`, capsa-vmm punches holes).
const VM_DEFAULT_BYTES: u64 = 64 << 30;

/// The smallest `--storage-opt size` (ext4's own needs leave little below).
pub const MIN_BYTES: u64 = 16 << 20;

/// The container's writable disk, whether or not it exists yet.
pub fn path(paths: &ContainerPaths) -> PathBuf {
    paths.dir.join("writable.ext4")
}

/// Makes a VM's empty writable disk unless the container has one (a
/// restart keeps it; `make` made a sized one).
pub fn ensure(paths: &ContainerPaths) -> Result<()> {
    if path(paths).is_file() {
        return Ok(());
    }
    make(paths, VM_DEFAULT_BYTES)
}

/// Makes the container's empty writable disk of `size` bytes. It appears
/// whole or not at all.
pub fn make(paths: &ContainerPaths, size: u64) -> Result<()> {
    let disk = path(paths);
    let tmp = disk.with_extension("ext4.tmp");
    let made = format(&tmp, size).and_then(|()| {
        std::fs::rename(&tmp, &disk).with_context(|| format!("renaming to {}", disk.display()))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

fn format(file: &Path, size: u64) -> Result<()> {
    let f = std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", file.display()))?;
    drop(f);
    // A big journal for big disks (fewer commits under a pip install);
    // mke2fs's own choice for small ones, which it would not fit.
    let journal: &[&str] = if size >= 4 << 30 {
        &["-J", "size=64"]
    } else {
        &[]
    };
    // lazy_itable_init=0 on a file: mke2fs punches holes rather than
    // writing zeros and marks the inode tables zeroed, so the guest kernel
    // has no background zeroing to do (which would fill the sparse file);
    // the journal of a new sparse file reads as zeros already.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "capsa-writable"])
        .args(journal)
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=1"])
        .arg(file)
        .output()
        .context("running mkfs.ext4 (e2fsprogs) for the container's writable layer")?;
    if !out.status.success() {
        bail!(
            "making the container's writable disk failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Container mode: refuses `--storage-opt size` at once on a kernel
/// without loop devices, before anything is made.
pub fn check_loop_devices() -> Result<()> {
    if !Path::new("/dev/loop-control").exists() {
        bail!(crate::CodedError::new(
            crate::EXIT_CAPSA_ERROR,
            "--storage-opt size in container mode loop-mounts the container's writable disk, and this kernel has no loop devices (/dev/loop-control is missing: modprobe loop)".to_string()
        ));
    }
    Ok(())
}

/// Container mode: where the disk is mounted while the root is.
fn mount_point(paths: &ContainerPaths) -> PathBuf {
    paths.dir.join("writable")
}

/// Container mode: the overlay's upper and work directories, on the
/// container's disk if it has one (mounted by [`mount`]).
pub fn upper_and_work(paths: &ContainerPaths) -> (PathBuf, PathBuf) {
    if path(paths).is_file() {
        let mp = mount_point(paths);
        (mp.join("upper"), mp.join("work"))
    } else {
        (paths.upper(), paths.work())
    }
}

/// Container mode: mounts the container's disk, if it has one and it is
/// not mounted yet. Returns whether this call mounted it.
pub fn mount(paths: &ContainerPaths) -> Result<bool> {
    let disk = path(paths);
    let mp = mount_point(paths);
    if !disk.is_file() || is_mountpoint(&mp) {
        return Ok(false);
    }
    std::fs::create_dir_all(&mp).with_context(|| format!("creating {}", mp.display()))?;
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
        .arg(&disk)
        .arg(&mp)
        .output()
        .context("running mount (util-linux) for the container's writable disk")?;
    if !out.status.success() {
        bail!(
            "mounting the container's writable disk failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}

/// Container mode: unmounts the container's disk if it is mounted (its
/// loop device is released with it).
pub fn unmount(paths: &ContainerPaths) -> Result<()> {
    // Most containers have no disk: no mount table to read at their stop.
    if !path(paths).is_file() {
        return Ok(());
    }
    capsa_container::rootfs::unmount(&mount_point(paths))
}

/// Container mode: the disk mounted for as long as the guard lives, for
/// reading a stopped container's layer (commit).
pub struct Mounted<'a>(Option<&'a ContainerPaths>);

impl<'a> Mounted<'a> {
    pub fn new(paths: &'a ContainerPaths) -> Result<Self> {
        Ok(Mounted(mount(paths)?.then_some(paths)))
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if let Some(paths) = self.0 {
            let _ = unmount(paths);
        }
    }
}
