//! Work done in a created container's namespaces before its process runs,
//! from a short-lived thread: a namespace is entered per thread, so the
//! caller stays where it is.

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

/// Runs `f` in a thread that has entered process `pid`'s network
/// (`CLONE_NEWNET`) or mount (`CLONE_NEWNS`) namespace. For a mount
/// namespace the thread first leaves our file system context: only a
/// thread that shares it with no other may enter one.
pub fn in_namespace_of<T: Send + 'static>(
    pid: i32,
    kind: CloneFlags,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = match kind {
        CloneFlags::CLONE_NEWNET => "net",
        CloneFlags::CLONE_NEWNS => "mnt",
        _ => bail!("entering namespace {kind:?} is not supported"),
    };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/{name}"))
        .with_context(|| format!("the {name} namespace of process {pid}"))?;
    std::thread::spawn(move || -> Result<T> {
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
}
