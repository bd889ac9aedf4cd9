//! The microVM backend: the container runs inside a KVM microVM with its
//! own guest kernel. capsa-vmm runs the VM (one process per container);
//! capsa-agent, PID 1 in the guest, sets the container up with the same
//! container code the namespace backend uses on the host. This side talks
//! to the agent over hybrid vsock (capsa-proto).

mod client;
pub mod guest;
pub mod nics;
pub mod sandbox;
mod shares;
mod tty;
mod volumes;

use crate::writable;
use shares::ShareSpec;

/// In a container's directory: a link to the engine's root directory that
/// the VM gets as a virtio-fs share (oci::create made it).
pub const SHARED_ROOT: &str = "rootfs.shared";
/// The virtio-fs tag of a shared root directory.
const ROOT_TAG: &str = "capsa-root";

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsa_container::terminal::window_size;
use capsa_image::{Image, RootfsFormat, Store};
use capsa_proto::{
    ExecProcess, GuestNetwork, Request, Response, Rootfs, StdStream, StdioOptions, Volume,
    WritableLayer,
};
use capsa_vm_config::{DiskConfig, FsConfig, SerialConfig, VmConfig, VsockConfig};
use nix::sys::signal::Signal;

use crate::backend::{Backend, ExecRequest, Exit, ProcessHandle, ProcessIo, Sandbox};
use crate::paths::{ContainerPaths, Roots};
use crate::record::Record;
use crate::{CodedError, EXIT_CAPSA_ERROR};
use client::AgentConn;
use sandbox::is_sandbox;
pub use volumes::{of_the_kernel, shm_as_tmpfs};

/// Memory the guest kernel and agent need beyond the container's limit.
const GUEST_OVERHEAD_MIB: u64 = 96;
const MIN_MEM_MIB: u64 = 256;

/// The filesystem of an image's read-only root disk: erofs, which
/// `mkfs.erofs` writes in a fraction of `mkfs.ext4 -d`'s time for the same
/// tree (docs/isolation.md) and the guest mounts read-only as it is. The
/// guest kernel has EROFS_FS_XATTR, so file capabilities and other xattrs
/// of the image come along.
const ROOT_FORMAT: RootfsFormat = RootfsFormat::Erofs;

#[derive(Clone)]
pub struct MicroVmBackend {
    roots: Roots,
    /// Containers are created idle ([`MicroVmBackend::boot_stopped`]).
    idle: bool,
}

impl MicroVmBackend {
    pub fn new(roots: &Roots) -> Self {
        MicroVmBackend {
            roots: roots.clone(),
            idle: false,
        }
    }

