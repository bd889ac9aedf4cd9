//! A task's stdio: the fifos containerd hands the shim, turned into the
//! [`ProcessIo`] the lifecycle core takes.
//!
//! - stdout/stderr: the fifo itself becomes the process's fd (opened for
//!   writing once containerd's reader is there), so the reader sees EOF when
//!   the process — not the shim — closes it.
//! - stdin: a pipe the shim feeds from the fifo, so `CloseIO` can end it.
//! - terminal: a console socket the process's pty master arrives on; the
//!   shim copies between the master and the fifos and keeps the master for
//!   `ResizePty`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use capsa_container::terminal::set_window_size;
use capsa_shim::backend::ProcessIo;

/// The fifo paths of one process, as containerd sent them.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What the shim keeps of a process's stdio after it started.
#[derive(Default)]
pub struct IoHandles {
    /// Where stdin goes: the pipe to the process, or the pty master.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master (terminal processes), for `ResizePty`.
    master: Arc<Mutex<Option<Arc<File>>>>,
    /// Set once the stdin fifo is drained (its writer closed), if it is fed.
    fed: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Stdio being set up: the shim's ends, until the process exists
/// ([`Pending::finish`]).
pub struct Pending {
    stdin_writer: Option<File>,
    console: Option<(UnixListener, PathBuf)>,
    paths: StdioPaths,
}

/// How long to wait for containerd to open the reading end of an output fifo.
const FIFO_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

fn open_writer(path: &str) -> Result<File> {
    // O_NONBLOCK makes open(2) fail with ENXIO instead of blocking while no
    // reader is there; retry until containerd's reader shows up.
    let deadline = Instant::now() + FIFO_OPEN_TIMEOUT;
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => {
                set_blocking(&f)?;
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {path} for writing")),
        }
    }
}

fn set_blocking(f: &File) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Opens the stdin fifo (blocking until containerd's writer is there, which
/// is why this runs on the copy thread).
fn open_reader(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Prepares the stdio of a process: the [`ProcessIo`] to hand to the
/// lifecycle call, and the shim's ends. `sockets` is where a console socket
/// is bound (terminal processes); `tag` names it.
pub fn prepare(paths: &StdioPaths, sockets: &Path, tag: &str) -> Result<(ProcessIo, Pending)> {
    let mut io = ProcessIo::default();
    let mut stdin_writer = None;
    let mut console = None;
    if paths.terminal {
        std::fs::create_dir_all(sockets)?;
        let path = sockets.join(format!("{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding console socket {}", path.display()))?;
        io.console_socket = Some(path.clone());
        console = Some((listener, path));
    } else {
        if !paths.stdin.is_empty() {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            io.stdin = Some(r);
            stdin_writer = Some(File::from(w));
        }
        if !paths.stdout.is_empty() {
            io.stdout = Some(OwnedFd::from(open_writer(&paths.stdout)?));
        }
        if !paths.stderr.is_empty() {
            io.stderr = Some(OwnedFd::from(open_writer(&paths.stderr)?));
        }
    }
    let pending = Pending {
        stdin_writer,
        console,
        paths: paths.clone(),
    };
    Ok((io, pending))
}

impl Pending {
    /// The process exists (the fds in its [`ProcessIo`] went to it, so only
    /// it holds them now): start copying. A terminal's master is received
    /// on a thread, whenever the process sends it.
    pub fn finish(mut self) -> IoHandles {
        let handles = IoHandles::default();
        let paths = std::mem::take(&mut self.paths);
        if let Some((listener, path)) = self.console.take() {
            let stdin = handles.stdin.clone();
            let slot = handles.master.clone();
            std::thread::spawn(move || {
                let master = capsa_container::terminal::receive_master(&listener);
                let _ = std::fs::remove_file(&path);
                let master = match master {
                    Ok(m) => Arc::new(File::from(m)),
                    Err(e) => {
                        containerd_shim::warn!("no terminal: {e:#}");
                        return;
                    }
                };
                if let Ok(w) = master.try_clone() {
                    *stdin.lock().unwrap() = Some(w);
                }
                *slot.lock().unwrap() = Some(master.clone());
                if !paths.stdin.is_empty() {
                    let p = paths.stdin.clone();
                    std::thread::spawn(move || feed_stdin(&p, &stdin, true));
                }
                if !paths.stdout.is_empty() {
                    match open_writer(&paths.stdout) {
                        Ok(out) => copy(&mut &*master, out),
                        Err(e) => containerd_shim::warn!("terminal output: {e:#}"),
                    }
                }
            });
            return handles;
        }
        let mut handles = handles;
        if let Some(w) = self.stdin_writer.take() {
            *handles.stdin.lock().unwrap() = Some(w);
            let p = paths.stdin.clone();
            let sink = handles.stdin.clone();
            let fed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            handles.fed = Some(fed.clone());
            std::thread::spawn(move || {
                feed_stdin(&p, &sink, false);
                fed.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
        handles
    }
}

impl Drop for Pending {
    /// The process was never created: its console socket goes too.
    fn drop(&mut self) {
        if let Some((_, path)) = self.console.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn copy(from: &mut impl Read, mut to: File) {
    let mut buf = [0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return, // EIO: the terminal's last holder closed it
        }
    }
}

/// Copies the stdin fifo into the process until either side ends; then the
/// pipe to the process is closed (EOF). A terminal keeps its master.
fn feed_stdin(path: &str, sink: &Mutex<Option<File>>, terminal: bool) {
    let Ok(mut fifo) = open_reader(path) else {
        return;
    };
    let mut buf = [0u8; 32 * 1024];
    loop {
        let n = match fifo.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut guard = sink.lock().unwrap();
        let Some(w) = guard.as_mut() else { return };
        if w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if !terminal {
        sink.lock().unwrap().take();
    }
}

impl IoHandles {
    /// `CloseIO`: the process sees EOF on stdin (no more input for a terminal).
    ///
    /// containerd sends it once its side of the stdin fifo is done, which
    /// can be before the shim has copied what is still in the fifo: the
    /// copy thread gets up to 2 s to drain it (it closes the pipe itself at
    /// the fifo's EOF); only a writer that stays open is cut off.
    pub fn close_stdin(&self) {
        let stdin = self.stdin.clone();
        let Some(fed) = self.fed.clone() else {
            stdin.lock().unwrap().take();
            return;
        };
        std::thread::spawn(move || {
            for _ in 0..200 {
                if fed.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            stdin.lock().unwrap().take();
        });
    }

    /// `ResizePty`: sets the terminal's window size.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let master = self.master.lock().unwrap().clone();
        let Some(master) = master else {
            anyhow::bail!("the process has no terminal");
        };
        let size = capsa_proto::WinSize {
            rows: height.try_into().unwrap_or(u16::MAX),
            cols: width.try_into().unwrap_or(u16::MAX),
        };
        set_window_size(&*master, size).context("setting the window size")
    }
}
