//! A `capsa run` container's networks (capsa-network), fitted to its
//! lifecycle: checked and planned at create, attached by the monitor just
//! before the container is created (so that the ports are held by the
//! process that lives as long as the container), detached when it ends or
//! is removed, by whoever gets there first.

use std::fs;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use capsa_network::{Paths, Request};

use crate::paths::{ContainerPaths, Roots};
use crate::record::Record;
use crate::{CodedError, EXIT_CAPSA_ERROR};

pub fn paths(roots: &Roots) -> Paths {
    Paths {
        networks: roots.lib.join("networks"),
        run: roots.run.join("net"),
    }
}

/// Checks `req` at create, before anything is made: its networks exist
/// (the default `bridge` is made on first use), and `-P` becomes the
/// image's exposed ports.
pub fn plan(roots: &Roots, req: &mut Request, exposed: &[String]) -> Result<()> {
    let paths = paths(roots);
    {
        let _lock = paths.lock()?;
        let store = paths.store();
        for e in &mut req.endpoints {
            // By name from here on, however the user named it (an ID prefix).
            e.network = store.get(&e.network).map_err(user_error)?.name;
        }
    }
    if std::mem::take(&mut req.publish_all) {
        for port in exposed {
            let (num, proto) = capsa_network::ports::container_port(port)
                .map_err(|e| user_error(anyhow::anyhow!("the image exposes an {e:#}")))?;
            if !req
                .ports
                .iter()
                .any(|p| p.protocol == proto && p.container_ports().any(|c| c == num))
            {
                req.ports
                    .push(capsa_network::PortSpec::any_host_port(num, proto));
            }
        }
    }
    Ok(())
}

/// Sets up the container's networks, if it has any, and writes the
/// /etc/hosts and /etc/resolv.conf it will see. Returns the sockets that
/// hold its published ports: keep them open while it runs.
pub fn attach(roots: &Roots, rec: &Record) -> Result<Vec<OwnedFd>> {
    let Some(req) = &rec.network else {
        return Ok(Vec::new());
    };
    let cpaths = ContainerPaths::new(roots, &rec.id);
    let (att, held) = capsa_network::attach(
        &paths(roots),
        &rec.id,
        &rec.name,
        req,
        &cpaths.network_state(),
    )
    .map_err(user_error)?;
    // From the spec: in VM mode the hostname file is written in the guest.
    let spec = oci_spec::runtime::Spec::load(cpaths.config())?;
    let hostname = spec.hostname().clone().unwrap_or_default();
    let hosts = capsa_container::etc_hosts(&hostname, att.primary_ip());
    fs::write(cpaths.dir.join("hosts"), hosts)?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    fs::write(
        cpaths.dir.join("resolv.conf"),
        att.resolv_conf(&host_resolv, &req.dns),
    )
    .context("writing the container's resolv.conf")?;
    Ok(held)
}

/// Tears down whatever of the container's networks is still set up.
pub fn detach(roots: &Roots, id: &str) -> Result<()> {
    capsa_network::detach(
        &paths(roots),
        &ContainerPaths::new(roots, id).network_state(),
    )
}

/// The container's published ports as they are now (host ports chosen),
/// while its network is set up.
pub fn published(roots: &Roots, id: &str) -> Vec<capsa_network::PortSpec> {
    attachment(roots, id).map(|a| a.ports).unwrap_or_default()
}

/// What the container's network setup made, while it is set up.
pub fn attachment(roots: &Roots, id: &str) -> Option<capsa_network::Attachment> {
    capsa_network::Attachment::load(&ContainerPaths::new(roots, id).network_state())
        .ok()
        .flatten()
}

fn user_error(e: anyhow::Error) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")).into()
}
