//! `capsa-agent`: PID 1 of capsa's microVM guests (see the library docs).
//!
//! On the host it only answers `--version`; capsa-shim builds the
//! initramfs that holds it.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use capsa_agent::cmdline::Settings;
use capsa_agent::guest::{self, say};
use capsa_agent::server::Agent;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

fn main() -> ExitCode {
    // An idle container's process (container::make_idle): PID 1 of the
    // container's namespace, not of the guest.
    if std::env::args().nth(1).as_deref() == Some(capsa_agent::container::IDLE_COMMAND) {
        loop {
            nix::unistd::pause();
        }
    }
    if std::process::id() == 1 {
        pid1()
    }
    match host_tool(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capsa-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "capsa-agent runs as PID 1 inside capsa's microVM guests (capsa builds \
their initramfs). On the host:\n  capsa-agent --version";

fn host_tool(args: Vec<String>) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("--version") => {
            println!("{}", capsa_agent::SOFTWARE_VERSION);
            Ok(())
        }
        // In the guest, started by the agent (Container::diff).
        Some(capsa_agent::container::DIFF_COMMAND) if matches!(args.len(), 3 | 4) => {
            capsa_agent::container::write_diff(
                args[1].as_ref(),
                args[2].as_ref(),
                args.get(3).map(String::as_str),
            )
        }
        _ => anyhow::bail!("{USAGE}"),
    }
}

/// PID 1: never returns, never panics out. Whatever happens, the guest ends
/// powered off with the reason on the console.
fn pid1() -> ! {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        say(&format!("internal error in thread {thread}: {msg}"));
    }));
    match std::panic::catch_unwind(run) {
        Ok(Ok(why)) => say(&format!("powering off: {why}")),
        Ok(Err(e)) => say(&format!("fatal: {:#}; powering off", e)),
        Err(_) => say("fatal: the agent panicked (see above); powering off"),
    }
    guest::power_off()
}

fn run() -> Result<String> {
    guest::console_init();
    guest::switch_root().context("leaving the initramfs")?;
    guest::mount_system()?;
    let settings = Settings::parse(&guest::kernel_cmdline()).map_err(anyhow::Error::msg)?;
    // libcontainer says why a step failed in its log (its errors carry
    // only the step): errors go to the console, everything with capsa.debug.
    let level = if settings.debug { "debug" } else { "error" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(|| guest::Console)
        .with_ansi(false)
        .without_time()
        .init();
    // Best effort: a guest without networking still runs containers.
    let _ = capsa_container::netif::up("lo");
    let _ = guest::set_hostname("capsa");
    let agent = Agent::new(settings.debug);
    agent.start_reaper().context("starting the reaper")?;
    let listener = vsock_listener(settings.port)?;
    say(&format!(
        "{} listening on vsock port {}",
        capsa_agent::SOFTWARE_VERSION,
        settings.port
    ));
    let acceptor = Arc::clone(&agent);
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || loop {
            match accept4(listener_fd(&listener), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => {
                    // SAFETY: accept4 just returned this descriptor; we own it.
                    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
                    let a = Arc::clone(&acceptor);
                    let _ = std::thread::Builder::new()
                        .name("conn".into())
                        .spawn(move || a.serve(stream));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    acceptor.request_poweroff(format!("accepting vsock connections failed: {e}"));
                    return;
                }
            }
        })
        .context("starting the vsock acceptor")?;
    let why = agent.wait_for_poweroff(settings.create_timeout);
    agent.teardown(Duration::from_secs(2));
    Ok(why)
}

fn listener_fd(fd: &OwnedFd) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn vsock_listener(port: u32) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a vsock socket (is the guest kernel built with VIRTIO_VSOCKETS?)")?;
    use std::os::fd::AsRawFd;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
        .with_context(|| format!("binding vsock port {port}"))?;
    listen(&fd, Backlog::new(16).expect("16 is a valid backlog"))
        .with_context(|| format!("listening on vsock port {port}"))?;
    Ok(fd)
}
