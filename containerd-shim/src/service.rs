//! The shim's two faces: [`Shim`] (the `start`/`delete` subcommands
//! containerd runs) and [`Task`] (the ttrpc task service of the running
//! shim). Each task call maps onto one [`capsa_shim::oci`] call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::api::{self, Status};
use containerd_shim::protos::api::ProcessInfo;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, Shim, StartOpts, TtrpcContext, TtrpcResult,
};
use nix::sys::signal::Signal;

use crate::io::{self, IoHandles, StdioPaths};
use crate::reaper::{ExitInfo, Reaper};
use capsa_shim::oci;
use capsa_shim::paths::Roots;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcState {
    Created,
    Running,
    Paused,
    Stopped,
}

/// The container's init process (exec id "") or one exec'd process.
struct Proc {
    pid: i32,
    state: ProcState,
    exit: Option<ExitInfo>,
    stdio: StdioPaths,
    io: Option<IoHandles>,
    /// The process spec of an exec, until it is started.
    spec: Option<oci_spec::runtime::Process>,
}

impl Proc {
    fn new(stdio: StdioPaths) -> Proc {
        Proc {
            pid: 0,
            state: ProcState::Created,
            exit: None,
            stdio,
            io: None,
            spec: None,
        }
    }
}

struct Container {
    bundle: PathBuf,
    /// `bundle/rootfs` when the shim mounted the request's rootfs there.
    mounted_rootfs: Option<PathBuf>,
    init: Proc,
    execs: HashMap<String, Proc>,
}

impl Container {
    fn proc(&self, exec_id: &str) -> TtrpcResult<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| not_found(format!("exec {exec_id} not found")))
    }
}

type Event = (&'static str, Box<dyn MessageDyn>);

struct Inner {
    namespace: String,
    roots: Roots,
    exit: ExitSignal,
    containers: Mutex<HashMap<String, Container>>,
    /// Signalled whenever a process stops.
    stopped: Condvar,
    events: OnceLock<Mutex<Sender<Event>>>,
    reaper: OnceLock<Arc<Reaper>>,
}

/// The shim: one per container, or per pod sandbox.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
    id: String,
}

fn ttrpc_err(
    code: containerd_shim::protos::ttrpc::Code,
    msg: String,
) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        code, msg,
    ))
}

fn not_found(msg: String) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(containerd_shim::protos::ttrpc::Code::NOT_FOUND, msg)
}

fn failed(msg: String) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
        msg,
    )
}

/// An error of the lifecycle core, with its whole cause chain.
fn internal(e: anyhow::Error) -> containerd_shim::protos::ttrpc::Error {
    ttrpc_err(
        containerd_shim::protos::ttrpc::Code::UNKNOWN,
        format!("{e:#}"),
    )
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

fn exited_at(p: &Proc) -> MessageField<Timestamp> {
    MessageField::from_option(p.exit.map(|e| timestamp(e.at)))
}

/// The sandbox a bundle's container belongs to (its own id outside a pod).
fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("annotations")?
                .get(super::SANDBOX_ID_ANNOTATION)?
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| id.to_string())
}

/// Mounts the request's rootfs mounts (an overlay from the overlayfs
/// snapshotter, a bind mount from the native one) on `rootfs`. Done here
/// rather than with the containerd-shim crate's helper, which forks and
/// waits through the crate's own reaper (disabled: see `reaper`).
fn mount_rootfs(
    mounts: &[containerd_shim::protos::api::Mount],
    rootfs: &Path,
) -> anyhow::Result<()> {
    use nix::mount::MsFlags;
    std::fs::create_dir_all(rootfs)?;
    for m in mounts {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &m.options {
            match o.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => flags -= MsFlags::MS_RDONLY,
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                "relatime" => flags |= MsFlags::MS_RELATIME,
                "rprivate" | "private" | "rslave" | "slave" | "defaults" => {}
                other => data.push(other),
            }
        }
        let fstype = Some(m.type_.as_str()).filter(|t| !t.is_empty() && *t != "bind");
        let data = data.join(",");
        nix::mount::mount(
            Some(m.source.as_str()),
            rootfs,
            fstype,
            flags,
            Some(data.as_str()).filter(|d| !d.is_empty()),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "mounting the rootfs ({}) on {}: {e}",
                m.type_,
                rootfs.display()
            )
        })?;
    }
    Ok(())
}

