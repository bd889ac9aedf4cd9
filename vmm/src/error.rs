//! Error type and the process exit codes of `capsa-vmm`.

use std::path::PathBuf;

/// Exit codes of the `capsa-vmm` process. Callers (the capsa shim) rely on
/// these values, so they are part of the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// The guest powered off or rebooted.
    Ok = 0,
    /// capsa-vmm itself failed (bad configuration, missing file, KVM error).
    VmmError = 1,
    /// Command line usage error (reported by clap).
    Usage = 2,
    /// The guest kernel panicked.
    GuestPanic = 3,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN) or hit an unrecoverable
    /// KVM exit (internal error, failed entry).
    GuestCrash = 4,
    /// This host's /dev/kvm is PVM and cannot run the requested kernel.
    PvmHost = 5,
    /// Stopped by SIGTERM/SIGINT (128 + 15).
    Terminated = 143,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("cannot load kernel {path}: {msg}")]
    Kernel { path: PathBuf, msg: String },
    #[error("{0}")]
    Boot(String),
    #[error("{0}")]
    PvmHost(String),
    #[error("device {dev}: {msg}")]
    Device { dev: String, msg: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("jail: {0}")]
    Jail(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

impl Error {
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::PvmHost(_) => ExitCode::PvmHost,
            _ => ExitCode::VmmError,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
