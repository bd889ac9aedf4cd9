//! Container networks, docker's model on podman's tools.
//!
//! Each networked container gets a network namespace of its own, pinned at
//! `/run/netns/capsa-<id>` from when it starts until its network is torn
//! down (netavark's teardown needs it). In that namespace netavark makes
//! one interface per network (a veth into the network's bridge), with an
//! address CNI's host-local leased, NAT for egress and DNAT for published
//! ports; aardvark-dns answers the names on user networks. capsa writes no
//! netlink, firewall, IPAM or DNS code of its own: only what joins these
//! tools together (docs/networking.md).
//!
//! [`attach`] makes it all and records what it made in one file before it
//! makes it, so [`detach`] can undo any part of it, on every path: `rm`,
//! `--rm`, the cleanup after a crashed monitor.

mod firewall;
pub mod ipam;
mod membership;
pub mod netavark;
mod netns;
pub mod ports;
pub mod store;
pub mod vm;

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use membership::{connect, disconnect};
pub use netns::netns_path;
pub use ports::{PortSpec, Protocol};
pub use store::{Network, NewNetwork, Store, DEFAULT_NETWORK};

/// Where networks live: definitions (persistent) and runtime state.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Network definitions, one JSON file each.
    pub networks: PathBuf,
    /// Leases, netavark's and aardvark-dns's files, the lock: gone on reboot
    /// with everything they describe.
    pub run: PathBuf,
}

impl Paths {
    /// The network state of the network namespace this process runs in.
    /// It belongs to the namespace whose bridges, firewall chains and
    /// addresses it describes, not to a `--root`: every root that runs
    /// containers here shares one set of definitions, leases and one lock,
    /// as podman's /etc/containers/networks serves every `--root`. The
    /// host's lives in `lib` (definitions) and `run`; another namespace's
    /// (`ip netns exec`, a test's) lives under `run`, as short-lived as the
    /// namespace, in a directory named by its inode and cookie: a freed
    /// namespace's inode comes back, its cookie never does.
    pub fn of_this_netns(lib: &Path, run: &Path) -> Result<Paths> {
        let ns = netns::this_netns()?;
        if ns.host {
            return Ok(Paths {
                networks: lib.join("networks"),
                run: run.join("net"),
            });
        }
        let all = run.join("netns");
        let dir = all.join(format!("{}-{}", ns.ino, ns.cookie));
        if !dir.exists() {
            // An earlier namespace with this inode is gone, and its state with it.
            let earlier = format!("{}-", ns.ino);
            for e in fs::read_dir(&all).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&earlier) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Paths {
            networks: dir.join("networks"),
            run: dir.join("net"),
        })
    }

    pub fn store(&self) -> Store {
        Store::new(&self.networks)
    }

    fn ipam(&self) -> PathBuf {
        self.run.join("ipam")
    }

    /// IDs of the containers, of any `--root`, with an address on `network`.
    pub fn leaseholders(&self, network: &str) -> Vec<String> {
        ipam::holders(&self.ipam(), network)
    }

    /// netavark's config directory, where it keeps aardvark-dns's files:
    /// one aardvark-dns serves one namespace's bridges, as `run` is.
    fn netavark_dir(&self) -> PathBuf {
        self.run.join("netavark")
    }

    /// Serialises every change to networks and their firewall rules:
    /// netavark calls that create one bridge must not race.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>> {
        fs::create_dir_all(&self.run)
            .with_context(|| format!("creating {}", self.run.display()))?;
        let path = self.run.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", path.display()))
    }
}

/// What a container asks of the network (`capsa run`'s flags).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// The networks to join, in order: eth0, eth1, …
    pub endpoints: Vec<Endpoint>,
    /// `-p`, and `-P`'s ports.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// `--dns`: where names that are not containers' are asked.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// `-P`: publish the image's exposed ports too (resolved into `ports`
    /// when the container is created).
    #[serde(default)]
    pub publish_all: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Endpoint {
    pub network: String,
    /// `--network-alias`: more names for the container on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// `--mac-address`
    #[serde(default)]
    pub mac: Option<String>,
}

