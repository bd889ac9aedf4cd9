//! `create`: a container from an OCI bundle, waiting for `start`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use capsa_shim::oci;
use capsa_shim::Roots;
use clap::Args;

use super::{coded, std_io, write_pid_file, EXIT_RUNC_ERROR};

#[derive(Args)]
pub struct CreateArgs {
    /// Path to the bundle (the directory holding config.json).
    #[arg(short = 'b', long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Write the pid of the container's process to FILE.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// An AF_UNIX socket that receives the master end of the container's terminal.
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (capsa always pivots into the root).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass this process's descriptors 3 to 3+N-1 on to the container's
    /// process (container mode).
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility (create always returns at once).
    #[arg(short = 'd', long)]
    detach: bool,
    /// The container ID.
    id: String,
}

pub fn create(roots: &Roots, a: CreateArgs) -> Result<i32> {
    let run = || -> Result<i32> {
        let bundle = std::path::absolute(&a.bundle)
            .with_context(|| format!("bundle {}", a.bundle.display()))?;
        let mut io = std_io(a.console_socket.clone());
        io.preserve_fds = a.preserve_fds;
        let pid = oci::create(roots, &a.id, &bundle, io)?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}