    fn socket(&self, id: &str) -> PathBuf {
        // Short names keep the path within a socket address's 108 bytes:
        // capsa's IDs are 64 hex digits; other engines' IDs are hashed.
        let short = if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            id[..12].to_string()
        } else {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(id.as_bytes())[..6])
        };
        self.roots.sockets().join(format!("{short}.vsock"))
    }

    /// Resource usage of the container, from its cgroup in the guest.
    pub fn stats(&self, rec: &Record) -> Result<capsa_proto::Stats> {
        match self.connect(rec)?.request(Request::Stats {
            container_id: rec.id.clone(),
        })? {
            Response::Stats(s) => Ok(*s),
            other => bail!("the guest agent answered stats with {other:?}"),
        }
    }

    /// The container's processes, read in the guest.
    pub fn top(&self, rec: &Record) -> Result<Vec<capsa_proto::ProcessInfo>> {
        match self.connect(rec)?.request(Request::Top {
            container_id: rec.id.clone(),
        })? {
            Response::Processes { processes } => Ok(processes),
            other => bail!("the guest agent answered top with {other:?}"),
        }
    }

    fn console_log(&self, id: &str) -> PathBuf {
        ContainerPaths::new(&self.roots, id).dir.join("console.log")
    }

    /// capsa-vmm's own stderr (its log and error lines). A file, not a
    /// pipe: nobody reads a pipe while the VM runs, so a chatty VMM would
    /// block once it filled, and one that outlives the monitor (keeper)
    /// would die of SIGPIPE.
    fn vmm_log(&self, id: &str) -> PathBuf {
        ContainerPaths::new(&self.roots, id).dir.join("vmm.log")
    }

    /// Why capsa-vmm stopped, from its log: its error line, else the
    /// guest console's last lines.
    fn vmm_failure(&self, id: &str) -> String {
        let log = std::fs::read_to_string(self.vmm_log(id)).unwrap_or_default();
        match vmm_error_line(&log) {
            Some(l) => l,
            None => format!("guest console:\n{}", self.console_tail(id)),
        }
    }

    /// The agent socket of the VM the container runs in: its own, or its
    /// sandbox's when it joined a sandbox VM.
    fn agent_socket(&self, rec: &Record) -> PathBuf {
        self.socket(rec.sandbox.as_deref().unwrap_or(&rec.id))
    }

    /// A connection for a command other than the monitor (kill, exec).
    fn connect(&self, rec: &Record) -> Result<AgentConn> {
        AgentConn::connect(
            &self.agent_socket(rec),
            Duration::from_secs(10),
            &mut || true,
        )
        .with_context(|| format!("reaching the microVM of {}", rec.name))
    }

    /// Stops a VMM whose monitor is gone (`pid` is checked to be a capsa-vmm
    /// first: a recycled pid is left alone) and removes the agent socket.
    fn stop_orphan_vmm(&self, id: &str, pid: Option<i32>) {
        if let Some(pid) = pid.filter(|p| is_vmm(*p)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Once its VMM has exited (one not ours to reap may take a moment).
        capsa_container::cgroup::remove_limited(
            &capsa_container::cgroup::cgroup_path(id),
            Duration::from_secs(5),
        );
        let _ = std::fs::remove_file(self.socket(id));
        // The shares' sockets (their daemons exit with the VMM; an adopted
        // VM's are not this process's children to reap).
        for n in 0..capsa_vm_config::MAX_FS {
            shares::remove_socket(&self.share_socket(id, n));
        }
    }

    /// The socket of share `n` of container `id`'s VM, beside its vsock.
    fn share_socket(&self, id: &str, n: usize) -> PathBuf {
        self.socket(id).with_extension(format!("fs{n}"))
    }

    /// The last lines of the guest console, for error messages.
    fn console_tail(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.console_log(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

impl MicroVmBackend {
    /// After `network connect` or `disconnect`: the VM's NIC slots rejoin
    /// the container's namespace as it is now, and the guest follows.
    pub fn replug(&self, rec: &Record) -> Result<()> {
        let paths = ContainerPaths::new(&self.roots, &rec.id);
        let slots = booted_nics(&paths)?;
        let netns = capsa_network::netns_path(&rec.id);
        let mut network = nics::replug(&netns, &slots, &paths.dir)?;
        // As in container mode, only resolv.conf follows the networks.
        network.hosts = None;
        self.connect(rec)?
            .request(Request::Network {
                container_id: rec.id.clone(),
                network,
            })
            .map(|_| ())
    }

    /// Sends `Create` for the container and wires its standard streams.
    fn create_in_guest(
        &self,
        conn: &Arc<AgentConn>,
        rec: &Record,
        spec: oci_spec::runtime::Spec,
        rootfs: Rootfs,
        io: ProcessIo,
        network: Option<GuestNetwork>,
    ) -> Result<()> {
        // With -t the guest allocates the container's terminal; the monitor
        // gets a host pty whose other end we bridge to the guest.
        let tty = match &io.console_socket {
            Some(sock) => Some(tty::bridge(sock)?),
            None => None,
        };
        let stdio = StdioOptions {
            tty: tty.is_some(),
            stdin: io.stdin.is_some() || (tty.is_some() && rec.interactive),
            tty_size: tty.as_ref().and_then(|_| window_size(std::io::stdin())),
            discard_output: false,
        };
        if let Some(slave) = &tty {
            conn.route_output(&rec.id, StdStream::Stdout, slave.try_clone()?);
        }
        if let Some(out) = io.stdout {
            conn.route_output(&rec.id, StdStream::Stdout, out);
        }
        if let Some(err) = io.stderr {
            conn.route_output(&rec.id, StdStream::Stderr, err);
        }
        conn.request(Request::Create {
            container_id: rec.id.clone(),
            spec: Box::new(spec),
            rootfs,
            stdio,
            network,
            hold_after_exit: rec.layer_on_exit.is_some(),
            idle: self.idle,
        })?;
        if let Some(input) = io.stdin {
            conn.pump_stdin(&rec.id, input)?;
        }
        if let Some(slave) = tty {
            if stdio.stdin {
                tty::pump_input(Arc::clone(conn), &rec.id, slave)?;
            }
        }
        Ok(())
    }

    /// Creates the container in its sandbox's running VM, from the slot
    /// disk `oci` wrote its root filesystem into. It has no VMM of its own:
    /// the caller's process (the monitor) stands for it.
    fn join_sandbox(
        &self,
        rec: &Record,
        paths: &ContainerPaths,
        spec: oci_spec::runtime::Spec,
        io: ProcessIo,
    ) -> Result<Box<dyn Sandbox>> {
        let root = std::fs::read_to_string(paths.dir.join(sandbox::DEVICE_FILE))
            .context("the container has no place in its sandbox VM's pod directory")?;
        let conn = Arc::new(self.connect(rec)?);
        // Its root is a directory of the pod share, already in the guest.
        let rootfs = Rootfs {
            device: root.trim().into(),
            fstype: "bind".into(),
            writable: WritableLayer::InPlace,
            volumes: vec![],
        };
        self.create_in_guest(&conn, rec, spec, rootfs, io, None)?;
        Ok(Box::new(Vm::new(
            self,
            rec,
            std::process::id() as i32,
            Some(conn),
            None,
        )))
    }
}

/// A stopped VM-mode container's VM, booted again with the container
/// created idle (running no program of its image, capsa_proto's `idle`),
/// so that `cp` and `commit` reach the files on its disks through the
/// agent, as for a running one: the host never mounts a filesystem a guest
/// wrote. [`Maintenance::finish`] (or drop)
/// powers it off, the guest unmounting and syncing its disks first.
pub struct Maintenance {
    sandbox: Option<Box<dyn Sandbox>>,
}

impl MicroVmBackend {
    /// Boots `rec`'s VM for [`Maintenance`]. The caller holds the
    /// containers lock (no `start` races it) and prepared its root disk.
    pub fn boot_stopped(&self, rec: &Record) -> Result<Maintenance> {
        // Nothing of the last run: no network (nobody is to reach it), no
        // keeper (the VM dies with this process), no held-back exit.
        let mut rec = rec.clone();
        rec.network = None;
        rec.keeper_pid = None;
        rec.layer_on_exit = None;
        rec.interactive = false;
        let idle = MicroVmBackend {
            idle: true,
            ..self.clone()
        };
        let sandbox = idle
            .create(&rec, ProcessIo::default())
            .with_context(|| format!("booting the VM of stopped container {}", rec.name))?;
        let vm = Maintenance {
            sandbox: Some(sandbox),
        };
        // Started, it runs nothing of the image: exec works in it.
        vm.sandbox.as_ref().map_or(Ok(()), |s| s.start())?;
        Ok(vm)
    }
}

impl Maintenance {
    /// Ends the container that never ran and powers the VM off; an error
    /// says the guest may not have written everything to its disks.
    pub fn finish(mut self) -> Result<()> {
        match self.end() {
            Some(e) => bail!("powering off the container's VM: {e}"),
            None => Ok(()),
        }
    }

    /// What went wrong ending it, if anything did.
    fn end(&mut self) -> Option<String> {
        let sandbox = self.sandbox.take()?;
        let _ = sandbox.kill(Signal::SIGKILL);
        let error = match sandbox.wait() {
            Ok(exit) => exit.error,
            Err(e) => Some(format!("{e:#}")),
        };
        let _ = sandbox.release();
        error
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.end();
    }
}

/// Refuses VM mode where it cannot work, before anything is created.
pub fn check_host(user_kernel: Option<&Path>) -> Result<()> {
    // A bad --kernel file is the user's to fix whatever the host is.
    if let Some(k) = user_kernel {
        guest::check_kernel_file(k)?;
    }
    if !Path::new("/dev/kvm").exists() {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "VM isolation needs /dev/kvm, which this host does not have: load kvm_intel or kvm_amd, or use --isolation container"
        ));
    }
    if Path::new("/sys/module/kvm_pvm").exists() && user_kernel.is_none() {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "this host's /dev/kvm is PVM, which cannot run capsa's guest kernel: pass --kernel with a PVM-enabled guest kernel, or run VM mode inside the KVM test host (capsa test-host -- capsa run --isolation vm …)"
        ));
    }
    Ok(())
}

