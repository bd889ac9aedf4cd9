//! The container's root filesystem on the host: the image's unpacked layers
//! as overlayfs lower directories, with a per-container upper directory.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::LinuxIdMapping;

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
///
/// `userns`: the container's user namespace mapping (`--userns=auto`): the
/// layers are idmapped by it (see [`crate::idmap`]) and the upper
/// directory belongs to the container's root.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
    userns: Option<&LinuxIdMapping>,
) -> Result<()> {
    if layers.is_empty() {
        bail!("the image has no layers");
    }
    for dir in [upper, work, target] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let Some(map) = userns else {
        return overlay(layers, upper, work, target, volatile);
    };
    crate::idmap::chown_to_root(upper, map)?;
    // Beside the target; overlayfs keeps its own references to them.
    let stage = target.with_extension("idmapped");
    let staged = crate::idmap::stage_layers(layers, map, &stage)?;
    let made = overlay(&staged, upper, work, target, volatile);
    crate::idmap::detach_all(&stage);
    made
}

fn overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<()> {
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

/// Readies the root filesystem of the bundle at `bundle` for libcontainer,
/// as runc does before it starts the container's process:
///
/// - the process's working directory is created if it is missing (owned by
///   root, mode 0755), so `-w /new/dir` works as with docker;
/// - a bind mount of a file onto a path that is a symlink in the image
///   (an image's `/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf`
///   or `/etc/hosts -> /run/hosts`) gets the file the link points to, so
///   the mount lands on it.
///
/// Every path is resolved inside the root filesystem, as if it were `/`:
/// an absolute or `..` symlink never leads out of it onto the host.
pub fn prepare_bundle(bundle: &Path) -> Result<()> {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .with_context(|| format!("reading {}", bundle.join("config.json").display()))?;
    let Some(root_path) = spec.root().as_ref().map(|r| r.path()) else {
        return Ok(());
    };
    let rootfs = bundle.join(root_path);
    let root = pathrs::Root::open(&rootfs)
        .with_context(|| format!("opening the root filesystem {}", rootfs.display()))?;
    for m in spec.mounts().iter().flatten() {
        if crate::is_bind_mount(m) && bind_of_a_file(m) {
            create_link_target(&root, m.destination())?;
        }
    }
    if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd()) {
        create_workdir(&root, cwd)?;
    }
    Ok(())
}

/// The directories the spec mounts on, made in `rootfs` where missing,
/// resolved inside it as [`prepare_bundle`] resolves paths. For a
/// read-only root that is shared read-only into a VM: the guest's runtime
/// cannot make them there, as runc makes them before it remounts the root
/// read-only.
pub fn create_mount_points(rootfs: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    let root = pathrs::Root::open(rootfs)
        .with_context(|| format!("opening the root filesystem {}", rootfs.display()))?;
    for m in spec.mounts().iter().flatten() {
        if crate::is_bind_mount(m) && bind_of_a_file(m) {
            create_link_target(&root, m.destination())?;
        } else {
            mkdir_all(&root, m.destination())
                .with_context(|| format!("making the mount point {}", m.destination().display()))?;
        }
    }
    Ok(())
}

/// Moves this process into a mount namespace of its own, where nothing
/// it mounts propagates back to the host's. For a single-threaded child.
pub fn private_mount_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("a mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the mounts private")
}

/// The spec's bind mounts (volumes, `-v` directories, /etc/hosts…) on
/// `rootfs`, as they are when the container runs, in a mount namespace
/// this process makes for itself: they go when it exits, and nothing else
/// sees them. For a copy into or out of a stopped container, which
/// reaches its volumes as docker's does. Each destination is resolved
/// inside the root (an image's symlink never leads the mount out of it);
/// one the container never made is skipped, as a copy cannot reach it.
/// Call in a single-threaded child process.
pub fn mount_binds_privately(rootfs: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    private_mount_namespace()?;
    let root = pathrs::Root::open(rootfs)
        .with_context(|| format!("opening the root filesystem {}", rootfs.display()))?;
    // The mount point as the root resolves it, through its descriptor.
    let at = |dest: &Path| -> Option<(pathrs::Handle, String)> {
        let h = root.resolve(dest).ok()?;
        let path = format!("/proc/self/fd/{}", h.as_fd().as_raw_fd());
        Some((h, path))
    };
    for m in spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| crate::is_bind_mount(m))
    {
        let (Some(source), dest) = (m.source(), m.destination()) else {
            continue;
        };
        let Some((_handle, target)) = at(dest) else {
            continue;
        };
        mount(
            Some(source),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("mounting {} at {}", source.display(), dest.display()))?;
        if m.options().iter().flatten().any(|o| o == "ro") {
            // Resolved again: the descriptor names the directory under
            // the new mount, the path now reaches the mount itself.
            let (_handle, target) = at(dest).context("the mount just made is gone")?;
            mount(
                None::<&str>,
                target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .with_context(|| format!("making {} read-only", dest.display()))?;
        }
    }
    Ok(())
}

