//! Healthchecks run by capsa itself, as docker's daemon runs them: an
//! image's HEALTHCHECK or `run --health-*` gives a test that is exec'd in
//! the running container every interval; its exit code makes the container
//! `healthy`, or `unhealthy` after `retries` failures in a row (failures
//! in the start period do not count until it was healthy once).
//!
//! With no daemon, the container's monitor starts a checker process
//! (`capsa __monitor` with a [`crate::monitor::spawn::Job::Health`]) once
//! the container runs, and kills it when the container ends; the checker
//! dies with the monitor. Each probe is a fork of the checker that execs
//! the test through the backend (so it is confined as every exec'd
//! process is, in either mode) with its output on a pipe, killed at the
//! timeout. The state is `health.json` in the container's directory, in
//! docker's shape: `ps` and `inspect` read it.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{ExecRequest, ProcessIo};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};

/// docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u64 = 3;
/// docker keeps the last five probes, and 4 KiB of each one's output.
const LOG_ENTRIES: usize = 5;
const OUTPUT_BYTES: usize = 4096;

/// A healthcheck as an image config stores it (docker's `Healthcheck`):
/// durations in nanoseconds, 0 for the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["CMD", arg…]`, `["CMD-SHELL", command]` or `["NONE"]`; empty:
    /// the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `run`'s `--health-*` flags, checked (durations in nanoseconds).
#[derive(Debug, Clone, Default)]
pub struct HealthFlags {
    pub cmd: Option<String>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
    pub retries: Option<u64>,
    /// `--no-healthcheck`: none, whatever the image says.
    pub none: bool,
}

/// The `--health-*` flags as given (durations as docker writes them:
/// `30s`, `1m30s`, `500ms`).
#[derive(Debug, Clone, Default)]
pub struct HealthArgs<'a> {
    pub cmd: Option<&'a str>,
    pub interval: Option<&'a str>,
    pub timeout: Option<&'a str>,
    pub start_period: Option<&'a str>,
    pub start_interval: Option<&'a str>,
    pub retries: Option<u64>,
    pub none: bool,
}

impl HealthFlags {
    /// Checks the flags before anything is done with them.
    pub fn parse(a: &HealthArgs) -> Result<HealthFlags> {
        let duration = |flag: &str, v: Option<&str>| -> Result<Option<u64>> {
            let Some(v) = v else { return Ok(None) };
            let ns = crate::build::go_duration(v.trim())
                .with_context(|| format!("--{flag} {v}: not a duration such as 30s or 1m30s"))?;
            // docker's floor: anything shorter is a typo.
            if ns != 0 && ns < 1_000_000 {
                bail!("--{flag} {v}: give at least 1ms");
            }
            Ok(Some(ns))
        };
        let f = HealthFlags {
            cmd: a.cmd.map(str::to_string),
            interval: duration("health-interval", a.interval)?,
            timeout: duration("health-timeout", a.timeout)?,
            start_period: duration("health-start-period", a.start_period)?,
            start_interval: duration("health-start-interval", a.start_interval)?,
            retries: a.retries,
            none: a.none,
        };
        if f.none && f.any() {
            bail!("--no-healthcheck conflicts with the --health-* options");
        }
        Ok(f)
    }

    fn any(&self) -> bool {
        self.cmd.is_some()
            || self.interval.is_some()
            || self.timeout.is_some()
            || self.start_period.is_some()
            || self.start_interval.is_some()
            || self.retries.is_some()
    }
}

