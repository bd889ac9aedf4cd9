//! The namespace backend: the container runs on the host's kernel, made by
//! capsa-container's [`Runtime`] (youki's libcontainer) from the bundle the
//! lifecycle wrote, on a root filesystem of the image store's layers.

use anyhow::{Context, Result};
use capsa_container::process::{exec_process, wait_pid};
use capsa_container::{cgroup, rootfs, Runtime};
use capsa_image::{Image, Store};
use nix::sys::signal::Signal;

use crate::backend::{Backend, ExecRequest, Exit, ProcessHandle, ProcessIo, Sandbox};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};
use crate::writable;

/// The runtime that holds the namespace containers under `roots`.
pub fn runtime(roots: &Roots) -> Runtime {
    Runtime::new(roots.runtime())
}

pub struct NamespaceBackend {
    roots: Roots,
    runtime: Runtime,
}

impl NamespaceBackend {
    pub fn new(roots: &Roots) -> Self {
        NamespaceBackend {
            roots: roots.clone(),
            runtime: runtime(roots),
        }
    }
}

impl Backend for NamespaceBackend {
    fn prepare_rootfs(
        &self,
        paths: &ContainerPaths,
        store: &Store,
        image: &Image,
        ephemeral: bool,
        userns: Option<&oci_spec::runtime::LinuxIdMapping>,
    ) -> Result<()> {
        // With --storage-opt size, the layer is on the container's disk.
        let mounted = writable::mount(paths)?;
        let (upper, work) = writable::upper_and_work(paths);
        // A volatile overlay for --rm: see [`rootfs::mount_overlay`].
        let made = rootfs::mount_overlay(
            &store.layer_dirs(image)?,
            &upper,
            &work,
            &paths.rootfs(),
            ephemeral,
            userns,
        );
        if made.is_err() && mounted {
            let _ = writable::unmount(paths);
        }
        made
    }

    fn release_rootfs(&self, paths: &ContainerPaths) -> Result<()> {
        rootfs::unmount(&paths.rootfs())?;
        writable::unmount(paths)
    }

    fn create(&self, rec: &Record, io: ProcessIo) -> Result<Box<dyn Sandbox>> {
        let paths = ContainerPaths::new(&self.roots, &rec.id);
        let pid = self.runtime.create(&rec.id, &paths.bundle(), io)?;
        Ok(self.adopt(rec, pid))
    }

    fn adopt(&self, rec: &Record, pid: i32) -> Box<dyn Sandbox> {
        Box::new(Container {
            runtime: self.runtime.clone(),
            id: rec.id.clone(),
            name: rec.name.clone(),
            pid,
        })
    }

    fn start(&self, rec: &Record) -> Result<()> {
        self.runtime.start(&rec.id)
    }

    fn kill(&self, rec: &Record, signal: Signal) -> Result<()> {
        kill(&self.runtime, &rec.id, &rec.name, signal)
    }

    fn update(&self, rec: &Record, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.runtime.update(&rec.id, resources)
    }

    fn exec(&self, rec: &Record, req: &ExecRequest, io: ProcessIo) -> Result<ProcessHandle> {
        let config = ContainerPaths::new(&self.roots, &rec.id).config();
        let spec = oci_spec::runtime::Spec::load(&config)?;
        let init = spec.process().as_ref().context("bundle has no process")?;
        let process = exec_process(init, req)?;
        Ok(ProcessHandle::Pid(self.runtime.exec(
            &rec.id,
            Some(&spec),
            &process,
            io,
            &Default::default(),
        )?))
    }

    fn diff(&self, rec: &Record, out: &mut dyn std::io::Write) -> Result<()> {
        let paths = ContainerPaths::new(&self.roots, &rec.id);
        // A stopped container's disk is mounted only while it is read.
        let _disk = writable::Mounted::new(&paths)?;
        let (upper, _) = writable::upper_and_work(&paths);
        // One moment's layer: a running container is frozen while it is
        // read (docker commit's --pause), which also keeps its processes
        // from swapping a directory for a symlink under the walk.
        let frozen = match rec.status() {
            Status::Running => {
                let mut c = self.runtime.container(&rec.id)?;
                c.pause()
                    .with_context(|| format!("freezing container {}", rec.name))?;
                Some(c)
            }
            _ => None,
        };
        let written = capsa_container::layer_diff::write(&upper, rec.userns.as_ref(), out);
        if let Some(mut c) = frozen {
            c.resume()
                .with_context(|| format!("thawing container {}", rec.name))?;
        }
        written
    }

    fn release(&self, rec: &Record) -> Result<()> {
        self.runtime.delete(&rec.id)
    }
}

/// A namespace container this process created: its first process is our
/// child.
struct Container {
    runtime: Runtime,
    id: String,
    name: String,
    pid: i32,
}

impl Sandbox for Container {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn start(&self) -> Result<()> {
        self.runtime.start(&self.id)
    }

    fn kill(&self, signal: Signal) -> Result<()> {
        kill(&self.runtime, &self.id, &self.name, signal)
    }

    fn wait(&self) -> Result<Exit> {
        let code = wait_pid(self.pid)?;
        Ok(Exit {
            code,
            // Read before `release` deletes the cgroup.
            oom_killed: cgroup::oom_kill_count(&self.id) > 0,
            error: None,
        })
    }

    fn release(&self) -> Result<()> {
        self.runtime.delete(&self.id)
    }
}

fn kill(runtime: &Runtime, id: &str, name: &str, signal: Signal) -> Result<()> {
    runtime
        .kill(id, signal)
        .with_context(|| format!("sending {signal} to container {name}"))
}
