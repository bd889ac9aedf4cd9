//! Each networked container's network namespace, pinned by iproute2's
//! `ip netns` (a bind mount under /run/netns, as podman's are), so it
//! outlives the container's processes until its network is torn down, and
//! `ip netns` lists it.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

const NETNS_DIR: &str = "/run/netns";

fn name(id: &str) -> String {
    format!("capsa-{id}")
}

/// Where the network namespace of container `id` is pinned.
pub fn netns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name(id))
}

/// Makes and pins the namespace, with its loopback up.
pub(crate) fn add(id: &str) -> Result<()> {
    ip(&["netns", "add", &name(id)])?;
    ip(&["-n", &name(id), "link", "set", "lo", "up"])
}

/// Unpins the namespace at `path` (no error if it is not there). The
/// kernel frees it, and with it the container's ends of its veths, once
/// no process is left in it.
pub(crate) fn delete(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a network namespace name")?;
    ip(&["netns", "delete", name])
}

fn ip(args: &[&str]) -> Result<()> {
    crate::run_tool("ip", args)
}

/// The network namespace this process runs in.
pub(crate) struct ThisNetns {
    /// The host's: PID 1's, or where PID 1's cannot be read (a sandbox
    /// hides it), any namespace not named in /run/netns.
    pub host: bool,
    /// Unique among live namespaces, reused after one is freed.
    pub ino: u64,
    /// Never reused while the machine runs.
    pub cookie: u64,
}

/// `SO_NETNS_COOKIE` (Linux 5.14; asm-generic's number, x86's too).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Whether `ino` is one of the namespaces `ip netns` (and CNI, which
/// keeps its namespaces there too) has named.
fn named_in_run_netns(ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
}

/// Whether this network namespace has a link named `name`. Not
/// /sys/class/net: that lists the namespace sysfs was mounted in, which
/// `nsenter --net` (how capsa runs inside another namespace) leaves as is.
pub(crate) fn has_link(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

pub(crate) fn this_netns() -> Result<ThisNetns> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| {
        std::fs::metadata(p)
            .map(|m| m.ino())
            .with_context(|| format!("reading {p}"))
    };
    let own = ino("/proc/self/ns/net")?;
    let host = match ino("/proc/1/ns/net") {
        Ok(init) => init == own,
        Err(_) => !named_in_run_netns(own),
    };
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to read the network namespace's cookie")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, a u64
    // that lives across the call; the descriptor is ours and open.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("reading the network namespace's cookie (Linux 5.14 or later)");
    }
    Ok(ThisNetns {
        host,
        ino: own,
        cookie,
    })
}
