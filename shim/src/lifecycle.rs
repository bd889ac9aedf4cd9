//! The user-facing operations on containers, the same for every backend:
//! create, run (through the monitor), stop, kill, wait, exec, remove.

use std::fs;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsa_image::spec::{BindMount, RunConfig};
use capsa_image::Store;
use nix::sys::signal::Signal;

use crate::backend::{Backend, ExecRequest, ProcessIo};
pub use crate::backends::{backend_for, remove_files};
use crate::paths::{ContainerPaths, Roots};
pub use crate::record::Isolation;
use crate::record::{Record, Status};
use crate::{CodedError, EXIT_CAPSA_ERROR};

pub struct CreateRequest {
    pub name: Option<String>,
    pub image: String,
    pub run: RunConfig,
    pub isolation: Isolation,
    pub auto_remove: bool,
    pub interactive: bool,
    /// How much log to keep (`--log-opt`).
    pub log: crate::logs::LogLimits,
    /// `--storage-opt size`: the writable layer's bound, in bytes.
    pub storage_size: Option<u64>,
    /// `--restart`.
    pub restart: crate::monitor::restart::RestartPolicy,
    /// VM mode: a guest kernel to use instead of capsa's own.
    pub kernel: Option<PathBuf>,
    /// The networks to join and ports to publish; None: `run.network` alone
    /// (none or host).
    pub network: Option<capsa_network::Request>,
    /// `--network container:NAME`: share that running container's network
    /// namespace, hostname and /etc/hosts and resolv.conf.
    pub network_of: Option<String>,
    /// `--label`s, added to (and over) the image's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--health-*`, over the image's HEALTHCHECK.
    pub health: crate::health::HealthFlags,
    /// `--stop-signal` (checked), over the image's STOPSIGNAL.
    pub stop_signal: Option<String>,
    /// `--stop-timeout`: `stop`'s wait before SIGKILL without -t.
    pub stop_timeout: Option<u64>,
    /// `--userns`.
    pub userns: crate::userns::Mode,
}

