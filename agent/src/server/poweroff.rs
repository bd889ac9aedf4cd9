//! When the guest ends: power-off on request, when the first container
//! (the sandbox's) is over, or when none is created in time; and the
//! teardown that precedes it.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{Agent, State};

impl Agent {
    /// Asks for the guest to be powered off.
    pub fn request_poweroff(&self, why: impl Into<String>) {
        let mut st = self.lock();
        st.poweroff.get_or_insert_with(|| why.into());
        self.cv.notify_all();
    }

    /// Blocks until the guest should power off; returns why. That is: on
    /// request (`Shutdown`), once the init of the first container created
    /// (the sandbox's) has exited and the host has been told (or no host is
    /// connected to tell), or when no container was created within
    /// `create_timeout` of the call. Other containers' exits do not count.
    pub fn wait_for_poweroff(&self, create_timeout: Option<Duration>) -> String {
        let start = Instant::now();
        let mut st = self.lock();
        loop {
            if let Some(why) = poweroff_due(&st, start, create_timeout) {
                return why;
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Ends everything before power-off: kills the processes, gives the
    /// host up to `linger` to read the last frames and close its
    /// connections, then releases the container.
    pub fn teardown(&self, linger: Duration) {
        let containers = {
            let mut st = self.lock();
            for p in st.procs.values() {
                if p.exit.is_none() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
            }
            // The host closes once it has read what it wanted (it may
            // still send Shutdown, which is answered).
            let deadline = Instant::now() + linger;
            while !st.conns.is_empty() && Instant::now() < deadline {
                st = self
                    .cv
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            for c in st.conns.values() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            std::mem::take(&mut st.containers)
        };
        let _ops = self.ops();
        for (_, mut c) in containers {
            c.destroy();
        }
    }
}

/// Why the guest should power off now, if it should (see
/// [`Agent::wait_for_poweroff`]).
pub(super) fn poweroff_due(
    st: &State,
    start: Instant,
    create_timeout: Option<Duration>,
) -> Option<String> {
    if let Some(why) = &st.poweroff {
        return Some(why.clone());
    }
    if let Some(first) = &st.first {
        let init = st.procs.get(first);
        let done = init.is_none_or(|p| p.exit.is_some() && p.outputs_open == 0);
        let reported = init.is_some_and(|p| p.reported);
        if done && ((reported && !st.hold) || st.conns.is_empty()) {
            let code = init.and_then(|p| p.exit).unwrap_or(-1);
            return Some(format!("the container exited with code {code}"));
        }
    } else if let Some(t) = create_timeout {
        if st.busy.is_empty() && start.elapsed() >= t {
            return Some(format!(
                "no container was created within {}s of boot (is the host connected to vsock port {}?)",
                t.as_secs(),
                capsa_proto::AGENT_PORT
            ));
        }
    }
    None
}
