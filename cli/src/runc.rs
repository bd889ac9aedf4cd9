//! runc's command line: `create`, `start`, `state`, `kill`, `delete`, `exec`,
//! `ps`, `list`, `features`, `spec`, `events`, `pause`, `resume`, so that
//! tools that drive runc (containerd's runc shim through go-runc, podman
//! through conmon) drive capsa unchanged.
//!
//! A thin layer over `capsa_shim::oci`: this module parses runc's grammar,
//! prints runc's output formats and uses runc's exit codes (1 for an error,
//! 255 for a failed `exec`); the container logic is all in the library.
//!
//! `kill`, `exec` and `ps` share their names with the docker-like commands;
//! each is one command whose grammar is the union of both, and the container
//! (made by `capsa create` or by `capsa run`) or the flags pick the meaning.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use capsa_image::oci_spec::runtime::{Capability, Process, Spec};
use capsa_shim::backend::ProcessIo;
use capsa_shim::lifecycle::parse_signal;
use capsa_shim::oci;
use capsa_shim::{CodedError, Roots};
use chrono::SecondsFormat;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::containers;

/// runc exits 1 when a command fails.
pub const EXIT_RUNC_ERROR: i32 = 1;
/// … and 255 when `exec` fails before the process ran.
pub const EXIT_EXEC_FAILED: i32 = 255;

/// Turns any error into one that ends capsa with `code`, keeping the message.
fn coded(code: i32) -> impl Fn(anyhow::Error) -> anyhow::Error {
    move |e| match e.downcast_ref::<CodedError>() {
        Some(c) if c.code == code => e,
        _ => CodedError::new(code, format!("{e:#}")).into(),
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One log line as runc (logrus) writes it: `time=… level=… msg=…` or
/// `{"level":…,"msg":…,"time":…}`. containerd's runc shim reads the last
/// error line of the json log to report why a command failed.
pub fn log_line(format: LogFormat, level: &str, msg: &str) -> String {
    let time = chrono::Local::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    match format {
        LogFormat::Json => json!({"level": level, "msg": msg, "time": time}).to_string(),
        LogFormat::Text => format!("time={time:?} level={level} msg={msg:?}"),
    }
}

/// Appends one line to the `--log` file (best effort: the error is also on
/// stderr).
pub fn append_log(path: &Path, format: LogFormat, level: &str, msg: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{}", log_line(format, level, msg));
    }
}

/// tracing events as runc's json log lines (for `--log-format json`).
pub struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::FormatFields;
        let mut msg = String::new();
        ctx.format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut msg),
            event,
        )?;
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        writeln!(writer, "{}", log_line(LogFormat::Json, &level, &msg))
    }
}

fn dup_std(fd: i32) -> Option<OwnedFd> {
    // SAFETY: fds 0-2 are ours for the life of the process; we only borrow
    // them to duplicate.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    b.try_clone_to_owned().ok()
}

/// The caller's own stdin/stdout/stderr, as runc hands them to the
/// container; or a new terminal through the console socket.
fn std_io(console_socket: Option<PathBuf>) -> ProcessIo {
    if console_socket.is_some() {
        return ProcessIo {
            console_socket,
            ..Default::default()
        };
    }
    ProcessIo {
        stdin: dup_std(0),
        stdout: dup_std(1),
        stderr: dup_std(2),
        console_socket: None,
    }
}

/// Writes `--pid-file` as runc does: a temp file in the same directory, then
/// a rename, so a reader never sees a partial pid.
fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .with_context(|| format!("--pid-file {} has no file name", path.display()))?;
    let tmp = dir.unwrap_or(Path::new(".")).join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("writing the pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing the pid file {}", path.display()))
}

/// Whether `id` names a container made by `capsa create` (runc's world)
/// rather than by `capsa run`.
fn is_oci(roots: &Roots, id: &str) -> bool {
    oci::state(roots, id).is_ok()
}

/// The container's state; the library's error says "does not exist" in
/// runc's words, which podman matches on to treat a container as gone.
fn state_or_missing(roots: &Roots, id: &str) -> Result<oci::State> {
    oci::state(roots, id)
}