/// What [`attach`] made, saved beside the container so that [`detach`]
/// undoes exactly that.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Attachment {
    pub netns: PathBuf,
    netavark_dir: PathBuf,
    /// What netavark was (or was about to be) asked to set up.
    options: netavark::Options,
    /// Address leases taken, by network name and interface.
    leases: Vec<(String, String)>,
    /// The published ports, with the host ports chosen.
    pub ports: Vec<PortSpec>,
    pub interfaces: Vec<Interface>,
    /// Where the container's resolver asks (aardvark-dns on user networks).
    pub dns_servers: Vec<Ipv4Addr>,
    pub dns_search: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Interface {
    pub network: String,
    pub name: String,
    pub address: ipnet::Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub mac: String,
}

impl Attachment {
    pub fn load(file: &Path) -> Result<Option<Attachment>> {
        match fs::read(file) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("reading {}", file.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    fn save(&self, file: &Path) -> Result<()> {
        let tmp = file.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))
    }

    /// Takes in what netavark set up on `network`: interfaces, addresses,
    /// resolvers.
    fn record_status(&mut self, network: &str, st: &netavark::Status) {
        for (ifname, iface) in &st.interfaces {
            for addr in &iface.subnets {
                self.interfaces.push(Interface {
                    network: network.to_string(),
                    name: ifname.clone(),
                    address: addr.ipnet,
                    gateway: addr.gateway,
                    mac: iface.mac_address.clone(),
                });
            }
        }
        self.interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        for s in &st.dns_server_ips {
            if !self.dns_servers.contains(s) {
                self.dns_servers.push(*s);
            }
        }
        for d in &st.dns_search_domains {
            if !self.dns_search.contains(d) {
                self.dns_search.push(d.clone());
            }
        }
    }

    /// The container's address on its first network.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.interfaces.first().map(|i| i.address.addr())
    }

    /// The host's address on the container's first network: where
    /// `--add-host NAME:host-gateway` points.
    pub fn primary_gateway(&self) -> Option<Ipv4Addr> {
        self.interfaces.first().and_then(|i| i.gateway)
    }

    /// The container's /etc/resolv.conf: aardvark-dns on user networks;
    /// else, as docker's default bridge, the host's resolvers (without
    /// loopback ones, which the container cannot reach) or `--dns`.
    pub fn resolv_conf(&self, host: &str, dns: &[Ipv4Addr]) -> String {
        let mut out = String::new();
        if !self.dns_search.is_empty() {
            out += &format!("search {}\n", self.dns_search.join(" "));
        } else if let Some(search) = host.lines().find(|l| l.starts_with("search ")) {
            out += search;
            out += "\n";
        }
        let servers: Vec<String> = if !self.dns_servers.is_empty() {
            self.dns_servers.iter().map(|s| s.to_string()).collect()
        } else if !dns.is_empty() {
            dns.iter().map(|s| s.to_string()).collect()
        } else {
            host.lines()
                .filter_map(|l| l.strip_prefix("nameserver "))
                .map(str::trim)
                .filter(|s| {
                    s.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| !ip.is_loopback())
                })
                .map(String::from)
                .collect()
        };
        for s in servers {
            out += &format!("nameserver {s}\n");
        }
        out
    }
}