/// Prepares a container: record, writable layer, root filesystem, bundle.
/// On any failure everything it made is removed again.
pub fn create(roots: &Roots, store: &Store, mut req: CreateRequest) -> Result<Record> {
    if req.storage_size.is_some() && req.isolation == Isolation::Container {
        crate::writable::check_loop_devices()?;
    }
    let mut clock = std::time::Instant::now();
    let backend = backend_for(roots, req.isolation)?;
    if req.isolation == Isolation::Vm {
        // Flags the mode cannot honour are refused before anything is
        // made: before the host check, and long before an image's VM disk
        // is built.
        check_vm_flags(&req.run)?;
        if let Some(other) = &req.network_of {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "--network container:{other} cannot be given to a VM-mode container: \
                     its guest has a network stack of its own"
                ),
            )
            .into());
        }
        crate::microvm::check_host(req.kernel.as_deref())?;
    }
    let id = capsa_network::random_id()?;
    let name = match req.name.take() {
        Some(n) => {
            validate_name(&n)?;
            n
        }
        None => generated_name(&id),
    };
    // The name and the image are claimed under the containers lock, and the
    // record that claims them is on disk before the lock is released: two
    // creates cannot both take one name, and `rmi` (which checks users under
    // the same lock) cannot remove the image under a starting container.
    let (image, mut rec, network_of) = {
        let _lock = crate::record::lock_containers(roots)?;
        let image = resolve_image(store, &req.image)?;
        let image_check = store.raw_config(&image).ok().and_then(|c| {
            serde_json::from_value(c.get("config")?.get("Healthcheck")?.clone()).ok()
        });
        let healthcheck = crate::health::HealthConfig::resolve(image_check, &req.health)
            .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
        let existing = Record::list(roots)?;
        if existing.iter().any(|r| r.name == name) {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!("the container name {name:?} is already in use; remove that container or choose another --name"),
            )
            .into());
        }
        let network_of = match &req.network_of {
            Some(other) => Some(share_network_of(roots, other, &mut req.run)?),
            None => None,
        };
        let mut rec = Record::new(&id, &name, req.isolation, Vec::new());
        // Named volumes are found or made, and claimed by this record
        // before the lock goes (`volume rm` takes it too).
        for m in req.run.mounts.iter_mut() {
            if let Some(v) = &m.volume {
                m.src = crate::volumes::create(roots, v, Default::default())?
                    .0
                    .mountpoint;
                if !rec.volumes.contains(v) {
                    rec.volumes.push(v.clone());
                }
            }
        }
        rec.image = req.image.clone();
        rec.image_id = image.id.clone();
        rec.auto_remove = req.auto_remove;
        rec.log = req.log;
        rec.storage_size = req.storage_size;
        rec.restart = req.restart;
        rec.interactive = req.interactive;
        rec.kernel = req.kernel.clone();
        rec.labels = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default()
            .into_iter()
            .chain(std::mem::take(&mut req.labels))
            .collect();
        rec.healthcheck = healthcheck;
        let range = match req.userns {
            crate::userns::Mode::Host => None,
            crate::userns::Mode::Auto { size } => Some(crate::userns::allocate(&existing, size)),
            crate::userns::Mode::Map(map) => {
                rec.userns_given = true;
                Some(crate::userns::claim(&existing, map))
            }
        };
        rec.userns = range
            .transpose()
            .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
        rec.create_dir(roots)?;
        (image, rec, network_of)
    };

    let paths = ContainerPaths::new(roots, &id);
    let mut guard = CreateGuard {
        backend: backend.as_ref(),
        paths: &paths,
        armed: true,
    };

    if let Some(mut net) = req.network.take() {
        let exposed = image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        crate::network::plan(&mut net, &exposed)?;
        // Pinned and set up by the monitor, just before the container starts.
        req.run.network = capsa_image::spec::Network::Namespace(capsa_network::netns_path(&id));
        rec.network = Some(net);
    }
    fs::create_dir_all(paths.bundle())?;
    if let Some(size) = req.storage_size {
        crate::writable::make(&paths, size)?;
    }
    backend.prepare_rootfs(&paths, store, &image, req.auto_remove, rec.userns.as_ref())?;

    req.run.container_id = id.clone();
    req.run.userns = rec.userns;
    let layers = store.layer_dirs(&image)?;
    for m in &req.run.mounts {
        if let Some(v) = &m.volume {
            crate::volumes::fill_from_image(
                &crate::volumes::get(roots, v)?,
                &layers,
                &m.dst,
                rec.userns.as_ref(),
                !m.nocopy,
            )?;
        }
    }
    let mut spec = capsa_image::spec::generate(&image, &paths.rootfs(), &layers, &req.run)
        .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(capsa_container::cgroup::cgroup_path(&id)));
    }
    // The same checks a runc bundle gets (a user of 4294967295 would run as
    // root, for one).
    crate::spec_check::check(&spec).map_err(|e| {
        CodedError::new(EXIT_CAPSA_ERROR, format!("invalid container settings: {e}"))
    })?;
    add_etc_files(&paths, &mut spec, &req.run, req.isolation)?;
    if let Some(other) = &network_of {
        // The other container's files as they are now (docker shares them).
        let theirs = ContainerPaths::new(roots, other);
        for f in ["hosts", "resolv.conf"] {
            if let Ok(content) = fs::read(theirs.dir.join(f)) {
                fs::write(paths.dir.join(f), content)?;
            }
        }
    }
    let command = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    if command.is_empty() {
        return Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!(
                "no command given and image {} has no default command (Cmd/Entrypoint)",
                req.image
            ),
        )
        .into());
    }
    let tty = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    give_to_the_user(&spec, &req.run.mounts)?;
    spec.save(paths.config())
        .with_context(|| format!("writing {}", paths.config().display()))?;

    let stop_signal = req.stop_signal.clone().unwrap_or_else(|| {
        image
            .config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
            .unwrap_or_else(|| "SIGTERM".into())
    });
    rec.stop_timeout = req.stop_timeout;
    rec.command = command;
    rec.tty = tty;
    rec.stop_signal = stop_signal;
    rec.save(roots)?;
    guard.armed = false;
    crate::events::emit(roots, &rec, "create", &[]);
    crate::timing::phase("host preparation (rootfs, bundle)", &mut clock);
    Ok(rec)
}

