//! The monitor: the process that owns one running container.
//!
//! For `capsa run` (this module) it creates the container (so it is the
//! parent of the container's first process), starts it, copies its output
//! into the log and, without `-d`, to the user's terminal, forwards
//! signals, waits for the exit, records the exit code (and whether the OOM
//! killer struck), and releases the host resources. For `-d` it runs
//! detached in its own session, started by [`spawn`]. For a container made
//! from an engine's bundle, [`bundle`] is the monitor (started the same
//! way). Either tells the command that started it that the container runs,
//! or why not, with one typed message ([`ready`]).

pub mod bundle;
mod finish;
pub mod keeper;
pub mod ready;
pub mod restart;
pub mod spawn;

use finish::finish;
pub use finish::FORWARDED_SIGNALS;

use std::fs::File;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::Utc;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::backend::{Backend, ExecRequest, Exit, ProcessIo, Sandbox};
use crate::logs::{LogWriter, Stream};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};
use crate::stdio::{self, Pump, RawMode, Source};
use crate::CodedError;
use capsa_container::terminal::copy_window_size;

pub enum Mode {
    /// `capsa run` without `-d`: output also goes to our stdout/stderr, and
    /// with `-i` our stdin goes to the container.
    Foreground,
    /// `capsa run -d`: a [`ready::Ready`] message is written to `ready`
    /// once the container runs or failed to start.
    Detached { ready: File },
}

/// Runs the container `id` (already created) to completion under a keeper;
/// returns its exit code as docker reports it.
///
/// The process that calls this forks: the child is the monitor proper (the
/// parent of the container's process, doing all of [`run`]'s work), and the
/// caller stays as its keeper, a child subreaper that only waits. Killing
/// either loses nothing: if the keeper dies the monitor carries on; if the
/// monitor dies, the container's process is reparented to the keeper, which
/// collects its exit status, drains its output into the log, releases what
/// it held and removes it for `--rm` (see [`keeper`]). For a
/// foreground run the keeper is the `capsa run` process the user started.
pub fn supervise(roots: &Roots, id: &str, mode: Mode) -> Result<i32> {
    let rec = Record::load(roots, id)?;
    let outputs = if rec.tty {
        None
    } else {
        Some((stdio::pipe()?, stdio::pipe()?))
    };
    if !keeper::can_fork() {
        tracing::info!("more than one thread: running container {id} without a keeper");
        return run(roots, id, mode, None, outputs);
    }
    let keeper_pid = std::process::id() as i32;
    keeper::become_subreaper()?;
    // The keeper's copies of the output pipes' read ends: while it holds
    // them a dead monitor never turns the container's writes into SIGPIPE.
    let kept = match &outputs {
        Some((out, err)) => Some([out.read.try_clone()?, err.read.try_clone()?]),
        None => None,
    };
    // SAFETY: the process is single-threaded (checked above), so the child
    // may run any code; it returns to the caller like the parent does.
    match unsafe { nix::unistd::fork() }.context("forking the container's monitor")? {
        nix::unistd::ForkResult::Child => {
            drop(kept);
            run(roots, id, mode, Some(keeper_pid), outputs)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(outputs);
            if let Mode::Detached { ready } = mode {
                // Only the monitor answers on the ready pipe; the reader
                // must see EOF when the monitor is gone.
                close_ready(ready)?;
            }
            keeper::keep(roots, id, child, kept)
        }
    }
}

/// Closes this process's copy of the ready pipe, so the reader sees EOF
/// once the monitor has answered (or died without answering).
fn close_ready(ready: File) -> Result<()> {
    drop(ready);
    Ok(())
}

