//! A microVM joins a network namespace, as Kata's "tcfilter" model does:
//! whoever prepared the namespace (capsa's networks, podman, a CNI), for
//! each Ethernet interface in it capsa makes a tap beside it and joins the
//! two, both ways, at their ingress hooks. Kata does it with tc mirred;
//! capsa with nftables' netdev `fwd`, which also drops in the same table
//! (many kernels build tc's drop action and flower classifier as modules
//! or not at all). The guest's NIC takes the interface's MAC, addresses,
//! MTU and routes, so the network sees the same endpoint it set up, and
//! needs no extra host routing.
//!
//! virtio-mmio has no hot-plug, so a VM that may be connected to more
//! networks while it runs boots with spare NICs: their taps are down and
//! joined to nothing until an interface with the spare's MAC appears in the
//! namespace (`network connect` makes it with that MAC), and parked again
//! when it goes ([`rejoin`]).
//!
//! The tap is the VM's alone: on its ingress only frames with the NIC's own
//! source MAC and IPv4 address (and ARP for that address) pass; everything
//! else is dropped (a guest cannot spoof another endpoint). The tap is not
//! persistent: it vanishes with the VMM's descriptor, so a VMM that dies
//! leaves no tap behind.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// What a VM's NIC takes from the namespace's interface it stands in for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// The namespace's interface (`eth0`).
    pub interface: String,
    pub mac: String,
    pub mtu: u16,
    /// `10.89.0.2/24`
    pub addresses: Vec<String>,
}

/// One interface of the namespace, and the tap the VM's NIC is on.
#[derive(Debug)]
pub struct Nic {
    /// The tap's descriptor (IFF_VNET_HDR, 12-byte header, no offloads until
    /// the VMM's driver takes some),
    /// for the VMM to inherit.
    pub tap: OwnedFd,
    pub tap_name: String,
    pub iface: Iface,
}

/// An IPv4 route of the namespace the guest must have too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `A.B.C.D/N`
    pub destination: String,
    pub gateway: Option<String>,
    /// Index into the NIC list.
    pub nic: usize,
}

/// The taps are named after the NIC's slot, its position among the VM's
/// NICs: `capsa_tap0`, … (at most 15 bytes, the kernel's limit).
const TAP_PREFIX: &str = "capsa_tap";

pub fn tap_name(slot: usize) -> String {
    format!("{TAP_PREFIX}{slot}")
}

/// Makes a tap for each Ethernet interface of the namespace at `netns` and
/// joins them; returns the NICs and the namespace's routes.
pub fn join(netns: &Path) -> Result<(Vec<Nic>, Vec<Route>)> {
    refuse_own_namespace(netns)?;
    let mut nics: Vec<Nic> = Vec::new();
    for (slot, iface) in ifaces(netns)?.into_iter().enumerate() {
        let tap_name = tap_name(slot);
        // On an error, the taps made so far go with their descriptors.
        let tap = open_tap_in(netns, &tap_name)?;
        redirect(netns, &tap_name, &iface)
            .with_context(|| format!("joining {tap_name} to {}", iface.interface))?;
        nics.push(Nic {
            tap,
            tap_name,
            iface,
        });
    }
    let names: Vec<&str> = nics.iter().map(|n| n.iface.interface.as_str()).collect();
    let routes = routes(netns, &names)?;
    Ok((nics, routes))
}

/// A spare NIC for slot `slot`, for a network connected while the VM runs
/// (virtio-mmio has no hot-plug, so the VM boots with it): its tap, down
/// and joined to nothing (everything the guest sends on it is dropped),
/// and the MAC its interface will take. Returns the tap and the MAC.
pub fn spare(netns: &Path, slot: usize) -> Result<(OwnedFd, String)> {
    refuse_own_namespace(netns)?;
    let name = tap_name(slot);
    let tap = open_tap_in(netns, &name)?;
    park(netns, &name)?;
    Ok((tap, random_mac()?))
}