/// podman's `-v …:U`: each such mount's source becomes the container
/// user's, as host ids (through its user namespace's mapping, if it has
/// one).
fn give_to_the_user(spec: &oci_spec::runtime::Spec, mounts: &[BindMount]) -> Result<()> {
    let Some(user) = spec.process().as_ref().map(|p| p.user()) else {
        return Ok(());
    };
    if !mounts.iter().any(|m| m.chown) {
        return Ok(());
    }
    let map = capsa_container::idmap::own_mapping(spec);
    let on_host = |id: u32| -> Result<u32> {
        match map {
            None => Ok(id),
            Some(map) if id < map.size() => Ok(map.host_id() + id),
            Some(map) => Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "-v …:U: the container's user {id} is outside its user namespace's {} ids",
                    map.size()
                ),
            )
            .into()),
        }
    };
    let (uid, gid) = (on_host(user.uid())?, on_host(user.gid())?);
    for m in mounts.iter().filter(|m| m.chown) {
        crate::volumes::chown_tree(&m.src, uid, gid)?;
    }
    Ok(())
}

fn resolve_image(store: &Store, name: &str) -> Result<capsa_image::Image> {
    store.get(name).map_err(|e| {
        CodedError::new(
            EXIT_CAPSA_ERROR,
            format!(
                "{e}; load it with `capsa load -i FILE` (or `capsa load --demo`) or pull it with `capsa pull {name}`"
            ),
        )
        .into()
    })
}

/// Gives the container its own /etc/hostname and /etc/hosts (and, on the
/// host network, the host's /etc/resolv.conf; on a capsa network, one the
/// monitor writes when the network is set up), as docker does: images ship
/// placeholders or nothing at these paths. Only the mounts in VM mode: the
/// guest cannot see the host's files, and the agent writes the same ones
/// there (`guest_bind_sources`).
fn add_etc_files(
    paths: &ContainerPaths,
    spec: &mut oci_spec::runtime::Spec,
    run: &RunConfig,
    isolation: Isolation,
) -> Result<()> {
    let network = &run.network;
    use capsa_image::spec::Network;
    use oci_spec::runtime::MountBuilder;
    let hostname = spec.hostname().clone().unwrap_or_default();
    let mut files = vec![("hostname", capsa_container::etc_hostname(&hostname))];
    let hosts = match network {
        Network::Host => {
            fs::read_to_string("/etc/hosts").unwrap_or_default()
                // The host is the container's own 127.0.0.1.
                + &capsa_container::extra_hosts_lines(
                    spec.annotations().as_ref(),
                    Some(std::net::Ipv4Addr::LOCALHOST.into()),
                )
        }
        // Rewritten with the addresses once a network is set up.
        _ => capsa_container::etc_hosts(&hostname, None, None, spec.annotations().as_ref()),
    };
    files.push(("hosts", hosts));
    match network {
        Network::Host => {
            if let Ok(resolv) = fs::read_to_string("/etc/resolv.conf") {
                files.push(("resolv.conf", resolv));
            }
        }
        Network::Namespace(_) => files.push(("resolv.conf", String::new())),
        Network::None => {}
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (name, content) in files {
        let src = paths.dir.join(name);
        if isolation == Isolation::Container {
            fs::write(&src, content)?;
            // Root in the container may edit them, as with docker.
            if let Some(map) = &run.userns {
                capsa_container::idmap::chown_to_root(&src, map)?;
            }
        }
        mounts.push(
            MountBuilder::default()
                .destination(format!("/etc/{name}"))
                .typ("bind")
                .source(src)
                .options(vec!["rbind".into(), "rprivate".into()])
                .build()?,
        );
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// What VM mode cannot do, in one line each, before any work is done: the
/// guest has its own kernel and network stack, and single host files reach
/// it only as read-only copies (directories are shared, microvm::shares).
fn check_vm_flags(run: &RunConfig) -> Result<()> {
    let refuse = |msg: String| Err(CodedError::new(EXIT_CAPSA_ERROR, msg).into());
    if run.network == capsa_image::spec::Network::Host {
        return refuse(
            "--network host cannot be given to a VM-mode container: the guest has its own \
             network stack (use --isolation container to share the host's)"
                .into(),
        );
    }
    let shared_file = |m: &&capsa_image::spec::BindMount| {
        !m.readonly && m.src.is_file() && !crate::microvm::of_the_kernel(&m.src)
    };
    if let Some(m) = run.mounts.iter().find(shared_file) {
        return refuse(format!(
            "VM mode shares single files read-only (a copy): use -v {}:{}:ro, or share the directory that holds it",
            m.src.display(),
            m.dst
        ));
    }
    Ok(())
}

/// `--network container:NAME`: points `run` at that container's network
/// namespace (its pinned one, its init's, or the host's when it has none)
/// and takes its hostname; returns its ID. It must be a running
/// container-mode container: a VM-mode one's network lives inside its guest.
fn share_network_of(roots: &Roots, other: &str, run: &mut RunConfig) -> Result<String> {
    use capsa_image::spec::Network;
    let refuse =
        |msg: String| -> Result<String> { Err(CodedError::new(EXIT_CAPSA_ERROR, msg).into()) };
    let rec = Record::find(roots, other).map_err(|e| {
        CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("--network container:{other}: {e:#}"),
        )
    })?;
    if rec.isolation != Isolation::Container {
        return refuse(format!(
            "--network container:{other}: {} is a VM-mode container; its network is inside its guest",
            rec.name
        ));
    }
    let Some(pid) = rec.pid.filter(|_| rec.status().can_exec()) else {
        return refuse(format!(
            "--network container:{other}: {} is not running",
            rec.name
        ));
    };
    let spec = oci_spec::runtime::Spec::load(ContainerPaths::new(roots, &rec.id).config())?;
    run.network = match capsa_container::network_namespace(&spec) {
        None => Network::Host,
        Some(ns) => Network::Namespace(
            ns.path()
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/ns/net"))),
        ),
    };
    run.hostname = spec.hostname().clone();
    Ok(rec.id)
}

/// Removes a half-created container if `create` fails part-way.
struct CreateGuard<'a> {
    backend: &'a dyn Backend,
    paths: &'a ContainerPaths,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.backend.release_rootfs(self.paths);
            let _ = fs::remove_dir_all(&self.paths.dir);
        }
    }
}

