//! The networks a user made (`capsa network create`) and the default
//! `bridge`, one JSON file each, in netavark's own schema so that a
//! definition goes to netavark unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The network `capsa run -p` joins by default, as docker's `bridge`.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Names that are modes, not networks.
const RESERVED: [&str; 2] = ["none", "host"];
/// Where new networks' subnets come from: /24s of 10.89.0.0/16, skipping
/// any that a route of this network namespace, another capsa network or a
/// podman network already uses.
const POOL: &str = "10.89.0.0/16";
const PODMAN_NETWORKS: &str = "/etc/containers/networks";

/// A network: what netavark's `network_info` takes, plus when it was made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub driver: String,
    /// The bridge's name on the host.
    pub network_interface: String,
    pub subnets: Vec<Subnet>,
    pub ipv6_enabled: bool,
    /// No route out: containers reach only each other.
    pub internal: bool,
    /// aardvark-dns answers container names and aliases.
    pub dns_enabled: bool,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub ipam_options: BTreeMap<String, String>,
    #[serde(default)]
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Subnet {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Network {
    pub fn subnet(&self) -> &Subnet {
        &self.subnets[0]
    }
}

/// What `network create` asks for.
#[derive(Default, Debug)]
pub struct NewNetwork {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub internal: bool,
}

/// The network definitions under one directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The network called `name`, or whose ID starts with `name`; the
    /// default `bridge` is made the first time it is asked for.
    pub fn get(&self, name: &str) -> Result<Network> {
        if name == DEFAULT_NETWORK && !self.file(name).exists() {
            return self.create_default();
        }
        if let Some(n) = self.read(name)? {
            return Ok(n);
        }
        let by_id: Vec<Network> = self
            .list()?
            .into_iter()
            .filter(|n| name.len() >= 3 && n.id.starts_with(name))
            .collect();
        match by_id.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("network {name} not found"),
            _ => bail!("network ID prefix {name} names more than one network"),
        }
    }

    fn read(&self, name: &str) -> Result<Option<Network>> {
        if name.contains('/') || name.starts_with('.') {
            return Ok(None);
        }
        match fs::read(self.file(name)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("reading network {name} ({})", self.file(name).display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading network {name}")),
        }
    }

    /// Every network, sorted by name.
    pub fn list(&self) -> Result<Vec<Network>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).context("listing networks"),
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".json") {
                if let Some(net) = self.read(n)? {
                    out.push(net);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn create_default(&self) -> Result<Network> {
        let mut net = self.create(&NewNetwork {
            name: DEFAULT_NETWORK.into(),
            ..Default::default()
        });
        // Two first runs may race to make it: the loser reads the winner's.
        if net.is_err() {
            if let Some(existing) = self.read(DEFAULT_NETWORK)? {
                net = Ok(existing);
            }
        }
        net
    }

    /// Makes a network definition (the bridge itself appears when the
    /// first container joins). Callers hold the network lock.
    pub fn create(&self, req: &NewNetwork) -> Result<Network> {
        validate_name(&req.name)?;
        if self.file(&req.name).exists() {
            bail!("network {} already exists", req.name);
        }
        let existing = self.list()?;
        let subnet = match &req.subnet {
            Some(s) => {
                let s = parse_subnet(s)?;
                if let Some(other) = existing.iter().find(|n| {
                    n.subnet().subnet.contains(&s.network())
                        || s.contains(&n.subnet().subnet.network())
                }) {
                    bail!(
                        "subnet {s} overlaps network {}'s {}",
                        other.name,
                        other.subnet().subnet
                    );
                }
                s
            }
            None => free_subnet(&existing)?,
        };
        let gateway = match &req.gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| anyhow::anyhow!("invalid gateway {g:?}: give an IPv4 address"))?;
                if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                    bail!("gateway {g} is not a host address of subnet {subnet}");
                }
                g
            }
            None => subnet
                .hosts()
                .next()
                .context("the subnet has no host addresses")?,
        };
        let is_default = req.name == DEFAULT_NETWORK;
        let net = Network {
            name: req.name.clone(),
            id: crate::random_id()?,
            driver: "bridge".into(),
            network_interface: bridge_name(&existing, is_default),
            subnets: vec![Subnet { subnet, gateway }],
            ipv6_enabled: false,
            internal: req.internal,
            // As docker: names resolve on user networks, not on the default.
            dns_enabled: !is_default,
            // Containers on different networks cannot reach each other.
            options: BTreeMap::from([("isolate".to_string(), "true".to_string())]),
            ipam_options: BTreeMap::from([("driver".to_string(), "host-local".to_string())]),
            created: Some(chrono::Utc::now()),
        };
        fs::create_dir_all(&self.dir)?;
        // Written whole and renamed into place: never a half-written file.
        let tmp = self.dir.join(format!(".{}.tmp", req.name));
        fs::write(&tmp, serde_json::to_vec_pretty(&net)?)?;
        // link, not rename: it fails if a racing create got there first.
        let placed = fs::hard_link(&tmp, self.file(&req.name));
        let _ = fs::remove_file(&tmp);
        if placed.is_err() {
            bail!("network {} already exists", req.name);
        }
        Ok(net)
    }

    /// Removes a network's definition (the caller checked no container
    /// uses it, and that its bridge is gone).
    pub fn remove(&self, net: &Network) -> Result<()> {
        fs::remove_file(self.file(&net.name))
            .with_context(|| format!("removing network {}", net.name))
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("invalid network name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit");
    }
    if RESERVED.contains(&name) {
        bail!("{name} is a network mode, not a network name");
    }
    Ok(())
}

