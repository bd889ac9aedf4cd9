//! Restart policies (`--restart no|always|unless-stopped|on-failure[:N]`),
//! as docker's daemon applies them: when a container's process ends, its
//! policy may start it again after a back-off; a container the user
//! stopped (`stop`, `kill`) stays stopped until started by hand. With no
//! daemon, a detached restarter process waits out the back-off.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::spawn::{spawn, start_detached, Job};
use crate::backend::ProcessIo;
use crate::paths::Roots;
use crate::record::{Record, Status};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    UnlessStopped,
    /// `max_retries` 0: no limit.
    OnFailure {
        max_retries: u32,
    },
}

impl RestartPolicy {
    /// docker's `--restart` value.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        let (name, count) = match s.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (s, None),
        };
        let policy = match (name, count) {
            ("no", None) => RestartPolicy::No,
            ("always", None) => RestartPolicy::Always,
            ("unless-stopped", None) => RestartPolicy::UnlessStopped,
            ("on-failure", c) => RestartPolicy::OnFailure {
                max_retries: match c {
                    None => 0,
                    Some(c) => c
                        .parse()
                        .map_err(|_| format!("--restart {s}: the count must be a number"))?,
                },
            },
            (_, Some(_)) => return Err(format!("--restart {s}: only on-failure takes a count")),
            _ => {
                return Err(format!(
                    "--restart {s}: give no, always, unless-stopped or on-failure[:N]"
                ))
            }
        };
        Ok(policy)
    }

    /// docker's `HostConfig.RestartPolicy` names and retry count.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }

    pub fn max_retries(&self) -> u32 {
        match self {
            RestartPolicy::OnFailure { max_retries } => *max_retries,
            _ => 0,
        }
    }

    /// Whether the stopped container `rec` goes again (not if the user
    /// stopped it).
    pub fn applies(&self, rec: &Record, stopped_by_user: bool) -> bool {
        if stopped_by_user || rec.status() != Status::Stopped {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                rec.exit_code != Some(0) && (*max_retries == 0 || rec.restart_count < *max_retries)
            }
        }
    }
}

/// Whether stopped container `rec` waits out its back-off before its policy
/// starts it again: docker's "Restarting".
pub fn pending(roots: &Roots, rec: &Record) -> bool {
    rec.restart.applies(rec, user_stopped(roots, rec))
}

fn user_stopped(roots: &Roots, rec: &Record) -> bool {
    crate::paths::ContainerPaths::new(roots, &rec.id)
        .stopped_by_user()
        .exists()
}

/// docker's back-off: 100 ms, doubled for each restart of a container that
/// ran under 10 s, at most a minute; one that ran longer starts over.
fn delay(rec: &Record) -> Duration {
    let ran = match (rec.started, rec.finished) {
        (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    if ran >= Duration::from_secs(10) {
        return Duration::from_millis(100);
    }
    let doubled = 100u64 << rec.restart_count.min(10);
    Duration::from_millis(doubled.min(60_000))
}

/// When the stopped container `rec`'s policy says so, starts the restarter:
/// a detached `capsa __monitor` job that outlives this monitor.
pub(super) fn schedule(roots: &Roots, rec: &Record) {
    if !pending(roots, rec) {
        return;
    }
    let job = Job::Restart {
        lib: roots.lib.clone(),
        run: roots.run.clone(),
        id: rec.id.clone(),
        delay_ms: delay(rec).as_millis() as u64,
    };
    if let Err(e) = start_detached(&job) {
        tracing::warn!("restarting container {}: {e:#}", rec.id);
    }
}

/// The restarter: after `delay`, starts container `id` again with a new
/// monitor, unless it was stopped by hand, removed or started meanwhile.
pub(super) fn run(roots: &Roots, id: &str, delay: Duration) -> Result<i32> {
    std::thread::sleep(delay);
    let store = capsa_image::store::Store::open(&roots.images())?;
    let again = |rec: &Record| rec.restart.applies(rec, user_stopped(roots, rec));
    let Some(mut rec) = crate::lifecycle::prepare_start_if(roots, &store, id, &again)? else {
        return Ok(0);
    };
    rec.restart_count += 1;
    rec.save(roots)?;
    crate::events::emit(roots, &rec, "restart", &[]);
    let job = Job::Run {
        lib: roots.lib.clone(),
        run: roots.run.clone(),
        id: rec.id.clone(),
    };
    spawn(&job, ProcessIo::default())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_docker_writes_them() {
        assert_eq!(RestartPolicy::parse("no"), Ok(RestartPolicy::No));
        assert_eq!(RestartPolicy::parse("always"), Ok(RestartPolicy::Always));
        assert_eq!(
            RestartPolicy::parse("on-failure:3"),
            Ok(RestartPolicy::OnFailure { max_retries: 3 })
        );
        assert_eq!(
            RestartPolicy::parse("on-failure"),
            Ok(RestartPolicy::OnFailure { max_retries: 0 })
        );
        for bad in ["sometimes", "always:2", "on-failure:x", ""] {
            assert!(RestartPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn who_goes_again_and_after_how_long() {
        let mut rec = Record::new("x", "x", crate::record::Isolation::Container, vec![]);
        rec.transition(Status::Running).unwrap();
        rec.transition(Status::Stopped).unwrap();
        rec.exit_code = Some(3);
        let on_failure = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(on_failure.applies(&rec, false));
        rec.restart_count = 2;
        assert!(!on_failure.applies(&rec, false));
        rec.exit_code = Some(0);
        rec.restart_count = 0;
        assert!(!on_failure.applies(&rec, false));
        assert!(RestartPolicy::Always.applies(&rec, false));
        assert!(!RestartPolicy::Always.applies(&rec, true));
        assert!(!RestartPolicy::UnlessStopped.applies(&rec, true));

        rec.restart_count = 3;
        assert_eq!(delay(&rec), Duration::from_millis(800));
        rec.restart_count = 30;
        assert_eq!(delay(&rec), Duration::from_secs(60));
        let t = chrono::Utc::now();
        rec.started = Some(t - chrono::Duration::seconds(20));
        rec.finished = Some(t);
        assert_eq!(delay(&rec), Duration::from_millis(100));
    }
}