/// The line of capsa-vmm's stderr that says why it failed: its own
/// `capsa-vmm: ` error line, else its first line; log lines' colour codes
/// taken out.
fn vmm_error_line(stderr: &str) -> Option<String> {
    let lines: Vec<String> = stderr
        .lines()
        .map(strip_ansi)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .find(|l| l.starts_with("capsa-vmm: "))
        .or(lines.first())?;
    Some(line.trim_start_matches("capsa-vmm: ").to_string())
}

/// `s` without ANSI escape sequences (CSI `ESC [ … final byte`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The container's memory limit in bytes, if it has one.
fn memory_limit(spec: &oci_spec::runtime::Spec) -> Option<u64> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64)
}

/// VM size from the container's limits: memory limit plus the guest's own
/// needs, and one vCPU per (started) CPU of quota.
fn vm_size(spec: &oci_spec::runtime::Spec) -> (u64, u64) {
    let res = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let limit_mib = memory_limit(spec).map(|l| l.div_ceil(1 << 20));
    let mem = limit_mib.map_or(MIN_MEM_MIB, |l| (l + GUEST_OVERHEAD_MIB).max(MIN_MEM_MIB));
    let vcpus = res
        .as_ref()
        .and_then(|r| {
            r.cpu()
                .as_ref()
                .and_then(|c| Some((c.quota()?, c.period()?)))
        })
        .filter(|(q, p)| *q > 0 && *p > 0)
        .map_or(1, |(q, p)| (q as u64).div_ceil(p).max(1));
    (mem, vcpus)
}