impl HealthConfig {
    /// The image's healthcheck (its raw config's `Healthcheck`) with the
    /// flags over it, as docker merges them; None when there is no test
    /// or it is `NONE`.
    pub fn resolve(image: Option<HealthConfig>, flags: &HealthFlags) -> Result<Option<Self>> {
        if flags.none {
            return Ok(None);
        }
        let mut hc = image.unwrap_or_default();
        if let Some(cmd) = &flags.cmd {
            hc.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        let set = |from: Option<u64>, into: &mut u64| {
            if let Some(v) = from {
                *into = v;
            }
        };
        set(flags.interval, &mut hc.interval);
        set(flags.timeout, &mut hc.timeout);
        set(flags.start_period, &mut hc.start_period);
        set(flags.start_interval, &mut hc.start_interval);
        set(flags.retries, &mut hc.retries);
        if hc.argv().is_none() {
            if flags.any() {
                bail!("the --health-* options need a test: give --health-cmd (the image has no HEALTHCHECK)");
            }
            return Ok(None);
        }
        Ok(Some(hc))
    }

    /// The command a probe execs; None for no test.
    pub fn argv(&self) -> Option<Vec<String>> {
        match self.test.first().map(String::as_str) {
            Some("CMD") if self.test.len() > 1 => Some(self.test[1..].to_vec()),
            // docker's shell on Linux.
            Some("CMD-SHELL") if self.test.len() > 1 => Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                self.test[1..].join(" "),
            ]),
            _ => None,
        }
    }
}

/// A duration the config gives in nanoseconds, 0 meaning `default`.
fn nanos_or(ns: u64, default: Duration) -> Duration {
    if ns == 0 {
        default
    } else {
        Duration::from_nanos(ns)
    }
}

/// One probe's result, as docker's `State.Health.Log` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub exit_code: i32,
    pub output: String,
}

/// docker's `State.Health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u64,
    pub log: Vec<Probe>,
}

impl Health {
    fn starting() -> Health {
        Health {
            status: "starting".into(),
            failing_streak: 0,
            log: Vec::new(),
        }
    }

    /// Takes in `probe`; `counts` is false for a failure in the start
    /// period before the container was ever healthy. Returns whether the
    /// status changed.
    fn record(&mut self, probe: Probe, retries: u64, counts: bool) -> bool {
        let before = self.status.clone();
        if probe.exit_code == 0 {
            self.failing_streak = 0;
            self.status = "healthy".into();
        } else if counts {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = "unhealthy".into();
            }
        }
        self.log.push(probe);
        let extra = self.log.len().saturating_sub(LOG_ENTRIES);
        self.log.drain(..extra);
        self.status != before
    }
}

