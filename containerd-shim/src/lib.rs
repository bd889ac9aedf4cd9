//! `containerd-shim-capsa-v2`: containerd's shim v2 task service over the
//! lifecycle core.
//!
//! containerd starts the shim binary once per container (or once per pod
//! sandbox: containers carrying the same `io.kubernetes.cri.sandbox-id`
//! annotation share one shim process) and talks to it over ttrpc. Every task
//! call is a thin layer over [`capsa_shim::oci`] — the same create/start/kill/
//! delete/exec the runc-compatible commands use — so the isolation mode is
//! chosen per container by the bundle's `io.capsa.isolation` annotation
//! (`container`, the default, or `vm`) exactly as it is for `capsa create`.
//!
//! What the shim itself owns:
//! - the stdio fifos containerd hands it ([`io`]);
//! - the rootfs mounts of the create request (mounted on `bundle/rootfs`
//!   before `oci::create`, unmounted on delete);
//! - reaping: it is a child subreaper and reports each process's exit
//!   ([`reaper`]) as a `TaskExit` event and to `Wait`;
//! - the task events (create, start, exit, exec-added, exec-started, delete).
//!
//! capsa's state for the shim lives under `/run/capsa/containerd/<namespace>`
//! (`$CAPSA_SHIM_ROOT/<namespace>` when that is set).

mod io;
mod reaper;
mod service;

use std::path::PathBuf;

pub use service::Service;

use capsa_shim::paths::Roots;

/// The runtime name containerd knows the shim by (`--runtime io.containerd.capsa.v2`).
pub const RUNTIME_ID: &str = "io.containerd.capsa.v2";

/// Containers of one pod sandbox share a shim process (the CRI plugin sets it).
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Overrides the base directory of the shim's capsa state.
pub const ROOT_ENV: &str = "CAPSA_SHIM_ROOT";
const DEFAULT_ROOT: &str = "/run/capsa/containerd";

/// capsa's state roots for containerd namespace `namespace`.
pub fn roots(namespace: &str) -> Roots {
    let base = std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    Roots::new(Some(&base.join(namespace)))
}

/// The shim binary's `main`.
///
/// containerd runs the binary three ways: `start` (start or find the shim
/// process and print its address), `delete` (clean up after a dead shim) —
/// both left to the containerd-shim crate — and with no action, as the
/// long-running ttrpc server, which is served here: the crate's server only
/// answers task API v3 (containerd 2), and Debian 12's containerd 1.6 calls
/// v2. The two carry the same messages, so the one task service is
/// registered under both names.
pub fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    match containerd_shim::parse(&args) {
        Ok(flags) if flags.action.is_empty() && !flags.info && !flags.version => {
            if let Err(e) = serve(&flags) {
                eprintln!("{RUNTIME_ID}: {e:#}");
                std::process::exit(1);
            }
        }
        _ => containerd_shim::run::<Service>(RUNTIME_ID, Some(config())),
    }
}

fn config() -> containerd_shim::Config {
    containerd_shim::Config {
        // The shim reaps its children itself: see `reaper`.
        no_reaper: true,
        ..Default::default()
    }
}

const TASK_V3: &str = "/containerd.task.v3.Task/";
const TASK_V2: &str = "/containerd.task.v2.Task/";

fn serve(flags: &containerd_shim::Flags) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    use containerd_shim::protos::shim::shim_ttrpc::create_task;
    use containerd_shim::protos::ttrpc::Server;
    use containerd_shim::Shim;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Arc;

    if flags.namespace.is_empty() || flags.socket.is_empty() {
        bail!("-namespace and -socket are required");
    }
    capsa_shim::monitor::keeper::become_subreaper()?;
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .context("opening containerd's log fifo")?;

    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                // The sandbox's shim already serves this address.
                containerd_shim::util::write_address(&flags.socket)?;
                signal_started();
                return Ok(());
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)?
        }
        Err(e) => return Err(e).with_context(|| format!("binding {path}")),
    };

    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").context("containerd did not set TTRPC_ADDRESS")?;
    let publisher = containerd_shim::publisher::RemotePublisher::new(&ttrpc_address)
        .context("connecting to containerd's event service")?;
    let mut config = config();
    let mut shim = Service::new(RUNTIME_ID, flags, &mut config);
    let task: Arc<dyn containerd_shim::Task + Send + Sync> =
        Arc::new(shim.create_task_service(publisher));
    let mut methods = create_task(task.clone());
    for (name, handler) in create_task(task) {
        if let Some(method) = name.strip_prefix(TASK_V3) {
            methods.insert(format!("{TASK_V2}{method}"), handler);
        }
    }
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())?
        .register_service(methods);
    server.start()?;
    signal_started();
    shim.wait();
    server.shutdown();
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// The `start` action reads this process's stdout until it closes: that is
/// the sign the server is up.
fn signal_started() {
    // SAFETY: dup2 onto our own stdout.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}
