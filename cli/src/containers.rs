//! Container commands: run, create, ps, logs, exec, stop, kill, rm, wait,
//! inspect.

use std::time::Duration;

use anyhow::{bail, Result};
use capsa_image::Store;
use capsa_shim::backend::{ExecRequest, ProcessIo};
use capsa_shim::lifecycle::{self, parse_signal};
use capsa_shim::monitor::spawn::{spawn, Job};
use capsa_shim::monitor::{self, Mode};
use capsa_shim::record::{Record, Status};
use capsa_shim::{CodedError, CreateRequest, Roots, EXIT_CAPSA_ERROR};
use chrono::Utc;
use clap::{Args, Parser};

use crate::run_flags::RunArgs;
use crate::table;

pub fn run(roots: &Roots, args: RunArgs) -> Result<i32> {
    let rec = create_from_image(roots, &args)?;
    if args.detach {
        start_detached_monitor(roots, &rec)?;
        println!("{}", rec.id);
        return Ok(0);
    }
    monitor::supervise(roots, &rec.id, Mode::Foreground)
}

/// The container `run` and `create` make from the image and flags.
fn create_from_image(roots: &Roots, args: &RunArgs) -> Result<Record> {
    let store = Store::open(&roots.images())?;
    let run = args.to_run_config()?;
    let network = args.to_network_request()?;
    let log = args.log_limits()?;
    let storage_size = args.storage_size()?;
    let restart = args.restart_policy()?;
    let health = args.health()?;
    let stop_signal = args.stop_signal()?;
    let userns = args.userns()?;
    let image = args.image().to_string();
    store.ensure_local(&image)?;
    lifecycle::create(
        roots,
        &store,
        CreateRequest {
            name: args.name.clone(),
            image,
            run,
            isolation: args.isolation,
            auto_remove: args.rm,
            log,
            storage_size,
            restart,
            interactive: args.interactive,
            kernel: args.kernel.clone(),
            network,
            network_of: args.network_of().map(str::to_string),
            labels: args.labels()?,
            health,
            stop_signal,
            stop_timeout: args.stop_timeout,
            userns,
        },
    )
}

/// `create`'s arguments, parsed once the grammar is known (see [`create`]).
#[derive(Args)]
pub struct CreateArgs {
    /// docker: [run's flags] IMAGE [COMMAND [ARG…]]. runc: --bundle DIR
    /// [--pid-file FILE] [--console-socket PATH] ID.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

#[derive(Parser)]
#[command(name = "capsa create", disable_help_flag = true)]
struct DockerCreate {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Parser)]
#[command(name = "capsa create")]
struct RuncCreate {
    #[command(flatten)]
    create: crate::runc::CreateArgs,
}

/// runc's flags of `create` that docker's has not.
const RUNC_CREATE_FLAGS: &[&str] = &[
    "-b",
    "--bundle",
    "--pid-file",
    "--console-socket",
    "--no-pivot",
    "--no-new-keyring",
    "--preserve-fds",
];

fn runc_grammar(args: &[String], bundle_here: bool) -> bool {
    let runc_flag = args.iter().any(|a| {
        let flag = a.split('=').next().unwrap_or(a);
        RUNC_CREATE_FLAGS.contains(&flag)
    });
    let positional = args.iter().filter(|a| !a.starts_with('-')).count();
    runc_flag || (bundle_here && positional == 1)
}

/// One `create`, two grammars. runc's (a bundle and an ID) when a flag
/// only runc has is given, or when the one argument has ./config.json as
/// its bundle (runc's default); docker's (run's flags, an image, a
/// command) otherwise: a container that waits, holding nothing, for
/// `capsa start`.
pub fn create(roots: &Roots, args: CreateArgs) -> Result<i32> {
    let argv = std::iter::once("capsa create").chain(args.args.iter().map(String::as_str));
    if runc_grammar(&args.args, std::path::Path::new("config.json").is_file()) {
        return match RuncCreate::try_parse_from(argv) {
            Ok(a) => crate::runc::create(roots, a.create),
            Err(e) => Ok(crate::clap_failure(e)),
        };
    }
    let run = match DockerCreate::try_parse_from(argv) {
        Ok(a) => a.run,
        Err(e) => return Ok(crate::clap_failure(e)),
    };
    if run.detach {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "create makes a container without starting it: -d belongs to `capsa run -d`, or start it with `capsa start`".to_string()
        ));
    }
    let rec = lifecycle::leave_created(roots, create_from_image(roots, &run)?)?;
    println!("{}", rec.id);
    Ok(0)
}

