//! A container in a user namespace of its own (`--userns=auto`) sees the
//! image's files as its own: each read-only layer is mounted *idmapped*
//! (Linux 5.12+, overlayfs over idmapped layers 5.19+), so a file the layer
//! stores as uid 0 is uid `host_id` through the mount, which the
//! container's namespace maps back to 0. Nothing is copied or chowned, and
//! the store's layers stay shared by every container. The writable layer
//! is not idmapped: what the container writes there is stored as the
//! mapped host ids, as with any other file system it writes to.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::LinuxIdMapping;

/// A user namespace whose uid and gid maps are both `map`, held by a
/// descriptor (its short-lived process is gone when this returns).
pub fn user_namespace(map: &LinuxIdMapping) -> Result<OwnedFd> {
    let (mut ready_r, mut ready_w) = pipe()?;
    let (mut done_r, done_w) = pipe()?;
    // SAFETY: the child only unshares, writes and reads a pipe, and exits:
    // all async-signal-safe, as a fork of a threaded process requires.
    match unsafe { nix::unistd::fork() }.context("forking for a user namespace")? {
        nix::unistd::ForkResult::Child => {
            // Our copy of the parent's end would keep the read below from
            // ever seeing the end of the pipe.
            drop(done_w);
            drop(ready_r);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = ready_w.write_all(&[ok as u8]);
            let mut b = [0u8];
            let _ = done_r.read(&mut b);
            // SAFETY: ends the child without running the parent's atexit.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let made = (|| -> Result<OwnedFd> {
                let mut b = [0u8];
                ready_r
                    .read_exact(&mut b)
                    .context("the user namespace's process")?;
                if b[0] != 1 {
                    bail!("this kernel refused a new user namespace (user.max_user_namespaces?)");
                }
                let line = format!("{} {} {}\n", map.container_id(), map.host_id(), map.size());
                for f in ["uid_map", "gid_map"] {
                    fs::write(format!("/proc/{child}/{f}"), &line)
                        .with_context(|| format!("writing the user namespace's {f}"))?;
                }
                let ns = fs::File::open(format!("/proc/{child}/ns/user"))
                    .context("opening the user namespace")?;
                Ok(ns.into())
            })();
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            made
        }
    }
}

/// The name of the file system that holds `path`, for a message.
fn fs_name(path: &Path) -> String {
    use nix::sys::statfs::{statfs, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC};
    match statfs(path).map(|s| s.filesystem_type()) {
        Ok(t) if t == TMPFS_MAGIC => "tmpfs".into(),
        Ok(t) if t == OVERLAYFS_SUPER_MAGIC => "overlayfs".into(),
        Ok(t) if t.0 == 0x0102_1997 => "9p".into(),
        Ok(t) => format!("a file system of type {:#x}", t.0),
        Err(_) => "a file system".into(),
    }
}

fn pipe() -> Result<(fs::File, fs::File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("a pipe")?;
    Ok((fs::File::from(r), fs::File::from(w)))
}

/// Mounts directory `src` at `target` (made if missing) with its owners
/// shifted by the maps of `userns` (from [`user_namespace`]).
pub fn mount_idmapped(src: &Path, target: &Path, userns: &OwnedFd) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let cpath =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).context("a NUL byte in a path");
    let (src_c, target_c) = (cpath(src)?, cpath(target)?);
    // SAFETY: an all-zero mount_attr is valid (no change); we set fields.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_IDMAP;
    attr.userns_fd = userns.as_raw_fd() as u64;
    let tree = match crate::self_exe::detached_with(&src_c, &attr) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => bail!(
            "--userns=auto: {} is on {}, which this kernel cannot idmap ({e}); keep capsa's \
             store (--root) on ext4, xfs or btrfs (tmpfs needs Linux 6.3)",
            src.display(),
            fs_name(src)
        ),
        Err(e) => bail!("an idmapped mount of {}: {e}", src.display()),
    };
    // SAFETY: the tree's descriptor and a NUL-terminated target path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        bail!("attaching the idmapped mount of {}: {e}", src.display());
    }
    Ok(())
}

/// Each of `dirs` idmapped by `map` under `stage` (as `stage/0`, `stage/1`
/// …), for an overlay's lower layers; returns their paths in order.
/// overlayfs takes its own private references to its layers, so the caller
/// detaches them all ([`detach_all`]) once the overlay is mounted.
pub fn stage_layers(
    dirs: &[std::path::PathBuf],
    map: &LinuxIdMapping,
    stage: &Path,
) -> Result<Vec<std::path::PathBuf>> {
    let userns = user_namespace(map)?;
    let mut staged = Vec::with_capacity(dirs.len());
    for (i, d) in dirs.iter().enumerate() {
        let target = stage.join(i.to_string());
        if let Err(e) = mount_idmapped(d, &target, &userns) {
            detach_all(stage);
            return Err(e);
        }
        staged.push(target);
    }
    Ok(staged)
}

/// Detaches every mount [`stage_layers`] made under `stage` and removes
/// the directory; safe to call whatever is left there.
pub fn detach_all(stage: &Path) {
    if let Ok(entries) = fs::read_dir(stage) {
        for e in entries.flatten() {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(e.path());
        }
    }
    let _ = fs::remove_dir(stage);
}

/// Moves this process (single-threaded, not chrooted) into a new user
/// namespace mapped by `map`, as its root: what it makes belongs to the
/// mapped root, and host files outside the mapping are nobody's to it.
pub fn become_root_of(map: &LinuxIdMapping) -> Result<()> {
    let ns = user_namespace(map)?;
    enter_as_root(ns.as_fd()).context("becoming root of the container's user namespace")
}

/// Enters the user namespace `ns` as its root, with no supplementary
/// groups. System calls only: fit to run between fork and exec.
pub fn enter_as_root(ns: std::os::fd::BorrowedFd) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid};
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER)?;
    nix::unistd::setgroups(&[])?;
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setresgid(g, g, g)?;
    nix::unistd::setresuid(u, u, u)
}

/// The mapping of `spec`'s own user namespace (`--userns=auto`: one range
/// from 0), if it makes one.
pub fn own_mapping(spec: &oci_spec::runtime::Spec) -> Option<LinuxIdMapping> {
    let linux = spec.linux().as_ref()?;
    let map = linux.uid_mappings().iter().flatten().next().copied()?;
    (makes_user_namespace(linux) && map.container_id() == 0).then_some(map)
}

/// Whether `linux` makes a user namespace (one with no path to join).
pub fn makes_user_namespace(linux: &oci_spec::runtime::Linux) -> bool {
    linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User && n.path().is_none())
}

/// `path` owned by the mapped root (uid and gid `map`'s host id for 0),
/// so root in the container owns it.
pub fn chown_to_root(path: &Path, map: &LinuxIdMapping) -> Result<()> {
    let id = map.host_id();
    std::os::unix::fs::chown(path, Some(id), Some(id))
        .with_context(|| format!("giving {} to the container's root", path.display()))
}