impl Backend for MicroVmBackend {
    fn prepare_rootfs(
        &self,
        paths: &ContainerPaths,
        store: &Store,
        image: &Image,
        _ephemeral: bool,
        // The guest idmaps the image's disk from the spec's mappings.
        _userns: Option<&oci_spec::runtime::LinuxIdMapping>,
    ) -> Result<()> {
        let disk = store.rootfs_image(image, ROOT_FORMAT)?;
        // Again for a restart: the link may be there.
        let link = paths.dir.join("rootfs.disk");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&disk, link)?;
        writable::ensure(paths)?;
        // The root is assembled in the guest; the host mounts nothing (the
        // spec's users come from the image's layers, spec::generate).
        std::fs::create_dir_all(paths.rootfs())?;
        Ok(())
    }

    fn release_rootfs(&self, paths: &ContainerPaths) -> Result<()> {
        capsa_container::rootfs::unmount(&paths.rootfs())
    }

    fn create(&self, rec: &Record, io: ProcessIo) -> Result<Box<dyn Sandbox>> {
        let mut clock = Instant::now();
        let paths = ContainerPaths::new(&self.roots, &rec.id);
        let mut spec = oci_spec::runtime::Spec::load(paths.config())?;
        if rec.sandbox.is_some() {
            return self.join_sandbox(rec, &paths, spec, io);
        }
        // An engine's root directory is shared (oci::create); otherwise the
        // image's root disk is /dev/vda.
        let shared_root = std::fs::read_link(paths.dir.join(SHARED_ROOT)).ok();
        let first_disk = if shared_root.is_some() { b'a' } else { b'b' };
        let volumes = volumes::plan(
            &mut spec,
            &paths.dir,
            first_disk as char,
            rec.bundle.is_some(),
        )?;
        let (mut mem_mib, vcpus) = vm_size(&spec);
        if is_sandbox(&spec) {
            mem_mib = mem_mib.max(sandbox::memory_mib(&spec)?);
        }
        let kernel = guest::kernel(rec.kernel.as_deref())?;
        let initrd = guest::initramfs(&self.roots)?;
        let vmm = guest::sibling_binary("capsa-vmm", "CAPSA_VMM")?;
        let root_disk = match shared_root {
            Some(_) => None,
            None => Some(std::fs::read_link(paths.dir.join("rootfs.disk"))?),
        };
        // A container made from an image has its own writable disk, the
        // last one (prepare_rootfs); other roots keep a tmpfs.
        let writable_disk = Some(writable::path(&paths))
            .filter(|d| root_disk.is_some() && d.is_file())
            .map(|path| {
                let letter = first_disk + volumes.disks.len() as u8;
                (path, format!("/dev/vd{}", letter as char))
            });
        let sock = self.socket(&rec.id);
        std::fs::create_dir_all(self.roots.sockets())?;
        let _ = std::fs::remove_file(&sock);

        // The kernel is also the KVM test host's (docs/guest-kernel.md): its
        // KVM never initialises in a guest, which has no use for it.
        let mut cmdline = String::from(
            "console=ttyS0 reboot=k panic=-1 quiet initcall_blacklist=svm_init,vmx_init",
        );
        // For a guest that does not boot: CAPSA_GUEST_KERNEL_ARGS=loglevel=7
        // puts the kernel's messages in the console log (and error messages).
        if let Ok(extra) = std::env::var("CAPSA_GUEST_KERNEL_ARGS") {
            cmdline.push(' ');
            cmdline.push_str(&extra);
        }
        // The container's network namespace (its capsa network's, set up
        // by the monitor just before, or its engine's): the VM's NICs join
        // its interfaces.
        let netns = nics::Nics::netns_of(rec, &spec);
        let mut nics = nics::Nics::join(netns.as_deref())?;
        // Only capsa's own networks can be connected later.
        if let (Some(netns), Some(_)) = (&netns, &rec.network) {
            nics.add_spares(netns)?;
        }
        // A pod's sandbox VM gets the pod directory as one more share: the
        // pod's other containers' roots and mounts appear in it later.
        let pod_dir = if is_sandbox(&spec) {
            Some(sandbox::make_pod_dir(&paths.dir)?)
        } else {
            None
        };
        // The shares' daemons listen before capsa-vmm starts; it connects
        // to them while it builds the VM.
        let root_share = shared_root.as_ref().map(|dir| ShareSpec {
            source: dir.clone(),
            readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            tag: ROOT_TAG.into(),
            binds: Vec::new(),
            userns: None,
        });
        let pod_share = pod_dir.as_ref().map(|dir| ShareSpec {
            source: dir.clone(),
            readonly: false,
            tag: sandbox::POD_TAG.into(),
            binds: Vec::new(),
            userns: None,
        });
        let share_specs: Vec<_> = root_share
            .into_iter()
            .chain(volumes.share.iter().map(|(s, _)| s.clone()))
            .chain(pod_share)
            .collect();
        // The VM's cgroup, joined by its share daemons and its VMM before
        // they execute: the guest's memory (all of it anonymous memory of
        // the VMM), the VMM's and the daemons' own, and their tasks are
        // bounded on the host, whatever a guest that took them over does.
        let cgroup = capsa_container::cgroup::make_limited(
            &capsa_container::cgroup::cgroup_path(&rec.id),
            (mem_mib << 20) + VMM_MEMORY_HEADROOM,
            VMM_TASKS,
        )
        .context("making the VM's cgroup")?;
        let mut daemons = match shares::start(
            &share_specs,
            |n| self.share_socket(&rec.id, n),
            &self.vmm_log(&rec.id),
            rec.keeper_pid.is_none(),
            &cgroup,
        ) {
            Ok(d) => d,
            Err(e) => {
                cgroup.remove(Duration::from_secs(2));
                return Err(e);
            }
        };
        // Nothing between the daemons and the VMM may leave them behind.
        let spawned = (|| -> Result<Child> {
            let read_only = |path: &Path| DiskConfig {
                path: path.to_path_buf(),
                read_only: true,
            };
            let config = VmConfig {
                kernel,
                initrd: Some(initrd),
                cmdline: Some(cmdline),
                mem_mib: u32::try_from(mem_mib).context("the VM's memory size")?,
                vcpus: u8::try_from(vcpus).context("the VM's vCPU count")?,
                disks: root_disk
                    .iter()
                    .map(PathBuf::as_path)
                    .chain(volumes.disks.iter().map(|v| v.image.as_path()))
                    .map(read_only)
                    .chain(writable_disk.as_ref().map(|(path, _)| DiskConfig {
                        path: path.clone(),
                        read_only: false,
                    }))
                    .collect(),
                vsock: Some(VsockConfig {
                    cid: 3,
                    uds: sock.clone(),
                }),
                nets: nics.vm_config(),
                fs: daemons
                    .iter()
                    .map(|d| FsConfig {
                        socket: d.socket.clone(),
                        tag: d.tag.clone(),
                    })
                    .collect(),
                serial: SerialConfig::File(self.console_log(&rec.id)),
                // The user chose the kernel (e.g. a PVM-enabled one).
                allow_pvm: rec.kernel.is_some(),
            };
            // Kept beside the container: what was booted, for whoever debugs it.
            let config_file = vm_config_file(&paths);
            std::fs::write(&config_file, serde_json::to_vec_pretty(&config)?)
                .with_context(|| format!("writing {}", config_file.display()))?;
            let mut cmd = Command::new(&vmm);
            nics.inherit(&mut cmd);
            // Jailed once the VM is built (capsa-vmm's jail module), as the
            // first process of a PID namespace of its own.
            cmd.arg("--jail")
                .arg("--config")
                .arg(&config_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(self.vmm_log(&rec.id))?);
            // The VM lives no longer than the process that holds its agent
            // connection (the monitor): a killed monitor must not leave a
            // guest running that nobody can reach. With a keeper (see
            // crate::keeper) the VM outlives the monitor: the keeper adopts it
            // and collects the container's exit from the agent.
            if rec.keeper_pid.is_none() {
                die_with_parent(&mut cmd);
            }
            join_on_exec(&mut cmd, &cgroup);
            spawn_in_own_pid_ns(&mut cmd).with_context(|| format!("starting {}", vmm.display()))
        })();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                shares::stop(&mut daemons);
                cgroup.remove(Duration::from_secs(2));
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        let guest_net = nics.into_guest(&paths.dir);
        crate::timing::phase("vm: kernel, initramfs and VMM started", &mut clock);

        let mut alive = || matches!(child.try_wait(), Ok(None));
        let conn = match AgentConn::connect(&sock, agent_timeout(), &mut alive) {
            Ok(c) => c,
            Err(e) => {
                let threads = vmm_threads(pid);
                let _ = child.kill();
                let _ = child.wait();
                shares::stop(&mut daemons);
                cgroup.remove(Duration::from_secs(2));
                // capsa-vmm's own error line names a panic, a triple fault
                // or a kernel it cannot load; otherwise the guest console
                // says how far it got.
                bail!("{e:#}{threads}: {}", self.vmm_failure(&rec.id));
            }
        };
        crate::timing::phase("vm: guest booted, agent answered", &mut clock);
        let memory = mem_mib << 20;
        let conn = Arc::new(conn);
        let mut guest_volumes = volumes.guest_volumes();
        if pod_dir.is_some() {
            guest_volumes.push(Volume {
                device: sandbox::POD_TAG.into(),
                fstype: capsa_proto::VIRTIOFS.into(),
                guest_path: sandbox::GUEST_POD_DIR.into(),
                readonly: false,
            });
        }
        let rootfs = match root_disk {
            Some(_) => Rootfs {
                device: "/dev/vda".into(),
                fstype: ROOT_FORMAT.extension().into(),
                writable: match writable_disk {
                    Some((_, device)) => WritableLayer::Disk {
                        device,
                        fstype: "ext4".into(),
                    },
                    None => WritableLayer::Tmpfs {
                        size_bytes: memory / 2,
                    },
                },
                volumes: guest_volumes.clone(),
            },
            None => Rootfs {
                device: ROOT_TAG.into(),
                fstype: capsa_proto::VIRTIOFS.into(),
                writable: WritableLayer::InPlace,
                volumes: guest_volumes,
            },
        };
        if let Err(e) = self.create_in_guest(&conn, rec, spec, rootfs, io, guest_net) {
            let _ = child.kill();
            let _ = child.wait();
            shares::stop(&mut daemons);
            cgroup.remove(Duration::from_secs(2));
            return Err(e);
        }
        crate::timing::phase("vm: container created in the guest", &mut clock);
        let mut vm = Vm::new(self, rec, pid, Some(conn), Some(child));
        vm.daemons = Mutex::new(daemons);
        Ok(Box::new(vm))
    }

    fn adopt(&self, rec: &Record, pid: i32) -> Box<dyn Sandbox> {
        Box::new(Vm::new(self, rec, pid, None, None))
    }

    fn start(&self, rec: &Record) -> Result<()> {
        start(&self.connect(rec)?, rec)
    }

    fn kill(&self, rec: &Record, signal: Signal) -> Result<()> {
        kill(&self.connect(rec)?, rec, signal)
    }

    fn update(&self, rec: &Record, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.connect(rec)?
            .request(Request::Update {
                container_id: rec.id.clone(),
                resources: Box::new(resources.clone()),
            })
            .map(|_| ())
    }

    fn exec(&self, rec: &Record, req: &ExecRequest, io: ProcessIo) -> Result<ProcessHandle> {
        let conn = Arc::new(self.connect(rec)?);
        // Unique, not per capsa process: an `exec -d` process outlives
        // the capsa that started it, and host pids are reused.
        let exec_id = format!("exec-{}", &capsa_network::random_id()?[..16]);
        // -t: a host pty bridged to the terminal the guest allocates, as
        // for the container's own process.
        let tty = match (&io.console_socket, req.tty) {
            (Some(sock), true) => Some(tty::bridge(sock)?),
            _ => None,
        };
        if let Some(slave) = &tty {
            conn.route_output(&exec_id, StdStream::Stdout, slave.try_clone()?);
        }
        let routed = io.stdout.is_some() || io.stderr.is_some();
        if let Some(out) = io.stdout {
            conn.route_output(&exec_id, StdStream::Stdout, out);
        }
        if let Some(err) = io.stderr {
            conn.route_output(&exec_id, StdStream::Stderr, err);
        }
        conn.request(Request::Exec {
            container_id: rec.id.clone(),
            exec_id: exec_id.clone(),
            process: ExecProcess {
                args: req.args.clone(),
                env: req.env.clone(),
                cwd: req.workdir.clone(),
                user: req.user.map(|(uid, gid)| capsa_proto::User {
                    uid,
                    gid,
                    additional_gids: vec![],
                }),
                cgroup: req.sub_cgroup.clone(),
            },
            stdio: StdioOptions {
                tty: tty.is_some(),
                stdin: io.stdin.is_some() || tty.is_some(),
                tty_size: tty.as_ref().and_then(|_| window_size(std::io::stdin())),
                // Nothing to route them to: docker's `exec -d`.
                discard_output: tty.is_none() && !routed,
            },
        })?;
        if let Some(input) = io.stdin {
            conn.pump_stdin(&exec_id, input)?;
        }
        if let Some(slave) = tty {
            tty::pump_input(Arc::clone(&conn), &exec_id, slave)?;
        }
        let signalled = (Arc::clone(&conn), exec_id.clone());
        Ok(ProcessHandle::Remote {
            wait: Box::new(move || exit_code(&conn, exec_id)),
            kill: Box::new(move |signal| {
                signalled
                    .0
                    .request(Request::Signal {
                        id: signalled.1.clone(),
                        signal: signal as i32,
                    })
                    .map(|_| ())
            }),
        })
    }

    fn diff(&self, rec: &Record, out: &mut dyn std::io::Write) -> Result<()> {
        let conn = self.connect(rec)?;
        let exec_id = format!("diff-{}", &capsa_network::random_id()?[..16]);
        let (layer, errors) = (crate::stdio::pipe()?, crate::stdio::pipe()?);
        conn.route_output(&exec_id, StdStream::Stdout, layer.write);
        conn.route_output(&exec_id, StdStream::Stderr, errors.write);
        conn.request(Request::Diff {
            container_id: rec.id.clone(),
            exec_id: exec_id.clone(),
        })?;
        let said = std::thread::spawn(move || {
            std::io::read_to_string(File::from(errors.read)).unwrap_or_default()
        });
        let copied = std::io::copy(&mut File::from(layer.read), out);
        let code = exit_code(&conn, exec_id)?;
        let said = said.join().unwrap_or_default();
        if code != 0 {
            bail!("the guest could not write the layer: {}", said.trim());
        }
        copied.context("receiving the layer from the guest")?;
        Ok(())
    }

    fn release(&self, rec: &Record) -> Result<()> {
        // A monitor that died left its VMM behind.
        self.stop_orphan_vmm(&rec.id, rec.pid);
        Ok(())
    }
}