fn parse_subnet(s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        anyhow::anyhow!("invalid subnet {s:?}: give an IPv4 CIDR such as 10.89.5.0/24")
    })?;
    if net.prefix_len() > 30 {
        bail!("subnet {s} is too small: give a prefix of /30 or shorter");
    }
    if net != net.trunc() {
        bail!(
            "subnet {s} has host bits set: did you mean {}?",
            net.trunc()
        );
    }
    Ok(net)
}

/// The first /24 of the pool that nothing here uses.
fn free_subnet(existing: &[Network]) -> Result<Ipv4Net> {
    let mut used: Vec<Ipv4Net> = existing.iter().map(|n| n.subnet().subnet).collect();
    used.extend(routes_in_use());
    used.extend(podman_subnets());
    let pool: Ipv4Net = POOL.parse().expect("a valid pool");
    pool.subnets(24)
        .expect("/24s of a /16")
        .find(|s| {
            !used
                .iter()
                .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
        })
        .context("every /24 of 10.89.0.0/16 is in use: give --subnet")
}

/// The IPv4 routes of this network namespace, except the default route.
fn routes_in_use() -> Vec<Ipv4Net> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-j", "-4", "route", "show", "table", "all"])
        .output()
    else {
        return Vec::new();
    };
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    routes
        .iter()
        .filter_map(|r| r.get("dst")?.as_str())
        .filter_map(|d| {
            d.parse::<Ipv4Net>()
                .ok()
                .or_else(|| d.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .filter(|n| n.prefix_len() > 0)
        .collect()
}

/// podman's networks on this host, so the two never share a subnet.
fn podman_subnets() -> Vec<Ipv4Net> {
    let Ok(entries) = fs::read_dir(PODMAN_NETWORKS) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| fs::read(e.ok()?.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .flat_map(|v| {
            v.get("subnets")
                .and_then(|s| s.as_array().cloned())
                .unwrap_or_default()
        })
        .filter_map(|s| s.get("subnet")?.as_str()?.parse().ok())
        .collect()
}

/// `capsa0` for the default network, else the first free `capsaN`.
fn bridge_name(existing: &[Network], is_default: bool) -> String {
    if is_default {
        return "capsa0".into();
    }
    (1..)
        .map(|i| format!("capsa{i}"))
        .find(|b| !existing.iter().any(|n| &n.network_interface == b) && !crate::netns::has_link(b))
        .expect("an unbounded range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_get_distinct_subnets_and_bridges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let default = store.get(DEFAULT_NETWORK).unwrap();
        assert_eq!(default.network_interface, "capsa0");
        assert!(!default.dns_enabled);
        let a = store
            .create(&NewNetwork {
                name: "a".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(a.dns_enabled);
        assert_ne!(a.subnet().subnet, default.subnet().subnet);
        assert_ne!(a.network_interface, default.network_interface);
        assert_eq!(
            a.subnet().gateway,
            a.subnet().subnet.hosts().next().unwrap()
        );
        assert_eq!(store.get(&a.id[..12]).unwrap(), a);
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn bad_definitions_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store
            .create(&NewNetwork {
                name: "n1".into(),
                subnet: Some("10.89.7.0/24".into()),
                ..Default::default()
            })
            .unwrap();
        for (name, subnet, why) in [
            ("n2", "10.0.0.0/33", "invalid subnet"),
            ("n2", "10.89.9.1/24", "has host bits"),
            ("n2", "10.89.7.0/25", "overlaps network n1"),
            ("n2", "10.89.0.0/31", "too small"),
            ("n1", "10.89.8.0/24", "already exists"),
            ("host", "10.89.8.0/24", "network mode"),
            ("../x", "10.89.8.0/24", "invalid network name"),
        ] {
            let err = store
                .create(&NewNetwork {
                    name: name.into(),
                    subnet: Some(subnet.into()),
                    ..Default::default()
                })
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{name} {subnet}: {err}");
        }
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