/// Starts the container's monitor in its own session and waits until it
/// says the container runs (or why it did not). The monitor keeps running;
/// it is reparented when we exit.
fn start_detached_monitor(roots: &Roots, rec: &Record) -> Result<()> {
    let job = Job::Run {
        lib: roots.lib.clone(),
        run: roots.run.clone(),
        id: rec.id.clone(),
    };
    spawn(&job, ProcessIo::default())?;
    Ok(())
}

#[derive(Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub(crate) all: bool,
    /// Only print container IDs.
    #[arg(short = 'q', long)]
    pub(crate) quiet: bool,
    /// table, table TEMPLATE, json or a template (docker's fields: ID,
    /// Image, Command, CreatedAt, RunningFor, Status, State, Ports, Names,
    /// and Isolation).
    pub(crate) format: Option<String>,
    /// `--filter KEY=VALUE`, docker's keys.
    pub(crate) filter: Vec<String>,
}

/// `ps --filter`s, as docker reads them: the values of one key are
/// alternatives, different keys must all match.
struct PsFilter(Vec<(String, Vec<String>)>);

impl PsFilter {
    const KEYS: [&'static str; 12] = [
        "id",
        "name",
        "status",
        "ancestor",
        "exited",
        "isolation",
        "label",
        "volume",
        "network",
        "before",
        "since",
        "health",
    ];
    const STATUSES: [&'static str; 5] = ["created", "restarting", "running", "paused", "exited"];

    fn parse(roots: &Roots, given: &[String]) -> Result<PsFilter> {
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for f in given {
            let bad = |why: &str| {
                CodedError::new(EXIT_CAPSA_ERROR, format!("invalid filter {f:?}: {why}"))
            };
            let (k, v) = f.split_once('=').ok_or_else(|| bad("give KEY=VALUE"))?;
            if !Self::KEYS.contains(&k) {
                bail!(bad(&format!("the keys are {}", Self::KEYS.join(", "))));
            }
            if k == "status" && !Self::STATUSES.contains(&v) {
                bail!(bad(&format!(
                    "a status is one of {}",
                    Self::STATUSES.join(", ")
                )));
            }
            if k == "health" && !["starting", "healthy", "unhealthy", "none"].contains(&v) {
                bail!(bad("a health is one of starting, healthy, unhealthy, none"));
            }
            if k == "exited" && v.parse::<i32>().is_err() {
                bail!(bad("exited takes an exit code"));
            }
            // before/since name a container: kept as its creation time.
            let v = match k {
                "before" | "since" => {
                    created_nanos(&Record::find(roots, v).map_err(|e| bad(&format!("{e:#}")))?)
                        .to_string()
                }
                _ => v.to_string(),
            };
            match keys.iter_mut().find(|(key, _)| key == k) {
                Some((_, values)) => values.push(v),
                None => keys.push((k.to_string(), vec![v])),
            }
        }
        Ok(PsFilter(keys))
    }

    /// docker lists stopped containers for a status or exit-code filter
    /// even without -a.
    fn wants_stopped(&self) -> bool {
        self.0.iter().any(|(k, _)| k == "status" || k == "exited")
    }

    fn matches(&self, roots: &Roots, r: &Record) -> bool {
        self.0.iter().all(|(key, values)| {
            let one = |v: &String| match key.as_str() {
                "id" => r.id.starts_with(v.as_str()),
                "name" => r.name.contains(v.as_str()),
                "status" => state_word(roots, r) == *v,
                "ancestor" => {
                    r.image == *v
                        || r.image.strip_suffix(":latest") == Some(v.as_str())
                        || r.image_id
                            .trim_start_matches("sha256:")
                            .starts_with(v.trim_start_matches("sha256:"))
                }
                "exited" => {
                    r.status() == Status::Stopped
                        && r.exit_code.map(|c| c.to_string()) == Some(v.clone())
                }
                "isolation" => r.isolation.to_string() == *v,
                // A named volume, or where a mount is in the container.
                "volume" => {
                    r.volumes.iter().any(|n| n == v)
                        || mount_destinations(roots, r).iter().any(|d| d == v)
                }
                "network" => r
                    .network
                    .as_ref()
                    .is_some_and(|n| n.endpoints.iter().any(|e| e.network == *v)),
                // docker: a running container's health; none without a check.
                "health" => {
                    health_of(roots, r)
                        .filter(|_| r.status().is_up())
                        .unwrap_or_else(|| "none".into())
                        == *v
                }
                "before" => v.parse().is_ok_and(|t: i64| created_nanos(r) < t),
                "since" => v.parse().is_ok_and(|t: i64| created_nanos(r) > t),
                // label=KEY, or label=KEY=VALUE
                "label" => match v.split_once('=') {
                    Some((k, want)) => r.labels.get(k).is_some_and(|have| have == want),
                    None => r.labels.contains_key(v.as_str()),
                },
                _ => false,
            };
            // docker: every label filter must match; another key's values
            // are alternatives.
            if key == "label" {
                values.iter().all(one)
            } else {
                values.iter().any(one)
            }
        })
    }
}

fn created_nanos(r: &Record) -> i64 {
    r.created.timestamp_nanos_opt().unwrap_or_default()
}

/// Where the container's mounts are, inside it.
fn mount_destinations(roots: &Roots, r: &Record) -> Vec<String> {
    capsa_image::oci_spec::runtime::Spec::load(
        capsa_shim::paths::ContainerPaths::new(roots, &r.id).config(),
    )
    .ok()
    .and_then(|s| s.mounts().clone())
    .unwrap_or_default()
    .iter()
    .map(|m| m.destination().display().to_string())
    .collect()
}

const PS_HEADERS: crate::format::Headers = &[
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Status", "STATUS"),
    ("State", "STATE"),
    ("Ports", "PORTS"),
    ("Isolation", "ISOLATION"),
    ("Names", "NAMES"),
    ("Labels", "LABELS"),
];
const PS_TABLE: &str = "{{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Isolation}}\t{{.Names}}";

pub fn ps(roots: &Roots, args: PsArgs) -> Result<i32> {
    let filter = PsFilter::parse(roots, &args.filter)?;
    let all = args.all || filter.wants_stopped();
    let recs: Vec<Record> = Record::list(roots)?
        .into_iter()
        .rev()
        .filter(|r| all || r.status().is_up())
        .filter(|r| filter.matches(roots, r))
        .collect();
    if args.quiet {
        for r in &recs {
            println!("{}", r.short_id());
        }
        return Ok(0);
    }
    let rows: Vec<crate::format::Fields> = recs
        .iter()
        .map(|r| {
            let state = state_word(roots, r);
            let mut command = r.command.join(" ");
            if command.chars().count() > 20 {
                command = format!("{}…", command.chars().take(19).collect::<String>());
            }
            vec![
                ("ID", r.short_id().to_string()),
                ("Image", r.image.clone()),
                ("Command", format!("\"{command}\"")),
                ("CreatedAt", r.created.to_rfc3339()),
                ("RunningFor", table::ago(r.created)),
                ("Status", status_text(roots, r, &state)),
                ("State", state),
                ("Ports", ports_text(roots, r)),
                ("Isolation", r.isolation.to_string()),
                ("Names", r.name.clone()),
                (
                    "Labels",
                    r.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]
        })
        .collect();
    crate::format::Format::parse(args.format.as_deref(), PS_TABLE, PS_HEADERS).print(&rows)?;
    Ok(0)
}

/// docker's PORTS column: `0.0.0.0:8080->80/tcp, …` while published.
fn ports_text(roots: &Roots, r: &Record) -> String {
    capsa_shim::network::published(roots, &r.id)
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// docker's `State` word: "restarting" for a stopped container its
/// restart policy will start again.
fn state_word(roots: &Roots, r: &Record) -> String {
    match r.status() {
        Status::Stopped if capsa_shim::monitor::restart::pending(roots, r) => "restarting".into(),
        other => other.to_string(),
    }
}

/// The health status of a container with a healthcheck: docker's
/// starting, healthy or unhealthy (None without one).
fn health_of(roots: &Roots, r: &Record) -> Option<String> {
    r.healthcheck.as_ref()?;
    Some(capsa_shim::health::load(roots, &r.id).map_or_else(|| "starting".into(), |h| h.status))
}

/// docker's STATUS column; `state` is the container's [`state_word`].
fn status_text(roots: &Roots, r: &Record, state: &str) -> String {
    if r.damaged.is_some() {
        return "Damaged (record unreadable; capsa rm -f removes it)".into();
    }
    let unsupervised = if r.unsupervised() {
        " (unsupervised)"
    } else {
        ""
    };
    match r.status() {
        Status::Created => "Created".into(),
        Status::Running => format!(
            "Up {}{}{unsupervised}",
            table::duration(Utc::now() - r.started.unwrap_or(r.created)),
            match health_of(roots, r).as_deref() {
                Some("starting") => " (health: starting)".to_string(),
                Some(h) => format!(" ({h})"),
                None => String::new(),
            }
        ),
        Status::Paused => format!(
            "Up {} (Paused){unsupervised}",
            table::duration(Utc::now() - r.started.unwrap_or(r.created))
        ),
        Status::Stopped => format!(
            "{} ({}) {}",
            if state == "restarting" {
                "Restarting"
            } else {
                "Exited"
            },
            r.exit_code.unwrap_or(-1),
            table::ago(r.finished.unwrap_or(r.created))
        ),
    }
}

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing output as the container writes it.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines of what is there (both streams counted
    /// together), then, with -f, what comes; `all`: every line.
    #[arg(short = 'n', long, value_name = "N|all", default_value = "all", value_parser = parse_tail)]
    tail: Tail,
    /// Begin each line with when it was written (RFC 3339, nanoseconds).
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Only what was written since this time: RFC 3339, Unix seconds, or
    /// a duration ago (10m, 1h).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only what was written before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    container: String,
}

/// `--tail`'s value: a line count, or none for `all`.
#[derive(Clone, Copy)]
pub(crate) struct Tail(pub(crate) Option<usize>);

pub(crate) fn parse_tail(s: &str) -> Result<Tail, String> {
    match s {
        "all" => Ok(Tail(None)),
        n => n
            .parse()
            .map(|n| Tail(Some(n)))
            .map_err(|_| format!("{s:?} is neither a line count nor `all`")),
    }
}

pub fn logs(roots: &Roots, args: LogsArgs) -> Result<i32> {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let time = |flag, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| crate::events::parse_time(flag, v, now))
            .transpose()
    };
    let query = capsa_shim::logs::LogQuery {
        follow: args.follow,
        tail: args.tail.0,
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
        timestamps: args.timestamps,
    };
    let rec = Record::find(roots, &args.container)?;
    let path = lifecycle::log_path(roots, &rec);
    let id = rec.id.clone();
    let mut running = || {
        Record::load(roots, &id)
            .map(|r| r.status() != Status::Stopped)
            .unwrap_or(false)
    };
    capsa_shim::logs::copy_log(
        &path,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        query,
        &mut running,
    )?;
    Ok(0)
}

/// docker's exec flags; flattened into the runc-compatible `exec`, whose
/// own struct is also named ExecArgs: without `group(skip)` the two
/// argument groups share an id, which clap refuses (in debug builds).
#[derive(Args)]
#[group(skip)]
pub struct ExecArgs {
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub(crate) tty: bool,
    /// Connect stdin.
    #[arg(short = 'i', long)]
    pub(crate) interactive: bool,
    /// Set an environment variable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long = "workdir")]
    pub(crate) workdir: Option<String>,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long = "user")]
    pub(crate) user: Option<String>,
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "CONTAINER COMMAND [ARG...]"
    )]
    pub(crate) container_and_command: Vec<String>,
}

