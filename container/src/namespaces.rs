//! Work done in a created container's namespaces before its process runs,
//! from a short-lived thread: a namespace is entered per thread, so the
//! caller stays where it is.

use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

/// Whether process `pid` is in another user namespace than this process.
pub fn in_own_userns(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    let theirs = ino(&format!("/proc/{pid}/ns/user"));
    theirs.is_some() && theirs != ino("/proc/self/ns/user")
}

/// Runs `f` in a thread that has entered process `pid`'s network
/// (`CLONE_NEWNET`) or mount (`CLONE_NEWNS`) namespace.
pub fn in_namespace_of<T: Send>(
    pid: i32,
    kind: CloneFlags,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let name = ns_name(kind)?;
    in_namespace_at(Path::new(&format!("/proc/{pid}/ns/{name}")), kind, f)
}

/// Runs `f` in a thread that has entered the network or mount namespace
/// at `path` (a pinned one, or /proc/PID/ns/…): a process it forks starts
/// there too. For a mount namespace the thread first leaves our file
/// system context: only a thread that shares it with no other may enter
/// one.
pub fn in_namespace_at<T: Send>(
    path: &Path,
    kind: CloneFlags,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let name = ns_name(kind)?;
    let ns = std::fs::File::open(path)
        .with_context(|| format!("the {name} namespace {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            if kind == CloneFlags::CLONE_NEWNS {
                nix::sched::unshare(CloneFlags::CLONE_FS)
                    .context("a file system context of our own")?;
            }
            nix::sched::setns(&ns, kind)
                .with_context(|| format!("entering the container's {name} namespace"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in the container's {name} namespace panicked"))?
    })
}

fn ns_name(kind: CloneFlags) -> Result<&'static str> {
    match kind {
        CloneFlags::CLONE_NEWNET => Ok("net"),
        CloneFlags::CLONE_NEWNS => Ok("mnt"),
        _ => bail!("entering namespace {kind:?} is not supported"),
    }
}
