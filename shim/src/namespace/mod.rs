//! The namespace backend: the container runs on the host kernel, isolated
//! by namespaces, cgroups, capabilities and seccomp, set up by youki's
//! libcontainer from the OCI bundle.

pub mod rootfs;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use oci_spec::runtime::Process;

use crate::backend::{Backend, ExecRequest, Exit, ProcessHandle, ProcessIo};
use crate::paths::{ContainerPaths, Roots};
use crate::record::Record;
use capsa_image::{Image, Store};

pub use workload::classify_start_error;

pub struct NamespaceBackend {
    roots: Roots,
}

impl NamespaceBackend {
    pub fn new(roots: &Roots) -> Self {
        NamespaceBackend {
            roots: roots.clone(),
        }
    }

    fn builder(
        &self,
        id: &str,
        io: ProcessIo,
        executor: workload::CapsaExecutor,
    ) -> Result<ContainerBuilder> {
        std::fs::create_dir_all(self.roots.runtime())?;
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(self.roots.runtime())?
            .with_executor(executor)
            .with_console_socket(io.console_socket.as_deref());
        b = b.with_stdin(io.stdin.map_or_else(dev_null, Ok)?);
        b = b.with_stdout(io.stdout.map_or_else(dev_null, Ok)?);
        b = b.with_stderr(io.stderr.map_or_else(dev_null, Ok)?);
        Ok(b)
    }

    /// Creates container `id` from the OCI bundle at `bundle` (a directory
    /// holding config.json); its process waits for [`Self::start_id`].
    /// Returns its host PID; the caller is its parent and must reap it.
    /// The lifecycle below `create` works on capsa's own bundles; this is
    /// the bare OCI operation, for any bundle (`capsa bench` uses it).
    pub fn create_bundle(&self, id: &str, bundle: &Path, io: ProcessIo) -> Result<i32> {
        rootfs::prepare_bundle(bundle)?;
        let container = self
            .builder(id, io, workload::CapsaExecutor::default())?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(anyhow::Error::from)?;
        let pid = container
            .pid()
            .context("libcontainer created the container but reported no pid")?;
        Ok(pid.as_raw())
    }

    /// Starts the created container `id`: its process runs its command.
    pub fn start_id(&self, id: &str) -> Result<()> {
        self.load(id)?.start()?;
        Ok(())
    }

    /// Deletes the runtime state and cgroups of container `id`, killing
    /// what is left of it. A no-op if it has no state.
    pub fn delete_id(&self, id: &str) -> Result<()> {
        let dir = self.roots.runtime().join(id);
        if dir.exists() {
            let mut c = self.load(id)?;
            c.delete(true)
                .with_context(|| format!("deleting runtime state of {id}"))?;
        }
        Ok(())
    }

    /// Runs `process` (an OCI process, what `runc exec --process` reads)
    /// in container `id`. Returns its host PID; it is our child until we
    /// exit, then our subreaper's. With `process.terminal` its pty master
    /// goes to `io.console_socket`.
    pub fn exec_process(&self, id: &str, process: &Process, io: ProcessIo) -> Result<i32> {
        let terminal = process.terminal().unwrap_or(false);
        std::fs::create_dir_all(self.roots.runtime())?;
        let mut file = tempfile::Builder::new()
            .prefix(".exec-")
            .suffix(".json")
            .tempfile_in(self.roots.runtime())?;
        serde_json::to_writer(&mut file, process)?;
        // The exec'd process gets exactly the container's seccomp filter
        // (libcontainer's tenant path drops it; see CapsaExecutor).
        let seccomp = {
            let c = self.load(id)?;
            let config = c.bundle().join("config.json");
            oci_spec::runtime::Spec::load(&config)
                .with_context(|| format!("reading {}", config.display()))?
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().clone())
        };
        let pid = self
            .builder(id, io, workload::CapsaExecutor { seccomp })?
            .as_tenant()
            .with_process(Some(file.path()))
            // libcontainer wants a console socket exactly for a detached
            // process on a terminal; we always return at once.
            .with_detach(terminal)
            .build()?;
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

