//! Moving a container's standard streams: into the log, to an attached
//! terminal, and (with `-i`) from the user's stdin.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use crate::logs::{LogWriter, Stream};

/// Pipes for a container without a terminal: the container gets the write
/// ends, the monitor keeps the read ends.
pub struct PipePair {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

pub fn pipe() -> io::Result<PipePair> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok(PipePair { read, write })
}

/// The container's end of a pipe that a thread fills from our stdin and
/// closes at its end. A container never gets our own descriptors: through
/// /proc/self/fd it could reopen them with other rights (write the file the
/// user fed in, type into the user's terminal).
pub fn relay_stdin() -> io::Result<OwnedFd> {
    let PipePair { read, write } = pipe()?;
    std::thread::Builder::new()
        .name("stdin-relay".into())
        .spawn(move || {
            // Ends at our stdin's end, or when the container closed its end.
            let _ = io::copy(&mut io::stdin().lock(), &mut std::fs::File::from(write));
        })?;
    Ok(read)
}

/// One source of container output.
pub struct Source {
    pub fd: OwnedFd,
    pub stream: Stream,
}

/// Copies container output to the log (and to our own stdout/stderr when
/// attached) and user input to the container, until every output source is
/// closed. Signals arriving on `signals` are handed to `on_signal`.
pub struct Pump<'a> {
    pub sources: Vec<Source>,
    /// Where user input goes (a pty master), read from our stdin.
    pub input: Option<(BorrowedFd<'a>, OwnedFd)>,
    pub log: LogWriter,
    pub attach: bool,
    pub signals: Option<&'a SignalFd>,
}

impl Pump<'_> {
    pub fn run(mut self, on_signal: &mut dyn FnMut(Signal)) -> io::Result<()> {
        let mut open: Vec<bool> = vec![true; self.sources.len()];
        let mut attach_ok = self.attach;
        let mut buf = vec![0u8; 64 * 1024];
        while open.iter().any(|o| *o) {
            let mut fds: Vec<PollFd> = Vec::new();
            let mut index: Vec<Slot> = Vec::new();
            for (i, s) in self.sources.iter().enumerate() {
                if open[i] {
                    fds.push(PollFd::new(s.fd.as_fd(), PollFlags::POLLIN));
                    index.push(Slot::Source(i));
                }
            }
            if let Some((stdin, _)) = &self.input {
                fds.push(PollFd::new(*stdin, PollFlags::POLLIN));
                index.push(Slot::Input);
            }
            if let Some(sfd) = self.signals {
                fds.push(PollFd::new(sfd.as_fd(), PollFlags::POLLIN));
                index.push(Slot::Signal);
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<(Slot, PollFlags)> = fds
                .iter()
                .zip(index.iter())
                .filter_map(|(p, slot)| p.revents().filter(|r| !r.is_empty()).map(|r| (*slot, r)))
                .collect();
            drop(fds);
            for (slot, _flags) in ready {
                match slot {
                    Slot::Source(i) => {
                        let fd = self.sources[i].fd.as_raw_fd();
                        match read_some(fd, &mut buf) {
                            Ok(0) | Err(_) => open[i] = false,
                            Ok(n) => {
                                let stream = self.sources[i].stream;
                                self.log.write(stream, &buf[..n])?;
                                if attach_ok && write_attached(stream, &buf[..n]).is_err() {
                                    // The reader went away (`capsa run … | head`):
                                    // keep logging, stop echoing.
                                    attach_ok = false;
                                }
                            }
                        }
                    }
                    Slot::Input => {
                        let (stdin, target) = self.input.as_ref().unwrap();
                        match read_some(stdin.as_raw_fd(), &mut buf) {
                            Ok(0) | Err(_) => self.input = None,
                            Ok(n) => {
                                if write_all_fd(target.as_raw_fd(), &buf[..n]).is_err() {
                                    self.input = None;
                                }
                            }
                        }
                    }
                    Slot::Signal => {
                        if let Some(sfd) = self.signals {
                            while let Ok(Some(info)) = sfd.read_signal() {
                                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                                    on_signal(sig);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Source(usize),
    Input,
    Signal,
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> nix::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            // A pty master reads EIO once the last slave fd is closed.
            Err(Errno::EIO) => return Ok(0),
            other => return other,
        }
    }
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> nix::Result<()> {
    // SAFETY: fd is owned by the caller and stays open for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_attached(stream: Stream, data: &[u8]) -> io::Result<()> {
    match stream {
        Stream::Stdout => {
            let mut out = io::stdout().lock();
            out.write_all(data)?;
            out.flush()
        }
        Stream::Stderr => {
            let mut err = io::stderr().lock();
            err.write_all(data)?;
            err.flush()
        }
    }
}

/// Puts a terminal in raw mode for as long as the guard lives, so keys reach
/// the container's terminal unchanged.
pub struct RawMode {
    fd: RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn enable(fd: BorrowedFd<'_>) -> Option<RawMode> {
        let saved = nix::sys::termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the fd (our stdin) outlives the guard.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}