/// Waits for guest process `id` (an exec'd one, or `Diff`'s writer) and
/// returns its exit code.
fn exit_code(conn: &AgentConn, id: String) -> Result<i32> {
    match conn.request(Request::Wait { id })? {
        Response::Exited { code, .. } => Ok(code),
        other => bail!("the guest agent answered wait with {other:?}"),
    }
}

fn start(conn: &AgentConn, rec: &Record) -> Result<()> {
    conn.request(Request::Start {
        container_id: rec.id.clone(),
    })
    .map(|_| ())
}

fn kill(conn: &AgentConn, rec: &Record, signal: Signal) -> Result<()> {
    conn.request(Request::Signal {
        id: rec.id.clone(),
        signal: signal as i32,
    })
    .map(|_| ())
}

/// A VM-mode container this process created (or adopted): the agent
/// connection and, for the creator, the VMM child.
struct Vm {
    backend: MicroVmBackend,
    rec: Record,
    pid: i32,
    conn: Mutex<Option<Arc<AgentConn>>>,
    vmm: Mutex<Option<Child>>,
    /// The virtiofsd of each share (the creator's; an adopted VM's daemons
    /// exit with its VMM and are reaped by whoever inherits them).
    daemons: Mutex<Vec<shares::Daemon>>,
}