/// docker's `exec`; with `detach` (`-d`), the process runs on its own, its
/// output dropped, and capsa returns at once.
pub fn exec(roots: &Roots, args: ExecArgs, detach: bool) -> Result<i32> {
    let (container, command) = args
        .container_and_command
        .split_first()
        .expect("clap requires one value");
    if command.is_empty() {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "exec needs a command: capsa exec CONTAINER COMMAND [ARG...]"
        ));
    }
    let user = args.user.as_deref().map(parse_uid_gid).transpose()?;
    let req = ExecRequest {
        args: command.to_vec(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user,
        tty: args.tty,
        sub_cgroup: None,
    };
    if detach {
        if args.interactive || args.tty {
            bail!(CodedError::new(
                EXIT_CAPSA_ERROR,
                "exec -d runs the process without your input or terminal: drop -i and -t"
            ));
        }
        lifecycle::exec_detached(roots, container, &req)?;
        return Ok(0);
    }
    lifecycle::exec(roots, container, &req, args.interactive)
}

fn parse_uid_gid(s: &str) -> Result<(u32, u32)> {
    let bad = || {
        CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("exec --user takes UID or UID:GID, not {s:?}"),
        )
    };
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL (default: the container's
    /// --stop-timeout, else 10).
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn stop(roots: &Roots, args: StopArgs) -> Result<i32> {
    each(&args.containers, |c| {
        lifecycle::stop(roots, c, args.time.map(Duration::from_secs))?;
        println!("{c}");
        Ok(())
    })
}

#[derive(Args)]
pub struct KillArgs {
    /// Signal to send (name or number).
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub(crate) signal: String,
    #[arg(required = true)]
    pub(crate) containers: Vec<String>,
}

pub fn kill(roots: &Roots, args: KillArgs) -> Result<i32> {
    let Some(sig) = parse_signal(&args.signal) else {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("invalid signal {:?}", args.signal)
        ));
    };
    each(&args.containers, |c| {
        lifecycle::kill(roots, c, sig)?;
        println!("{c}");
        Ok(())
    })
}