pub(crate) fn find_running(roots: &Roots, key: &str) -> Result<Record> {
    check_running(Record::find(roots, key)?)
}

/// `rec` if it is running, else the one-line refusal `find_running` gives.
pub(crate) fn check_running(rec: Record) -> Result<Record> {
    if rec.status() == Status::Paused {
        return Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("container {} is paused: unpause it first", rec.name),
        )
        .into());
    }
    if !rec.status().can_exec() {
        return Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("container {} is not running", rec.name),
        )
        .into());
    }
    Ok(rec)
}

/// docker's `create`: the container `create` made stays Created, holding
/// nothing (its root is unmounted) until `start` (see [`prepare_start`]).
pub fn leave_created(roots: &Roots, mut rec: Record) -> Result<Record> {
    let backend = backend_for(roots, rec.isolation)?;
    backend.release_rootfs(&ContainerPaths::new(roots, &rec.id))?;
    rec.waiting_for_start = true;
    rec.save(roots)?;
    Ok(rec)
}

/// docker's `start` of a stopped container (or of one `create` made), up
/// to the monitor: its root filesystem back (the same writable layer) and
/// its record rearmed. Returns None if it is already running. The caller
/// starts the monitor (`monitor::supervise`, or `spawn` for a detached one).
pub fn prepare_start(roots: &Roots, store: &Store, key: &str) -> Result<Option<Record>> {
    prepare_start_if(roots, store, key, &|_| true)
}

/// [`prepare_start`] if `wanted` says so of the record, checked under the
/// containers' lock (a restart policy's restarter: not after a `stop`).
/// A start by hand clears the user's stop.
pub fn prepare_start_if(
    roots: &Roots,
    store: &Store,
    key: &str,
    wanted: &dyn Fn(&Record) -> bool,
) -> Result<Option<Record>> {
    let Held {
        mut rec,
        busy: _busy,
        all: _all,
    } = hold(roots, key)?;
    if !wanted(&rec) {
        return Ok(None);
    }
    let _ = fs::remove_file(ContainerPaths::new(roots, &rec.id).stopped_by_user());
    match rec.status() {
        Status::Running => return Ok(None),
        Status::Paused => {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!("container {} is paused: unpause it instead", rec.name),
            )
            .into())
        }
        Status::Created if rec.waiting_for_start => rec.waiting_for_start = false,
        // Between `run`'s create and its monitor's start: a second monitor
        // would race it.
        Status::Created => {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!("container {} is starting", rec.name),
            )
            .into())
        }
        Status::Stopped => rec.rearm()?,
    }
    let paths = remount_root(roots, store, &rec, rec.auto_remove)?;
    if let Err(e) = rec.save(roots) {
        let _ = backend_for(roots, rec.isolation)?.release_rootfs(&paths);
        return Err(e);
    }
    Ok(Some(rec))
}