/// Container `id`'s health, if it has a healthcheck and ran with it.
pub fn load(roots: &Roots, id: &str) -> Option<Health> {
    let text = std::fs::read(ContainerPaths::new(roots, id).health()).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save(roots: &Roots, id: &str, h: &Health) -> Result<()> {
    let path = ContainerPaths::new(roots, id).health();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(h)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The monitor's side: a running container with a healthcheck gets a
/// checker, dying with the monitor (see the module docs). None without one.
pub fn start_checker(roots: &Roots, rec: &Record) -> Result<Option<std::process::Child>> {
    if rec.healthcheck.is_none() {
        return Ok(None);
    }
    save(roots, &rec.id, &Health::starting())?;
    let job = crate::monitor::spawn::Job::Health {
        lib: roots.lib.clone(),
        run: roots.run.clone(),
        id: rec.id.clone(),
    };
    crate::monitor::spawn::start_child(&job).map(Some)
}

/// Ends a checker [`start_checker`] started.
pub fn stop_checker(child: Option<std::process::Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The checker: probes container `id` while it runs (the run it started
/// for; a restart gets a checker of its own).
pub fn run_checker(roots: &Roots, id: &str) -> Result<i32> {
    // Probes' processes orphaned by a timeout come back to us to reap.
    nix::sys::prctl::set_child_subreaper(true)?;
    let rec = Record::load(roots, id)?;
    let Some(hc) = rec.healthcheck.clone() else {
        return Ok(0);
    };
    let argv = hc.argv().context("the healthcheck has no test")?;
    let started = rec.started;
    let begun = Instant::now();
    let start_period = Duration::from_nanos(hc.start_period);
    let retries = if hc.retries == 0 {
        DEFAULT_RETRIES
    } else {
        hc.retries
    };
    let timeout = nanos_or(hc.timeout, DEFAULT_TIMEOUT);
    let mut health = load(roots, id).unwrap_or_else(Health::starting);
    // In the start period, until it was healthy once: probed every start
    // interval, and a failure does not count.
    let starting = |h: &Health| begun.elapsed() < start_period && h.status != "healthy";
    loop {
        std::thread::sleep(if starting(&health) {
            nanos_or(hc.start_interval, DEFAULT_START_INTERVAL)
        } else {
            nanos_or(hc.interval, DEFAULT_INTERVAL)
        });
        reap_orphans();
        let rec = match Record::load(roots, id) {
            Ok(r) if r.started == started => r,
            // Removed, or started again with a checker of its own.
            _ => return Ok(0),
        };
        match rec.status() {
            Status::Running => {}
            // docker probes nothing while paused.
            Status::Paused => continue,
            _ => return Ok(0),
        }
        let probe = probe(roots, &rec, &argv, timeout);
        let counts = !starting(&health);
        if health.record(probe, retries, counts) {
            crate::events::emit(
                roots,
                &rec,
                &format!("health_status: {}", health.status),
                &[],
            );
        }
        save(roots, id, &health)?;
    }
}

fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Runs the test once in the container, through a fork of this
/// (single-threaded) process, killed at `timeout`.
fn probe(roots: &Roots, rec: &Record, argv: &[String], timeout: Duration) -> Probe {
    let start = Utc::now();
    let (exit_code, output) = match fork_probe(roots, rec, argv, timeout) {
        Ok(r) => r,
        Err(e) => (-1, format!("{e:#}")),
    };
    Probe {
        start,
        end: Utc::now(),
        exit_code,
        output,
    }
}

fn fork_probe(
    roots: &Roots,
    rec: &Record,
    argv: &[String],
    timeout: Duration,
) -> Result<(i32, String)> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let (r, w) = nix::unistd::pipe()?;
    let deadline = Instant::now() + timeout;
    // SAFETY: the checker is single-threaded (an exec'd `capsa __monitor`
    // that starts no thread), so the child may run any code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(r);
            let code = match exec_in(roots, rec, argv, w, deadline) {
                Ok(Some(code)) => code,
                // Killed at the deadline: said by our own death, as every
                // exit code is the test's to give.
                Ok(None) => {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                    255
                }
                Err(()) => 255,
            };
            // SAFETY: ends the child without running the parent's exit
            // handlers twice.
            unsafe { libc::_exit(code & 0xff) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut out = Vec::new();
            let mut pipe = std::fs::File::from(r);
            let mut open = true;
            loop {
                if open {
                    open = read_some(&mut pipe, &mut out, 100u8);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let code = match waitpid(child, Some(WaitPidFlag::WNOHANG))? {
                    WaitStatus::Exited(_, code) => Some(code),
                    WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _) => {
                        return Ok((-1, timed_out(timeout)))
                    }
                    WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
                    _ => None,
                };
                if let Some(code) = code {
                    // What is left, without waiting: a process the test
                    // left behind may hold the pipe open.
                    while open && read_some(&mut pipe, &mut out, 0u8) {}
                    return Ok((code, String::from_utf8_lossy(&out).into_owned()));
                }
                // The child kills the test at the deadline; this is for
                // a child that cannot reach it (a guest that stopped
                // answering).
                if Instant::now() >= deadline + Duration::from_secs(5) {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Ok((-1, timed_out(timeout)));
                }
            }
        }
    }
}

/// Waits up to `ms` for output on `pipe` and keeps up to [`OUTPUT_BYTES`]
/// of it (the rest is read and dropped, so the test never blocks on a
/// full pipe). False once the pipe is closed, or (`ms` 0) when nothing is
/// there.
fn read_some(pipe: &mut std::fs::File, out: &mut Vec<u8>, ms: u8) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        pipe.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if !nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_ok_and(|n| n > 0) {
        return ms > 0;
    }
    let mut buf = [0u8; 4096];
    match pipe.read(&mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let room = OUTPUT_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&buf[..n.min(room)]);
            true
        }
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("Health check exceeded timeout ({timeout:?})")
}

