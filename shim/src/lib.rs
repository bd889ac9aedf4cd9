//! capsa's lifecycle core.
//!
//! One state machine (`created → running → stopped → removed`) drives every
//! container, whichever isolation backend runs it:
//!
//! - [`namespace`]: a namespace container on the host (youki's libcontainer);
//! - [`microvm`]: the same bundle inside a KVM microVM (capsa-vmm), set up
//!   by capsa-agent in the guest.
//!
//! The pieces: [`paths`] says where state lives, [`record`] is the persisted
//! state of one container, [`lifecycle`] holds the user-facing operations
//! (create, run, stop, kill, exec, rm …), [`monitor`] is the process that
//! owns a running container (pumps its output into the log and records its
//! exit), and [`logs`] is the log format. [`oci`] holds runc's operations
//! on bundles other engines prepare (the runc-compatible commands and the
//! containerd shim, crate capsa-containerd-shim, use it); [`spec_check`] refuses a bad bundle before any
//! of them acts on it.

pub mod backend;
pub mod backends;
pub mod build;
pub mod commit;
pub mod copy;
pub mod disk;
pub mod events;
pub mod health;
pub mod hooks;
pub mod lifecycle;
pub mod logs;
pub mod microvm;
pub mod monitor;
pub mod namespace;
pub mod network;
pub mod oci;
pub mod paths;
pub mod record;
pub mod spec_check;
pub mod stdio;
pub mod timing;
pub mod usage;
pub mod userns;
pub mod volumes;
pub mod writable;

pub use lifecycle::{CreateRequest, Isolation};
pub use paths::Roots;
pub use record::{Record, Status};

pub use capsa_container::{CodedError, EXIT_CAPSA_ERROR, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};
