//! NICs the container has no network on wait out of its sight. A VM that
//! may be connected to more networks while it runs boots with spare NICs
//! (virtio-mmio has no hot-plug); the container shares the guest's network
//! namespace, so the agent keeps the spares in a network namespace of its
//! own, and moves a NIC into the guest's namespace when a network is
//! connected and back when it is disconnected. The container sees what it
//! would see in container mode: an `ethN` appears and goes. Moving a link
//! to another namespace takes it down and drops its addresses and routes.
//!
//! One netlink request per move (RTM_NEWLINK with IFLA_NET_NS_FD), as
//! `ip link set DEV netns` sends it: a few fixed bytes need no netlink
//! library in a static PID 1.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

struct Namespaces {
    /// The guest's own network namespace (the container's).
    main: File,
    /// Where unused NICs wait.
    parked: File,
}

/// The namespaces, made on first use by a thread of the guest's namespace.
fn namespaces() -> Result<&'static Namespaces> {
    static NS: OnceLock<std::result::Result<Namespaces, String>> = OnceLock::new();
    NS.get_or_init(|| {
        let make = || -> Result<Namespaces> {
            let main = File::open("/proc/thread-self/ns/net")
                .context("opening the guest's network namespace")?;
            let parked = std::thread::spawn(|| -> Result<File> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("making a network namespace for unused NICs")?;
                Ok(File::open("/proc/thread-self/ns/net")?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread making the namespace panicked"))??;
            Ok(Namespaces { main, parked })
        };
        make().map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Moves every NIC of the guest's namespace whose MAC is not in `macs`
/// (the loopback aside) out of the container's sight.
pub fn park_others(macs: &[&str]) -> Result<()> {
    let ns = namespaces()?;
    for (name, mac) in interfaces_here()? {
        if name != "lo" && !listed(macs, &mac) {
            move_link(&name, &ns.parked).with_context(|| format!("setting {name} aside"))?;
        }
    }
    Ok(())
}

/// Brings the waiting NICs whose MAC is in `macs` into the guest's
/// namespace (with the names they had).
pub fn unpark(macs: &[&str]) -> Result<()> {
    let ns = namespaces()?;
    let macs: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
    let parked = ns.parked.try_clone()?;
    let main = ns.main.try_clone()?;
    // A network namespace is per thread: this one enters the parking one.
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&parked, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the namespace of the unused NICs")?;
        let macs: Vec<&str> = macs.iter().map(String::as_str).collect();
        for (name, mac) in interfaces_here()? {
            if listed(&macs, &mac) {
                move_link(&name, &main).with_context(|| format!("bringing {name} back"))?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread moving NICs panicked"))?
}

fn listed(macs: &[&str], mac: &str) -> bool {
    macs.iter().any(|m| m.eq_ignore_ascii_case(mac))
}

/// The interfaces of the calling thread's network namespace, with MACs.
fn interfaces_here() -> Result<Vec<(String, String)>> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an inet socket");
    }
    // SAFETY: socket(2) just returned this descriptor; we own it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry (or
    // null), freed below with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(std::io::Error::last_os_error()).context("listing interfaces");
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push(CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out.into_iter()
        .map(|name| {
            let mut req = capsa_container::netif::ifreq(&name)?;
            // SAFETY: SIOCGIFHWADDR fills the ifreq we own.
            if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("reading {name}'s MAC"));
            }
            // SAFETY: the kernel filled the hwaddr member.
            let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
            let mac = data[..6]
                .iter()
                .map(|b| format!("{:02x}", *b as u8))
                .collect::<Vec<_>>()
                .join(":");
            Ok((name, mac))
        })
        .collect()
}

/// Moves link `name` of the calling thread's namespace into `to`.
fn move_link(name: &str, to: &File) -> Result<()> {
    let cname = CString::new(name)?;
    // SAFETY: a NUL-terminated name; 0 means there is no such link.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        bail!("no interface {name}");
    }
    // nlmsghdr (16) + ifinfomsg (16) + rtattr IFLA_NET_NS_FD (4 + u32).
    let mut msg = Vec::with_capacity(40);
    msg.extend(40u32.to_ne_bytes());
    msg.extend(libc::RTM_NEWLINK.to_ne_bytes());
    msg.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes()); // sequence
    msg.extend(0u32.to_ne_bytes()); // to the kernel
    msg.extend([libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
    msg.extend((index as i32).to_ne_bytes());
    msg.extend(0u32.to_ne_bytes()); // flags
    msg.extend(0u32.to_ne_bytes()); // change
    msg.extend(8u16.to_ne_bytes());
    msg.extend(libc::IFLA_NET_NS_FD.to_ne_bytes());
    msg.extend((to.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a netlink socket");
    }
    // SAFETY: socket(2) just returned this descriptor; we own it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data (all zeroes: the kernel, no
    // groups); send and recv use buffers we own with their lengths.
    let reply = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let sent = libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        );
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sending to netlink");
        }
        let mut buf = [0u8; 512];
        let n = libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("reading netlink's answer");
        }
        buf[..n as usize].to_vec()
    };
    // The answer is an NLMSG_ERROR whose error is 0 on success.
    if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        bail!("netlink gave an unexpected answer");
    }
    let errno = -i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if errno != 0 {
        return Err(std::io::Error::from_raw_os_error(errno)).context("moving the link");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) {
        let st = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    }

    /// In a network namespace of its own (a thread's, which `ip` inherits):
    /// a NIC set aside leaves the namespace and comes back by its MAC.
    #[test]
    fn nics_leave_and_come_back_by_mac() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces)"
        );
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            sh("ip link add eth0 address 02:00:00:00:00:10 type veth peer name eth1 address 02:00:00:00:00:11");
            let names = || -> Vec<String> {
                let mut n: Vec<String> = interfaces_here().unwrap().into_iter().map(|(n, _)| n).collect();
                n.sort();
                n
            };
            assert_eq!(names(), ["eth0", "eth1", "lo"]);
            assert!(interfaces_here()
                .unwrap()
                .contains(&("eth1".into(), "02:00:00:00:00:11".into())));
            park_others(&["02:00:00:00:00:10"]).unwrap();
            assert_eq!(names(), ["eth0", "lo"]);
            unpark(&["02:00:00:00:00:11", "02:00:00:00:00:10"]).unwrap();
            assert_eq!(names(), ["eth0", "eth1", "lo"]);
            assert!(move_link("nosuch0", &namespaces().unwrap().parked).is_err());
        })
        .join()
        .unwrap();
    }
}
