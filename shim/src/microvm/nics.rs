//! The VM's network interfaces: one tap per interface of the container's
//! network namespace, joined to it (capsa_network::vm), handed to
//! capsa-vmm as inherited descriptors, and described to the agent so that
//! the guest takes the same addresses, routes and /etc files. A container
//! on capsa's networks also gets spare NICs, up to the VMM's limit, for
//! `network connect` while it runs ([`replug`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use capsa_network::vm::{Iface, Nic, Route};
use capsa_proto::{GuestInterface, GuestNetwork, GuestRoute};
use capsa_vm_config::NetConfig;

use crate::record::Record;

/// On a VM-mode bundle's saved spec: the network namespace the engine
/// prepared (the spec's own path, which means nothing in the guest), for
/// the VM to join. Set by capsa only; a bundle's own value is dropped.
pub const NETNS_ANNOTATION: &str = "io.capsa.netns";

pub struct Nics {
    nics: Vec<Nic>,
    routes: Vec<Route>,
    /// Taps parked for later networks, with the MACs their NICs have.
    spares: Vec<(OwnedFd, String)>,
}

impl Nics {
    /// The namespace a container's VM joins: its capsa network's, or the
    /// one its engine prepared; none for `--network none`.
    pub fn netns_of(rec: &Record, spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
        if rec.network.is_some() {
            return Some(capsa_network::netns_path(&rec.id));
        }
        super::sandbox::annotation(spec, NETNS_ANNOTATION).map(PathBuf::from)
    }

    /// Joins the VM to the namespace at `netns`, if it has one.
    pub fn join(netns: Option<&Path>) -> Result<Nics> {
        let Some(netns) = netns else {
            return Ok(Nics {
                nics: Vec::new(),
                routes: Vec::new(),
                spares: Vec::new(),
            });
        };
        let (nics, routes) = capsa_network::vm::join(netns)
            .with_context(|| format!("connecting the VM to {}", netns.display()))?;
        Ok(Nics {
            nics,
            routes,
            spares: Vec::new(),
        })
    }

    /// Spare NICs up to capsa-vmm's limit, for networks connected later.
    pub fn add_spares(&mut self, netns: &Path) -> Result<()> {
        for slot in self.nics.len()..capsa_vm_config::MAX_NETS {
            let spare = capsa_network::vm::spare(netns, slot)
                .with_context(|| format!("making a spare NIC in {}", netns.display()))?;
            self.spares.push(spare);
        }
        Ok(())
    }

    /// Every tap, in slot order, with its NIC's MAC and MTU.
    fn taps(&self) -> impl Iterator<Item = (&OwnedFd, &str, u16)> {
        let nics = self
            .nics
            .iter()
            .map(|n| (&n.tap, n.iface.mac.as_str(), n.iface.mtu));
        let mtu = self.nics.first().map_or(1500, |n| n.iface.mtu);
        nics.chain(
            self.spares
                .iter()
                .map(move |(tap, mac)| (tap, mac.as_str(), mtu)),
        )
    }

    /// capsa-vmm's `nets`: the descriptors as they are numbered here,
    /// which is how the child inherits them ([`Nics::inherit`]).
    pub fn vm_config(&self) -> Vec<NetConfig> {
        self.taps()
            .map(|(tap, mac, mtu)| NetConfig {
                tap_fd: tap.as_raw_fd(),
                mac: mac.to_string(),
                mtu,
            })
            .collect()
    }

    /// Lets `cmd`'s child keep the tap descriptors (they are close-on-exec
    /// here, so no other child gets them).
    pub fn inherit(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fds: Vec<RawFd> = self.taps().map(|(tap, _, _)| tap.as_raw_fd()).collect();
        if fds.is_empty() {
            return;
        }
        // SAFETY: only fcntl, which is async-signal-safe, runs in the child.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// What the guest must be told, once the VMM holds the taps (this
    /// process closes its copies: the taps live as long as the VMM).
    /// `etc` holds the hosts and resolv.conf written for the network.
    pub fn into_guest(self, etc: &Path) -> Option<GuestNetwork> {
        if self.nics.is_empty() {
            return None;
        }
        let ifaces = self.nics.into_iter().map(|n| n.iface).collect();
        Some(guest_network(ifaces, self.routes, etc))
    }
}

/// What the guest is told of its network: `ifaces` and `routes` as the
/// namespace has them, the hosts and resolv.conf written for it in `etc`.
fn guest_network(ifaces: Vec<Iface>, routes: Vec<Route>, etc: &Path) -> GuestNetwork {
    let read = |name: &str| std::fs::read_to_string(etc.join(name)).ok();
    GuestNetwork {
        interfaces: ifaces
            .into_iter()
            .map(|i| GuestInterface {
                mac: i.mac,
                mtu: i.mtu,
                addresses: i.addresses,
            })
            .collect(),
        routes: routes
            .into_iter()
            .map(|r| GuestRoute {
                destination: r.destination,
                gateway: r.gateway,
                interface: r.nic,
            })
            .collect(),
        hosts: read("hosts"),
        resolv_conf: read("resolv.conf"),
    }
}

/// After `network connect` or `disconnect` changed the container's
/// namespace: each NIC slot's tap joins the interface made with the slot's
/// MAC, or is parked; returns what the guest's network now is. `slots` are
/// the NICs the VM booted with ([`super::booted_nics`]).
pub fn replug(netns: &Path, slots: &[NetConfig], etc: &Path) -> Result<GuestNetwork> {
    let macs: Vec<String> = slots.iter().map(|n| n.mac.clone()).collect();
    let (ifaces, routes) = capsa_network::vm::rejoin(netns, &macs)
        .with_context(|| format!("joining the VM's NICs to {}", netns.display()))?;
    Ok(guest_network(ifaces, routes, etc))
}

/// The MAC of a NIC slot that no interface of the namespace has, for the
/// next network connected: netavark makes its interface with that MAC.
pub fn free_slot_mac(slots: &[NetConfig], netns: &Path) -> Result<String> {
    let used = capsa_network::vm::macs(netns)?;
    slots
        .iter()
        .map(|n| &n.mac)
        .find(|m| !used.iter().any(|u| u.eq_ignore_ascii_case(m)))
        .cloned()
        .with_context(|| {
            format!(
                "its VM has no free NIC: a VM-mode container can have at most {} networks \
                 (virtio-mmio has no hot-plug, so its NICs are fixed when it boots)",
                capsa_vm_config::MAX_NETS
            )
        })
}
