//! capsa-agent: PID 1 inside capsa's microVM guest.
//!
//! The guest boots from a tiny initramfs holding only this binary (built by
//! capsa-shim's `microvm::guest`). As PID 1 the agent ([`guest`]) leaves the
//! initramfs for a tmpfs root (so containers can `pivot_root`), mounts
//! `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, cgroup2 and `/run`,
//! starts the zombie reaper ([`reaper`]) and listens on vsock port
//! [`capsa_proto::AGENT_PORT`] for the host. Each connection speaks
//! capsa-proto ([`server`]): the host creates the container — the agent
//! assembles its root (the image's read-only disk under an overlay with a
//! writable layer), then runs it with **the same container code as the
//! host**, capsa-container's runtime on youki's libcontainer
//! ([`container`]) — starts it, streams its stdio with flow control, and
//! waits for its exit. A guest may hold several containers (a pod's); when
//! the first one created is gone (or on `Shutdown`) the agent powers the
//! guest off. Any fatal error prints one line on the serial
//! console and powers off: PID 1 never panics or hangs.

pub mod cmdline;
pub mod container;
pub mod guest;
pub mod netconf;
pub mod parking;
pub mod reaper;
pub mod server;

/// This agent's software version, sent in the protocol handshake.
pub const SOFTWARE_VERSION: &str = concat!("capsa-agent ", env!("CARGO_PKG_VERSION"));