fn unmount_rootfs(rootfs: &Path) {
    if let Err(e) = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            containerd_shim::warn!("unmounting {}: {e}", rootfs.display());
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap()
    }

    fn reaper(&self) -> &Reaper {
        self.reaper.get().expect("the task service runs the reaper")
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if let Some(tx) = self.events.get() {
            let _ = tx.lock().unwrap().send((topic, event));
        }
    }

    /// The reaper saw `exit.pid` end.
    fn exited(&self, exit: ExitInfo) {
        let mut containers = self.lock();
        for (cid, c) in containers.iter_mut() {
            let procs = std::iter::once((cid.clone(), &mut c.init))
                .chain(c.execs.iter_mut().map(|(eid, p)| (eid.clone(), p)));
            for (pid_id, p) in procs {
                if p.pid == exit.pid && p.state != ProcState::Stopped {
                    p.state = ProcState::Stopped;
                    p.exit = Some(exit);
                    self.publish(
                        topics::TASK_EXIT_EVENT_TOPIC,
                        Box::new(TaskExit {
                            container_id: cid.clone(),
                            id: pid_id,
                            pid: exit.pid as u32,
                            exit_status: exit.status,
                            exited_at: MessageField::some(timestamp(exit.at)),
                            ..Default::default()
                        }),
                    );
                    self.stopped.notify_all();
                    return;
                }
            }
        }
    }
}

impl Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                roots: super::roots(&args.namespace),
                exit: ExitSignal::default(),
                containers: Mutex::new(HashMap::new()),
                stopped: Condvar::new(),
                events: OnceLock::new(),
                reaper: OnceLock::new(),
            }),
            id: args.id.clone(),
        }
    }

    /// `containerd-shim-capsa-v2 start`: start (or find) the shim process
    /// of this container's sandbox and print its address.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let cwd = std::env::current_dir().unwrap_or_default();
        let group = grouping(&cwd, &opts.id);
        let legacy = opts.containerd_version.is_empty();
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        if legacy {
            // containerd before 2.3 starts shims the old way. The crate then
            // answers in JSON, which containerd 1.6 (Debian 12's) cannot read:
            // it dials the whole reply as a socket path. Every version reads
            // the bare address, so answer that and end here.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(address.as_bytes()).and_then(|_| out.flush());
            std::process::exit(0);
        }
        Ok(address)
    }

    /// `containerd-shim-capsa-v2 delete`: containerd cleans up after a shim
    /// that died (cwd is the bundle). Frees whatever capsa still holds.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let roots = &self.inner.roots;
        if let Err(e) = oci::delete(roots, &self.id, true) {
            containerd_shim::warn!("deleting {}: {e:#}", self.id);
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        unmount_rootfs(&cwd.join("rootfs"));
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let (tx, rx) = channel::<Event>();
        let ns = self.inner.namespace.clone();
        std::thread::spawn(move || {
            for (topic, event) in rx {
                if let Err(e) = publisher.publish(Context::default(), topic, &ns, event) {
                    containerd_shim::warn!("publishing {topic}: {e}");
                }
            }
        });
        let _ = self.inner.events.set(Mutex::new(tx));
        let inner = self.inner.clone();
        let _ = self
            .inner
            .reaper
            .set(Reaper::start(move |exit| inner.exited(exit)));
        self.clone()
    }
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
    }
}

