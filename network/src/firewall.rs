//! The one firewall rule capsa adds itself. netavark sets `route_localnet`
//! on each bridge (so that published ports answer on 127.0.0.1), which
//! would also let a container that crafts a route reach the host's
//! loopback-only services through the bridge. As docker does not let them,
//! this rule drops traffic from a bridge to 127.0.0.0/8 unless it belongs
//! to a published port (DNAT) or a connection the host opened.
//!
//! And one clean-up netavark 1.4 misses: a network's published-port chain
//! (`NETAVARK-DN-…`, nat table) stays behind, empty, when the container
//! that published ports leaves while others without ports remain.

use anyhow::Result;

fn rule(bridge: &str) -> Vec<&str> {
    vec![
        "INPUT",
        "-i",
        bridge,
        "-d",
        "127.0.0.0/8",
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED,DNAT",
        "-m",
        "comment",
        "--comment",
        "capsa: no host loopback",
        "-j",
        "DROP",
    ]
}

/// Adds the rule for `bridge` unless it is there. Called under the
/// network lock.
pub(crate) fn guard_localhost(bridge: &str) -> Result<()> {
    if iptables("-C", &rule(bridge)).is_ok() {
        return Ok(());
    }
    iptables("-I", &rule(bridge))
}

/// Removes the rule once netavark has removed `bridge` (when its last
/// container left). Called under the network lock.
pub(crate) fn drop_guard_if_unused(bridge: &str) -> Result<()> {
    if crate::netns::has_link(bridge) {
        return Ok(());
    }
    while iptables("-C", &rule(bridge)).is_ok() {
        iptables("-D", &rule(bridge))?;
    }
    Ok(())
}

/// netavark's name for `network`'s published-port chain: NETAVARK-DN-
/// and the first 13 hex digits (upper case) of SHA-512 of its name.
fn port_chain(network: &str) -> String {
    use sha2::{Digest, Sha512};
    let hash = hex::encode(Sha512::digest(network.as_bytes()));
    format!("NETAVARK-DN-{}", hash[..13].to_uppercase())
}

/// Deletes `network`'s published-port chain if it is empty and nothing
/// jumps to it (iptables refuses otherwise, which is the check). Called
/// under the network lock, after a teardown.
pub(crate) fn drop_port_chain_if_empty(network: &str) {
    let _ = crate::run_tool("iptables", &["-w", "-t", "nat", "-X", &port_chain(network)]);
}

fn iptables(op: &str, rule: &[&str]) -> Result<()> {
    let mut args = vec!["-w", "-t", "filter", op];
    args.extend(rule);
    crate::run_tool("iptables", &args)
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_chain_names_are_netavarks() {
        // As netavark 1.4 named network pn1's chain on this machine.
        assert_eq!(super::port_chain("pn1"), "NETAVARK-DN-F697A2C29A96C");
    }
}