#[derive(Args)]
pub struct RmArgs {
    /// Kill and remove running containers.
    #[arg(short = 'f', long)]
    force: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn rm(roots: &Roots, args: RmArgs) -> Result<i32> {
    each(&args.containers, |c| {
        lifecycle::remove(roots, c, args.force)?;
        println!("{c}");
        Ok(())
    })
}

#[derive(Args)]
pub struct WaitArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn wait(roots: &Roots, args: WaitArgs) -> Result<i32> {
    each(&args.containers, |c| {
        let rec = Record::find(roots, c)?;
        let done = lifecycle::wait_stopped(roots, &rec.id, None)?;
        println!("{}", done.and_then(|r| r.exit_code).unwrap_or(-1));
        Ok(())
    })
}

#[derive(Args)]
pub struct StartArgs {
    /// docker: stay attached to the container's output and wait for its exit.
    #[arg(short = 'a', long)]
    attach: bool,
    /// docker: attach standard input (with -a).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Containers: docker's (name or ID prefix) or runc's (a bundle's ID).
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `start`: runc's `start ID` for a bundle's container (whole ID, no
/// flags, silent; also an unknown ID, so runc's error is given), else
/// docker's for `capsa run` containers: created or stopped ones run again
/// (container mode: with their files), detached and named on stdout, or
/// with `-a` attached until they exit.
pub fn start(roots: &Roots, args: StartArgs) -> Result<i32> {
    if let [id] = args.containers.as_slice() {
        let bundle = match capsa_shim::record::find_exact(roots, id)? {
            Some(rec) => rec.bundle.is_some(),
            None => Record::find(roots, id).is_err(),
        };
        if bundle && !args.attach && !args.interactive {
            crate::runc::start_bundle(roots, id)?;
            return Ok(0);
        }
    }
    if args.attach && args.containers.len() > 1 {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "start -a attaches to one container at a time".to_string()
        ));
    }
    let store = Store::open(&roots.images())?;
    if args.attach {
        let c = &args.containers[0];
        let Some(mut rec) = lifecycle::prepare_start(roots, &store, c)? else {
            bail!(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!("container {c} is already running: use `capsa logs -f` or `capsa exec`")
            ));
        };
        rec.interactive = args.interactive;
        rec.save(roots)?;
        return monitor::supervise(roots, &rec.id, Mode::Foreground);
    }
    each(&args.containers, |c| {
        if let Some(rec) = lifecycle::prepare_start(roots, &store, c)? {
            start_detached_monitor(roots, &rec)?;
        }
        println!("{c}");
        Ok(())
    })
}

