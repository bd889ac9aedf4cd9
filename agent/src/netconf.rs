//! The guest's network: gives each NIC the addresses, MTU and routes of the
//! host-side interface it stands in for ([`capsa_proto::GuestNetwork`]).
//!
//! With the classic interface ioctls (SIOCSIFADDR, SIOCADDRT), as busybox's
//! ifconfig and route do: a few fixed calls on one interface need no netlink
//! library in a static PID 1.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use capsa_container::netif;
use capsa_proto::GuestNetwork;

/// Configures the guest's NICs and routes. Each NIC is found by its MAC
/// (the VMM gave it the one the host side has).
pub fn configure(net: &GuestNetwork) -> Result<()> {
    let sock = Socket::new()?;
    let mut names = Vec::new();
    for iface in &net.interfaces {
        let name = by_mac(Path::new("/sys/class/net"), &iface.mac)?;
        sock.set_mtu(&name, iface.mtu)
            .with_context(|| format!("setting {name}'s MTU to {}", iface.mtu))?;
        for (i, a) in iface.addresses.iter().enumerate() {
            let (addr, prefix) = parse_cidr(a)?;
            // Further addresses go on aliases (eth0:1), as ifconfig adds them.
            let label = if i == 0 {
                name.clone()
            } else {
                format!("{name}:{i}")
            };
            sock.set_address(&label, addr, prefix)
                .with_context(|| format!("giving {label} the address {a}"))?;
        }
        netif::up(&name)?;
        names.push((name, iface));
    }
    for r in &net.routes {
        let Some((dev, iface)) = names.get(r.interface) else {
            bail!(
                "a route names interface {}, which the guest lacks",
                r.interface
            );
        };
        let (dst, prefix) = parse_cidr(&r.destination)?;
        let gw = r
            .gateway
            .as_deref()
            .map(|g| {
                g.parse::<Ipv4Addr>()
                    .with_context(|| format!("gateway {g:?}"))
            })
            .transpose()?;
        // A gateway outside every subnet of the NIC (as /32 CNIs hand out)
        // is on-link: reach it through the device first.
        if let Some(g) = gw {
            let on_subnet = iface
                .addresses
                .iter()
                .any(|a| parse_cidr(a).is_ok_and(|(addr, p)| same_subnet(addr, g, p)));
            if !on_subnet {
                sock.add_route(dev, g, 32, None)
                    .with_context(|| format!("adding the route to gateway {g} on {dev}"))?;
            }
        }
        sock.add_route(dev, dst, prefix, gw)
            .with_context(|| format!("adding the route {} on {dev}", r.destination))?;
    }
    Ok(())
}

/// The interface whose MAC is `mac` (case does not matter).
fn by_mac(sys_class_net: &Path, mac: &str) -> Result<String> {
    for e in fs::read_dir(sys_class_net).context("listing the guest's interfaces")? {
        let e = e?;
        let addr = fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(mac) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("the guest has no network interface with MAC {mac}")
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, p) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
    let addr = a.parse().with_context(|| format!("{s:?}: bad address"))?;
    let prefix = p
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 32)
        .with_context(|| format!("{s:?}: bad prefix length"))?;
    Ok((addr, prefix))
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let m = u32::from(netmask(prefix));
    u32::from(a) & m == u32::from(b) & m
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // the kernel reads a sockaddr as the family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The kernel's `struct rtentry` (linux/route.h), the argument of
/// SIOCADDRT; glibc's libc crate does not define it.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: u16 = 0x1;
const RTF_GATEWAY: u16 = 0x2;
const RTF_HOST: u16 = 0x4;

struct Socket(OwnedFd);

impl Socket {
    fn new() -> Result<Socket> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening an inet socket");
        }
        // SAFETY: socket(2) just returned this descriptor; we own it.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
        // SAFETY: each caller passes the argument type its request takes
        // (ifreq or rtentry), owned and initialised here.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg as *mut T) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_mtu(&self, name: &str, mtu: u16) -> Result<()> {
        let mut req = netif::ifreq(name)?;
        req.ifr_ifru.ifru_mtu = i32::from(mtu);
        Ok(self.ioctl(libc::SIOCSIFMTU, &mut req)?)
    }

    fn set_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut req = netif::ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut req)?;
        let mut req = netif::ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr(netmask(prefix));
        Ok(self.ioctl(libc::SIOCSIFNETMASK, &mut req)?)
    }

    fn add_route(&self, dev: &str, dst: Ipv4Addr, prefix: u8, gw: Option<Ipv4Addr>) -> Result<()> {
        let mut name = std::ffi::CString::new(dev)?.into_bytes_with_nul();
        let mut flags = RTF_UP;
        if gw.is_some() {
            flags |= RTF_GATEWAY;
        }
        if prefix == 32 {
            flags |= RTF_HOST;
        }
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(dst),
            rt_gateway: sockaddr(gw.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            rt_genmask: sockaddr(netmask(prefix)),
            rt_flags: flags,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: name.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match self.ioctl(libc::SIOCADDRT, &mut rt) {
            // The kernel made it already (a subnet's own route).
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => Ok(r?),
        }
    }
}