/// A container held for a change: its own lock, the containers lock
/// (fields drop in this order), and its record read under both.
pub(crate) struct Held {
    pub(crate) rec: Record,
    pub(crate) busy: nix::fcntl::Flock<fs::File>,
    pub(crate) all: nix::fcntl::Flock<fs::File>,
}

/// Container `key` (ID, prefix or name), held for a change (see
/// [`crate::record::lock_container`]). A caller that goes on at length
/// drops `all` and keeps `busy`.
pub(crate) fn hold(roots: &Roots, key: &str) -> Result<Held> {
    let gone = |e: anyhow::Error| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}"));
    let id = Record::find(roots, key).map_err(gone)?.id;
    let busy = crate::record::lock_container(roots, &id)
        .map_err(|_| CodedError::new(EXIT_CAPSA_ERROR, format!("no such container: {key}")))?;
    let all = crate::record::lock_containers(roots)?;
    let rec = Record::load(roots, &id).map_err(gone)?;
    Ok(Held { rec, busy, all })
}

/// Mounts the root filesystem of `rec`, a container that holds none (stopped,
/// or waiting for `start`), back: its image under its own writable layer.
/// For `start`, and for `cp` with a stopped container.
pub(crate) fn remount_root(
    roots: &Roots,
    store: &Store,
    rec: &Record,
    ephemeral: bool,
) -> Result<ContainerPaths> {
    let image = store.get(&rec.image_id).map_err(|e| {
        CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("container {}: its image: {e}", rec.name),
        )
    })?;
    let paths = ContainerPaths::new(roots, &rec.id);
    backend_for(roots, rec.isolation)?.prepare_rootfs(
        &paths,
        store,
        &image,
        ephemeral,
        rec.userns.as_ref(),
    )?;
    Ok(paths)
}

/// A stopped VM-mode container's VM booted again ([`boot_stopped_vm`]),
/// and the container's own lock, held until it is powered off (fields
/// drop in this order).
pub(crate) struct StoppedVm {
    vm: crate::microvm::Maintenance,
    _busy: nix::fcntl::Flock<fs::File>,
}

impl StoppedVm {
    /// Powers the VM off: only then are its writes on its disks for good.
    pub(crate) fn finish(self) -> Result<()> {
        self.vm.finish()
    }
}

/// A stopped VM-mode container's VM booted again, the container idle in
/// it (its command does not run), for `cp` and `commit` to reach its
/// disks through the agent (crate::microvm::Maintenance), under `busy`,
/// the container's own lock (no `start` or `rm` of it races it). An
/// engine's container or a pod member is refused.
pub(crate) fn boot_stopped_vm(
    roots: &Roots,
    store: &Store,
    rec: &Record,
    busy: nix::fcntl::Flock<fs::File>,
) -> Result<StoppedVm> {
    let whose = match (&rec.bundle, &rec.sandbox) {
        (Some(_), _) => Some("was made from an engine's bundle"),
        (_, Some(_)) => Some("is a member of a pod"),
        _ => None,
    };
    if let Some(whose) = whose {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!(
                "container {} is stopped and {whose}: capsa boots no VM to reach its files; start it, then try again",
                rec.name
            ),
        ));
    }
    remount_root(roots, store, rec, false)?;
    Ok(StoppedVm {
        vm: crate::microvm::MicroVmBackend::new(roots).boot_stopped(rec)?,
        _busy: busy,
    })
}

