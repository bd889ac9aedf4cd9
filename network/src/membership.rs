//! `network connect` and `network disconnect`: one network more or less
//! for a container whose network is set up, as podman does it: netavark
//! `setup` or `teardown` with that one network in the options (and the
//! published ports, so their DNAT follows the addresses). The attachment
//! file is updated first on connect and last on disconnect, so [`detach`]
//! always undoes at least what exists.
//!
//! [`detach`]: crate::detach

use std::path::Path;

use anyhow::{bail, Result};

use crate::store::Network;
use crate::{firewall, ipam, netavark, Attachment, Endpoint, Paths};

/// Adds `ep`'s network to the container whose attachment is `state`, on
/// the next free `ethN`. Returns the network's name.
pub fn connect(paths: &Paths, ep: &Endpoint, state: &Path) -> Result<String> {
    let _lock = paths.lock()?;
    let mut att = load(state)?;
    let net = paths.store().get(&ep.network)?;
    if att.options.networks.contains_key(&net.name) {
        bail!(
            "container {} is already connected to network {}",
            att.options.container_name,
            net.name
        );
    }
    let used: Vec<&str> = att
        .options
        .networks
        .values()
        .map(|p| p.interface_name.as_str())
        .collect();
    let ifname = (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !used.contains(&n.as_str()))
        .expect("a free name");
    let id = att.options.container_id.clone();
    let ip = ipam::allocate(&paths.ipam(), &net, &id, &ifname, ep.ip)?;
    let mut aliases = ep.aliases.clone();
    if net.dns_enabled {
        aliases.extend([att.options.container_name.clone(), id[..12].to_string()]);
    }
    let per = netavark::PerNetwork {
        interface_name: ifname.clone(),
        static_ips: vec![ip],
        static_mac: ep.mac.clone(),
        aliases,
    };
    let one = one_network(&att, per, &net);
    // Recorded before netavark runs: a crash in between leaves a state
    // that detach undoes whole.
    att.leases.push((net.name.clone(), ifname.clone()));
    att.options.networks.extend(one.networks.clone());
    att.options.network_info.extend(one.network_info.clone());
    att.save(state)?;
    let status = netavark::setup(&att.netavark_dir, &att.netns, &one).and_then(|mut s| {
        firewall::guard_localhost(&net.network_interface)?;
        s.remove(&net.name)
            .ok_or_else(|| anyhow::anyhow!("netavark set up no interface on {}", net.name))
    });
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = netavark::teardown(&att.netavark_dir, &att.netns, &one);
            let _ = ipam::release(&paths.ipam(), &net, &id, &ifname);
            att.leases.retain(|(n, _)| *n != net.name);
            att.options.networks.remove(&net.name);
            att.options.network_info.remove(&net.name);
            att.save(state)?;
            return Err(e);
        }
    };
    att.record_status(&net.name, &status);
    att.save(state)?;
    Ok(net.name)
}

/// Takes `network` away from the container whose attachment is `state`.
/// Returns the network's name.
pub fn disconnect(paths: &Paths, network: &str, state: &Path) -> Result<String> {
    let _lock = paths.lock()?;
    let mut att = load(state)?;
    let name = paths
        .store()
        .get(network)
        .map(|n| n.name)
        .unwrap_or_else(|_| network.to_string());
    let (Some(per), Some(info)) = (
        att.options.networks.get(&name).cloned(),
        att.options.network_info.get(&name).cloned(),
    ) else {
        bail!(
            "container {} is not connected to network {network}",
            att.options.container_name
        );
    };
    let one = one_network(&att, per.clone(), &info);
    netavark::teardown(&att.netavark_dir, &att.netns, &one)?;
    ipam::release(&paths.ipam(), &info, &one.container_id, &per.interface_name)?;
    let gateways: Vec<_> = att
        .interfaces
        .iter()
        .filter(|i| i.network == name)
        .filter_map(|i| i.gateway)
        .collect();
    att.dns_servers.retain(|s| !gateways.contains(s));
    att.interfaces.retain(|i| i.network != name);
    att.leases.retain(|(n, _)| *n != name);
    att.options.networks.remove(&name);
    att.options.network_info.remove(&name);
    att.save(state)?;
    firewall::drop_port_chain_if_empty(&name);
    firewall::drop_guard_if_unused(&info.network_interface)?;
    Ok(name)
}

/// netavark's options for the container's membership of `net` alone, with
/// its published ports (their DNAT follows the addresses).
fn one_network(att: &Attachment, per: netavark::PerNetwork, net: &Network) -> netavark::Options {
    netavark::Options {
        container_id: att.options.container_id.clone(),
        container_name: att.options.container_name.clone(),
        networks: [(net.name.clone(), per)].into(),
        network_info: [(net.name.clone(), net.clone())].into(),
        port_mappings: att.options.port_mappings.clone(),
        dns_servers: att.options.dns_servers.clone(),
    }
}

fn load(state: &Path) -> Result<Attachment> {
    match Attachment::load(state)? {
        Some(att) => Ok(att),
        None => bail!("the container's network is not set up (it is not running)"),
    }
}
