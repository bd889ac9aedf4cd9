//! The one firewall rule capsa adds itself. netavark sets `route_localnet`
//! on each bridge (so that published ports answer on 127.0.0.1), which
//! would also let a container that crafts a route reach the host's
//! loopback-only services through the bridge. As docker does not let them,
//! this rule drops traffic from a bridge to 127.0.0.0/8 unless it belongs
//! to a published port (DNAT) or a connection the host opened.

use anyhow::Result;
use std::path::Path;

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
    if Path::new("/sys/class/net").join(bridge).exists() {
        return Ok(());
    }
    while iptables("-C", &rule(bridge)).is_ok() {
        iptables("-D", &rule(bridge))?;
    }
    Ok(())
}

fn iptables(op: &str, rule: &[&str]) -> Result<()> {
    let mut args = vec!["-w", "-t", "filter", op];
    args.extend(rule);
    crate::run_tool("iptables", &args)
}
