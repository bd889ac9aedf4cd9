//! The VM's network interfaces: one tap per interface of the container's
//! network namespace, joined to it (capsa_network::vm), handed to
//! capsa-vmm as inherited descriptors, and described to the agent so that
//! the guest takes the same addresses, routes and /etc files.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use capsa_network::vm::{Nic, Route};
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
            });
        };
        let (nics, routes) = capsa_network::vm::join(netns)
            .with_context(|| format!("connecting the VM to {}", netns.display()))?;
        Ok(Nics { nics, routes })
    }

    /// capsa-vmm's `nets`: the descriptors as they are numbered here,
    /// which is how the child inherits them ([`Nics::inherit`]).
    pub fn vm_config(&self) -> Vec<NetConfig> {
        self.nics
            .iter()
            .map(|n| NetConfig {
                tap_fd: n.tap.as_raw_fd(),
                mac: n.mac.clone(),
                mtu: n.mtu,
            })
            .collect()
    }

    /// Lets `cmd`'s child keep the tap descriptors (they are close-on-exec
    /// here, so no other child gets them).
    pub fn inherit(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fds: Vec<RawFd> = self.nics.iter().map(|n| n.tap.as_raw_fd()).collect();
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
        let read = |name: &str| std::fs::read_to_string(etc.join(name)).ok();
        Some(GuestNetwork {
            interfaces: self
                .nics
                .into_iter()
                .map(|n| GuestInterface {
                    mac: n.mac,
                    mtu: n.mtu,
                    addresses: n.addresses,
                })
                .collect(),
            routes: self
                .routes
                .into_iter()
                .map(|r| GuestRoute {
                    destination: r.destination,
                    gateway: r.gateway,
                    interface: r.nic,
                })
                .collect(),
            hosts: read("hosts"),
            resolv_conf: read("resolv.conf"),
        })
    }
}