/// After the namespace's interfaces changed (`network connect` or
/// `disconnect`): each slot's tap is joined to the interface that has the
/// slot's MAC (`slot_macs[slot]`, which the interface was made with), or
/// parked when there is none. Returns the joined slots' interfaces, in
/// slot order, and the routes over them (`nic` indexes that list).
pub fn rejoin(netns: &Path, slot_macs: &[String]) -> Result<(Vec<Iface>, Vec<Route>)> {
    refuse_own_namespace(netns)?;
    let mut ifaces = ifaces(netns)?;
    let mut joined = Vec::new();
    for (slot, mac) in slot_macs.iter().enumerate() {
        let tap = tap_name(slot);
        match ifaces.iter().position(|i| i.mac.eq_ignore_ascii_case(mac)) {
            Some(i) => {
                let iface = ifaces.remove(i);
                redirect(netns, &tap, &iface)
                    .with_context(|| format!("joining {tap} to {}", iface.interface))?;
                joined.push(iface);
            }
            None => park(netns, &tap)?,
        }
    }
    let names: Vec<&str> = joined.iter().map(|i| i.interface.as_str()).collect();
    let routes = routes(netns, &names)?;
    Ok((joined, routes))
}

/// The MACs of the namespace's Ethernet interfaces (the VM's taps aside).
pub fn macs(netns: &Path) -> Result<Vec<String>> {
    Ok(ifaces(netns)?.into_iter().map(|i| i.mac).collect())
}

/// The namespace's Ethernet interfaces (the VM's own taps aside), checked.
fn ifaces(netns: &Path) -> Result<Vec<Iface>> {
    let links: Vec<Link> = serde_json::from_slice(&ip_json(netns, &["addr", "show"])?)
        .context("reading `ip -j addr` of the container's network namespace")?;
    links
        .into_iter()
        .filter(|l| l.link_type == "ether" && !l.ifname.starts_with(TAP_PREFIX))
        .map(|l| {
            // Names and addresses go into an nft ruleset: the namespace may
            // be an engine's, so take nothing in it on trust.
            check_ifname(&l.ifname)?;
            check_mac(&l.address)?;
            let addresses = l
                .addr_info
                .iter()
                .filter(|a| a.family == "inet")
                .map(|a| match a.local.parse::<std::net::Ipv4Addr>() {
                    Ok(ip) if a.prefixlen <= 32 => Ok(format!("{ip}/{}", a.prefixlen)),
                    _ => bail!("{}: bad address {}/{}", l.ifname, a.local, a.prefixlen),
                })
                .collect::<Result<_>>()?;
            Ok(Iface {
                interface: l.ifname,
                mac: l.address,
                mtu: u16::try_from(l.mtu).unwrap_or(u16::MAX),
                addresses,
            })
        })
        .collect()
}

/// The namespace's IPv4 routes over the interfaces `names` (a route's
/// `nic` is its interface's index there), the kernel's own aside.
fn routes(netns: &Path, names: &[&str]) -> Result<Vec<Route>> {
    let routes: Vec<RouteJson> =
        serde_json::from_slice(&ip_json(netns, &["-4", "route", "show", "table", "main"])?)
            .context("reading `ip -j route` of the container's network namespace")?;
    Ok(routes
        .into_iter()
        .filter(|r| r.protocol.as_deref() != Some("kernel"))
        .filter_map(|r| {
            let nic = names.iter().position(|n| Some(*n) == r.dev.as_deref())?;
            let destination = match r.dst.as_str() {
                "default" => "0.0.0.0/0".to_string(),
                d if d.contains('/') => d.to_string(),
                d => format!("{d}/32"),
            };
            Some(Route {
                destination,
                gateway: r.gateway,
                nic,
            })
        })
        .collect())
}

/// A random, locally administered, unicast MAC (as netavark makes them).
fn random_mac() -> Result<String> {
    let mut b = crate::random_bytes::<6>().context("reading /dev/urandom")?;
    b[0] = (b[0] & 0xfe) | 0x02;
    Ok(b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Joining takes every frame the namespace's interfaces receive: never do
/// it to the namespace capsa itself runs in (the host's, for a spec that
/// names /proc/1/ns/net), which would cut the host off its network. That
/// is `--network host`, which a VM cannot have.
fn refuse_own_namespace(netns: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .with_context(|| format!("reading the network namespace {}", p.display()))
    };
    let target = id(netns)?;
    for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if id(Path::new(own)).ok() == Some(target) {
            bail!(
                "{} is the host's network namespace: a VM cannot share it \
                 (that is --network host, container mode only)",
                netns.display()
            );
        }
    }
    Ok(())
}

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        bail!(
            "interface name {name:?} in the container's network namespace is not one capsa accepts"
        );
    }
    Ok(())
}

