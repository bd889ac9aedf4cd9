//! The persisted state of one container and its state machine.
//!
//! ```text
//!   Created ──start──▶ Running ◀──resume── Paused
//!      │                  │  └────pause──────▶ │
//!      │                  ▼                    │
//!      └──────────────▶ Stopped ◀──────────────┘
//! ```
//!
//! `Created`: bundle and root filesystem prepared, process waiting;
//! `Running`: process started; `Paused`: frozen, still holding its
//! resources; `Stopped`: process gone, exit code known, host resources
//! released. `capsa rm` then removes the directory. The status is private:
//! every change goes through [`Record::transition`], which refuses a move
//! the diagram does not have.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

use crate::paths::{ContainerPaths, Roots};

/// Which backend runs a container: its isolation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A namespace container on the host kernel.
    #[default]
    Container,
    /// A microVM with its own kernel and a guest agent.
    Vm,
}

impl FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "container" => Ok(Isolation::Container),
            "vm" => Ok(Isolation::Vm),
            other => Err(format!(
                "unknown isolation {other:?}: use \"container\" or \"vm\""
            )),
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Vm => "vm",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    /// Frozen by `capsa pause` (runc's pause): still holds its resources.
    Paused,
    Stopped,
}

impl Status {
    /// Whether the state machine has the move from `self` to `to`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Created, Running)
                | (Created, Stopped)
                | (Running, Paused)
                | (Paused, Running)
                | (Running, Stopped)
                | (Paused, Stopped)
        )
    }
    /// `start`: only a created container's process waits to run.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }
    /// `pause`: only a running container can be frozen.
    pub fn can_pause(self) -> bool {
        self.can_become(Status::Paused)
    }
    /// `resume` (`unpause`): only a paused one can be thawed.
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }
    /// `exec`: a process can join only a running container (a paused VM
    /// cannot even be asked).
    pub fn can_exec(self) -> bool {
        self == Status::Running
    }
    /// runc's `kill`: while the container's process exists.
    pub fn can_kill(self) -> bool {
        self != Status::Stopped
    }
    /// Running or paused: its processes exist (what `ps` lists without
    /// `-a`).
    pub fn is_up(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
    /// `rm` without `-f`: nothing may be left running.
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Created | Status::Stopped)
    }
}