// ---------------------------------------------------------------- create

#[derive(Args)]
pub struct CreateArgs {
    /// Path to the bundle (the directory holding config.json).
    #[arg(short = 'b', long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// Write the pid of the container's process to FILE.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// An AF_UNIX socket that receives the master end of the container's terminal.
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (capsa always pivots into the root).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_new_keyring: bool,
    /// Accepted for runc compatibility (extra fds are not passed on).
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for runc compatibility (create always returns at once).
    #[arg(short = 'd', long)]
    detach: bool,
    /// The container ID.
    id: String,
}

pub fn create(roots: &Roots, a: CreateArgs) -> Result<i32> {
    let run = || -> Result<i32> {
        let bundle = std::path::absolute(&a.bundle)
            .with_context(|| format!("bundle {}", a.bundle.display()))?;
        let pid = oci::create(roots, &a.id, &bundle, std_io(a.console_socket.clone()))?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

// ---------------------------------------------------------------- simple ones

#[derive(Args)]
pub struct IdArg {
    /// The container ID.
    id: String,
}

pub fn start(roots: &Roots, a: IdArg) -> Result<i32> {
    oci::start(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    Ok(0)
}

pub fn state(roots: &Roots, a: IdArg) -> Result<i32> {
    let s = state_or_missing(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(0)
}

pub fn pause(roots: &Roots, a: IdArg) -> Result<i32> {
    oci::pause(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    Ok(0)
}

pub fn resume(roots: &Roots, a: IdArg) -> Result<i32> {
    oci::resume(roots, &a.id).map_err(coded(EXIT_RUNC_ERROR))?;
    Ok(0)
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Container IDs.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub fn delete(roots: &Roots, a: DeleteArgs) -> Result<i32> {
    for id in &a.ids {
        // runc: `delete --force` of a container that does not exist succeeds
        // (containerd and podman clean up that way).
        let known = capsa_shim::Record::find(roots, id).is_ok();
        if a.force && !known {
            continue;
        }
        if known && !is_oci(roots, id) {
            return Err(CodedError::new(
                EXIT_RUNC_ERROR,
                format!("container {id} was made by `capsa run`: remove it with `capsa rm`"),
            )
            .into());
        }
        state_or_missing(roots, id)
            .and_then(|_| oci::delete(roots, id, a.force))
            .map_err(coded(EXIT_RUNC_ERROR))?;
    }
    Ok(0)
}

// ---------------------------------------------------------------- kill

/// `kill [-s SIG] [--all] CONTAINER… [SIGNAL]`: runc's `kill ID [SIGNAL]`
/// (default SIGTERM) for containers made by `create`, docker's
/// `kill [-s SIG] CONTAINER…` (default SIGKILL) for those made by `run`.
#[derive(Args)]
pub struct KillArgs {
    /// Signal to send (name, with or without SIG, or number).
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    signal: Option<String>,
    /// runc: send the signal to every process of the container.
    #[arg(short = 'a', long)]
    all: bool,
    /// Containers, then (runc) an optional signal.
    #[arg(required = true, value_name = "CONTAINER… [SIGNAL]")]
    args: Vec<String>,
}

pub fn kill(roots: &Roots, mut a: KillArgs) -> Result<i32> {
    // runc's `kill ID SIGNAL`: a last argument that is a signal and not a
    // container.
    let mut positional_signal = None;
    if a.args.len() >= 2 {
        let last = a.args.last().expect("len >= 2");
        if parse_signal(last).is_some()
            && !is_oci(roots, last)
            && capsa_shim::Record::find(roots, last).is_err()
        {
            positional_signal = a.args.pop();
        }
    }
    let runc = a.all || positional_signal.is_some() || a.args.iter().all(|c| is_oci(roots, c));
    if !runc {
        return containers::kill(
            roots,
            containers::KillArgs {
                signal: a.signal.unwrap_or_else(|| "KILL".into()),
                containers: a.args,
            },
        );
    }
    let run = || -> Result<i32> {
        let name = positional_signal
            .or(a.signal.clone())
            .unwrap_or_else(|| "TERM".into());
        let sig = parse_signal(&name).ok_or_else(|| anyhow!("unknown signal {name:?}"))?;
        for id in &a.args {
            let st = state_or_missing(roots, id)?;
            if let Err(e) = oci::kill(roots, id, sig, a.all) {
                if st.status == "stopped"
                    || oci::state(roots, id).is_ok_and(|s| s.status == "stopped")
                {
                    // containerd's runc shim matches "container not running"
                    // to treat the process as already finished.
                    bail!("container not running ({e:#})");
                }
                return Err(e);
            }
        }
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

// ---------------------------------------------------------------- exec

/// docker's `exec [-it] [-e] [-w] [-u] CONTAINER CMD…` and runc's
/// `exec [--process FILE] [--pid-file] [--detach] [--console-socket] … ID [CMD…]`.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct ExecArgs {
    #[command(flatten)]
    docker: containers::ExecArgs,
    /// runc: the process to run, as an OCI process JSON file.
    #[arg(short = 'p', long, value_name = "FILE")]
    process: Option<PathBuf>,
    /// runc: write the pid of the process to FILE.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// runc: do not wait for the process; print nothing and exit 0.
    #[arg(short = 'd', long)]
    detach: bool,
    /// runc: an AF_UNIX socket that receives the master end of the terminal.
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// runc: working directory (docker's -w).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// runc: add a capability to the process.
    #[arg(long = "cap", value_name = "CAP")]
    caps: Vec<String>,
    /// runc: set no_new_privileges.
    #[arg(long)]
    no_new_privs: bool,
    /// runc: the AppArmor profile.
    #[arg(long, value_name = "PROFILE")]
    apparmor: Option<String>,
    /// runc: the SELinux process label.
    #[arg(long, value_name = "LABEL")]
    process_label: Option<String>,
    /// runc: additional groups.
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    additional_gids: Vec<u32>,
    /// Accepted for runc compatibility.
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
}

impl ExecArgs {
    #[cfg(test)]
    pub fn pid_file_is_none(&self) -> bool {
        self.pid_file.is_none()
    }
}

pub fn exec(roots: &Roots, a: ExecArgs) -> Result<i32> {
    let container = a.docker.container_and_command[0].clone();
    let runc_flags =
        a.process.is_some() || a.pid_file.is_some() || a.detach || a.console_socket.is_some();
    if !runc_flags && !is_oci(roots, &container) {
        let mut docker = a.docker;
        if docker.workdir.is_none() {
            docker.workdir = a.cwd;
        }
        return containers::exec(roots, docker);
    }
    let run = || -> Result<i32> {
        let process = runc_process(roots, &a, &container)?;
        if process.terminal().unwrap_or(false) && a.console_socket.is_none() {
            bail!("exec --tty needs --console-socket for a container made by `capsa create`");
        }
        let io = std_io(a.console_socket.clone());
        let pid = oci::exec(roots, &container, &process, io)?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        if a.detach {
            return Ok(0);
        }
        capsa_container::process::wait_pid(pid)
    };
    run().map_err(coded(EXIT_EXEC_FAILED))
}

/// The process to exec: `--process FILE`, or the container's own process
/// from its config.json with the command line's overrides (runc's rules).
fn runc_process(roots: &Roots, a: &ExecArgs, id: &str) -> Result<Process> {
    let d = &a.docker;
    let command = &d.container_and_command[1..];
    if let Some(f) = &a.process {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the process file {}", f.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("parsing the process file {}", f.display()));
    }
    if command.is_empty() {
        bail!("exec needs a command or --process FILE: capsa exec ID COMMAND [ARG...]");
    }
    let st = oci::state(roots, id)?;
    let config = st.bundle.join("config.json");
    let spec = Spec::load(&config).with_context(|| format!("reading {}", config.display()))?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(command.to_vec()));
    p.set_terminal(Some(d.tty));
    if let Some(cwd) = a.cwd.as_ref().or(d.workdir.as_ref()) {
        p.set_cwd(PathBuf::from(cwd));
    }
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &d.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(u) = &d.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse(), g.parse()),
            None => (u.parse(), Ok(0)),
        };
        let (Ok(uid), Ok(gid)) = (uid, gid) else {
            bail!("exec --user takes UID[:GID], not {u:?}");
        };
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    if !a.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &a.caps {
            let name = c.to_ascii_uppercase();
            let name = name.strip_prefix("CAP_").unwrap_or(&name).to_string();
            let cap: Capability = serde_json::from_value(json!(format!("CAP_{name}")))
                .map_err(|_| anyhow!("unknown capability {c:?}"))?;
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut s = set.1.clone().unwrap_or_default();
                s.insert(cap);
                match set.0 {
                    0 => caps.set_bounding(Some(s)),
                    1 => caps.set_effective(Some(s)),
                    _ => caps.set_permitted(Some(s)),
                };
            }
        }
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(x) = &a.apparmor {
        p.set_apparmor_profile(Some(x.clone()));
    }
    if let Some(x) = &a.process_label {
        p.set_selinux_label(Some(x.clone()));
    }
    Ok(p)
}

// ---------------------------------------------------------------- ps

/// docker's `ps [-a] [-q]` (no container) and runc's
/// `ps [--format table|json] ID [PS-ARGS…]`.
#[derive(Args)]
pub struct PsArgs {
    /// docker: show all containers (default: running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// docker: only print container IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// runc: table (ps output) or json (the pids).
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    format: Format,
    /// runc: the container ID, then arguments for ps(1) (default -ef).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ID [PS-ARGS]"
    )]
    id_and_ps_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn ps(roots: &Roots, a: PsArgs) -> Result<i32> {
    let Some((id, ps_args)) = a.id_and_ps_args.split_first() else {
        return containers::ps(
            roots,
            containers::PsArgs {
                all: a.all,
                quiet: a.quiet,
            },
        );
    };
    let run = || -> Result<i32> {
        state_or_missing(roots, id)?;
        let pids = oci::pids(roots, id)?;
        if a.format == Format::Json {
            println!("{}", serde_json::to_string(&pids)?);
            return Ok(0);
        }
        let args: Vec<String> = if ps_args.is_empty() {
            vec!["-ef".into()]
        } else {
            ps_args.to_vec()
        };
        let out = std::process::Command::new("ps")
            .args(&args)
            .output()
            .context("running ps")?;
        if !out.status.success() {
            bail!(
                "ps {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let col = header
            .split_whitespace()
            .position(|h| h == "PID")
            .ok_or_else(|| anyhow!("ps {} printed no PID column", args.join(" ")))?;
        println!("{header}");
        for l in lines {
            let pid = l
                .split_whitespace()
                .nth(col)
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| pids.contains(&p)) {
                println!("{l}");
            }
        }
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

// ---------------------------------------------------------------- list

#[derive(Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    format: Format,
    /// Only print container IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn list(roots: &Roots, a: ListArgs) -> Result<i32> {
    let states = oci::list(roots).map_err(coded(EXIT_RUNC_ERROR))?;
    if a.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    if a.format == Format::Json {
        // runc prints `null` for no containers (a nil Go slice).
        if states.is_empty() {
            println!("null");
        } else {
            println!("{}", serde_json::to_string(&states)?);
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.pid.to_string(),
                s.status.clone(),
                s.bundle.display().to_string(),
                s.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
                s.owner.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        tab_table(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &rows
        )
    );
    Ok(0)
}

/// Go's tabwriter as runc sets it up for `list` (min width 12, padding 3);
/// the last column is not padded.
fn tab_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut widths = vec![0usize; n];
    let all = std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
        .collect::<Vec<_>>();
    for r in &all {
        for (i, c) in r.iter().enumerate().take(n - 1) {
            widths[i] = widths[i].max((c.chars().count() + 3).max(12));
        }
    }
    let mut out = String::new();
    for r in &all {
        for (i, c) in r.iter().enumerate() {
            if i + 1 < n {
                out.push_str(&format!("{c:<w$}", w = widths[i]));
            } else {
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------- events

#[derive(Args)]
pub struct EventsArgs {
    /// Print the container's statistics once and exit.
    #[arg(long)]
    stats: bool,
    /// How often to print statistics (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    interval: String,
    /// The container ID.
    id: String,
}

/// runc's `{"type":"stats","id":…,"data":{…}}`, with the fields of runc's
/// `types.Stats` that capsa measures.
fn stats_event(id: &str, s: &oci::Stats) -> serde_json::Value {
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {"usage": {
                "total": s.cpu_usage_ns,
                "percpu": [],
                "kernel": s.cpu_system_ns,
                "user": s.cpu_user_ns,
            }},
            "memory": {"usage": {
                "usage": s.memory_usage_bytes,
                // runc reports "no limit" as the largest value.
                "limit": s.memory_limit_bytes.unwrap_or(u64::MAX),
            }},
            "pids": {"current": s.pids_current},
        }
    })
}

fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || anyhow!("--interval takes a duration like 5s, 500ms or 1m, not {s:?}");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs <= 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn events(roots: &Roots, a: EventsArgs) -> Result<i32> {
    let run = || -> Result<i32> {
        let interval = parse_interval(&a.interval)?;
        state_or_missing(roots, &a.id)?;
        loop {
            let s = oci::stats(roots, &a.id)?;
            println!("{}", stats_event(&a.id, &s));
            if a.stats {
                return Ok(0);
            }
            std::thread::sleep(interval);
            match oci::state(roots, &a.id) {
                Ok(st) if st.status != "stopped" => {}
                _ => return Ok(0),
            }
        }
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

// ---------------------------------------------------------------- spec

#[derive(Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(short = 'b', long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    // `spec --rootless` is the global --rootless flag (see main.rs).
}

/// The default spec `runc spec` writes: a terminal with `sh`, a read-only
/// `rootfs`, the usual mounts and namespaces.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    spec.set_hostname(Some("capsa".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec
}

pub fn spec(a: SpecArgs, rootless: bool) -> Result<i32> {
    let run = || -> Result<i32> {
        let path = a.bundle.join("config.json");
        if path.exists() {
            bail!("File {} exists. Remove it first", path.display());
        }
        if !a.bundle.is_dir() {
            bail!("bundle directory {} does not exist", a.bundle.display());
        }
        let text = serde_json::to_string_pretty(&default_spec(rootless))?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

// ---------------------------------------------------------------- features

/// What capsa supports, in the shape of `runc features` (runc 1.1+).
pub fn features_json() -> serde_json::Value {
    let caps: Vec<String> = ALL_CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime",
            "noexec", "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime",
            "nosuid", "nosymfollow", "private", "rbind", "relatime", "remount", "ro",
            "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "silent",
            "slave", "strictatime", "suid", "symfollow", "sync", "tmpcopyup", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.capsa.isolation": "container|vm (default container)",
            "io.capsa.kernel": "vm isolation: path of the guest kernel to boot",
            "io.capsa.hooks": "supported in container isolation only (a VM's guest cannot run host binaries)",
            "org.opencontainers.runc.checkpoint.enabled": "false"
        }
    })
}

const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

pub fn features() -> Result<i32> {
    println!("{}", serde_json::to_string_pretty(&features_json())?);
    Ok(0)
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("x").is_err());
        assert!(parse_interval("0s").is_err());
    }

    #[test]
    fn list_table_is_aligned_like_runc() {
        let t = tab_table(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &[vec![
                "c1".into(),
                "42".into(),
                "running".into(),
                "/b".into(),
                "2024-01-01T00:00:00Z".into(),
                "root".into(),
            ]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID          PID         STATUS      BUNDLE      CREATED                OWNER"
        );
        assert!(lines[1].starts_with("c1          42          running     /b          2024"));
    }

    #[test]
    fn json_log_line_is_what_go_runc_reads() {
        let l = log_line(LogFormat::Json, "error", "boom \"x\"");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "boom \"x\"");
        assert!(v["time"].as_str().is_some());
    }

    #[test]
    fn default_spec_is_runc_like() {
        let s = default_spec(false);
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }

    #[test]
    fn capability_names_parse() {
        for c in ALL_CAPS {
            let _: Capability =
                serde_json::from_value(json!(format!("CAP_{c}"))).unwrap_or_else(|_| panic!("{c}"));
        }
    }
}
