//! The loopback interface of a new network namespace starts down; docker's
//! `--network none` (and runc) give the container a working `lo`, so do we.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};

/// Brings `lo` up in the current thread's network namespace.
pub fn up() -> Result<()> {
    // SAFETY: socket() returns a new descriptor we own, or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a socket to configure lo");
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name fits IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own;
    // the first fills the flags member the second reads.
    let ok = unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) == 0
        }
    };
    if !ok {
        return Err(std::io::Error::last_os_error()).context("bringing lo up");
    }
    Ok(())
}

/// Brings `lo` up in the network namespace of process `pid`, from a thread
/// of its own (setns moves only the calling thread).
pub fn up_in(pid: i32) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("the network namespace of process {pid}"))?;
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the container's network namespace")?;
        up()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread bringing lo up panicked"))?
}
