//! Standard streams: how a new process's stdio is wired (pipes, or a
//! terminal whose master comes back over a console socket), and the threads
//! that pump its output to the host and the host's stdin into it, with flow
//! control.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use capsa_container::terminal::{receive_master, set_window_size};
use capsa_container::ProcessIo;
use capsa_proto::{
    inbound, Frame, OutboundWriter, SendCredit, StdStream, StdioOptions, INITIAL_WINDOW,
};

use super::{Agent, Conn};
use crate::container::STATE_DIR;

pub(super) enum Wiring {
    /// Outputs are None when discarded (the process has /dev/null).
    Pipes {
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        stdin: Option<OwnedFd>,
    },
    Tty {
        listener: UnixListener,
        path: SocketFile,
    },
}

/// A console socket's file, removed when dropped: also when the process
/// could not be created and the wiring is thrown away.
pub(super) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Agent {
    /// The standard streams for a new process: what it gets, and what the
    /// agent keeps.
    pub(super) fn wiring(&self, stdio: &StdioOptions) -> Result<(ProcessIo, Wiring)> {
        let mut io = ProcessIo::default();
        if stdio.tty {
            fs_create(STATE_DIR)?;
            let n = self.console_seq.fetch_add(1, Ordering::SeqCst);
            let path = PathBuf::from(format!("{STATE_DIR}/console-{n}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .with_context(|| format!("binding the console socket {}", path.display()))?;
            io.console_socket = Some(path.clone());
            let path = SocketFile(path);
            return Ok((io, Wiring::Tty { listener, path }));
        }
        let (out_r, err_r) = if stdio.discard_output {
            let null = || -> Result<OwnedFd> {
                Ok(std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")?
                    .into())
            };
            io.stdout = Some(null()?);
            io.stderr = Some(null()?);
            (None, None)
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            io.stdout = Some(out_w);
            io.stderr = Some(err_w);
            (Some(out_r), Some(err_r))
        };
        let stdin = if stdio.stdin {
            let (r, w) = pipe()?;
            io.stdin = Some(r);
            Some(w)
        } else {
            None
        };
        Ok((
            io,
            Wiring::Pipes {
                stdout: out_r,
                stderr: err_r,
                stdin,
            },
        ))
    }

    /// Starts the threads that move process `id`'s streams over `enc`.
    pub(super) fn connect_streams(
        self: &Arc<Self>,
        conn: u64,
        enc: &Conn,
        id: &str,
        wiring: Wiring,
        stdio: &StdioOptions,
    ) -> Result<()> {
        let (outputs, stdin_fd, master) = match wiring {
            Wiring::Pipes {
                stdout,
                stderr,
                stdin,
            } => (
                [(StdStream::Stdout, stdout), (StdStream::Stderr, stderr)]
                    .into_iter()
                    .filter_map(|(s, fd)| fd.map(|fd| (s, fd)))
                    .collect(),
                stdin,
                None,
            ),
            Wiring::Tty { listener, path } => {
                let m = receive_master(&listener);
                drop(path);
                let m = m?;
                if let Some(ws) = stdio.tty_size {
                    let _ = set_window_size(&m, ws);
                }
                let input = stdio.stdin.then(|| m.try_clone()).transpose()?;
                (vec![(StdStream::Stdout, m.try_clone()?)], input, Some(m))
            }
        };
        let mut st = self.lock();
        let p = st.procs.get_mut(id).context("the process vanished")?;
        let serial = p.serial;
        p.conn = conn;
        p.master = master;
        p.outputs_open = outputs.len();
        let mut threads = Vec::new();
        for (stream, fd) in outputs {
            let credit = Arc::new(SendCredit::new(INITIAL_WINDOW));
            p.credits.push((stream, credit.clone()));
            let w = OutboundWriter::new(enc.clone(), credit, id.to_string(), stream);
            threads.push((fd, w));
        }
        if let Some(fd) = stdin_fd {
            let enc2 = enc.clone();
            let pid = id.to_string();
            let (tx, rx) = inbound(INITIAL_WINDOW, move |credit| {
                enc2.send(&Frame::Window {
                    process: pid.clone(),
                    stream: StdStream::Stdin,
                    credit,
                })
                .map_err(io::Error::other)
            });
            p.stdin = Some(tx);
            std::thread::spawn(move || pump_stdin(rx, fd));
        }
        drop(st);
        for (fd, w) in threads {
            let me = Arc::clone(self);
            let id = id.to_string();
            std::thread::spawn(move || {
                pump_output(fd, w);
                let mut st = me.lock();
                if let Some(p) = st.procs.get_mut(&id).filter(|p| p.serial == serial) {
                    p.outputs_open = p.outputs_open.saturating_sub(1);
                }
                st.forget_orphans();
                me.cv.notify_all();
            });
        }
        Ok(())
    }
}

fn fs_create(dir: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {dir}"))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Copies a process's output to the host until the process closes it; if
/// the host goes away, keeps draining so the process never blocks. Sends
/// the stream's Eof last.
fn pump_output(fd: OwnedFd, mut w: OutboundWriter<UnixStream>) {
    let mut src = File::from(fd);
    let mut buf = vec![0u8; capsa_proto::MAX_DATA];
    let mut host_ok = true;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A terminal reads EIO once its last user closed it.
            Err(_) => break,
        };
        if host_ok && w.write_all(&buf[..n]).is_err() {
            host_ok = false;
        }
    }
    let _ = w.close();
}

/// Copies stdin bytes from the host into the process until the host's Eof,
/// then closes the process's stdin.
fn pump_stdin(mut rx: capsa_proto::InboundReader, fd: OwnedFd) {
    let mut dst = File::from(fd);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    // The process closed its stdin: keep returning credit.
                    let _ = io::copy(&mut rx, &mut io::sink());
                    break;
                }
            }
        }
    }
}