#[derive(Args)]
pub struct RestartArgs {
    /// Seconds to wait for the stop signal to work before SIGKILL
    /// (default: the container's --stop-timeout, else 10).
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

/// docker's `restart`: stop (as `stop -t`), then start again, detached.
pub fn restart(roots: &Roots, args: RestartArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    each(&args.containers, |c| {
        let rec = Record::find(roots, c)
            .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
        if rec.auto_remove {
            bail!(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!("container {} was run with --rm: stopping it removes it, so it cannot be restarted", rec.name)
            ));
        }
        lifecycle::stop(roots, &rec.id, args.time.map(Duration::from_secs))?;
        if let Some(rec) = lifecycle::prepare_start(roots, &store, &rec.id)? {
            start_detached_monitor(roots, &rec)?;
            capsa_shim::events::emit(roots, &rec, "restart", &[]);
        }
        println!("{c}");
        Ok(())
    })
}

#[derive(Args)]
pub struct UpdateArgs {
    /// Memory limit (e.g. 512m, 2g); swap is limited to it, as with run.
    #[arg(short = 'm', long, value_name = "BYTES")]
    memory: Option<String>,
    /// CPU quota, a decimal number of CPUs.
    #[arg(long)]
    cpus: Option<String>,
    /// Most processes the container may have.
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

/// docker's `update` of running containers; prints each name.
pub fn update(roots: &Roots, args: UpdateArgs) -> Result<i32> {
    use crate::run_flags::{cpus_flag, memory_flag};
    let memory = memory_flag(args.memory.as_deref())?;
    let cpus = cpus_flag(args.cpus.as_deref())?;
    let pids = match args.pids_limit {
        Some(p) if p <= 0 => bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("--pids-limit {p}: give a positive number of processes")
        )),
        p => p,
    };
    if memory.is_none() && cpus.is_none() && pids.is_none() {
        bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "update: give --memory, --cpus or --pids-limit".to_string()
        ));
    }
    each(&args.containers, |c| {
        let limits = capsa_image::spec::limits(memory, cpus, pids)
            .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, e.to_string()))?;
        lifecycle::update(roots, c, limits)?;
        println!("{c}");
        Ok(())
    })
}