impl Vm {
    fn new(
        backend: &MicroVmBackend,
        rec: &Record,
        pid: i32,
        conn: Option<Arc<AgentConn>>,
        vmm: Option<Child>,
    ) -> Vm {
        Vm {
            backend: backend.clone(),
            rec: rec.clone(),
            pid,
            conn: Mutex::new(conn),
            vmm: Mutex::new(vmm),
            daemons: Mutex::new(Vec::new()),
        }
    }

    /// The agent connection, made on first use for an adopted VM. Cloned
    /// out: a blocking request (wait) must not keep others (a forwarded
    /// signal) from using it.
    fn conn(&self) -> Result<Arc<AgentConn>> {
        let mut held = self.conn.lock().unwrap();
        if let Some(c) = &*held {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(self.backend.connect(&self.rec)?);
        *held = Some(Arc::clone(&c));
        Ok(c)
    }
}

impl Sandbox for Vm {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn start(&self) -> Result<()> {
        start(&*self.conn()?, &self.rec)
    }

    fn kill(&self, signal: Signal) -> Result<()> {
        kill(&*self.conn()?, &self.rec, signal)
    }

    fn wait(&self) -> Result<Exit> {
        self.wait_then(&mut || Ok(()))
    }

    fn wait_then(&self, after_exit: &mut dyn FnMut() -> Result<()>) -> Result<Exit> {
        let rec = &self.rec;
        let reply = self
            .conn()
            .and_then(|c| c.request(Request::Wait { id: rec.id.clone() }));
        let mut exit = match reply {
            Ok(Response::Exited { code, oom_killed }) => Exit {
                code,
                oom_killed,
                error: None,
            },
            Ok(other) => Exit {
                code: EXIT_CAPSA_ERROR,
                oom_killed: false,
                error: Some(format!("the guest agent answered wait with {other:?}")),
            },
            Err(e) => Exit {
                code: EXIT_CAPSA_ERROR,
                oom_killed: false,
                error: Some(format!("{e:#}")),
            },
        };
        if exit.error.is_none() {
            exit = exit.after(after_exit());
        }
        // Power the guest off and collect the VMM.
        let conn = self.conn.lock().unwrap().take();
        let vmm = self.vmm.lock().unwrap().take();
        if let Some(c) = conn {
            if rec.sandbox.is_some() {
                // The VM is the sandbox's: only this container goes.
                let _ = c.request(Request::Delete {
                    container_id: rec.id.clone(),
                });
            } else {
                let _ = c.request(Request::Shutdown);
            }
        }
        if let Some(mut child) = vmm {
            let status = wait_child(&mut child, Duration::from_secs(10));
            shares::reap(&mut self.daemons.lock().unwrap(), Duration::from_secs(5));
            if exit.error.is_some() {
                // The agent is gone: say what happened to the VM.
                use std::os::unix::process::ExitStatusExt;
                match status.and_then(|s| s.signal()) {
                    Some(9) => {
                        exit.code = 137;
                        exit.error = Some("the microVM (capsa-vmm) was killed with SIGKILL".into());
                    }
                    _ => {
                        let how = match status {
                            Some(s) => format!("capsa-vmm {s}"),
                            None => "capsa-vmm did not exit".into(),
                        };
                        exit.error = Some(format!(
                            "the microVM stopped unexpectedly ({}; {how}): {}",
                            exit.error.unwrap_or_default(),
                            self.backend.vmm_failure(&rec.id)
                        ));
                    }
                }
            }
        }
        Ok(exit)
    }

