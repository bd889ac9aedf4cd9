//! One OCI bundle run as a namespace container, on youki's libcontainer.
//!
//! This is the container code capsa runs in two places: on the host, for
//! container mode (capsa-shim's namespace backend), and inside a microVM
//! guest, where capsa-agent runs the same container on the guest's kernel.
//! So it holds only what both sides need, and nothing of the host's image
//! store, state records or VMM:
//!
//! - [`runtime`]: runc's verbs on a state directory (create a bundle,
//!   start, kill, exec, delete), with the state locked against racing
//!   callers;
//! - [`rootfs`]: the overlay root and the checks a bundle's root needs;
//! - [`idmap`]: the image's layers as a user-namespaced container's own;
//! - [`process`]: a new process's standard streams, an exec request, and
//!   waiting for a process the docker way (128+N for signal N);
//! - [`cgroup`]: where a container's cgroup lives and what it counted;
//! - [`procfs`]: a container's processes and traffic as /proc shows them;
//! - [`terminal`]: window sizes and receiving a pty over a console socket;
//! - [`self_exe`]: capsa's own binary kept read-only for what runs in a
//!   container (CVE-2019-5736).

pub mod cgroup;
pub mod idmap;
pub mod layer_diff;
pub mod namespaces;
pub mod netif;
pub mod process;
pub mod procfs;
pub mod remount;
pub mod rootfs;
pub mod runtime;
pub mod self_exe;
mod staged_bundle;
pub mod terminal;
mod workload;

pub use process::{ExecOptions, ExecRequest, ProcessIo};
pub use runtime::{LockedContainer, Runtime};
pub use workload::classify_start_error;

/// Exit code for capsa's own failures, as docker uses it.
pub const EXIT_CAPSA_ERROR: i32 = 125;
/// The command was found but could not be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// An error that carries the exit code the CLI should end with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: i32,
    pub message: String,
}

impl CodedError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CodedError {
            code,
            message: message.into(),
        }
    }

    /// The exit code `err` carries, or capsa's own failure code.
    pub fn code_of(err: &anyhow::Error) -> i32 {
        err.downcast_ref::<CodedError>()
            .map_or(EXIT_CAPSA_ERROR, |c| c.code)
    }
}

/// The container's own `/etc/hostname`.
pub fn etc_hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// The container's own `/etc/hosts`, docker's template: the hostname
/// names the container's address on its network, or 127.0.1.1 without one;
/// `--add-host` entries (from the spec's annotation) come before it, with
/// `host-gateway` meaning `gateway` (the host's address on that network).
pub fn etc_hosts(
    hostname: &str,
    address: Option<std::net::Ipv4Addr>,
    gateway: Option<std::net::IpAddr>,
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> String {
    let address = address.unwrap_or(std::net::Ipv4Addr::new(127, 0, 1, 1));
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}{address}\t{hostname}\n",
        extra_hosts_lines(annotations, gateway)
    )
}

/// Where `--add-host` entries travel with the spec (to the guest too):
/// `NAME=IP` pairs separated by commas.
pub const EXTRA_HOSTS_ANNOTATION: &str = "io.capsa.extra-hosts";

/// docker's `--add-host NAME:host-gateway`: the host, as the container
/// reaches it (its network's gateway address, or 127.0.0.1 on the host's
/// network), resolved when the network is set up.
pub const HOST_GATEWAY: &str = "host-gateway";

/// One `--add-host` entry as it goes into the annotation, or why not.
pub fn extra_host(name: &str, ip: &str) -> Result<String, String> {
    let ok_name = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok_name {
        return Err(format!("{name:?} is not a host name"));
    }
    if ip == HOST_GATEWAY {
        return Ok(format!("{name}={ip}"));
    }
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    Ok(format!("{name}={ip}"))
}

/// The /etc/hosts lines of the annotation's entries; an entry that is not
/// `NAME=IP` (a hand-written bundle's), or `host-gateway` with no gateway
/// to name, is skipped.
pub fn extra_hosts_lines(
    annotations: Option<&std::collections::HashMap<String, String>>,
    gateway: Option<std::net::IpAddr>,
) -> String {
    let Some(list) = annotations.and_then(|a| a.get(EXTRA_HOSTS_ANNOTATION)) else {
        return String::new();
    };
    list.split(',')
        .filter_map(|e| e.split_once('='))
        .filter(|(name, ip)| extra_host(name, ip).is_ok())
        .filter_map(|(name, ip)| match ip {
            HOST_GATEWAY => gateway.map(|g| format!("{g}\t{name}\n")),
            _ => Some(format!("{ip}\t{name}\n")),
        })
        .collect()
}

/// The spec's network namespace entry, if it has one (none: the host's).
pub fn network_namespace(
    spec: &oci_spec::runtime::Spec,
) -> Option<oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .cloned()
}

/// A bind mount, by type or by option, as runc reads a spec.
pub fn is_bind_mount(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_entries_go_before_the_containers_own_line() {
        let a: std::collections::HashMap<String, String> = [(
            EXTRA_HOSTS_ANNOTATION.to_string(),
            "db=10.1.2.3,v6=fd00::1,bad\nname=1.2.3.4,x=notanip".to_string(),
        )]
        .into();
        assert_eq!(
            etc_hosts("box", None, None, Some(&a)),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.1.2.3\tdb\nfd00::1\tv6\n127.0.1.1\tbox\n"
        );
        assert_eq!(extra_host("db", "10.1.2.3").unwrap(), "db=10.1.2.3");
        assert!(extra_host("a b", "10.1.2.3").is_err());
        assert!(extra_host("db", "gateway")
            .unwrap_err()
            .contains("not an IP"));
    }

    #[test]
    fn host_gateway_names_the_networks_gateway_or_nothing() {
        let a: std::collections::HashMap<String, String> = [(
            EXTRA_HOSTS_ANNOTATION.to_string(),
            "db=10.1.2.3,host.docker.internal=host-gateway".to_string(),
        )]
        .into();
        assert_eq!(extra_host("h", HOST_GATEWAY).unwrap(), "h=host-gateway");
        let gw = "10.89.0.1".parse().ok();
        assert_eq!(
            extra_hosts_lines(Some(&a), gw),
            "10.1.2.3\tdb\n10.89.0.1\thost.docker.internal\n"
        );
        assert_eq!(extra_hosts_lines(Some(&a), None), "10.1.2.3\tdb\n");
    }
}