#[derive(Args)]
pub struct CpArgs {
    /// Keep the source's owners (and, copying out, setuid/setgid bits,
    /// otherwise dropped)
    #[arg(short = 'a', long)]
    archive: bool,
    /// Copy what SRC links to, not the link
    #[arg(short = 'L', long)]
    follow_link: bool,
    /// CONTAINER:PATH or a host path (`-`: a tar archive on stdin)
    src: String,
    /// CONTAINER:PATH or a host path (`-`: the tar archive on stdout)
    dest: String,
}

/// docker's `cp` between a container and the host, either way
/// (capsa_shim::copy: through the container's own tar, or capsa's in a
/// stopped container's root).
pub fn cp(roots: &Roots, args: CpArgs) -> Result<i32> {
    use capsa_shim::copy::{copy_in, copy_out, CopyOptions, Destination, Source};
    let opts = CopyOptions {
        archive: args.archive,
        follow_link: args.follow_link,
    };
    match (container_path(&args.src), container_path(&args.dest)) {
        (Some((c, src)), None) => {
            let dest = match args.dest.as_str() {
                "-" => Destination::Stdout,
                d => Destination::Path(d.into()),
            };
            copy_out(roots, &Store::open(&roots.images())?, c, src, dest, opts)?;
        }
        (None, Some((c, dest))) => {
            let src = match args.src.as_str() {
                "-" => Source::Stdin,
                s => Source::Path(std::path::Path::new(s)),
            };
            copy_in(roots, &Store::open(&roots.images())?, c, src, dest, opts)?;
        }
        _ => bail!(CodedError::new(
            EXIT_CAPSA_ERROR,
            "cp copies between a container and the host: write one side as CONTAINER:PATH (a local path with a colon as ./NAME)".to_string()
        )),
    }
    Ok(0)
}

/// `NAME:PATH` names a container's path; a host path with a colon starts
/// with `/` or `.` (docker's rule).
fn container_path(arg: &str) -> Option<(&str, &str)> {
    let (c, p) = arg.split_once(':')?;
    (!c.is_empty() && !c.contains('/') && !c.starts_with('.')).then_some((c, p))
}

#[derive(Args)]
pub struct RenameArgs {
    /// The container (name or ID).
    container: String,
    /// Its new name.
    new_name: String,
}

/// docker's `rename`: prints nothing.
pub fn rename(roots: &Roots, args: RenameArgs) -> Result<i32> {
    lifecycle::rename(roots, &args.container, &args.new_name)?;
    Ok(0)
}

#[derive(Args)]
pub struct PauseArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `pause`/`unpause`: docker's for `capsa run` containers (by name or ID
/// prefix), runc's for a bundle's (by whole ID: runc's `pause ID`).
pub fn pause(roots: &Roots, args: PauseArgs, freeze: bool) -> Result<i32> {
    each(&args.containers, |c| {
        match capsa_shim::record::find_exact(roots, c)? {
            // runc prints nothing.
            Some(rec) if rec.bundle.is_some() => crate::runc::pause_bundle(roots, &rec.id, freeze),
            _ => {
                if freeze {
                    lifecycle::pause(roots, c)?;
                } else {
                    lifecycle::unpause(roots, c)?;
                }
                println!("{c}");
                Ok(())
            }
        }
    })
}