fn check_mac(mac: &str) -> Result<()> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("{mac:?} is not a MAC address");
    }
    Ok(())
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
}

#[derive(Deserialize)]
struct RouteJson {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
}

fn ip_json(netns: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j"])
        .args(args)
        .output()
        .context("running nsenter ip")?;
    if !out.status.success() {
        bail!(
            "ip -j {} in {}: {}",
            args.join(" "),
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs `tool args` in the namespace.
fn in_netns(netns: &Path, tool: &str, args: &[&str]) -> Result<()> {
    let mut all = vec![format!("--net={}", netns.display()), tool.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    crate::run_tool("nsenter", &all)
}

/// Joins the tap and the interface with an nftables netdev table: what the
/// interface receives is forwarded out of the tap (to the guest), and what
/// the guest sends is forwarded out of the interface only if it carries the
/// NIC's own MAC and IPv4 address (ARP included); anything else is dropped.
/// The table lives in the namespace and goes with it; one the tap had
/// before is replaced in the same transaction.
fn redirect(netns: &Path, tap: &str, iface: &Iface) -> Result<()> {
    let mtu = iface.mtu.to_string();
    in_netns(netns, "ip", &["link", "set", tap, "mtu", &mtu, "up"])?;
    run_nft(netns, &ruleset(tap, Some(iface)))
}

/// A tap joined to nothing: down, and whatever the guest sends on it is
/// dropped at its ingress.
fn park(netns: &Path, tap: &str) -> Result<()> {
    in_netns(netns, "ip", &["link", "set", tap, "down"])?;
    run_nft(netns, &ruleset(tap, None))
}

fn ruleset(tap: &str, iface: Option<&Iface>) -> String {
    let mut lines = vec![
        // Declared, then deleted, then made: replaces any table of the tap.
        format!("table netdev {tap} {{}}"),
        format!("delete table netdev {tap}"),
        format!("table netdev {tap} {{"),
        "  chain from_vm {".into(),
        format!("    type filter hook ingress device \"{tap}\" priority 0; policy drop;"),
    ];
    let Some(Iface {
        interface: eth,
        mac,
        addresses,
        ..
    }) = iface
    else {
        lines.extend(["  }".into(), "}".into()]);
        return lines.join("\n") + "\n";
    };
    for a in addresses {
        let ip = a.split('/').next().unwrap_or_default();
        lines.push(format!(
            "    ether saddr {mac} ip saddr {ip} fwd to \"{eth}\""
        ));
        lines.push(format!(
            "    ether saddr {mac} arp saddr ether {mac} arp saddr ip {ip} fwd to \"{eth}\""
        ));
    }
    lines.extend([
        "  }".into(),
        "  chain to_vm {".into(),
        format!("    type filter hook ingress device \"{eth}\" priority 0; policy accept;"),
        format!("    fwd to \"{tap}\""),
        "  }".into(),
        "}".into(),
    ]);
    lines.join("\n") + "\n"
}

fn run_nft(netns: &Path, rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (Debian package nftables)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Opens a new tap named `name` in the namespace at `netns`. The calling
/// thread stays where it is: a short-lived thread enters the namespace
/// (a network namespace is per thread) and opens the tap there.
fn open_tap_in(netns: &Path, name: &str) -> Result<OwnedFd> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let name = name.to_string();
    std::thread::spawn(move || -> Result<OwnedFd> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the container's network namespace")?;
        open_tap(&name)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread opening the tap panicked"))?
}

fn open_tap(name: &str) -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let fd = tun.as_raw_fd();
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= libc::IFNAMSIZ {
        bail!("tap name {name:?} is too long");
    }
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    let hdr: libc::c_int = 12;
    // SAFETY: the tun ioctls with the argument types they take (an ifreq,
    // an int, an unsigned long), on the descriptor opened above.
    unsafe {
        if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating the tap {name}"));
        }
        if libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr) < 0 {
            return Err(std::io::Error::last_os_error()).context("TUNSETVNETHDRSZ");
        }
        if libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error()).context("TUNSETOFFLOAD");
        }
    }
    Ok(OwnedFd::from(tun))
}
