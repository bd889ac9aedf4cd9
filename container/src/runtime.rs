//! runc's verbs on one state directory: create a container from an OCI
//! bundle, start it, signal it, run another process in it, delete it. The
//! container is isolated by namespaces, cgroups, capabilities and seccomp,
//! set up by youki's libcontainer.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use oci_spec::runtime::{Process, Spec};

use crate::process::{ExecOptions, ProcessIo};
use crate::{rootfs, staged_bundle, workload};

/// The containers whose libcontainer state lives in one directory.
#[derive(Clone, Debug)]
pub struct Runtime {
    state_dir: PathBuf,
}

impl Runtime {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Runtime {
            state_dir: state_dir.into(),
        }
    }

    /// The directory holding each container's libcontainer state.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn builder(
        &self,
        id: &str,
        io: ProcessIo,
        executor: workload::CapsaExecutor,
    ) -> Result<ContainerBuilder> {
        std::fs::create_dir_all(&self.state_dir)?;
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.state_dir)?
            .with_executor(executor)
            .with_console_socket(io.console_socket.as_deref())
            .with_preserved_fds(i32::try_from(io.preserve_fds).context("--preserve-fds")?);
        b = b.with_stdin(io.stdin.map_or_else(dev_null, Ok)?);
        b = b.with_stdout(io.stdout.map_or_else(dev_null, Ok)?);
        b = b.with_stderr(io.stderr.map_or_else(dev_null, Ok)?);
        Ok(b)
    }

    /// Creates container `id` from the OCI bundle at `bundle` (a directory
    /// holding config.json); its process waits for [`Self::start`].
    /// Returns its PID; the caller is its parent and must reap it. Any
    /// bundle: capsa's own, an engine's (the runc commands) or a
    /// benchmark's.
    pub fn create(&self, id: &str, bundle: &Path, io: ProcessIo) -> Result<i32> {
        rootfs::prepare_bundle(bundle)?;
        let staged = staged_bundle::stage(&self.state_dir, id, bundle)?;
        let build = || {
            self.builder(id, io, workload::CapsaExecutor::default())?
                .as_init(&staged.bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(anyhow::Error::from)
        };
        let container = match &staged.netns {
            Some(netns) => crate::namespaces::in_namespace_at(
                netns,
                nix::sched::CloneFlags::CLONE_NEWNET,
                build,
            ),
            None => build(),
        };
        let container = match container {
            Ok(c) => c,
            Err(e) => {
                staged_bundle::remove(&self.state_dir, id);
                return Err(e);
            }
        };
        let pid = container
            .pid()
            .context("libcontainer created the container but reported no pid")?;
        let spec = Spec::load(bundle.join("config.json"))?;
        // A network namespace of its own (not one prepared by an engine or
        // a capsa network) has a working lo, as runc gives it.
        let own_netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::Network && n.path().is_none()
                })
            });
        let fixes = || -> Result<()> {
            if own_netns {
                crate::netif::lo_up_in(pid.as_raw())?;
            }
            crate::remount::harden(pid.as_raw(), &crate::remount::read_only_trees(&spec))
        };
        if let Err(e) = fixes() {
            let _ = self.delete(id);
            return Err(e);
        }
        // libcontainer applies the limits with the OOM killer on; the
        // spec's disableOOMKiller is applied here, before the process starts.
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            if oom_killer_disabled(resources) {
                self.update(id, resources)?;
            }
        }
        Ok(pid.as_raw())
    }

    /// Starts the created container `id`: its process runs its command.
    pub fn start(&self, id: &str) -> Result<()> {
        self.load(id)?.start()?;
        Ok(())
    }

    /// Sends `signal` to the init process of container `id`. The state stays
    /// locked until libcontainer has saved it after the signal, so a
    /// concurrent delete cannot remove it under us.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        self.load(id)?.kill(signal, false)?;
        Ok(())
    }

    /// Deletes the runtime state and cgroups of container `id`, killing
    /// what is left of it. A no-op if it has no state.
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.state_dir.join(id);
        if dir.exists() {
            let mut c = self.load(id)?;
            if let Err(e) = c.delete(true) {
                // libcontainer kills every process but removes only the
                // container's own cgroup, not those `exec --cgroup` made
                // under it: remove them, then delete again.
                let cgroup = c.spec()?.cgroup_path;
                if crate::cgroup::remove_sub_cgroups(&cgroup)? == 0 {
                    return Err(e).with_context(|| format!("deleting runtime state of {id}"));
                }
                c.delete(true)
                    .with_context(|| format!("deleting runtime state of {id}"))?;
            }
        }
        staged_bundle::remove(&self.state_dir, id);
        Ok(())
    }

    /// Runs `process` (an OCI process, what `runc exec --process` reads)
    /// in container `id`. Returns its host PID; it is our child until we
    /// exit, then our subreaper's. With `process.terminal` its pty master
    /// goes to `io.console_socket`.
    /// `spec` is the container's own spec, when the caller has it; else it
    /// is read from the container's bundle.
    pub fn exec(
        &self,
        id: &str,
        spec: Option<&Spec>,
        process: &Process,
        io: ProcessIo,
        options: &ExecOptions,
    ) -> Result<i32> {
        let terminal = process.terminal().unwrap_or(false);
        std::fs::create_dir_all(&self.state_dir)?;
        let mut file = tempfile::Builder::new()
            .prefix(".exec-")
            .suffix(".json")
            .tempfile_in(&self.state_dir)?;
        // In a user namespace of its own, the container may have inherited
        // its network namespace (staged_bundle::Staged::netns): so does
        // the new process. It enters the user namespace last, from uid 0
        // (workload::UsernsEntry).
        let init = self
            .load(id)?
            .pid()
            .context("the container has no process")?;
        let userns = match crate::namespaces::in_own_userns(init.as_raw()) {
            true => Some(
                std::fs::File::open(format!("/proc/{init}/ns/user"))
                    .context("the container's user namespace")?,
            ),
            false => None,
        };
        match &userns {
            Some(_) => {
                let mut as_owner = process.clone();
                as_owner.set_user(oci_spec::runtime::User::default());
                serde_json::to_writer(&mut file, &as_owner)?
            }
            None => serde_json::to_writer(&mut file, process)?,
        }
        // The exec'd process gets exactly the container's seccomp filter
        // (libcontainer's tenant path drops it; see CapsaExecutor).
        let seccomp_of = |s: &Spec| s.linux().as_ref().and_then(|l| l.seccomp().clone());
        let seccomp = match spec {
            Some(s) => seccomp_of(s),
            None => {
                let config = self.load(id)?.bundle().join("config.json");
                let s =
                    Spec::load(&config).with_context(|| format!("reading {}", config.display()))?;
                seccomp_of(&s)
            }
        };
        // On cgroup v2 the process joins its sub-cgroup itself (see
        // cgroup::v2_sub_cgroup_procs); `join` stays open until it has.
        let join = match &options.sub_cgroup {
            Some(sub) => {
                let cgroup = self.load(id)?.spec()?.cgroup_path;
                crate::cgroup::v2_sub_cgroup_procs(&cgroup, sub)
                    .with_context(|| format!("making sub-cgroup {sub}"))?
            }
            None => None,
        };
        let sub_cgroup = options.sub_cgroup.clone().filter(|_| join.is_none());
        let executor = workload::CapsaExecutor {
            seccomp,
            join_cgroup: join.as_ref().map(|f| f.as_raw_fd()),
            userns: userns.as_ref().map(|f| workload::UsernsEntry {
                fd: f.as_raw_fd(),
                user: process.user().clone(),
            }),
        };
        let build = || {
            Ok(self
                .builder(id, io, executor)?
                .as_tenant()
                .with_process(Some(file.path()))
                .with_sub_cgroup(sub_cgroup)
                .with_ignore_paused(options.ignore_paused)
                // libcontainer wants a console socket exactly for a detached
                // process on a terminal; we always return at once.
                .with_detach(terminal)
                .build()?)
        };
        let pid = if userns.is_some() {
            crate::namespaces::in_namespace_of(
                init.as_raw(),
                nix::sched::CloneFlags::CLONE_NEWNET,
                build,
            )?
        } else {
            build()?
        };
        Ok(pid.as_raw())
    }

    /// libcontainer's view of container `id` (status refreshed from /proc),
    /// its state locked against other capsa processes and threads while
    /// the value lives.
    pub fn container(&self, id: &str) -> Result<LockedContainer> {
        self.load(id)
    }

    /// The cgroup manager of container `id`, for stats, pids and freezing.
    pub fn cgroup(&self, id: &str) -> Result<libcgroups::common::AnyCgroupManager> {
        let c = self.load(id)?;
        let config = libcgroups::common::CgroupConfig {
            cgroup_path: c.spec()?.cgroup_path,
            systemd_cgroup: c.systemd(),
            container_name: id.to_string(),
        };
        Ok(libcgroups::common::create_cgroup_manager(config)?)
    }

    /// Changes the running container `id`'s cgroup limits to `resources`
    /// (its whole `linux.resources`, as `update` merged them).
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        use libcgroups::common::{CgroupManager, ControllerOpt};
        self.cgroup(id)?
            .apply(&ControllerOpt {
                resources,
                // Written on every apply (cgroup v1): keep the spec's.
                disable_oom_killer: oom_killer_disabled(resources),
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| anyhow::anyhow!("changing the cgroup limits of {id}: {e}"))
    }

    fn load(&self, id: &str) -> Result<LockedContainer> {
        let dir = self.state_dir.join(id);
        let lock = std::fs::File::open(&dir)
            .and_then(|f| {
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                    .map_err(|(_, e)| e.into())
            })
            .with_context(|| format!("container {id} is not running"))?;
        let container =
            Container::load(dir).with_context(|| format!("container {id} is not running"))?;
        Ok(LockedContainer {
            container,
            _lock: lock,
        })
    }
}

/// A libcontainer container with its state directory flock'ed.
/// libcontainer rewrites state.json in place (truncate, then write), so a
/// reader racing a writer (a kill against a delete, from a containerd
/// shim's threads or two runc-CLI processes) could read an empty file.
pub struct LockedContainer {
    container: Container,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl std::ops::Deref for LockedContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.container
    }
}

impl std::ops::DerefMut for LockedContainer {
    fn deref_mut(&mut self) -> &mut Container {
        &mut self.container
    }
}

/// The spec's `memory.disableOOMKiller` (cgroup v1 only, as with runc:
/// cgroup v2 has no such switch).
fn oom_killer_disabled(resources: &oci_spec::runtime::LinuxResources) -> bool {
    resources
        .memory()
        .as_ref()
        .and_then(|m| m.disable_oom_killer())
        .unwrap_or(false)
}

fn dev_null() -> Result<std::os::fd::OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}