/// docker's `update`: new memory, CPU and PIDs limits for a running
/// container, applied to its cgroup (in VM mode the one in the guest) and
/// kept in its spec, so `inspect` and a restart see them. In VM mode the
/// VM's size is fixed at boot: a limit beyond it is refused.
pub fn update(roots: &Roots, key: &str, limits: capsa_image::spec::Limits) -> Result<Record> {
    let rec = find_running(roots, key)?;
    let paths = ContainerPaths::new(roots, &rec.id);
    let mut spec = oci_spec::runtime::Spec::load(paths.config())?;
    if rec.isolation == Isolation::Vm {
        check_vm_limits(&paths, &limits)?;
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("the container's spec has no linux section")?;
    let mut resources = linux.resources().clone().unwrap_or_default();
    limits.apply_to(&mut resources);
    backend_for(roots, rec.isolation)?.update(&rec, &resources)?;
    linux.set_resources(Some(resources));
    spec.save(paths.config())
        .with_context(|| format!("writing {}", paths.config().display()))?;
    Ok(rec)
}

/// A VM-mode container's limits stay within its VM, as it booted.
fn check_vm_limits(paths: &ContainerPaths, limits: &capsa_image::spec::Limits) -> Result<()> {
    let (mem, vcpus) = crate::microvm::booted_size(paths)?;
    let (mem, vcpus) = (mem as i64, vcpus as i64);
    let refuse = |msg: String| Err(CodedError::new(EXIT_CAPSA_ERROR, msg).into());
    if let Some(limit) = limits.memory.as_ref().and_then(|m| m.limit()) {
        if limit > mem {
            return refuse(format!(
                "--memory {} MiB is more than this VM-mode container's VM has ({} MiB, fixed when it booted): run a new one with a larger --memory",
                limit >> 20,
                mem >> 20
            ));
        }
    }
    if let Some(cpu) = &limits.cpu {
        let (quota, period) = (cpu.quota().unwrap_or(0), cpu.period().unwrap_or(100_000));
        if quota > vcpus * period as i64 {
            return refuse(format!(
                "--cpus {:.2} is more than this VM-mode container's VM has ({vcpus} vCPUs, fixed when it booted): run a new one with more --cpus",
                quota as f64 / period as f64
            ));
        }
    }
    Ok(())
}

/// docker's `rename`. The name is changed under the containers lock, as
/// `create` claims one. A running container on a user network keeps its
/// name there (aardvark-dns answers it, and netavark cannot rename an
/// entry): that one is refused rather than left answering to the old name.
pub fn rename(roots: &Roots, key: &str, new_name: &str) -> Result<Record> {
    let refuse =
        |msg: String| -> Result<Record> { Err(CodedError::new(EXIT_CAPSA_ERROR, msg).into()) };
    validate_name(new_name)?;
    let _lock = crate::record::lock_containers(roots)?;
    let rec = Record::find(roots, key)
        .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
    if rec.bundle.is_some() {
        return refuse(format!(
            "container {} was made from an engine's bundle: it has no name to change",
            rec.id
        ));
    }
    if rec.name == new_name {
        return refuse(format!(
            "container {} is already named {new_name}",
            rec.short_id()
        ));
    }
    if Record::list(roots)?.iter().any(|r| r.name == new_name) {
        return refuse(format!("the container name {new_name:?} is already in use; remove that container or choose another name"));
    }
    let named_on = rec
        .network
        .iter()
        .flat_map(|n| &n.endpoints)
        .find(|e| e.network != capsa_network::DEFAULT_NETWORK);
    if let (Some(ep), true) = (named_on, rec.status().can_exec()) {
        return refuse(format!(
            "container {} is running on network {}, where other containers find it by name: stop it to rename it",
            rec.name, ep.network
        ));
    }
    let renamed = crate::record::with_record(roots, &rec.id, |r| r.name = new_name.to_string())
        .ok_or_else(|| {
            CodedError::new(EXIT_CAPSA_ERROR, format!("container {} is gone", rec.name))
        })?;
    crate::events::emit(roots, &renamed, "rename", &[("oldName", rec.name)]);
    Ok(renamed)
}

/// docker's `pause`: freezes every process of a running container (in VM
/// mode its whole VM).
pub fn pause(roots: &Roots, key: &str) -> Result<Record> {
    let rec = find_running(roots, key)?;
    crate::oci::freeze(roots, &rec, true)?;
    crate::events::emit(roots, &rec, "pause", &[]);
    Record::load(roots, &rec.id)
}

/// docker's `unpause`.
pub fn unpause(roots: &Roots, key: &str) -> Result<Record> {
    let rec = Record::find(roots, key)?;
    if rec.status() != Status::Paused {
        return Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("container {} is not paused", rec.name),
        )
        .into());
    }
    thawed(roots, rec)
}

/// A paused container is thawed before it is signalled, stopped or
/// removed (as docker does): a frozen process cannot act on a signal.
fn thawed(roots: &Roots, rec: Record) -> Result<Record> {
    if rec.status() != Status::Paused {
        return Ok(rec);
    }
    crate::oci::freeze(roots, &rec, false)?;
    crate::events::emit(roots, &rec, "unpause", &[]);
    Record::load(roots, &rec.id)
}