/// Where the container's /etc/hosts and /etc/resolv.conf from the host are
/// written in the guest, and the spec pointed at them; the container
/// shares the guest's network namespace (the VM is its sandbox).
pub fn fit_spec(net: &GuestNetwork, spec: &mut oci_spec::runtime::Spec, etc: &Path) -> Result<()> {
    use oci_spec::runtime::LinuxNamespaceType;
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces().clone() {
            let ns = ns
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Network)
                .collect();
            linux.set_namespaces(Some(ns));
        }
    }
    take_net_sysctls(spec, Path::new("/proc/sys"))?;
    let files = [
        ("/etc/hosts", net.hosts.as_deref()),
        ("/etc/resolv.conf", net.resolv_conf.as_deref()),
    ];
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (dest, content) in files {
        let Some(content) = content else { continue };
        fs::create_dir_all(etc).with_context(|| format!("mkdir {}", etc.display()))?;
        let src = etc.join(dest.trim_start_matches("/etc/"));
        fs::write(&src, content).with_context(|| format!("writing {}", src.display()))?;
        for m in mounts
            .iter_mut()
            .filter(|m| m.destination() == Path::new(dest))
        {
            m.set_source(Some(src.clone()));
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Rewrites the container's /etc/hosts and /etc/resolv.conf that
/// [`fit_spec`] wrote in `etc`, in place (the container's bind mounts see
/// the same files), after its networks changed.
pub fn rewrite_etc(net: &GuestNetwork, etc: &Path) -> Result<()> {
    for (name, content) in [
        ("hosts", net.hosts.as_deref()),
        ("resolv.conf", net.resolv_conf.as_deref()),
    ] {
        let file = etc.join(name);
        if let (Some(content), true) = (content, file.exists()) {
            fs::write(&file, content).with_context(|| format!("writing {}", file.display()))?;
        }
    }
    Ok(())
}

/// Sets the spec's `net.*` sysctls on the guest's namespace (the one the
/// container now shares) and takes them out of the spec: the runtime
/// refuses network sysctls for a container without a network namespace of
/// its own, but in the guest that namespace is the container's alone.
fn take_net_sysctls(spec: &mut oci_spec::runtime::Spec, proc_sys: &Path) -> Result<()> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let Some(mut sysctls) = linux.sysctl().clone() else {
        return Ok(());
    };
    let net: Vec<String> = sysctls
        .keys()
        .filter(|k| k.starts_with("net."))
        .cloned()
        .collect();
    for key in net {
        let value = sysctls.remove(&key).unwrap_or_default();
        // A name is dot-separated words; one that could climb out of
        // /proc/sys (a '/' or an empty word) is refused, not written.
        if key.split('.').any(|w| w.is_empty() || w.contains('/')) {
            bail!("sysctl {key:?} is not a valid name");
        }
        let path = proc_sys.join(key.replace('.', "/"));
        fs::write(&path, &value).with_context(|| format!("setting sysctl {key}={value}"))?;
    }
    linux.set_sysctl(Some(sysctls));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_masks_and_subnets() {
        assert_eq!(
            parse_cidr("10.89.0.2/24").unwrap(),
            ("10.89.0.2".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.89.0.2").is_err());
        assert!(parse_cidr("10.89.0.2/33").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        let a = Ipv4Addr::new(10, 89, 0, 2);
        assert!(same_subnet(a, Ipv4Addr::new(10, 89, 0, 1), 24));
        assert!(!same_subnet(a, Ipv4Addr::new(10, 89, 1, 1), 24));
        assert!(same_subnet(a, Ipv4Addr::new(1, 2, 3, 4), 0));
    }

    #[test]
    fn nics_are_found_by_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "02:42:0a:59:00:02")] {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(by_mac(dir.path(), "02:42:0A:59:00:02").unwrap(), "eth0");
        let e = by_mac(dir.path(), "02:00:00:00:00:09").unwrap_err();
        assert!(
            e.to_string().contains("no network interface with MAC"),
            "{e}"
        );
    }

    #[test]
    fn the_spec_shares_the_guest_netns_and_gets_the_hosts_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts"},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/x/resolv.conf"}
            ],
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/run/netns/capsa-abc"}
            ]}
        }))
        .unwrap();
        let net = GuestNetwork {
            hosts: Some("10.89.0.2 web\n".into()),
            resolv_conf: Some("nameserver 10.89.0.1\n".into()),
            ..Default::default()
        };
        fit_spec(&net, &mut spec, dir.path()).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns.len(), 1, "{ns:?}");
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(dir.path().join("hosts").as_path())
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("resolv.conf")).unwrap(),
            "nameserver 10.89.0.1\n"
        );
    }
    #[test]
    fn net_sysctls_are_set_on_the_guest_and_leave_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        let spec_with = |sysctl: serde_json::Value| -> oci_spec::runtime::Spec {
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "linux": {"sysctl": sysctl}
            }))
            .unwrap()
        };
        let mut spec = spec_with(serde_json::json!({
            "net.ipv4.ping_group_range": "0 0",
            "kernel.msgmax": "8192"
        }));
        take_net_sysctls(&mut spec, dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("net/ipv4/ping_group_range")).unwrap(),
            "0 0"
        );
        let left = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["kernel.msgmax"]);

        let mut bad = spec_with(serde_json::json!({"net..ipv4/../../x": "1"}));
        let e = take_net_sysctls(&mut bad, dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a valid name"), "{e}");
    }
}
