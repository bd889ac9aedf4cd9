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
//! containerd shim use it); [`spec_check`] refuses a bad bundle before any
//! of them acts on it.

pub mod backend;
pub mod containerd;
pub mod keeper;
pub mod lifecycle;
pub mod logs;
pub mod microvm;
pub mod monitor;
pub mod namespace;
pub mod oci;
pub mod paths;
pub mod record;
pub mod spec_check;
pub mod stdio;
pub mod timing;

pub use lifecycle::{CreateRequest, Isolation};
pub use paths::Roots;
pub use record::{Record, Status};

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
}