/// Sends a signal to a running container.
pub fn kill(roots: &Roots, key: &str, signal: Signal) -> Result<Record> {
    let rec = thawed(roots, Record::find(roots, key)?)?;
    let rec = find_running(roots, &rec.id)?;
    if signal == Signal::SIGKILL || Some(signal) == parse_signal(&rec.stop_signal) {
        mark_stopped_by_user(roots, &rec.id)?;
    }
    emit_kill(roots, &rec, signal);
    backend_for(roots, rec.isolation)?.kill(&rec, signal)?;
    Ok(rec)
}

/// The user stopped container `id`: its restart policy waits for a start.
fn mark_stopped_by_user(roots: &Roots, id: &str) -> Result<()> {
    let paths = ContainerPaths::new(roots, id);
    if paths.dir.exists() {
        fs::write(paths.stopped_by_user(), b"")?;
    }
    Ok(())
}

/// Logged before the signal is sent, so that it comes before the `die`
/// the signal may cause.
fn emit_kill(roots: &Roots, rec: &Record, signal: Signal) {
    let number = (signal as i32).to_string();
    crate::events::emit(roots, rec, "kill", &[("signal", number)]);
}

/// Stops a container: its stop signal, then SIGKILL after `timeout`.
/// docker's `stop`: the stop signal, then SIGKILL after `timeout` (None:
/// the container's --stop-timeout, else 10 s).
pub fn stop(roots: &Roots, key: &str, timeout: Option<Duration>) -> Result<Record> {
    let rec = thawed(roots, Record::find(roots, key)?)?;
    let timeout = timeout.unwrap_or(Duration::from_secs(rec.stop_timeout.unwrap_or(10)));
    // Also for a stopped one: a restart it waits for is called off.
    mark_stopped_by_user(roots, &rec.id)?;
    if rec.status() != Status::Running {
        return Ok(rec);
    }
    let backend = backend_for(roots, rec.isolation)?;
    let sig = parse_signal(&rec.stop_signal).unwrap_or(Signal::SIGTERM);
    // The process may exit between our read of the record and the signal.
    emit_kill(roots, &rec, sig);
    let _ = backend.kill(&rec, sig);
    let done = match wait_stopped(roots, &rec.id, Some(timeout))? {
        Some(done) => done,
        None => {
            emit_kill(roots, &rec, Signal::SIGKILL);
            let _ = backend.kill(&rec, Signal::SIGKILL);
            wait_stopped(roots, &rec.id, Some(Duration::from_secs(30)))?.ok_or_else(|| {
                CodedError::new(
                    EXIT_CAPSA_ERROR,
                    format!("container {} did not stop after SIGKILL", rec.name),
                )
            })?
        }
    };
    crate::events::emit(roots, &rec, "stop", &[]);
    Ok(done)
}

/// Waits until the container has stopped (or is gone, for `--rm`), up to
/// `timeout`. Returns the final record, or None on timeout.
pub fn wait_stopped(roots: &Roots, id: &str, timeout: Option<Duration>) -> Result<Option<Record>> {
    let start = Instant::now();
    let mut last: Option<Record> = None;
    loop {
        match Record::load(roots, id) {
            Ok(rec) if rec.status() == Status::Stopped => return Ok(Some(rec)),
            Ok(rec) => last = Some(rec),
            // Removed by --rm after it stopped: the last state we saw is all
            // we can report.
            Err(_) if !ContainerPaths::new(roots, id).dir.exists() => {
                return Ok(last.map(|mut r| {
                    // `last` was not stopped (else we had returned).
                    let _ = r.transition(Status::Stopped);
                    r
                }));
            }
            Err(_) => {}
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a container and everything it has on the host.
pub fn remove(roots: &Roots, key: &str, force: bool) -> Result<Record> {
    let rec = Record::find(roots, key)?;
    if let Some(why) = &rec.damaged {
        if !force {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "container {} is damaged ({why}): remove it with `capsa rm -f {}`",
                    rec.short_id(),
                    rec.short_id()
                ),
            )
            .into());
        }
        // Its record does not say which backend ran it: release both
        // (remove_files releases the namespace one).
        if let Ok(vm) = backend_for(roots, Isolation::Vm) {
            let _ = vm.release(&rec);
        }
        remove_files(roots, &rec)?;
        crate::events::emit(roots, &rec, "destroy", &[]);
        return Ok(rec);
    }
    let rec = if force { thawed(roots, rec)? } else { rec };
    if rec.status().is_up() {
        if !force {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "container {} is running: stop it first, or use `capsa rm -f`",
                    rec.name
                ),
            )
            .into());
        }
        let backend = backend_for(roots, rec.isolation)?;
        emit_kill(roots, &rec, Signal::SIGKILL);
        let _ = backend.kill(&rec, Signal::SIGKILL);
        wait_stopped(roots, &rec.id, Some(Duration::from_secs(30)))?;
    }
    // Under the container's own lock and the containers lock, as `start`
    // and the cp/commit of a stopped container take them: one of those
    // under way finishes first (its VM powered off), and none begins while
    // the files go. (No directory: an --rm container's monitor removed it.)
    let busy = crate::record::lock_container(roots, &rec.id).ok();
    let lock = crate::record::lock_containers(roots)?;
    let rec = match Record::load(roots, &rec.id) {
        Ok(now) if now.status().is_up() => {
            return Err(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "container {} was started again meanwhile: stop it first, or use `capsa rm -f`",
                    now.name
                ),
            )
            .into())
        }
        Ok(now) => now,
        Err(_) => rec,
    };
    // An --rm container's monitor may have removed it (and said so).
    let there = ContainerPaths::new(roots, &rec.id).dir.exists();
    remove_files(roots, &rec)?;
    drop(lock);
    drop(busy);
    if there {
        crate::events::emit(roots, &rec, "destroy", &[]);
    }
    // The monitor and its keeper save "stopped" before they end: without
    // this wait a removed container could leave them running a moment.
    let pids: Vec<i32> = [rec.monitor_pid, rec.keeper_pid]
        .into_iter()
        .flatten()
        .collect();
    crate::monitor::spawn::wait_monitors_gone(&rec.id, &pids, Duration::from_secs(5));
    Ok(rec)
}