fn bind_of_a_file(m: &oci_spec::runtime::Mount) -> bool {
    m.source()
        .as_ref()
        .and_then(|s| fs::metadata(s).ok())
        .is_some_and(|meta| !meta.is_dir())
}

/// Refuses a working directory through one of /proc's links to what a
/// process holds (`/proc/self/fd/N`, `/proc/1/cwd`, …): it would name a
/// directory outside the container (CVE-2024-21626's way out), which
/// libcontainer refuses too, but only with "failed to unix syscall".
pub fn check_workdir(cwd: &Path) -> Result<()> {
    let mut parts = cwd
        .components()
        .skip_while(|c| *c == std::path::Component::RootDir);
    let in_proc = parts.next().is_some_and(|c| c.as_os_str() == "proc");
    if in_proc
        && parts.any(|c| {
            ["fd", "cwd", "root", "map_files"].contains(&c.as_os_str().to_str().unwrap_or(""))
        })
    {
        bail!(
            "the working directory {} goes through /proc's links to what a process holds, \
             which lead outside the container; choose a directory of the container's filesystem (-w)",
            cwd.display()
        );
    }
    Ok(())
}

/// The process's working directory `cwd`, created in `root` if missing.
fn create_workdir(root: &pathrs::Root, cwd: &Path) -> Result<()> {
    if cwd.as_os_str().is_empty() || cwd == Path::new("/") {
        return Ok(());
    }
    check_workdir(cwd)?;
    if let Err(e) = mkdir_all(root, cwd) {
        let why = match first_non_directory(root, cwd) {
            Some(p) if p == cwd => "it exists and is not a directory".to_string(),
            Some(p) => format!("{} is not a directory", p.display()),
            None => e.to_string(),
        };
        bail!(
            "the working directory {} cannot be created in the container: {why}; \
             choose another working directory (-w)",
            cwd.display()
        )
    }
    Ok(())
}

/// `mkdir -p path` (mode 0755) inside `root`, also through symlinks whose
/// targets do not exist yet (docker's rule for a working directory):
/// a link's target is taken inside `root`, and made.
fn mkdir_all(root: &pathrs::Root, path: &Path) -> std::result::Result<(), pathrs::error::Error> {
    use std::os::unix::fs::PermissionsExt;
    let mut path = path.to_path_buf();
    // Linux's own limit on the links one lookup follows (MAXSYMLINKS).
    for _ in 0..40 {
        match root.mkdir_all(&path, &fs::Permissions::from_mode(0o755)) {
            Ok(_) => return Ok(()),
            Err(e) => match through_dangling_link(root, &path) {
                Some(p) => path = p,
                None => return Err(e),
            },
        }
    }
    root.mkdir_all(&path, &fs::Permissions::from_mode(0o755))
        .map(|_| ())
}

/// If a component of `path` is a symlink in `root` whose target does not
/// exist, `path` with that link replaced by its target.
fn through_dangling_link(root: &pathrs::Root, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let comps: Vec<Component> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect();
    let mut prefix = PathBuf::from("/");
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        if root.resolve(&prefix).is_ok() {
            continue;
        }
        // The first component that does not resolve: a link to nowhere,
        // or simply missing (then there is nothing to follow).
        let target = root.readlink(&prefix).ok()?;
        // A relative target is relative to the link's directory; an
        // absolute one replaces it (and is resolved inside `root`).
        let mut new = prefix.parent()?.join(target);
        new.extend(&comps[i + 1..]);
        return Some(new);
    }
    None
}

/// The first prefix of `path` that exists in `root` and is not a directory.
fn first_non_directory(root: &pathrs::Root, path: &Path) -> Option<PathBuf> {
    let mut prefix = PathBuf::from("/");
    for c in path
        .components()
        .skip_while(|c| c == &std::path::Component::RootDir)
    {
        prefix.push(c);
        let handle = root.resolve(&prefix).ok()?;
        let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
            &handle,
        )))
        .ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Some(prefix);
        }
    }
    None
}

