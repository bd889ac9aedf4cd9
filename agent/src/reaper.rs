//! PID 1 reaps every process that ends up as its child, and hands the
//! signals it receives to the agent.
//!
//! libcontainer forks helper processes during create and exec and waits for
//! them itself, so the reaper must never take their exit status: callers
//! that fork hold [`Reaper::ops`] for the whole operation, and the reaper
//! only calls `waitpid(-1)` while holding it. A caller registers the PIDs it
//! wants to hear about before it releases the lock, so no exit is missed.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Write end of the self-pipe the signal handler writes signal numbers to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn signal_handler(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the
        // byte (the reaper also polls periodically).
        unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) };
    }
}

/// Signals PID 1 passes on to the container's init process.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Exit status as docker reports it: the code, or 128+N for signal N.
pub fn exit_code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

pub struct Reaper {
    ops: Mutex<()>,
}

type ExitFn = dyn Fn(i32, i32) + Send + Sync;
type SignalFn = dyn Fn(Signal) + Send + Sync;

impl Reaper {
    /// Installs the signal handlers and starts the reaper thread. `on_exit`
    /// gets (pid, exit code) of every reaped child, called with the ops lock
    /// held; `on_signal` every forwarded signal PID 1 receives.
    pub fn start(on_exit: Box<ExitFn>, on_signal: Box<SignalFn>) -> std::io::Result<Arc<Reaper>> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        SIGNAL_PIPE.store(w.as_raw_fd(), Ordering::SeqCst);
        std::mem::forget(w); // lives as long as the process
        let action = SigAction::new(
            SigHandler::Handler(signal_handler),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
            SigSet::empty(),
        );
        for &sig in FORWARDED.iter().chain([Signal::SIGCHLD].iter()) {
            // SAFETY: the handler only calls write(2).
            unsafe { sigaction(sig, &action) }?;
        }
        let reaper = Arc::new(Reaper {
            ops: Mutex::new(()),
        });
        let me = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || me.run(r, on_exit, on_signal))?;
        Ok(reaper)
    }

    /// Hold this while forking children that the caller waits for itself.
    pub fn ops(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, pipe: OwnedFd, on_exit: Box<ExitFn>, on_signal: Box<SignalFn>) {
        let mut buf = [0u8; 64];
        loop {
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            // A periodic sweep too, in case a signal byte was dropped.
            let _ = poll(&mut fds, PollTimeout::from(1000u16));
            let mut signals = Vec::new();
            loop {
                match nix::unistd::read(pipe.as_raw_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => signals.extend_from_slice(&buf[..n]),
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            for s in signals {
                if let Ok(sig) = Signal::try_from(s as i32) {
                    if sig != Signal::SIGCHLD {
                        on_signal(sig);
                    }
                }
            }
            let _guard = self.ops();
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(st) => {
                        if let Some((pid, code)) = exit_code(st) {
                            on_exit(pid, code);
                        }
                    }
                    Err(Errno::EINTR) => continue,
                    // ECHILD: no children at all.
                    Err(_) => break,
                }
            }
        }
    }
}
