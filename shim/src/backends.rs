//! Which backend runs a container, and giving back everything a container
//! has when it is removed: what the lifecycle, the monitor, its keeper and
//! runc's operations all need, above the two backends.

use std::fs;

use anyhow::{Context, Result};

use crate::backend::Backend;
use crate::microvm::MicroVmBackend;
use crate::namespace::NamespaceBackend;
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Isolation, Record};

pub fn backend_for(roots: &Roots, isolation: Isolation) -> Result<Box<dyn Backend>> {
    match isolation {
        Isolation::Container => Ok(Box::new(NamespaceBackend::new(roots))),
        Isolation::Vm => Ok(Box::new(MicroVmBackend::new(roots))),
    }
}

/// Releases the runtime state and the network, unmounts the root
/// filesystem and deletes the container's directory. Safe to call more than once.
pub fn remove_files(roots: &Roots, rec: &Record) -> Result<()> {
    let paths = ContainerPaths::new(roots, &rec.id);
    if let Ok(backend) = backend_for(roots, rec.isolation) {
        backend.release(rec)?;
        crate::network::detach(roots, &rec.id)?;
        backend.release_rootfs(&paths)?;
    }
    // Never delete through a mount: a pod sandbox's directory holds its
    // members' roots and volumes (microvm::sandbox).
    crate::microvm::sandbox::detach_under(&paths.dir)?;
    match fs::remove_dir_all(&paths.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", paths.dir.display()))
        }
        _ => Ok(()),
    }
}
