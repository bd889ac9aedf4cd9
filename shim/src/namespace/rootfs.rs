//! The container's root filesystem on the host: the image's unpacked layers
//! as overlayfs lower directories, with a per-container upper directory.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// `layers` are lowest first, as the image store returns them.
///
/// `volatile`: for a container whose writable layer is deleted when it
/// stops (`--rm`), mount with overlayfs's `volatile` option (Linux 5.10+):
/// no sync of the upper directory's filesystem, neither for the container's
/// fsync/syncfs calls nor at unmount. Without it the unmount syncs the whole
/// host filesystem that holds the upper directory, which costs milliseconds
/// to tens of milliseconds per container on a busy host. podman does the
/// same for `--rm`, CRI-O for every container. Kernels without the option
/// get an ordinary mount.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<()> {
    if layers.is_empty() {
        bail!("the image has no layers");
    }
    for dir in [upper, work, target] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // overlayfs lists lower directories top first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    // The whole option string must fit in one page.
    if data.len() + ",volatile".len() >= 4096 {
        bail!(
            "the image has too many layers ({}) for one overlay mount",
            layers.len()
        );
    }
    let mount_with = |data: &str| {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data),
        )
    };
    let mounted = if volatile {
        // EINVAL: a kernel older than 5.10 does not know the option.
        match mount_with(&format!("{data},volatile")) {
            Err(Errno::EINVAL) => mount_with(&data),
            other => other,
        }
    } else {
        mount_with(&data)
    };
    mounted.with_context(|| {
        format!(
            "mounting the container's overlay root at {}",
            target.display()
        )
    })?;
    Ok(())
}

/// A read-only view of the layers alone (no writable layer), for reading
/// the image's files on the host.
pub fn mount_lower_only(layers: &[PathBuf], target: &Path) -> Result<()> {
    fs::create_dir_all(target)?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    // overlayfs needs two lower layers when there is no upper one; a single
    // layer is bind-mounted instead.
    let res = if lower.len() == 1 {
        mount(
            Some(layers[0].as_path()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|_| {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
        })
    } else {
        let data = format!("lowerdir={}", lower.join(":"));
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(data.as_str()),
        )
    };
    res.with_context(|| format!("mounting the image read-only at {}", target.display()))
}

/// Unmounts `target` if something is mounted there; a no-op otherwise.
pub fn unmount(target: &Path) -> Result<()> {
    if !is_mountpoint(target) {
        return Ok(());
    }
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // Something still holds it (a process that escaped the pid
        // namespace's teardown): detach it so the path is free.
        Err(Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH)
            .with_context(|| format!("detaching {}", target.display())),
        Err(e) => Err(e).with_context(|| format!("unmounting {}", target.display())),
    }
}

pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