/// The probe's child: execs the test with its output on `w`, waits until
/// `deadline` (then kills it: None), and gives its exit code; an error
/// goes to `w`.
fn exec_in(
    roots: &Roots,
    rec: &Record,
    argv: &[String],
    w: OwnedFd,
    deadline: Instant,
) -> Result<Option<i32>, ()> {
    let result = (|| -> Result<Option<i32>> {
        let backend = crate::backends::backend_for(roots, rec.isolation)?;
        let io = ProcessIo {
            stdout: Some(w.try_clone()?),
            stderr: Some(w.try_clone()?),
            ..Default::default()
        };
        let req = ExecRequest {
            args: argv.to_vec(),
            ..Default::default()
        };
        backend.exec(rec, &req, io)?.wait_until(deadline)
    })();
    result.map_err(|e| {
        let _ = nix::unistd::write(&w, format!("{e:#}").as_bytes());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_go_over_the_images_check() {
        let image = HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval: 5_000_000_000,
            retries: 7,
            ..Default::default()
        };
        let flags = |a: HealthArgs| HealthFlags::parse(&a).unwrap();
        let hc = HealthConfig::resolve(
            Some(image.clone()),
            &flags(HealthArgs {
                interval: Some("1s"),
                ..Default::default()
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(hc.interval, 1_000_000_000);
        assert_eq!(hc.retries, 7);
        assert_eq!(hc.argv().unwrap(), ["true"]);
        let hc = HealthConfig::resolve(
            Some(image.clone()),
            &flags(HealthArgs {
                cmd: Some("test -f /ok"),
                ..Default::default()
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(hc.argv().unwrap(), ["/bin/sh", "-c", "test -f /ok"]);
        let none = flags(HealthArgs {
            none: true,
            ..Default::default()
        });
        assert_eq!(HealthConfig::resolve(Some(image), &none).unwrap(), None);
        let off = HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(
            HealthConfig::resolve(Some(off), &HealthFlags::default()).unwrap(),
            None
        );
        // Options without any test.
        let interval = flags(HealthArgs {
            interval: Some("1s"),
            ..Default::default()
        });
        assert!(HealthConfig::resolve(None, &interval).is_err());
        // A bad duration, a too short one, --no-healthcheck with options.
        for bad in [
            HealthArgs {
                timeout: Some("soon"),
                ..Default::default()
            },
            HealthArgs {
                interval: Some("10us"),
                ..Default::default()
            },
            HealthArgs {
                cmd: Some("true"),
                none: true,
                ..Default::default()
            },
        ] {
            assert!(HealthFlags::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn failures_count_up_to_retries_and_a_success_resets_them() {
        let probe = |code| Probe {
            start: Utc::now(),
            end: Utc::now(),
            exit_code: code,
            output: String::new(),
        };
        let mut h = Health::starting();
        // In the start period a failure does not count.
        assert!(!h.record(probe(1), 2, false));
        assert_eq!((h.status.as_str(), h.failing_streak), ("starting", 0));
        assert!(!h.record(probe(1), 2, true));
        assert!(h.record(probe(1), 2, true));
        assert_eq!((h.status.as_str(), h.failing_streak), ("unhealthy", 2));
        assert!(h.record(probe(0), 2, true));
        assert_eq!((h.status.as_str(), h.failing_streak), ("healthy", 0));
        for _ in 0..10 {
            h.record(probe(0), 2, true);
        }
        assert_eq!(h.log.len(), LOG_ENTRIES);
    }
}
