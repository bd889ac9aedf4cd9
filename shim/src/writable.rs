//! A VM-mode container's writable layer: its own ext4 disk in the
//! container's directory, the overlay's upper layer in the guest. On the
//! host's disk like container mode's upper directory, so the container's
//! writes survive `stop`/`start` and a restarted VM, and large writes
//! (a pip install) cost disk, not the VM's memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths::ContainerPaths;

/// The disk's apparent size. The file is sparse: the host's disk holds
/// only what the guest wrote (about 5 MB when new); what the container
/// deletes goes back (the agent mounts it with `discard`, capsa-vmm
/// punches holes).
const SIZE_BYTES: u64 = 64 << 30;

/// The container's writable disk, whether or not it exists yet.
pub fn path(paths: &ContainerPaths) -> PathBuf {
    paths.dir.join("writable.ext4")
}

/// Makes the empty writable disk unless the container has one (a restart
/// keeps it). It appears whole or not at all.
pub fn ensure(paths: &ContainerPaths) -> Result<()> {
    let disk = path(paths);
    if disk.is_file() {
        return Ok(());
    }
    let tmp = disk.with_extension("ext4.tmp");
    let made = format(&tmp).and_then(|()| {
        std::fs::rename(&tmp, &disk).with_context(|| format!("renaming to {}", disk.display()))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

fn format(file: &Path) -> Result<()> {
    let f = std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
    f.set_len(SIZE_BYTES)
        .with_context(|| format!("sizing {}", file.display()))?;
    drop(f);
    // lazy_itable_init=0 on a file: mke2fs punches holes rather than
    // writing zeros and marks the inode tables zeroed, so the guest kernel
    // has no background zeroing to do (which would fill the sparse file);
    // the journal of a new sparse file reads as zeros already.
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-J",
            "size=64",
            "-L",
            "capsa-writable",
        ])
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
