//! Network interfaces by the classic ioctls, shared by the host's container
//! mode and the guest agent. The loopback interface of a new network
//! namespace starts down; docker's `--network none` (and runc) give the
//! container a working `lo`, so do we.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

/// An `ifreq` naming interface `name`, the rest zero.
pub fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    Ok(req)
}

/// Brings interface `name` up in the current thread's network namespace.
pub fn up(name: &str) -> Result<()> {
    // SAFETY: socket() returns a new descriptor we own, or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an inet socket");
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own;
    // the first fills the flags member the second reads.
    let ok = unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) == 0
        }
    };
    if !ok {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bringing {name} up"));
    }
    Ok(())
}

/// Brings `lo` up in the network namespace of process `pid`.
pub fn lo_up_in(pid: i32) -> Result<()> {
    crate::namespaces::in_namespace_of(pid, nix::sched::CloneFlags::CLONE_NEWNET, || up("lo"))
}