/// Sets up the network of container `id` (named `name`) as `req` asks:
/// holds its host ports, pins its network namespace, leases its addresses
/// and has netavark build the rest. Returns what was made and the held
/// port sockets (the caller keeps them open while the ports are published).
/// `state` is the file that records what was made; on failure nothing is
/// left behind.
pub fn attach(
    paths: &Paths,
    id: &str,
    name: &str,
    req: &Request,
    state: &Path,
) -> Result<(Attachment, Vec<OwnedFd>)> {
    let mut att = Attachment {
        netns: netns_path(id),
        netavark_dir: paths.netavark_dir(),
        ports: req.ports.clone(),
        ..Default::default()
    };
    // A taken port fails the run before anything is made.
    let held = ports::hold(&mut att.ports)?;
    let _lock = paths.lock()?;
    let store = paths.store();
    let networks = req
        .endpoints
        .iter()
        .map(|e| store.get(&e.network))
        .collect::<Result<Vec<_>>>()?;
    att.save(state)?;
    match build(paths, id, name, req, &networks, &mut att, state) {
        Ok(()) => Ok((att, held)),
        Err(e) => {
            if let Err(undo) = undo(paths, &att) {
                tracing::warn!("undoing a failed network setup of {id}: {undo:#}");
            }
            let _ = fs::remove_file(state);
            Err(e)
        }
    }
}

fn build(
    paths: &Paths,
    id: &str,
    name: &str,
    req: &Request,
    networks: &[Network],
    att: &mut Attachment,
    state: &Path,
) -> Result<()> {
    netns::add(id)?;
    let mut options = netavark::Options {
        container_id: id.into(),
        container_name: name.into(),
        dns_servers: req.dns.clone(),
        ..Default::default()
    };
    for (i, (ep, net)) in req.endpoints.iter().zip(networks).enumerate() {
        let ifname = format!("eth{i}");
        let ip = ipam::allocate(&paths.ipam(), net, id, &ifname, ep.ip)?;
        att.leases.push((net.name.clone(), ifname.clone()));
        att.save(state)?;
        let mut aliases = ep.aliases.clone();
        if net.dns_enabled {
            // Every container answers to its name and short ID on a user network.
            aliases.extend([name.to_string(), id[..12].to_string()]);
        }
        options.networks.insert(
            net.name.clone(),
            netavark::PerNetwork {
                interface_name: ifname,
                static_ips: vec![ip],
                static_mac: ep.mac.clone(),
                aliases,
            },
        );
        options.network_info.insert(net.name.clone(), net.clone());
    }
    options.port_mappings = att
        .ports
        .iter()
        .map(|p| netavark::PortMapping {
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            range: p.range,
            protocol: p.protocol,
        })
        .collect();
    att.options = options;
    att.save(state)?;
    fs::create_dir_all(&att.netavark_dir)?;
    let status = netavark::setup(&att.netavark_dir, &att.netns, &att.options)?;
    for net in networks {
        let Some(st) = status.get(&net.name) else {
            bail!("netavark set up no interface on network {}", net.name);
        };
        att.record_status(&net.name, st);
        firewall::guard_localhost(&net.network_interface)?;
        if net.name == DEFAULT_NETWORK {
            // Only a cost if it fails: the container works either way.
            if let Err(e) = keep_up(&net.network_interface) {
                tracing::warn!("keeping the default bridge up: {e:#}");
            }
        }
    }
    att.save(state)
}

/// The default network's bridge stays up once made, as docker0 does:
/// netavark removes a bridge and its firewall rules (about 50 `iptables`
/// calls) with its last port, and makes them again for the next container,
/// which tripled the cost of a short `run`. A tap no process opens,
/// `<bridge>-keep`, is a port that never leaves. It is joined to the bridge
/// every time (a no-op when it is): a bridge deleted by hand and made again
/// by netavark would otherwise have no holder. Called under the lock.
fn keep_up(bridge: &str) -> Result<()> {
    let holder = format!("{bridge}-keep");
    let made = !netns::has_link(&holder);
    if made {
        run_tool("ip", &["tuntap", "add", "dev", &holder, "mode", "tap"])?;
    }
    let joined = run_tool("ip", &["link", "set", "dev", &holder, "master", bridge]);
    if joined.is_err() && made {
        let _ = run_tool("ip", &["link", "delete", "dev", &holder]);
    }
    joined
}