    fn release(&self) -> Result<()> {
        self.conn.lock().unwrap().take();
        if let Some(mut child) = self.vmm.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
            shares::stop(&mut self.daemons.lock().unwrap());
            self.backend.stop_orphan_vmm(&self.rec.id, None);
        } else {
            // Adopted: the dead monitor's VMM is ours to stop.
            self.backend.stop_orphan_vmm(&self.rec.id, Some(self.pid));
        }
        Ok(())
    }
}

fn agent_timeout() -> Duration {
    std::env::var("CAPSA_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

/// What a live capsa-vmm's threads are doing, for the message when its guest
/// does not answer: a vCPU thread that used all the CPU it could is running
/// (or spinning in the host's KVM); one blocked shows where (its wchan).
/// Empty when the process is gone.
fn vmm_threads(pid: i32) -> String {
    let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) else {
        return String::new();
    };
    let ticks = procfs::ticks_per_second() as f64;
    let threads: Vec<String> = tasks
        .flatten()
        .filter_map(|t| {
            let stat = t.stat().ok()?;
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{}/wchan", t.tid))
                .unwrap_or_default();
            let wchan = match wchan.trim() {
                "" | "0" => String::new(),
                w => format!(" in {w}"),
            };
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            Some(format!(
                "{} {} {cpu:.1} s CPU{wchan}",
                stat.comm, stat.state
            ))
        })
        .collect();
    if threads.is_empty() {
        return String::new();
    }
    format!(" (capsa-vmm's threads: {})", threads.join(", "))
}

/// Where a VM-mode container keeps the configuration its VM booted with.
fn vm_config_file(paths: &ContainerPaths) -> PathBuf {
    paths.dir.join("vm.json")
}

/// The memory (bytes) and vCPUs a VM-mode container's VM booted with:
/// fixed for the VM's life (nothing is hot-plugged).
pub fn booted_size(paths: &ContainerPaths) -> Result<(u64, u64)> {
    let config = booted_config(paths)?;
    Ok((u64::from(config.mem_mib) << 20, u64::from(config.vcpus)))
}

/// The NICs a VM-mode container's VM booted with, spares included, in
/// slot order (their descriptors are the VMM's, meaningless here).
pub fn booted_nics(paths: &ContainerPaths) -> Result<Vec<capsa_vm_config::NetConfig>> {
    Ok(booted_config(paths)?.nets)
}

fn booted_config(paths: &ContainerPaths) -> Result<VmConfig> {
    let file = vm_config_file(paths);
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))
}

