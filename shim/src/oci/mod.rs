//! The OCI runtime operations on a bundle someone else prepared: what
//! `runc create/start/state/kill/delete/exec/pause/resume` do, for both
//! isolation modes. The runc-compatible commands of the `capsa` binary and
//! `containerd-shim-capsa-v2` are thin layers over this module.
//!
//! The bundle's annotation `io.capsa.isolation` picks the backend
//! (`container`, the default, or `vm`). Each container gets a [`Record`]
//! like the ones `capsa run` makes, with `bundle` set, so `capsa ps -a`
//! shows them too.
//!
//! Who owns the processes: [`create`](fn@create) returns a PID that is the
//! caller's child, and the caller (or its subreaper, once `capsa create`
//! has exited) reaps it and learns the exit status from it, as with runc.
//! In container mode that is the container's first process. In VM mode it
//! is a small monitor process ([`crate::monitor::bundle`]) that boots the
//! VM, holds the connection to the guest agent, passes the standard
//! streams through and exits with the container's exit status.
//!
//! One file per verb, as runc's own commands are: `create` (with the VM
//! bundle preparation), `start`, `state` and `list`, `kill`, `delete`,
//! `exec`, `pause` and `resume`, `stats` and `pids`. This file holds what
//! they share: the record lookup, the ID check, the spec loading and the
//! container's current status.

mod common;
mod create;
mod delete;
mod exec;
mod kill;
mod pause;
mod start;
mod state;
mod stats;

pub use capsa_proto::Stats;
pub use create::create;
pub use delete::delete;
pub use exec::{exec, ExecOptions};
pub use kill::kill;
pub(crate) use pause::freeze;
pub use pause::{pause, resume};
pub use start::start;
pub use state::{list, state, State};
pub use stats::{pids, stats};

pub(crate) use common::load_spec;
pub use common::{isolation_of, EXIT_RUNC_ERROR, ISOLATION_ANNOTATION, KERNEL_ANNOTATION};