/// Undoes what `state` records, if it exists: the network teardown, the
/// leases, the pinned namespace. Safe to call more than once; every step
/// runs even if one before it failed.
pub fn detach(paths: &Paths, state: &Path) -> Result<()> {
    if !state.exists() {
        return Ok(());
    }
    // Read under the lock: the monitor and `rm -f` may both get here.
    let _lock = paths.lock()?;
    let Some(att) = Attachment::load(state)? else {
        return Ok(());
    };
    let result = undo(paths, &att);
    fs::remove_file(state).with_context(|| format!("removing {}", state.display()))?;
    result
}

fn undo(paths: &Paths, att: &Attachment) -> Result<()> {
    let mut first_err = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!("{e:#}");
            first_err.get_or_insert(e);
        }
    };
    let here = paths.netavark_dir();
    if !att.options.networks.is_empty() {
        if here != att.netavark_dir {
            // Its rules live in another network namespace: deleting the
            // container's namespace below still removes its interfaces.
            note(Err(anyhow::anyhow!(
                "the network of {} was set up from another network namespace: its firewall rules stay there",
                att.options.container_id
            )));
        } else if att.netns.exists() {
            note(netavark::teardown(
                &att.netavark_dir,
                &att.netns,
                &att.options,
            ));
        }
    }
    // The leases are where the network was set up: with a `rm` from
    // another namespace than the `run`'s, that namespace's state, if it is
    // still there.
    let ipam = att
        .netavark_dir
        .parent()
        .map_or_else(|| paths.ipam(), |run| run.join("ipam"));
    for (net, ifname) in att.leases.iter().filter(|_| ipam.exists()) {
        if let Some(info) = att.options.network_info.get(net) {
            note(ipam::release(
                &ipam,
                info,
                &att.options.container_id,
                ifname,
            ));
        }
    }
    note(netns::delete(&att.netns));
    for (name, info) in &att.options.network_info {
        note(firewall::drop_guard_if_unused(&info.network_interface));
        firewall::drop_port_chain_if_empty(name);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs a tool (`ip`, `iptables`) and fails with its own message.
fn run_tool(tool: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fails with the package to install when a tool is missing.
fn require(tool: impl AsRef<Path>) -> Result<()> {
    let tool = tool.as_ref();
    if !tool.exists() {
        bail!(
            "{} is missing: capsa's networks need Debian's netavark, aardvark-dns and \
             containernetworking-plugins (scripts/setup.sh installs them)",
            tool.display()
        );
    }
    Ok(())
}

/// `N` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b)
}

/// A new ID of 64 hex digits, as docker's and podman's: containers,
/// networks, anonymous volumes.
pub fn random_id() -> std::io::Result<String> {
    Ok(hex::encode(random_bytes::<32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's network set up from one namespace and torn down from
    /// another: its lease goes from the first one's state.
    #[test]
    fn leases_are_released_where_they_were_taken() {
        let dir = tempfile::tempdir().unwrap();
        let paths = |name: &str| Paths {
            networks: dir.path().join(name).join("networks"),
            run: dir.path().join(name).join("net"),
        };
        let (there, here) = (paths("there"), paths("here"));
        let net = there
            .store()
            .create(&store::NewNetwork {
                name: "n1".into(),
                subnet: Some("10.89.41.0/24".into()),
                ..Default::default()
            })
            .unwrap();
        let id = "c".repeat(64);
        ipam::allocate(&there.ipam(), &net, &id, "eth0", None).unwrap();
        assert_eq!(there.leaseholders("n1"), std::slice::from_ref(&id));
        let att = Attachment {
            netns: dir.path().join("no-such-netns"),
            netavark_dir: there.netavark_dir(),
            options: netavark::Options {
                container_id: id.clone(),
                network_info: [("n1".to_string(), net)].into(),
                ..Default::default()
            },
            leases: vec![("n1".into(), "eth0".into())],
            ..Default::default()
        };
        let state = dir.path().join("network.json");
        att.save(&state).unwrap();
        detach(&here, &state).unwrap();
        assert!(there.leaseholders("n1").is_empty());
        assert!(!state.exists());
    }
}