/// A short, unique-enough tag for socket names (paths must stay < 108 bytes).
fn tag(id: &str, exec_id: &str) -> String {
    let short = |s: &str| s.chars().take(12).collect::<String>();
    if exec_id.is_empty() {
        short(id)
    } else {
        format!("{}-{}", short(id), short(exec_id))
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        if inner.lock().contains_key(&req.id) {
            return Err(ttrpc_err(
                containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let rootfs = bundle.join("rootfs");
        let mounted = if req.rootfs.is_empty() {
            None
        } else {
            mount_rootfs(&req.rootfs, &rootfs).map_err(internal)?;
            Some(rootfs.clone())
        };
        let undo = || {
            if let Some(r) = &mounted {
                unmount_rootfs(r);
            }
        };
        let (process_io, pending) =
            match io::prepare(&stdio, &inner.roots.sockets(), &tag(&req.id, "")) {
                Ok(x) => x,
                Err(e) => {
                    undo();
                    return Err(internal(e));
                }
            };
        let reaper = inner.reaper();
        let busy = reaper.busy();
        let pid = match oci::create(&inner.roots, &req.id, &bundle, process_io) {
            Ok(pid) => pid,
            Err(e) => {
                drop(busy);
                undo();
                return Err(internal(e));
            }
        };
        let mut init = Proc::new(stdio.clone());
        init.pid = pid;
        init.io = Some(pending.finish());
        inner.lock().insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                mounted_rootfs: mounted,
                init,
                execs: HashMap::new(),
            },
        );
        reaper.track(pid);
        drop(busy);
        inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let inner = &self.inner;
        if req.exec_id.is_empty() {
            let pid = {
                let containers = inner.lock();
                let c = containers
                    .get(&req.id)
                    .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
                if c.init.state != ProcState::Created {
                    return Err(failed(format!("container {} was already started", req.id)));
                }
                c.init.pid
            };
            {
                let _busy = inner.reaper().busy();
                oci::start(&inner.roots, &req.id).map_err(internal)?;
            }
            if let Some(c) = inner.lock().get_mut(&req.id) {
                if c.init.state == ProcState::Created {
                    c.init.state = ProcState::Running;
                }
            }
            inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }

        let (spec, stdio) = {
            let containers = inner.lock();
            let c = containers
                .get(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            let p = c.proc(&req.exec_id)?;
            if p.state != ProcState::Created {
                return Err(failed(format!("exec {} was already started", req.exec_id)));
            }
            (p.spec.clone().unwrap_or_default(), p.stdio.clone())
        };
        let (process_io, pending) =
            io::prepare(&stdio, &inner.roots.sockets(), &tag(&req.id, &req.exec_id))
                .map_err(internal)?;
        let reaper = inner.reaper();
        let busy = reaper.busy();
        let pid = oci::exec(
            &inner.roots,
            &req.id,
            &spec,
            process_io,
            &Default::default(),
        )
        .map_err(internal)?;
        {
            let mut containers = inner.lock();
            if let Some(p) = containers
                .get_mut(&req.id)
                .and_then(|c| c.execs.get_mut(&req.exec_id))
            {
                p.pid = pid;
                p.state = ProcState::Running;
                p.io = Some(pending.finish());
            }
            reaper.track(pid);
        }
        drop(busy);
        inner.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let containers = self.inner.lock();
        let c = containers
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        let p = c.proc(&req.exec_id)?;
        let status = match p.state {
            ProcState::Created => Status::CREATED,
            ProcState::Running => Status::RUNNING,
            ProcState::Paused => Status::PAUSED,
            ProcState::Stopped => Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid as u32,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: p.exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exited_at(p),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let pids = oci::pids(&self.inner.roots, &req.id).map_err(internal)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = Signal::try_from(req.signal as i32)
            .map_err(|_| failed(format!("invalid signal {}", req.signal)))?;
        let pid = {
            let containers = self.inner.lock();
            let c = containers
                .get(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            let p = c.proc(&req.exec_id)?;
            if p.state == ProcState::Stopped {
                return Err(not_found(format!("process {} already finished", p.pid)));
            }
            p.pid
        };
        if req.exec_id.is_empty() {
            let _busy = self.inner.reaper().busy();
            oci::kill(&self.inner.roots, &req.id, signal, req.all).map_err(internal)?;
        } else {
            // The exec's process (its relay in VM mode) forwards the signal.
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .map_err(|e| internal(e.into()))?;
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let inner = &self.inner;
        if !req.exec_id.is_empty() {
            let mut containers = inner.lock();
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            let p = c.proc(&req.exec_id)?;
            if p.state == ProcState::Running || p.state == ProcState::Paused {
                return Err(failed(format!("exec {} is still running", req.exec_id)));
            }
            let p = c.execs.remove(&req.exec_id).expect("looked up above");
            return Ok(api::DeleteResponse {
                pid: p.pid as u32,
                exit_status: p.exit.map(|e| e.status).unwrap_or_default(),
                exited_at: exited_at(&p),
                ..Default::default()
            });
        }

        let running = {
            let containers = inner.lock();
            let c = containers
                .get(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            match c.init.state {
                ProcState::Running | ProcState::Paused => {
                    return Err(failed(format!("container {} is still running", req.id)))
                }
                ProcState::Created => true,
                ProcState::Stopped => false,
            }
        };
        {
            let _busy = inner.reaper().busy();
            oci::delete(&inner.roots, &req.id, running).map_err(internal)?;
        }
        let c = {
            let mut containers = inner.lock();
            if running {
                // A created container was killed by the delete: wait for the reaper.
                let deadline = std::time::Duration::from_secs(10);
                let (guard, _) = inner
                    .stopped
                    .wait_timeout_while(containers, deadline, |cs| {
                        cs.get(&req.id)
                            .is_some_and(|c| c.init.state != ProcState::Stopped)
                    })
                    .unwrap();
                containers = guard;
            }
            containers.remove(&req.id)
        };
        let Some(c) = c else {
            return Err(not_found(format!("container {} not found", req.id)));
        };
        if let Some(r) = &c.mounted_rootfs {
            unmount_rootfs(r);
        }
        let p = &c.init;
        let exit_status = p
            .exit
            .map(|e| e.status)
            .unwrap_or(128 + libc::SIGKILL as u32);
        inner.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: p.pid as u32,
                exit_status,
                exited_at: exited_at(p),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: p.pid as u32,
            exit_status,
            exited_at: exited_at(p),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| failed(format!("the exec's process spec is not valid JSON: {e}")))?;
        {
            let mut containers = self.inner.lock();
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
            if c.init.state != ProcState::Running {
                return Err(failed(format!("container {} is not running", req.id)));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(ttrpc_err(
                    containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let mut p = Proc::new(stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal));
            p.spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
        }
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let containers = self.inner.lock();
        let c = containers
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        let p = c.proc(&req.exec_id)?;
        if let Some(io) = &p.io {
            io.resize(req.width, req.height).map_err(internal)?;
        }
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let containers = self.inner.lock();
        let c = containers
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        if let Some(io) = &c.proc(&req.exec_id)?.io {
            io.close_stdin();
        }
        Ok(api::Empty::default())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        oci::pause(&self.inner.roots, &req.id).map_err(internal)?;
        if let Some(c) = self.inner.lock().get_mut(&req.id) {
            if c.init.state == ProcState::Running {
                c.init.state = ProcState::Paused;
            }
        }
        self.inner.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        oci::resume(&self.inner.roots, &req.id).map_err(internal)?;
        if let Some(c) = self.inner.lock().get_mut(&req.id) {
            if c.init.state == ProcState::Paused {
                c.init.state = ProcState::Running;
            }
        }
        self.inner.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let containers = self.inner.lock();
        let containers = self
            .inner
            .stopped
            .wait_while(containers, |cs| {
                cs.get(&req.id)
                    .and_then(|c| c.proc(&req.exec_id).ok())
                    .is_some_and(|p| p.state != ProcState::Stopped)
            })
            .unwrap();
        let c = containers
            .get(&req.id)
            .ok_or_else(|| not_found(format!("container {} not found", req.id)))?;
        let p = c.proc(&req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status: p.exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exited_at(p),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
        };
        let s = oci::stats(&self.inner.roots, &req.id).map_err(internal)?;
        let metrics = Metrics {
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: s.cpu.usage_usec * 1000,
                    user: s.cpu.user_usec * 1000,
                    kernel: s.cpu.system_usec * 1000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: s.memory.usage_bytes,
                    limit: s.memory.limit_bytes.unwrap_or(u64::MAX),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            pids: MessageField::some(PidsStat {
                current: s.pids.current,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| internal(anyhow::anyhow!("{e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .inner
            .lock()
            .get(&req.id)
            .map(|c| c.init.pid as u32)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // A sandbox's shim serves several containers: it ends with the last.
        if self.inner.lock().is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