impl Status {
    /// The status as runc's `state` names it (docker says "exited").
    pub fn runc_name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
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
    /// Changed only through [`Record::transition`].
    status: Status,
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
    /// PID of the keeper: the monitor's parent, which collects the exit if
    /// the monitor is killed (see `monitor::supervise`).
    #[serde(default)]
    pub keeper_pid: Option<i32>,
    /// The networks, ports and DNS the container asked for (`capsa run`).
    #[serde(default)]
    pub network: Option<capsa_network::Request>,
    /// The named volumes it mounts (`-v NAME:/path`); `volume rm` refuses
    /// them while the container exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// How much log it keeps (`--log-opt`).
    #[serde(default)]
    pub log: crate::logs::LogLimits,
    /// `--storage-opt size`: its writable layer's bound in bytes (a disk
    /// of that size, see crate::writable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<u64>,
    /// `--restart`, and how often it has restarted the container.
    #[serde(default)]
    pub restart: crate::monitor::restart::RestartPolicy,
    #[serde(default)]
    pub restart_count: u32,
    /// The image's labels and `--label`s (which win), as docker keeps
    /// them in the container's config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The healthcheck capsa runs while it runs (the image's, or
    /// `--health-*`): see crate::health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::health::HealthConfig>,
    /// `--stop-timeout`: `stop`'s wait before SIGKILL when not given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u64>,
    /// `--userns=auto` (or `--uidmap`): the host ids its user namespace
    /// maps 0… to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<oci_spec::runtime::LinuxIdMapping>,
    /// The range was given (`--uidmap`), not allocated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub userns_given: bool,
    /// `capsa build`'s RUN steps: when the process exits, the monitor
    /// writes the container's writable layer here (VM mode: while the
    /// guest still runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_on_exit: Option<std::path::PathBuf>,
    /// Made by docker-style `capsa create`: Created with no monitor yet,
    /// waiting for `capsa start` (unlike `run`'s, whose monitor is on its way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_start: bool,
    /// Set (never saved) when record.json could not be read: what is wrong.
    /// Such a container is listed, counts as a user of its image, and
    /// `capsa rm -f` removes it.
    #[serde(skip)]
    pub damaged: Option<String>,
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
            log: Default::default(),
            storage_size: None,
            restart: Default::default(),
            restart_count: 0,
            labels: BTreeMap::new(),
            healthcheck: None,
            stop_timeout: None,
            userns: None,
            userns_given: false,
            tty: false,
            interactive: false,
            stop_signal: "SIGTERM".into(),
            kernel: None,
            bundle: None,
            sandbox: None,
            keeper_pid: None,
            network: None,
            volumes: Vec::new(),
            waiting_for_start: false,
            layer_on_exit: None,
            damaged: None,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The ID as docker shows it: its first 12 characters (all of a
    /// shorter one, such as a runc container's).
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// docker's `start` of a stopped container: back to Created, the last
    /// run's exit forgotten (its log is kept). Only `capsa run`'s
    /// containers: a bundle's, as runc's, runs once.
    pub fn rearm(&mut self) -> Result<()> {
        if self.status != Status::Stopped || self.bundle.is_some() {
            return Err(crate::CodedError::new(
                crate::EXIT_CAPSA_ERROR,
                format!(
                    "container {} is {}: only a stopped container can be started again",
                    self.display_name(),
                    self.status
                ),
            )
            .into());
        }
        self.status = Status::Created;
        self.pid = None;
        self.monitor_pid = None;
        self.keeper_pid = None;
        self.exit_code = None;
        self.finished = None;
        self.oom_killed = false;
        self.error = None;
        Ok(())
    }

    /// Moves the container to status `to`, or says why it cannot.
    pub fn transition(&mut self, to: Status) -> Result<()> {
        if !self.status.can_become(to) {
            return Err(crate::CodedError::new(
                crate::EXIT_CAPSA_ERROR,
                format!(
                    "container {} is {}: it cannot become {}",
                    self.display_name(),
                    self.status,
                    to
                ),
            )
            .into());
        }
        self.status = to;
        Ok(())
    }

    /// The name, or the ID for a container made from a bundle (no name).
    fn display_name(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }

    /// Stands in for container `id` whose record.json cannot be read. Its
    /// image is known from the `image-id` file written beside the record at
    /// creation.
    fn damaged(roots: &Roots, id: &str, why: String) -> Record {
        let paths = ContainerPaths::new(roots, id);
        let image_id = fs::read_to_string(paths.image_id())
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let created = fs::metadata(&paths.dir)
            .and_then(|m| m.modified())
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        Record {
            image: "<damaged>".into(),
            image_id,
            created,
            status: Status::Stopped,
            damaged: Some(why),
            ..Record::new(id, "", Isolation::Container, Vec::new())
        }
    }

    /// Saves a new container's first record under `roots.containers()`
    /// atomically: the directory appears with its record already in it (a
    /// staging directory renamed into place), so any container directory
    /// without a readable record is damaged, never half-made. The caller
    /// holds [`lock_containers`]. Writes `image-id` beside the record.
    pub fn create_dir(&self, roots: &Roots) -> Result<()> {
        let containers = roots.containers();
        fs::create_dir_all(&containers)
            .with_context(|| format!("creating {}", containers.display()))?;
        let target = roots.container(&self.id);
        let exists = || {
            anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
                .context(format!("creating {}", target.display()))
        };
        if target.exists() {
            return Err(exists());
        }
        let staging = containers.join(format!(".new-{}", self.id));
        match std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(&staging)
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", staging.display()));
            }
        }
        let result = (|| {
            if let Some(map) = &self.userns {
                // The container's init, already its own user, passes
                // through to its root filesystem and files; no one else.
                std::os::unix::fs::chown(&staging, None, Some(map.host_id()))?;
                fs::set_permissions(
                    &staging,
                    std::os::unix::fs::PermissionsExt::from_mode(0o710),
                )?;
            }
            let paths = ContainerPaths {
                dir: staging.clone(),
            };
            fs::write(paths.image_id(), &self.image_id)
                .with_context(|| format!("writing {}", paths.image_id().display()))?;
            self.save_in(&paths)?;
            // A directory in place (another create of the same ID won)
            // is never empty, so rename refuses to replace it.
            match fs::rename(&staging, &target) {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    Err(exists())
                }
                Err(e) => Err(e).with_context(|| format!("creating {}", target.display())),
            }
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
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
        self.save_in(&ContainerPaths::new(roots, &self.id))
    }

