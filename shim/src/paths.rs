//! Where capsa keeps its state.
//!
//! Persistent state (images, container records, writable layers, logs) lives
//! under `/var/lib/capsa`; runtime state that must not survive a reboot
//! (libcontainer's per-container state, sockets) under `/run/capsa`. `--root DIR`
//! or `CAPSA_ROOT=DIR` moves both under DIR, which is how tests isolate
//! themselves.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Roots {
    /// Persistent state: the image store and container records.
    pub lib: PathBuf,
    /// Volatile state: libcontainer's state, sockets.
    pub run: PathBuf,
}

impl Roots {
    pub const DEFAULT_LIB: &'static str = "/var/lib/capsa";
    pub const DEFAULT_RUN: &'static str = "/run/capsa";

    /// `root` is the `--root` flag; `CAPSA_ROOT` is read by the CLI into it.
    pub fn new(root: Option<&Path>) -> Roots {
        match root {
            Some(r) => Roots {
                lib: r.to_path_buf(),
                run: r.join("run"),
            },
            None => Roots {
                lib: PathBuf::from(Self::DEFAULT_LIB),
                run: PathBuf::from(Self::DEFAULT_RUN),
            },
        }
    }

    /// Root of the image store.
    pub fn images(&self) -> PathBuf {
        self.lib.clone()
    }

    pub fn containers(&self) -> PathBuf {
        self.lib.join("containers")
    }

    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }

    /// libcontainer's state directory (one subdirectory per live container).
    pub fn runtime(&self) -> PathBuf {
        self.run.join("runtime")
    }

    /// Short-lived sockets (console sockets) live here.
    pub fn sockets(&self) -> PathBuf {
        self.run.join("sockets")
    }
}

/// The files of one container, under `Roots::container(id)`.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub dir: PathBuf,
}

impl ContainerPaths {
    pub fn new(roots: &Roots, id: &str) -> Self {
        ContainerPaths {
            dir: roots.container(id),
        }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("record.json")
    }
    /// The container's image ID, apart from the record so that a damaged
    /// record still tells which image the container uses.
    pub fn image_id(&self) -> PathBuf {
        self.dir.join("image-id")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn config(&self) -> PathBuf {
        self.bundle().join("config.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    /// overlayfs upper and work directories: the container's writable layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    /// Present while the user has stopped the container (`stop`, `kill`):
    /// its restart policy waits for a `start`. A file of its own, not a
    /// record field, so that no monitor's save of the record can lose it.
    pub fn stopped_by_user(&self) -> PathBuf {
        self.dir.join("stopped-by-user")
    }
    /// The healthcheck's state (crate::health), docker's `State.Health`.
    pub fn health(&self) -> PathBuf {
        self.dir.join("health.json")
    }
    /// What the container's network setup made (capsa-network's
    /// `Attachment`), while it is set up.
    pub fn network_state(&self) -> PathBuf {
        self.dir.join("network.json")
    }
}