#[derive(Args)]
pub struct InspectArgs {
    /// A template over each object, one line each, e.g. '{{.State.Pid}}'
    /// or '{{json .Mounts}}' (docker's).
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Containers or images (containers are looked up first).
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn inspect(roots: &Roots, args: InspectArgs) -> Result<i32> {
    let store = Store::open(&roots.images())?;
    let mut out = Vec::new();
    let mut failed = false;
    for name in &args.names {
        if let Ok(rec) = Record::find(roots, name) {
            let mut v = serde_json::to_value(&rec)?;
            docker_sections(roots, &rec, &mut v);
            v["NetworkSettings"] = network_settings(roots, &rec);
            out.push(v);
        } else {
            match store.get(name) {
                Ok(img) => out.push(serde_json::to_value(&img)?),
                // An image that is there but damaged: say what is wrong
                // with it, not that it is missing.
                Err(e @ capsa_image::Error::Damaged { .. }) => {
                    crate::say_error(e);
                    failed = true;
                }
                Err(_) => {
                    crate::say_error(format!("no such container or image: {name}"));
                    failed = true;
                }
            }
        }
    }
    match &args.format {
        Some(t) => {
            for v in &out {
                println!("{}", crate::format::fill_json(t, v)?);
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(if failed { 1 } else { 0 })
}

/// docker's `State`, `Config`, `HostConfig` and `Mounts`, from the record
/// and the container's runtime spec, beside capsa's own record fields.
fn docker_sections(roots: &Roots, rec: &Record, v: &mut serde_json::Value) {
    use serde_json::json;
    let status = rec.status();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
    };
    v["Id"] = json!(rec.id);
    v["Name"] = json!(format!("/{}", rec.name));
    v["Created"] = json!(rec.created.to_rfc3339());
    v["RestartCount"] = json!(rec.restart_count);
    let state = state_word(roots, rec);
    v["State"] = json!({
        "Restarting": state == "restarting",
        "Status": state,
        "Running": status == capsa_shim::record::Status::Running,
        "Paused": status == capsa_shim::record::Status::Paused,
        "OOMKilled": rec.oom_killed,
        "Pid": rec.pid.filter(|_| status.can_kill()).unwrap_or(0),
        "ExitCode": rec.exit_code.unwrap_or(0),
        "Error": rec.error.clone().unwrap_or_default(),
        "StartedAt": time(rec.started),
        "FinishedAt": time(rec.finished),
    });
    if rec.healthcheck.is_some() {
        v["State"]["Health"] = match capsa_shim::health::load(roots, &rec.id) {
            Some(h) => json!(h),
            None => json!({"Status": "starting", "FailingStreak": 0, "Log": []}),
        };
    }
    let Ok(spec) = capsa_image::oci_spec::runtime::Spec::load(
        capsa_shim::paths::ContainerPaths::new(roots, &rec.id).config(),
    ) else {
        return;
    };
    let process = spec.process().clone().unwrap_or_default();
    v["Config"] = json!({
        "Hostname": spec.hostname().clone().unwrap_or_default(),
        "User": format!("{}:{}", process.user().uid(), process.user().gid()),
        "Env": process.env().clone().unwrap_or_default(),
        "Cmd": rec.command,
        "Image": rec.image,
        "WorkingDir": process.cwd().display().to_string(),
        "Tty": process.terminal().unwrap_or(false),
        "Labels": rec.labels,
        "StopSignal": rec.stop_signal,
    });
    if let Some(t) = rec.stop_timeout {
        v["Config"]["StopTimeout"] = json!(t);
    }
    if let Some(hc) = &rec.healthcheck {
        v["Config"]["Healthcheck"] = json!(hc);
    }
    let res = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory = res
        .as_ref()
        .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
        .unwrap_or(0);
    let nano_cpus = res
        .as_ref()
        .and_then(|r| r.cpu().clone())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|(q, p)| *q > 0 && *p > 0)
        .map(|(q, p)| q * 1_000_000_000 / p as i64)
        .unwrap_or(0);
    let pids = res
        .as_ref()
        .and_then(|r| r.pids().as_ref().map(|p| p.limit()))
        .unwrap_or(0);
    let root_ro = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let binds: Vec<serde_json::Value> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| capsa_container::is_bind_mount(m))
        // capsa's own files are not the user's mounts.
        .filter(|m| {
            !["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
                .iter()
                .any(|f| m.destination() == std::path::Path::new(f))
        })
        .map(|m| {
            let ro = m.options().iter().flatten().any(|o| o == "ro");
            let source = m.source().clone().unwrap_or_default();
            // A named volume's directory is <lib>/volumes/NAME/_data.
            let volume = rec.volumes.iter().find(|n| {
                source.file_name().is_some_and(|f| f == "_data")
                    && source.parent().and_then(|p| p.file_name()) == Some(n.as_ref())
            });
            let mut mount = json!({
                "Type": if volume.is_some() { "volume" } else { "bind" },
                "Source": source.display().to_string(),
                "Destination": m.destination().display().to_string(),
                "Mode": if ro { "ro" } else { "rw" },
                "RW": !ro,
            });
            if let Some(n) = volume {
                mount["Name"] = json!(n);
                mount["Driver"] = json!("local");
            }
            mount
        })
        .collect();
    v["HostConfig"] = json!({
        "Memory": memory,
        "NanoCpus": nano_cpus,
        "PidsLimit": pids,
        "ReadonlyRootfs": root_ro,
        "AutoRemove": rec.auto_remove,
        "RestartPolicy": {"Name": rec.restart.name(), "MaximumRetryCount": rec.restart.max_retries()},
        "Isolation": rec.isolation.to_string(),
        // docker's `local` driver keeps its log in rotated files, as capsa does.
        "LogConfig": {"Type": "local", "Config": {
            "max-size": rec.log.max_size.to_string(),
            "max-file": rec.log.max_files.to_string(),
        }},
        "StorageOpt": rec.storage_size.map(|n| json!({"size": n.to_string()})),
        // podman's name; the range it got is in IdMappings.
        "UsernsMode": if rec.userns.is_some() && !rec.userns_given { "auto" } else { "" },
        "IdMappings": rec.userns.map(|m| {
            let line = format!("0:{}:{}", m.host_id(), m.size());
            json!({"UidMap": [line], "GidMap": [line]})
        }),
        // docker's names (nofile), -1 for no limit; capsa's default
        // open-files limit too.
        "Ulimits": process.rlimits().iter().flatten().map(|r| {
            let n = |v: u64| if v == u64::MAX { -1 } else { v as i64 };
            json!({
                "Name": r.typ().to_string().trim_start_matches("RLIMIT_").to_ascii_lowercase(),
                "Soft": n(r.soft()),
                "Hard": n(r.hard()),
            })
        }).collect::<Vec<_>>(),
    });
    v["Mounts"] = json!(binds);
}

/// docker's `NetworkSettings` while the container's networks are set up:
/// per network its address, gateway, MAC and aliases; per published port
/// its host bindings. Empty sections when it has none.
fn network_settings(roots: &Roots, rec: &Record) -> serde_json::Value {
    use serde_json::json;
    let att = capsa_shim::network::attachment(roots, &rec.id);
    let endpoints = rec
        .network
        .as_ref()
        .map(|n| n.endpoints.clone())
        .unwrap_or_default();
    let mut networks = serde_json::Map::new();
    let mut ports = serde_json::Map::new();
    if let Some(att) = &att {
        for i in &att.interfaces {
            let aliases = endpoints
                .iter()
                .find(|e| e.network == i.network)
                .map(|e| e.aliases.clone())
                .unwrap_or_default();
            networks.insert(
                i.network.clone(),
                json!({
                    "IPAddress": i.address.addr().to_string(),
                    "IPPrefixLen": i.address.prefix_len(),
                    "Gateway": i.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    "MacAddress": i.mac,
                    "Aliases": aliases,
                    "InterfaceName": i.name,
                }),
            );
        }
        for p in &att.ports {
            for (k, ctr) in p.container_ports().enumerate() {
                let key = format!("{ctr}/{}", p.protocol);
                let binding = json!({
                    "HostIp": p.host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
                    "HostPort": (p.host_port + k as u16).to_string(),
                });
                match ports.get_mut(&key) {
                    Some(serde_json::Value::Array(list)) => list.push(binding),
                    _ => {
                        ports.insert(key, json!([binding]));
                    }
                }
            }
        }
    }
    json!({ "Networks": networks, "Ports": ports })
}

/// Applies `f` to each name; reports each failure and returns 1 if any
/// failed, as docker does for multi-container commands.
fn each(names: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<i32> {
    if let [one] = names {
        f(one)?;
        return Ok(0);
    }
    let mut failed = false;
    for n in names {
        if let Err(e) = f(n) {
            eprintln!("capsa: {e:#}");
            failed = true;
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    /// go-runc's and conmon's lines are runc's; an image and a command,
    /// or run's flags, are docker's; a lone word is runc's ID only where
    /// ./config.json makes it one.
    #[test]
    fn create_picks_its_grammar() {
        let runc = [
            &["--bundle", "/b", "--pid-file", "/b/p", "c1"][..],
            &["-b", "/b", "c1"],
            &["--bundle=/b", "c1"],
            &["--console-socket", "/s", "--no-pivot", "c1"],
        ];
        for a in runc {
            assert!(runc_grammar(&strings(a), false), "{a:?}");
            let argv = std::iter::once("capsa create").chain(a.iter().copied());
            RuncCreate::try_parse_from(argv).unwrap_or_else(|e| panic!("{a:?}: {e}"));
        }
        assert!(runc_grammar(&strings(&["c1"]), true));
        let docker = [
            &["demo"][..],
            &["--name", "x", "-it", "demo", "sh"],
            &["--isolation", "vm", "-v", "/a:/b", "demo", "ls", "-l"],
        ];
        for a in docker {
            assert!(!runc_grammar(&strings(a), false), "{a:?}");
            let argv = std::iter::once("capsa create").chain(a.iter().copied());
            DockerCreate::try_parse_from(argv).unwrap_or_else(|e| panic!("{a:?}: {e}"));
        }
        assert!(!runc_grammar(&strings(&["demo", "sh"]), true));
    }
}