/// The capsa-vmm process under a VM-mode container's monitor.
pub fn vmm_pid(rec: &Record) -> Option<i32> {
    // `capsa run`'s record holds the VMM's PID itself.
    if let Some(pid) = rec.pid.filter(|p| is_vmm(*p)) {
        return Some(pid);
    }
    let monitor = rec.monitor_pid?;
    let children =
        std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| is_vmm(*p))
}

/// Whether `pid` runs capsa-vmm.
pub(crate) fn is_vmm(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"capsa-vmm"))
        })
        .unwrap_or(false)
}

/// Has the kernel kill the child when the process that spawned it dies.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// What a VM's host processes may use beyond its guest's memory (the
/// VMM's heap, the virtqueues' buffers, the page cache of the disks and
/// shared files read for it, the share daemons'), and how many tasks they
/// may have (the VMM's vCPU and device threads, the daemons'; neither
/// starts other processes).
const VMM_MEMORY_HEADROOM: u64 = 256 << 20;
const VMM_TASKS: u64 = 128;

/// Has `cmd`'s process join `cgroup` first thing in the child, before it
/// executes.
fn join_on_exec(cmd: &mut Command, cgroup: &capsa_container::cgroup::LimitedCgroup) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fds: Vec<i32> = cgroup.procs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: write(2) is async-signal-safe; the files outlive the spawn.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` as the first process (PID 1) of a PID namespace of its
/// own. Only this thread's children go there, and only until the setns
/// back: the thread spawns into the host's namespace again after, and
/// stays the child's parent (a parent-death signal is about the thread).
fn spawn_in_own_pid_ns(cmd: &mut Command) -> std::io::Result<Child> {
    use nix::sched::{setns, unshare, CloneFlags};
    let host = File::open("/proc/thread-self/ns/pid")?;
    unshare(CloneFlags::CLONE_NEWPID)?;
    let spawned = cmd.spawn();
    if let Err(e) = setns(&host, CloneFlags::CLONE_NEWPID) {
        // This thread's next child would land in a namespace that dies
        // with this one: never go on like that.
        if let Ok(mut child) = spawned {
            let _ = child.kill();
            let _ = child.wait();
        }
        return Err(std::io::Error::other(format!(
            "returning to the host's PID namespace: {e}"
        )));
    }
    spawned
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_error_line_wins_over_log_lines() {
        let stderr = "\x1b[2m2025\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2mcapsa_vmm::pvm\x1b[0m\x1b[2m:\x1b[0m PVM host: running anyway\n\
                      capsa-vmm: cannot load the kernel /k: bad magic\n";
        assert_eq!(
            vmm_error_line(stderr).as_deref(),
            Some("cannot load the kernel /k: bad magic")
        );
        assert_eq!(
            vmm_error_line("\x1b[31mboom\x1b[0m\n").as_deref(),
            Some("boom")
        );
        assert_eq!(vmm_error_line(" \n\n"), None);
    }

    #[test]
    fn a_file_that_is_no_kernel_is_refused_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        let text = d.path().join("passwd");
        std::fs::write(&text, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzimage = d.path().join("bzImage");
        std::fs::write(&bzimage, bz).unwrap();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16] = 2;
        elf[18] = 62;
        let vmlinux = d.path().join("vmlinux");
        std::fs::write(&vmlinux, &elf).unwrap();
        elf[18] = 183; // aarch64
        let arm = d.path().join("arm64");
        std::fs::write(&arm, &elf).unwrap();
        for (path, want) in [
            (text.clone(), "is not a kernel image"),
            (bzimage, "bzImage"),
            (arm, "not an x86-64 kernel"),
            (d.path().join("missing"), "no such file"),
            (d.path().to_path_buf(), "not a regular file"),
        ] {
            let e = check_host(Some(&path)).unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.contains(want) && msg.contains(&path.display().to_string()),
                "{msg}"
            );
            assert!(!msg.contains('\n') && !msg.contains('\x1b'), "{msg}");
            assert_eq!(
                e.downcast_ref::<CodedError>().unwrap().code,
                EXIT_CAPSA_ERROR
            );
        }
        guest::check_kernel_file(&vmlinux).unwrap();
    }
}