/// The monitor proper (see [`supervise`]).
fn run(
    roots: &Roots,
    id: &str,
    mode: Mode,
    keeper: Option<i32>,
    outputs: Option<(stdio::PipePair, stdio::PipePair)>,
) -> Result<i32> {
    let mut rec = Record::load(roots, id)?;
    rec.keeper_pid = keeper;
    let backend = crate::backends::backend_for(roots, rec.isolation)?;
    let paths = ContainerPaths::new(roots, id);
    let foreground = matches!(mode, Mode::Foreground);

    let mut clock = std::time::Instant::now();
    // The network first: the container is created into its namespace. The
    // sockets holding its published ports live as long as this monitor.
    let started = crate::network::attach(roots, &rec).and_then(|ports| {
        let s = start(roots, backend.as_ref(), &mut rec, foreground, outputs)?;
        Ok((s, ports))
    });
    let ((sandbox, outputs, master), _held_ports) = match started {
        Ok(s) => s,
        Err(err) => {
            let err = capsa_container::classify_start_error(err);
            let code = CodedError::code_of(&err);
            let exit = Exit {
                code,
                oom_killed: false,
                error: Some(format!("{err:#}")),
            };
            finish(roots, backend.as_ref(), None, &mut rec, exit);
            if let Mode::Detached { mut ready } = mode {
                let _ = ready::Ready::failed(&err).send(&mut ready);
            }
            return Err(err);
        }
    };

    crate::timing::phase("container created and started", &mut clock);

    // Signals for the container arrive on a signalfd; blocked only now, so
    // the container's own processes never inherit the blocked mask.
    let mut forwarded = SigSet::empty();
    for s in FORWARDED_SIGNALS {
        forwarded.add(s);
    }
    // The terminal's size follows ours.
    forwarded.add(Signal::SIGWINCH);
    forwarded.thread_block()?;
    let sfd = SignalFd::with_flags(&forwarded, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    if let Mode::Detached { mut ready } = mode {
        ready::Ready::Ok { pid: None }.send(&mut ready)?;
        close_ready(ready)?;
    }

    let stdin_is_tty = nix::unistd::isatty(0).unwrap_or(false);
    let _raw = match (&master, foreground && rec.interactive && stdin_is_tty) {
        (Some(m), true) => {
            copy_window_size(std::io::stdin(), m);
            RawMode::enable(std::io::stdin().as_fd())
        }
        _ => None,
    };
    let stdin = std::io::stdin();
    let input = match &master {
        Some(m) if foreground && rec.interactive => Some((stdin.as_fd(), m.try_clone()?)),
        _ => None,
    };
    // Started once it runs; it dies with us if we are killed.
    let checker = crate::health::start_checker(roots, &rec).unwrap_or_else(|e| {
        tracing::warn!("container {id}: no healthcheck: {e:#}");
        None
    });
    let pump = Pump {
        sources: outputs,
        input,
        log: LogWriter::create(&paths.log(), rec.log)?,
        attach: foreground,
        signals: Some(&sfd),
    };
    let master_fd = master.as_ref().map(|m| m.as_fd());
    pump.run(&mut |sig| match (sig, master_fd) {
        (Signal::SIGWINCH, Some(m)) => copy_window_size(std::io::stdin(), m),
        (Signal::SIGWINCH, None) => {}
        (sig, _) => {
            let _ = sandbox.kill(sig);
        }
    })?;
    drop(master);

    crate::timing::phase("container ran (output closed)", &mut clock);
    let exit = match rec.layer_on_exit.clone() {
        Some(path) => sandbox.wait_then(&mut || write_layer(backend.as_ref(), &rec, &path)),
        None => sandbox.wait(),
    };
    crate::health::stop_checker(checker);
    let exit = exit?;
    let code = exit.code;
    // The exit could not be collected (a lost guest agent, say): say why
    // to the person waiting, not only in the container's record.
    if let (true, Some(err)) = (foreground, &exit.error) {
        eprintln!("capsa: {err}");
    }
    crate::timing::phase("exit collected", &mut clock);
    finish(
        roots,
        backend.as_ref(),
        Some(sandbox.as_ref()),
        &mut rec,
        exit,
    );
    crate::timing::phase("teardown", &mut clock);
    Ok(code)
}

/// `capsa build`'s RUN step: the exited container's writable layer, as
/// `commit` writes it, into `path`.
fn write_layer(backend: &dyn Backend, rec: &Record, path: &Path) -> Result<()> {
    let mut stopped = rec.clone();
    // The process has exited: nothing is left to freeze while reading.
    stopped.transition(Status::Stopped)?;
    let mut f = std::fs::File::create(path)?;
    backend
        .diff(&stopped, &mut f)
        .context("writing the container's layer")?;
    use std::io::Write;
    f.flush()?;
    Ok(())
}

type Started = (Box<dyn Sandbox>, Vec<Source>, Option<OwnedFd>);

/// Gives a new process the write ends of `out` and `err`; their read ends
/// are what the pump reads.
fn piped_output(io: &mut ProcessIo, (out, err): (stdio::PipePair, stdio::PipePair)) -> [Source; 2] {
    io.stdout = Some(out.write);
    io.stderr = Some(err.write);
    [
        Source {
            fd: out.read,
            stream: Stream::Stdout,
        },
        Source {
            fd: err.read,
            stream: Stream::Stderr,
        },
    ]
}

fn start(
    roots: &Roots,
    backend: &dyn Backend,
    rec: &mut Record,
    foreground: bool,
    pipes: Option<(stdio::PipePair, stdio::PipePair)>,
) -> Result<Started> {
    let mut io = ProcessIo::default();
    let mut outputs = Vec::new();
    let mut console = None;
    if rec.tty {
        let c = ConsoleSocket::bind(roots, &rec.id)?;
        io.console_socket = Some(c.path.clone());
        console = Some(c);
    } else {
        let pipes = match pipes {
            Some(p) => p,
            None => (stdio::pipe()?, stdio::pipe()?),
        };
        outputs.extend(piped_output(&mut io, pipes));
        if foreground && rec.interactive {
            io.stdin = Some(stdio::relay_stdin()?);
        }
    }

    let sandbox = backend.create(rec, io)?;
    let mut run = || -> Result<Option<OwnedFd>> {
        let master = console.as_ref().map(ConsoleSocket::receive).transpose()?;
        if let Some(m) = &master {
            outputs.push(Source {
                fd: m.try_clone()?,
                stream: Stream::Stdout,
            });
        }
        sandbox.start()?;
        rec.transition(Status::Running)?;
        rec.pid = Some(sandbox.pid());
        rec.monitor_pid = Some(std::process::id() as i32);
        rec.started = Some(Utc::now());
        rec.save(roots)?;
        crate::events::emit(roots, rec, "start", &[]);
        Ok(master)
    };
    match run() {
        Ok(master) => Ok((sandbox, outputs, master)),
        Err(e) => {
            let _ = sandbox.release();
            Err(e)
        }
    }
}

/// The socket a new process's terminal master arrives on (`-t`). Bound
/// before the process is created (its connection waits in the backlog), read
/// after; the socket file is removed when this is dropped.
struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn bind(roots: &Roots, id: &str) -> Result<Self> {
        let dir = roots.sockets();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{}.sock", &id[..12], std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding console socket {}", path.display()))?;
        Ok(ConsoleSocket { listener, path })
    }

    fn receive(&self) -> Result<OwnedFd> {
        capsa_container::terminal::receive_master(&self.listener)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `capsa exec`: runs a process in the container with our own standard
/// streams (or a new terminal with `-t`) and returns its exit code.
pub fn exec_attached(
    roots: &Roots,
    backend: &dyn Backend,
    rec: &Record,
    req: &ExecRequest,
    interactive: bool,
) -> Result<i32> {
    let mut io = ProcessIo::default();
    let mut console = None;
    let mut sources = Vec::new();
    if req.tty {
        let c = ConsoleSocket::bind(roots, &rec.id)?;
        io.console_socket = Some(c.path.clone());
        console = Some(c);
    } else {
        // Pipes, as for `run`: never our own descriptors (stdio::relay_stdin).
        if interactive {
            io.stdin = Some(stdio::relay_stdin()?);
        }
        sources.extend(piped_output(&mut io, (stdio::pipe()?, stdio::pipe()?)));
    }
    let handle = backend
        .exec(rec, req, io)
        .map_err(capsa_container::classify_start_error)?;
    let master = console.as_ref().map(ConsoleSocket::receive).transpose()?;
    drop(console);
    let stdin = std::io::stdin();
    let mut input = None;
    let mut raw = None;
    if let Some(m) = master {
        if interactive && nix::unistd::isatty(0).unwrap_or(false) {
            copy_window_size(std::io::stdin(), &m);
            raw = RawMode::enable(stdin.as_fd());
        }
        if interactive {
            input = Some((stdin.as_fd(), m.try_clone()?));
        }
        sources.push(Source {
            fd: m,
            stream: Stream::Stdout,
        });
    }
    // exec output is not part of the container's log.
    let pump = Pump {
        sources,
        input,
        log: LogWriter::discard()?,
        attach: true,
        signals: None,
    };
    pump.run(&mut |_| {})?;
    // The user's terminal back to normal before waiting.
    drop(raw);
    handle.wait()
}
