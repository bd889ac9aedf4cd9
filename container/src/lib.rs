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
//! - [`process`]: a new process's standard streams, an exec request, and
//!   waiting for a process the docker way (128+N for signal N);
//! - [`cgroup`]: where a container's cgroup lives and what it counted;
//! - [`terminal`]: window sizes and receiving a pty over a console socket.

pub mod cgroup;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod terminal;
mod workload;

pub use process::{ExecRequest, ProcessIo};
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
/// names the container's address on its network, or 127.0.1.1 without one.
pub fn etc_hosts(hostname: &str, address: Option<std::net::Ipv4Addr>) -> String {
    let address = address.unwrap_or(std::net::Ipv4Addr::new(127, 0, 1, 1));
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
}

/// A bind mount, by type or by option, as runc reads a spec.
pub fn is_bind_mount(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}