    fn load(&self, id: &str) -> Result<LockedContainer> {
        let dir = self.roots.runtime().join(id);
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

fn dev_null() -> Result<std::os::fd::OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// The process `capsa exec` starts: the container's own process (its
/// capabilities, rlimits, no_new_privileges, environment), with the
/// request's command, extra environment, directory, user and terminal.
pub fn exec_process(init: &Process, req: &ExecRequest) -> Result<Process> {
    let mut env: Vec<String> = init.env().clone().unwrap_or_default();
    for kv in &req.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut p = init.clone();
    p.set_args(Some(req.args.clone()));
    p.set_env(Some(env));
    p.set_terminal(Some(req.tty));
    p.set_console_size(None);
    if let Some(dir) = &req.workdir {
        p.set_cwd(PathBuf::from(dir));
    }
    if let Some((uid, gid)) = req.user {
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids(None);
        p.set_user(user);
    }
    Ok(p)
}

/// The cgroup path capsa gives each container (relative to each hierarchy).
pub fn cgroup_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/capsa/{id}"))
}

impl Backend for NamespaceBackend {
    fn prepare_rootfs(
        &self,
        paths: &ContainerPaths,
        store: &Store,
        image: &Image,
        ephemeral: bool,
    ) -> Result<()> {
        // A volatile overlay for --rm: see [`rootfs::mount_overlay`].
        rootfs::mount_overlay(
            &store.layer_dirs(image)?,
            &paths.upper(),
            &paths.work(),
            &paths.rootfs(),
            ephemeral,
        )
    }

    fn release_rootfs(&self, paths: &ContainerPaths) -> Result<()> {
        rootfs::unmount(&paths.rootfs())
    }

    fn create(&self, rec: &Record, io: ProcessIo) -> Result<i32> {
        let paths = ContainerPaths::new(&self.roots, &rec.id);
        self.create_bundle(&rec.id, &paths.bundle(), io)
    }

    fn start(&self, rec: &Record) -> Result<()> {
        self.start_id(&rec.id)
    }

    fn wait(&self, rec: &Record, pid: i32) -> Result<Exit> {
        let code = wait_pid(pid)?;
        Ok(Exit {
            code,
            // Read before `release` deletes the cgroup.
            oom_killed: oom_kill_count(&cgroup_path(&rec.id)) > 0,
            error: None,
        })
    }

    fn kill(&self, rec: &Record, signal: Signal) -> Result<()> {
        // The state stays locked until libcontainer has saved it after the
        // signal, so the monitor cannot remove it under us.
        let mut c = self.load(&rec.id)?;
        c.kill(signal, false)
            .with_context(|| format!("sending {signal} to container {}", rec.name))
    }

    fn exec(&self, rec: &Record, req: &ExecRequest, io: ProcessIo) -> Result<ProcessHandle> {
        let config = ContainerPaths::new(&self.roots, &rec.id).config();
        let spec = oci_spec::runtime::Spec::load(&config)?;
        let init = spec.process().as_ref().context("bundle has no process")?;
        let process = exec_process(init, req)?;
        Ok(ProcessHandle::Pid(
            self.exec_process(&rec.id, &process, io)?,
        ))
    }

    fn release(&self, rec: &Record) -> Result<()> {
        self.delete_id(&rec.id)
    }
}

/// docker's convention: the exit code, or 128+N for a process killed by
/// signal N. `pid` must be our child.
pub fn wait_pid(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the container's process"),
        }
    }
}

/// Reads the OOM-kill counter of a container's memory cgroup, on either
/// cgroup layout.
fn oom_kill_count(cgroup: &Path) -> u64 {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let candidates = [
        // cgroup v1 (and hybrid hosts): memory.oom_control has "oom_kill N".
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        // cgroup v2: memory.events has "oom_kill N".
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
    ];
    for file in candidates {
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("oom_kill ") {
                    return n.trim().parse().unwrap_or(0);
                }
            }
        }
    }
    0
}
