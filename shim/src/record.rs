//! The persisted state of one container and its state machine.
//!
//! `Created` (bundle and rootfs prepared) → `Running` (process started) →
//! `Stopped` (process gone, exit code known, host resources released) →
//! removed (directory deleted). Only the monitor moves a container to
//! `Running` and `Stopped`; `capsa rm` removes it.

use std::fs;
use std::io::Write;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lifecycle::Isolation;
use crate::paths::{ContainerPaths, Roots};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    /// Frozen by `capsa pause` (runc's pause): still holds its resources.
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "exited",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    /// The image reference as the user gave it, and its resolved ID.
    pub image: String,
    pub image_id: String,
    pub isolation: Isolation,
    /// The process arguments (entrypoint + cmd as resolved).
    pub command: Vec<String>,
    pub created: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub status: Status,
    /// Host PID of the container's init process while it runs.
    pub pid: Option<i32>,
    /// PID of the monitor process that owns the container.
    pub monitor_pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// Why the container failed to start or was lost, if it did.
    pub error: Option<String>,
    pub auto_remove: bool,
    pub tty: bool,
    pub interactive: bool,
    /// Signal `capsa stop` sends first (the image's StopSignal or SIGTERM).
    pub stop_signal: String,
    /// VM mode: the user's guest kernel (`--kernel`), if any.
    #[serde(default)]
    pub kernel: Option<std::path::PathBuf>,
    /// A container made from someone else's OCI bundle (`capsa create`,
    /// containerd): the bundle's directory. None for `capsa run`.
    #[serde(default)]
    pub bundle: Option<std::path::PathBuf>,
    /// VM mode: the pod sandbox container whose VM this container joined.
    #[serde(default)]
    pub sandbox: Option<String>,
}

impl Record {
    /// A just-created container: nothing run yet, no options set.
    pub fn new(id: &str, name: &str, isolation: Isolation, command: Vec<String>) -> Record {
        Record {
            id: id.to_string(),
            name: name.to_string(),
            image: String::new(),
            image_id: String::new(),
            isolation,
            command,
            created: Utc::now(),
            started: None,
            finished: None,
            status: Status::Created,
            pid: None,
            monitor_pid: None,
            exit_code: None,
            oom_killed: false,
            error: None,
            auto_remove: false,
            tty: false,
            interactive: false,
            stop_signal: "SIGTERM".into(),
            kernel: None,
            bundle: None,
            sandbox: None,
        }
    }

    pub fn load(roots: &Roots, id: &str) -> Result<Record> {
        let path = ContainerPaths::new(roots, id).record();
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut rec: Record = serde_json::from_slice(&data)
            .with_context(|| format!("parsing container record {}", path.display()))?;
        rec.refresh();
        Ok(rec)
    }

    /// Writes the record atomically (temp file + rename), so a reader never
    /// sees a half-written file.
    pub fn save(&self, roots: &Roots) -> Result<()> {
        let paths = ContainerPaths::new(roots, &self.id);
        let tmp = paths.dir.join(".record.json.tmp");
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        fs::rename(&tmp, paths.record())?;
        Ok(())
    }

    /// A container whose monitor died without recording the exit (killed
    /// with SIGKILL, host crash) is reported as stopped rather than running
    /// forever.
    fn refresh(&mut self) {
        if matches!(self.status, Status::Running | Status::Paused) {
            let monitor_alive = self.monitor_pid.is_some_and(pid_alive);
            let init_alive = self.pid.is_some_and(pid_alive);
            if !monitor_alive && !init_alive {
                self.status = Status::Stopped;
                if self.bundle.is_some() {
                    // The caller of `capsa create` reaps the process and
                    // knows its exit status; we do not.
                    return;
                }
                self.exit_code.get_or_insert(-1);
                self.error
                    .get_or_insert_with(|| "the container's monitor process was lost".into());
            }
        }
    }

    /// All containers, oldest first. Directories without a readable record
    /// (a create that is still in progress) are skipped.
    pub fn list(roots: &Roots) -> Result<Vec<Record>> {
        let dir = roots.containers();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if let Ok(rec) = Record::load(roots, &id) {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| r.created);
        Ok(out)
    }

    /// Finds a container by full ID, unique ID prefix, or name, as docker does.
    pub fn find(roots: &Roots, key: &str) -> Result<Record> {
        let all = Record::list(roots)?;
        if let Some(r) = all.iter().find(|r| r.id == key || r.name == key) {
            return Ok(r.clone());
        }
        let matches: Vec<&Record> = all.iter().filter(|r| r.id.starts_with(key)).collect();
        match matches.as_slice() {
            [one] if !key.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(crate::CodedError::new(
                crate::EXIT_CAPSA_ERROR,
                format!("no such container: {key}"),
            )
            .into()),
            _ => Err(crate::CodedError::new(
                crate::EXIT_CAPSA_ERROR,
                format!("container ID prefix {key} is ambiguous; give more characters"),
            )
            .into()),
        }
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still counts as alive until reaped,
    // which is what we want for "is the monitor still responsible".
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}