    fn save_in(&self, paths: &ContainerPaths) -> Result<()> {
        let tmp = paths.dir.join(".record.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::from)?)?;
            f.sync_all()?;
            fs::rename(&tmp, paths.record())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow::Error::from(e).context(format!("writing {}", paths.record().display()))
        })
    }

    /// Whether a capsa process (the monitor or its keeper) still watches
    /// this container and will record its exit.
    pub fn supervised(&self) -> bool {
        self.monitor_pid.is_some_and(pid_alive) || self.keeper_pid.is_some_and(pid_alive)
    }

    /// A running container that nobody will record the exit of: its monitor
    /// and keeper were both killed. `ps` says so.
    pub fn unsupervised(&self) -> bool {
        self.status.is_up()
            && self.bundle.is_none()
            && !self.supervised()
            && self.pid.is_some_and(pid_alive)
    }

    /// A container whose monitor and keeper died without recording the exit
    /// (both killed with SIGKILL, host crash) is reported as stopped rather
    /// than running forever.
    fn refresh(&mut self) {
        if self.status.is_up() {
            let init_alive = self.pid.is_some_and(pid_alive);
            if !self.supervised() && !init_alive {
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

    /// All containers, oldest first. A directory whose record cannot be
    /// read is listed as damaged (see [`Record::create_dir`]); staging
    /// directories and the lock (dot names) are not containers.
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
            if id.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match Record::load(roots, &id) {
                Ok(rec) => out.push(rec),
                Err(e) => out.push(Record::damaged(roots, &id, format!("{e:#}"))),
            }
        }
        out.sort_by_key(|r| r.created);
        Ok(out)
    }

    /// Finds a container by full ID, unique ID prefix, or name, as docker does.
    pub fn find(roots: &Roots, key: &str) -> Result<Record> {
        let all = Record::list(roots)?;
        if let Some(r) = exact(&all, key) {
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

/// Loads, changes and saves a record under its lock, so the monitor (which
/// records the exit) and `capsa start` (which records the start) cannot
/// overwrite each other.
pub fn with_record(roots: &Roots, id: &str, f: impl FnOnce(&mut Record)) -> Option<Record> {
    let dir = ContainerPaths::new(roots, id).dir;
    let lock = fs::File::open(&dir).ok()?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).ok()?;
    let mut rec = Record::load(roots, id).ok()?;
    f(&mut rec);
    rec.save(roots).ok()?;
    Some(rec)
}

/// The container whose whole ID or name is `key`, if any. runc's verbs take
/// only these: a prefix is docker's convenience.
pub fn find_exact(roots: &Roots, key: &str) -> Result<Option<Record>> {
    Ok(exact(&Record::list(roots)?, key).cloned())
}

fn exact<'a>(all: &'a [Record], key: &str) -> Option<&'a Record> {
    all.iter()
        .find(|r| r.id == key || (r.name == key && !key.is_empty()))
}

/// Holds the lock that makes creating a container and removing an image
/// exclude each other, and makes container names unique: a create checks
/// the name and the image and writes its record under it; `rmi` checks the
/// image's users under it.
pub fn lock_containers(roots: &Roots) -> Result<nix::fcntl::Flock<fs::File>> {
    let dir = roots.containers();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    lock_file(&dir.join(".lock"))
}

/// Holds container `id`'s own lock. What changes one container at length
/// takes it before [`lock_containers`] and keeps it when it lets that one
/// go: `start`, `rm`, and the `cp` or `commit` of a stopped container
/// (which boot its VM, or mount its root, for seconds). So they wait for
/// each other on that container, and nothing waits for them on another.
/// Fails if the container's directory is gone.
pub fn lock_container(roots: &Roots, id: &str) -> Result<nix::fcntl::Flock<fs::File>> {
    lock_file(&roots.container(id).join(".busy"))
}

fn lock_file(path: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", path.display()))
}

pub fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still counts as alive until reaped,
    // which is what we want for "is the monitor still responsible".
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    const ALL: [Status; 4] = [Created, Running, Paused, Stopped];

    #[test]
    fn only_the_diagram_s_moves_are_allowed() {
        let allowed = [
            (Created, Running),
            (Created, Stopped),
            (Running, Paused),
            (Paused, Running),
            (Running, Stopped),
            (Paused, Stopped),
        ];
        for from in ALL {
            for to in ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn each_verb_is_allowed_in_its_states_only() {
        let which = |check: fn(Status) -> bool| -> Vec<Status> {
            ALL.into_iter().filter(|s| check(*s)).collect()
        };
        assert_eq!(which(Status::can_start), [Created]);
        assert_eq!(which(Status::can_pause), [Running]);
        assert_eq!(which(Status::can_resume), [Paused]);
        assert_eq!(which(Status::can_exec), [Running]);
        assert_eq!(which(Status::can_kill), [Created, Running, Paused]);
        assert_eq!(which(Status::can_delete), [Created, Stopped]);
    }

    #[test]
    fn a_refused_transition_says_why_and_changes_nothing() {
        let mut rec = Record::new("0123456789abcdef", "web", Isolation::Container, vec![]);
        rec.transition(Running).unwrap();
        rec.transition(Stopped).unwrap();
        let e = rec.transition(Running).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container web is exited: it cannot become running"
        );
        assert_eq!(rec.status(), Stopped);
        let coded = e.downcast_ref::<crate::CodedError>().unwrap();
        assert_eq!(coded.code, crate::EXIT_CAPSA_ERROR);
    }

    #[test]
    fn the_status_is_saved_and_loaded_with_the_record() {
        let d = tempfile::tempdir().unwrap();
        let roots = Roots::new(Some(d.path()));
        let mut rec = Record::new("0123456789abcdef", "web", Isolation::Vm, vec![]);
        rec.create_dir(&roots).unwrap();
        rec.transition(Running).unwrap();
        rec.transition(Paused).unwrap();
        // Nobody supervises it and it has no process: refresh would call it
        // stopped, so give it one that is alive (ours).
        rec.monitor_pid = Some(std::process::id() as i32);
        rec.save(&roots).unwrap();
        assert_eq!(Record::load(&roots, &rec.id).unwrap().status(), Paused);
    }
}
