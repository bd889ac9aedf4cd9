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
//!
//! One file per command, as youki's are; this file holds what they share
//! (exit codes, the standard streams, the pid file) and the `--log` format.

mod create;
mod delete;
mod events;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod spec;
mod start;
mod state;

pub use create::{create, CreateArgs};
pub use delete::{delete, DeleteArgs};
pub use events::{events, EventsArgs};
pub use exec::{exec, ExecArgs};
pub use features::features;
pub use kill::{kill, KillArgs};
pub use list::{list, ListArgs};
pub use pause::{pause_bundle, resume};
pub use ps::{host_ps, ps, PsArgs};
pub use spec::{spec, SpecArgs};
pub use start::start_bundle;
pub use state::state;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use capsa_shim::backend::ProcessIo;
use capsa_shim::oci;
use capsa_shim::{CodedError, Roots};
use chrono::SecondsFormat;
use clap::{Args, ValueEnum};
use serde_json::json;

/// runc exits 1 when a command fails.
pub use capsa_shim::oci::EXIT_RUNC_ERROR;
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
        ..Default::default()
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

/// Whether `key` is exactly a container's ID or name. runc's verbs take
/// whole IDs: a docker-style prefix match must not make a signal number or
/// a missing runc ID stand for some `capsa run` container.
fn names_a_container(roots: &Roots, key: &str) -> bool {
    capsa_shim::record::find_exact(roots, key).is_ok_and(|r| r.is_some())
}

/// The container's state; the library's error says "does not exist" in
/// runc's words, which podman matches on to treat a container as gone.
fn state_or_missing(roots: &Roots, id: &str) -> Result<oci::State> {
    oci::state(roots, id)
}

// The one argument of `start`, `state`, `pause` and `resume`.
#[derive(Args)]
pub struct IdArg {
    /// The container ID.
    id: String,
}

// `--format` of `ps` and `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_line_is_what_go_runc_reads() {
        let l = log_line(LogFormat::Json, "error", "boom \"x\"");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "boom \"x\"");
        assert!(v["time"].as_str().is_some());
    }
}