/// Runs a process inside a running container and returns its exit code.
pub fn exec(roots: &Roots, key: &str, req: &ExecRequest, interactive: bool) -> Result<i32> {
    let rec = exec_target(roots, key, req)?;
    let backend = backend_for(roots, rec.isolation)?;
    crate::monitor::exec_attached(roots, backend.as_ref(), &rec, req, interactive)
}

/// docker's `exec -d`: starts a process inside a running container and
/// returns once it runs. Its streams are the null device in both modes
/// (no stream given: in VM mode the agent opens it in the guest), never
/// ours (a process could reopen the caller's through /proc/self/fd). It is
/// not waited for: in container mode it is our child, then (as any orphan)
/// our subreaper's or init's, which reaps it; in VM mode the agent keeps
/// it when our connection closes.
pub fn exec_detached(roots: &Roots, key: &str, req: &ExecRequest) -> Result<()> {
    let rec = exec_target(roots, key, req)?;
    let backend = backend_for(roots, rec.isolation)?;
    backend
        .exec(&rec, req, ProcessIo::default())
        .map_err(capsa_container::classify_start_error)?;
    Ok(())
}

/// The running container `key` names, once the request's ids are checked.
fn exec_target(roots: &Roots, key: &str, req: &ExecRequest) -> Result<Record> {
    if let Some((uid, gid)) = req.user {
        crate::spec_check::check_id(uid, "exec --user (uid)")
            .and_then(|()| crate::spec_check::check_id(gid, "exec --user (gid)"))
            .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, e.to_string()))?;
    }
    find_running(roots, key)
}

pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).ok()
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("invalid container name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// docker-style "adjective_noun" names, picked from the container ID.
fn generated_name(id: &str) -> String {
    const ADJ: [&str; 16] = [
        "brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nimble",
        "proud", "quiet", "sharp", "swift", "tidy", "witty",
    ];
    const NOUN: [&str; 16] = [
        "badger", "crane", "dolphin", "falcon", "gecko", "heron", "ibis", "koala", "lynx",
        "marten", "newt", "otter", "panda", "quokka", "raven", "wombat",
    ];
    let a = usize::from_str_radix(&id[0..1], 16).unwrap_or(0);
    let n = usize::from_str_radix(&id[1..2], 16).unwrap_or(0);
    format!("{}_{}_{}", ADJ[a], NOUN[n], &id[2..6])
}

/// Host-side path of a container's log (for `capsa logs`).
pub fn log_path(roots: &Roots, rec: &Record) -> PathBuf {
    ContainerPaths::new(roots, &rec.id).log()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn names_are_validated_like_docker() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn isolation_parses() {
        assert_eq!("vm".parse::<Isolation>(), Ok(Isolation::Vm));
        assert!("kvm".parse::<Isolation>().is_err());
    }
}
