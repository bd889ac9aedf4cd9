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
use crate::record::{Isolation, Record};
use crate::{CodedError, EXIT_CAPSA_ERROR};

/// The networks of the network namespace capsa runs in, whatever the
/// `--root` (see [`Paths::of_this_netns`]).
pub fn paths() -> Result<Paths> {
    Paths::of_this_netns(
        std::path::Path::new(Roots::DEFAULT_LIB),
        std::path::Path::new(Roots::DEFAULT_RUN),
    )
}

/// Checks `req` at create, before anything is made: its networks exist
/// (the default `bridge` is made on first use), and `-P` becomes the
/// image's exposed ports.
pub fn plan(req: &mut Request, exposed: &[String]) -> Result<()> {
    let paths = paths()?;
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
    let (att, held) =
        capsa_network::attach(&paths()?, &rec.id, &rec.name, req, &cpaths.network_state())
            .map_err(user_error)?;
    // From the spec: in VM mode the hostname file is written in the guest.
    let spec = oci_spec::runtime::Spec::load(cpaths.config())?;
    let hostname = spec.hostname().clone().unwrap_or_default();
    let hosts = capsa_container::etc_hosts(
        &hostname,
        att.primary_ip(),
        att.primary_gateway().map(Into::into),
        spec.annotations().as_ref(),
    );
    fs::write(cpaths.dir.join("hosts"), hosts)?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    fs::write(
        cpaths.dir.join("resolv.conf"),
        att.resolv_conf(&host_resolv, &req.dns),
    )
    .context("writing the container's resolv.conf")?;
    Ok(held)
}

/// `network connect`: one more network for a running container that has
/// networks (not `none`, `host` or `container:`). A VM-mode container's
/// new interface takes the MAC of a spare NIC its VM booted with, and the
/// guest configures that NIC.
pub fn connect(roots: &Roots, key: &str, mut ep: capsa_network::Endpoint) -> Result<()> {
    let _containers = crate::record::lock_containers(roots)?;
    let rec = connectable(roots, key, "connected to")?;
    let cpaths = ContainerPaths::new(roots, &rec.id);
    // A VM-mode container's interface takes a free NIC slot's MAC (not
    // recorded: a restarted VM gets NICs anew).
    let mut made = ep.clone();
    if rec.isolation == Isolation::Vm {
        let slots = crate::microvm::booted_nics(&cpaths)?;
        let netns = capsa_network::netns_path(&rec.id);
        let mac = crate::microvm::nics::free_slot_mac(&slots, &netns).map_err(|e| {
            user_error(anyhow::anyhow!(
                "container {} cannot be connected to a network: {e:#}",
                rec.name
            ))
        })?;
        made.mac = Some(mac);
    }
    // Recorded by name, however the user named it (an ID prefix).
    ep.network =
        capsa_network::connect(&paths()?, &made, &cpaths.network_state()).map_err(user_error)?;
    let name = ep.network.clone();
    // Under the record's lock: the monitor may be recording an exit.
    let rec = crate::record::with_record(roots, &rec.id, |r| {
        if let Some(req) = r.network.as_mut() {
            req.endpoints.push(ep);
        }
    })
    .unwrap_or(rec);
    rewrite_resolv_conf(roots, &rec)?;
    if let Err(e) = replug(roots, &rec) {
        // Undone whole: the guest never got the network.
        if let Ok(rec) = take_away(roots, &rec, &name) {
            let _ = replug(roots, &rec);
        }
        return Err(e);
    }
    Ok(())
}

/// `network disconnect`: takes a network away from a running container.
pub fn disconnect(roots: &Roots, key: &str, network: &str) -> Result<()> {
    let _containers = crate::record::lock_containers(roots)?;
    let rec = connectable(roots, key, "disconnected from")?;
    let rec = take_away(roots, &rec, network)?;
    replug(roots, &rec)
}

/// Takes `network` away from the container's namespace and record.
fn take_away(roots: &Roots, rec: &Record, network: &str) -> Result<Record> {
    let cpaths = ContainerPaths::new(roots, &rec.id);
    let name = capsa_network::disconnect(&paths()?, network, &cpaths.network_state())
        .map_err(user_error)?;
    let rec = crate::record::with_record(roots, &rec.id, |r| {
        if let Some(req) = r.network.as_mut() {
            req.endpoints.retain(|e| e.network != name);
        }
    })
    .unwrap_or_else(|| rec.clone());
    rewrite_resolv_conf(roots, &rec)?;
    Ok(rec)
}

/// A VM-mode container's guest takes on its namespace's interfaces as they
/// are now (container mode's processes see the namespace itself).
fn replug(roots: &Roots, rec: &Record) -> Result<()> {
    if rec.isolation != Isolation::Vm {
        return Ok(());
    }
    crate::microvm::MicroVmBackend::new(roots)
        .replug(rec)
        .with_context(|| format!("changing the networks of {}'s VM", rec.name))
}

/// The container `key`, if its networks can change while it runs.
fn connectable(roots: &Roots, key: &str, verb: &str) -> Result<Record> {
    let rec = Record::find(roots, key).map_err(user_error)?;
    let refuse = |why: &str| -> Result<Record> {
        Err(user_error(anyhow::anyhow!(
            "container {} cannot be {verb} a network: {why}",
            rec.name
        )))
    };
    if !rec.status().can_exec() {
        return refuse("it is not running");
    }
    if rec.network.is_none() || attachment(roots, &rec.id).is_none() {
        return refuse("it has no networks of its own (--network none, host or container:)");
    }
    Ok(rec)
}

/// The container's resolv.conf after its networks changed (the same file,
/// rewritten in place: the container's bind mount sees it).
fn rewrite_resolv_conf(roots: &Roots, rec: &Record) -> Result<()> {
    let (Some(att), Some(req)) = (attachment(roots, &rec.id), &rec.network) else {
        return Ok(());
    };
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    fs::write(
        ContainerPaths::new(roots, &rec.id).dir.join("resolv.conf"),
        att.resolv_conf(&host_resolv, &req.dns),
    )
    .context("writing the container's resolv.conf")
}

/// Tears down whatever of the container's networks is still set up.
pub fn detach(roots: &Roots, id: &str) -> Result<()> {
    capsa_network::detach(&paths()?, &ContainerPaths::new(roots, id).network_state())
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