/// If `dest` is a symlink in `root` (through any chain of links) to a path
/// that does not exist, creates that path as an empty file (mode 0644, its
/// missing parents 0755), so that a bind mount onto `dest` lands on it.
fn create_link_target(root: &pathrs::Root, dest: &Path) -> Result<()> {
    use nix::fcntl::{openat, readlinkat, OFlag};
    use nix::sys::stat::{fstatat, Mode};
    use std::os::fd::{AsFd, AsRawFd};

    let mut path = Path::new("/").join(dest);
    // Linux's own limit on the links one lookup follows (MAXSYMLINKS).
    for _ in 0..40 {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(());
        };
        let dir = match root.resolve(parent) {
            Ok(d) => d,
            // libcontainer creates a missing parent, and says so if it can't.
            Err(_) => return Ok(()),
        };
        let dirfd = dir.as_fd().as_raw_fd();
        match fstatat(Some(dirfd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                let target = PathBuf::from(
                    readlinkat(Some(dirfd), name)
                        .with_context(|| format!("reading the symlink {}", path.display()))?,
                );
                // Relative to the link's directory; absolute ones to `root`.
                path = parent.join(target);
                if path.parent().is_none() || path.file_name().is_none() {
                    return Ok(());
                }
                if let Some(p) = path.parent() {
                    mkdir_all(root, p).map_err(|e| {
                            anyhow::anyhow!(
                                "{} is a symlink to {}, whose directory cannot be created in the container: {e}",
                                dest.display(),
                                path.display()
                            )
                        })?;
                }
            }
            Ok(_) => return Ok(()),
            Err(Errno::ENOENT) if path != Path::new("/").join(dest) => {
                let fd = openat(
                    Some(dirfd),
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_WRONLY
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .with_context(|| {
                    format!(
                        "{} is a symlink to {}, which cannot be created in the container",
                        dest.display(),
                        path.display()
                    )
                })?;
                let _ = nix::unistd::close(fd);
                return Ok(());
            }
            // Not there at all, or unreadable: libcontainer handles it.
            Err(_) => return Ok(()),
        }
    }
    bail!(
        "{} is a chain of more than 40 symlinks in the image",
        dest.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn link_targets_and_workdirs_are_made_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        let outside = format!("/nonexistent-capsa-{}", std::process::id());
        symlink(format!("{outside}/resolv.conf"), r.join("etc/resolv.conf")).unwrap();
        symlink("../../../run/hosts", r.join("etc/hosts")).unwrap();
        symlink(&outside, r.join("escape")).unwrap();
        let root = pathrs::Root::open(r).unwrap();

        create_link_target(&root, Path::new("/etc/resolv.conf")).unwrap();
        assert!(r.join(&outside[1..]).join("resolv.conf").is_file());
        create_link_target(&root, Path::new("/etc/hosts")).unwrap();
        assert!(r.join("run/hosts").is_file());
        // A plain file or a missing path is left to libcontainer.
        create_link_target(&root, Path::new("/etc/passwd")).unwrap();
        create_link_target(&root, Path::new("/etc/hostname")).unwrap();
        assert!(!r.join("etc/hostname").exists());

        create_workdir(&root, Path::new("/escape/w")).unwrap();
        assert!(r.join(&outside[1..]).join("w").is_dir());
        create_workdir(&root, Path::new("/a/b/c")).unwrap();
        let mode = fs::metadata(r.join("a/b/c")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o755
        );
        assert!(!Path::new(&outside).exists());

        let e = create_workdir(&root, Path::new("/etc/passwd/x")).unwrap_err();
        assert!(
            format!("{e}").contains("/etc/passwd is not a directory"),
            "{e}"
        );
        let e = create_workdir(&root, Path::new("/etc/passwd")).unwrap_err();
        assert!(format!("{e}").contains("not a directory"), "{e}");
        for magic in [
            "/proc/self/fd/3",
            "/proc/1/cwd",
            "/proc/thread-self/root/x",
            "/proc/1/task/1/fd/9",
        ] {
            let e = create_workdir(&root, Path::new(magic)).unwrap_err();
            assert!(
                format!("{e}").contains("lead outside the container"),
                "{magic}: {e}"
            );
            assert!(!r.join(&magic[1..]).exists(), "{magic} made");
        }
        check_workdir(Path::new("/proc/sys")).unwrap();
        check_workdir(Path::new("/srv/fd")).unwrap();
    }
}
