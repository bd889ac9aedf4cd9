//! Reaping the shim's children.
//!
//! The shim is a child subreaper: every container init (container mode), VM
//! monitor (VM mode) and exec'd process ends up as its child. One thread
//! waits for them and hands each exit of a pid the shim tracks to a callback.
//!
//! The lifecycle calls (`oci::create`, `oci::exec`, …) also start short-lived
//! children of their own and wait for them by pid. A plain `waitpid(-1)`
//! loop would steal those exits, so the reaper first *peeks* at a dead child
//! (`waitid(WNOWAIT)`) and reaps it only if it is a tracked pid, or if no
//! lifecycle call is in flight (then nobody else is waiting for it: it is an
//! orphan that was reparented to the shim). A caller holds a [`Busy`] guard
//! for the whole call *and* until it has registered the pid it got back, so
//! a process that dies at once is never taken for an orphan.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a tracked process ended: its exit code (128+N for signal N) and when.
#[derive(Debug, Clone, Copy)]
pub struct ExitInfo {
    pub pid: i32,
    pub status: u32,
    pub at: SystemTime,
}

type OnExit = Box<dyn Fn(ExitInfo) + Send + Sync>;

pub struct Reaper {
    busy: AtomicUsize,
    tracked: Mutex<HashMap<i32, ()>>,
    on_exit: OnExit,
}

/// Held while a lifecycle call that may start and wait for children runs.
pub struct Busy<'a>(&'a Reaper);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Reaper {
    /// Starts the reaping thread; `on_exit` is called (on that thread) for
    /// each tracked pid that exits.
    pub fn start(on_exit: impl Fn(ExitInfo) + Send + Sync + 'static) -> Arc<Reaper> {
        let reaper = Arc::new(Reaper {
            busy: AtomicUsize::new(0),
            tracked: Mutex::new(HashMap::new()),
            on_exit: Box::new(on_exit),
        });
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())
            .expect("spawning the reaper thread");
        reaper
    }

    pub fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// Reports `pid`'s exit from now on. Call it while still holding the
    /// [`Busy`] guard of the call that returned the pid.
    pub fn track(&self, pid: i32) {
        self.tracked.lock().unwrap().insert(pid, ());
    }

    fn run(&self) {
        loop {
            // Tracked pids first: a dead tracked child must not wait behind
            // an untracked one that a lifecycle call is about to reap.
            let tracked: Vec<i32> = self.tracked.lock().unwrap().keys().copied().collect();
            for pid in tracked {
                if let Ok(st) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    self.finished(st);
                } else {
                    // ECHILD: not our child (yet, or any more).
                }
            }
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Ok(st) => {
                    let Some(pid) = st.pid() else { continue };
                    let tracked = self.tracked.lock().unwrap().contains_key(&pid.as_raw());
                    if tracked || self.busy.load(Ordering::SeqCst) == 0 {
                        if let Ok(st) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                            self.finished(st);
                        }
                    } else {
                        // A lifecycle call's own child: it reaps it.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)), // ECHILD: no children
            }
        }
    }

    fn finished(&self, st: WaitStatus) {
        let (pid, status) = match st {
            WaitStatus::Exited(pid, code) => (pid, code as u32),
            WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as u32),
            _ => return,
        };
        if self.tracked.lock().unwrap().remove(&pid.as_raw()).is_some() {
            (self.on_exit)(ExitInfo {
                pid: pid.as_raw(),
                status,
                at: SystemTime::now(),
            });
        }
    }
}
