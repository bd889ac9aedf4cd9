//! `capsa`: run OCI images as namespace containers or in microVMs, with the
//! commands docker users know. This binary is a thin layer: images come from
//! `capsa-image`, the container lifecycle from `capsa-shim`. It also speaks
//! runc's command line (`runc.rs`), so tools that drive runc drive capsa.

mod bench;
mod child;
mod compare;
mod compose;
mod containers;
mod events;
mod format;
mod images;
mod networks;
mod run_flags;
mod runc;
mod stats;
mod system;
mod table;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};

#[derive(Parser)]
#[command(
    name = "capsa",
    version,
    about = "Run OCI images as namespace containers or inside KVM microVMs",
    propagate_version = true,
    // A repeated flag takes its last value, as runc's (urfave/cli) do.
    args_override_self = true
)]
struct Cli {
    /// State directory (images, containers); default /var/lib/capsa and /run/capsa.
    #[arg(long, global = true, env = "CAPSA_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log_level: String,

    /// runc: write capsa's log, and its error messages, to FILE instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,

    /// runc: the format of --log: text or json.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: runc::LogFormat,

    /// runc: debug logging (the same as --log-level debug).
    #[arg(long, global = true)]
    debug: bool,

    /// runc: accepted; capsa manages cgroups through cgroupfs itself.
    #[arg(long, global = true)]
    systemd_cgroup: bool,

    /// runc: accepted (true, false or auto); capsa runs as root. With
    /// `spec`: write a spec for an unprivileged user.
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    rootless: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container.
    // `-h` is docker's --hostname here, so help is `--help` only.
    #[command(disable_help_flag = true)]
    Run(Box<run_flags::RunArgs>),
    /// List containers (docker), or the processes of one (runc: `ps ID`).
    Ps(runc::PsArgs),
    /// Show a container's output.
    Logs(containers::LogsArgs),
    /// Run a command in a running container (docker's and runc's flags).
    Exec(runc::ExecArgs),
    /// Stop containers: the stop signal, then SIGKILL after a timeout.
    Stop(containers::StopArgs),
    /// Send a signal to containers (docker's `-s SIG C…`, runc's `ID [SIG]`).
    Kill(runc::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Wait for containers to stop and print their exit codes.
    Wait(containers::WaitArgs),
    /// Show details of containers or images as JSON.
    Inspect(containers::InspectArgs),
    /// Live resource use of containers: CPU, memory, network, block I/O, PIDs (docker).
    Stats(stats::StatsArgs),
    /// The processes of a running container (docker).
    Top(stats::TopArgs),
    /// Give a container a new name (docker).
    Rename(containers::RenameArgs),
    /// Copy files between a container, running or stopped, and the host (docker).
    Cp(containers::CpArgs),
    /// Change a running container's memory, CPU or PIDs limit (docker).
    Update(containers::UpdateArgs),
    /// Manage networks: create, ls, inspect, rm, prune, connect, disconnect.
    Network(networks::NetworkArgs),
    /// List a container's published ports.
    Port(networks::PortArgs),
    /// Manage named volumes: create, ls, inspect, rm, prune.
    Volume(volumes::VolumeArgs),
    /// Disk use (`df`) and removing what nothing uses (`prune`).
    System(system::SystemArgs),
    /// Import images from an OCI layout or `docker save` archive, or make the demo image.
    Load(images::LoadArgs),
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// Send an image to a registry (docker's push; REMOTE names another place).
    Push(images::PushArgs),
    /// Check and keep credentials for a registry (docker's login).
    Login(images::LoginArgs),
    /// Forget a registry's credentials.
    Logout(images::LogoutArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Remove images.
    Rmi(images::RmiArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// The steps that made an image, with their layers' sizes (docker).
    History(images::HistoryArgs),
    /// Make an image of a container's changes: its writable layer on its
    /// image (docker; running or stopped, in both modes).
    Commit(images::CommitArgs),
    /// Build an image from a Dockerfile (docker's flags); prints its ID.
    Build(images::BuildArgs),
    /// Run a compose file's services (up, down, ps, logs, exec, build, pull, config).
    Compose(compose::ComposeArgs),
    /// Run one image and command in both isolation modes and compare them side by side.
    Compare(compare::CompareArgs),
    /// Write an image to an OCI archive.
    Save(images::SaveArgs),
    /// The guest kernel: where it is (building it first) and its config.
    Kernel(capsa_kernel::cli::KernelArgs),
    /// Run a command inside the KVM test host (a nested-KVM VM for hosts
    /// whose /dev/kvm cannot run ordinary guests).
    TestHost(capsa_kernel::cli::TestHostArgs),
    /// Measure capsa against runc and crun (container lifecycle latency).
    Bench(bench::BenchArgs),
    /// Create a container that waits for `start`: docker's from an image
    /// (`create [run's flags] IMAGE [COMMAND…]`), or runc's from an OCI
    /// bundle (`create --bundle DIR ID`).
    #[command(disable_help_flag = true)]
    Create(containers::CreateArgs),
    /// Start containers again (docker: stopped `capsa run` containers, -a to
    /// attach), or runc's: start the process of a container made by `create`.
    Start(containers::StartArgs),
    /// Stop and start containers again (docker).
    Restart(containers::RestartArgs),
    /// runc: print a container's state as JSON.
    State(runc::IdArg),
    /// runc: delete containers made by `create`.
    Delete(runc::DeleteArgs),
    /// runc: list containers made by `create`.
    List(runc::ListArgs),
    /// runc: print what capsa supports, as JSON.
    Features,
    /// runc: write a default config.json into a bundle.
    Spec(runc::SpecArgs),
    /// What happened to containers (docker: create, start, die, stop, …;
    /// --since, --until, -f, --format), or runc's `events ID` (statistics).
    Events(runc::EventsArgs),
    /// Freeze every process of containers (docker's `pause C…`; runc's
    /// `pause ID`); in VM mode the whole VM.
    Pause(containers::PauseArgs),
    /// Thaw paused containers (docker).
    Unpause(containers::PauseArgs),
    /// runc: thaw a paused container.
    Resume(runc::IdArg),
    /// A container's monitor process, started by capsa (internal).
    #[command(name = "__monitor", hide = true)]
    Monitor {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A failure on stderr, one line: "error", as runc, podman and docker
/// say it.
pub(crate) fn say_error(msg: impl std::fmt::Display) {
    eprintln!("capsa: error: {msg}");
}

fn main() -> ExitCode {
    // Before anything else (no thread yet): what this process starts in a
    // container must not reach a writable capsa binary.
    if let Err(e) = capsa_container::self_exe::run_read_only() {
        say_error(format!("cannot run from a read-only mount of its own binary (needs Linux 5.12 and CAP_SYS_ADMIN): {e}"));
        return ExitCode::from(EXIT_CAPSA_ERROR as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return ExitCode::from(clap_failure(e) as u8),
    };
    // libcontainer logs every failure at error level from inside the
    // container's processes; capsa reports the same failure once, in its own
    // words, so its chatter is shown only at debug level and above.
    let level = if cli.debug {
        "debug".to_string()
    } else {
        cli.log_level.to_ascii_lowercase()
    };
    let filter = if matches!(level.as_str(), "debug" | "trace") {
        level
    } else {
        format!("{level},libcontainer=off,libcgroups=off")
    };
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // With runc's --log, logs go to that file as runc's do: a runc client
    // hands `create` the container's own stdio, which must stay clean.
    let log_file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match log_file {
        Some(f) if cli.log_format == runc::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(env_filter)
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .init(),
        Some(f) => tracing_subscriber::fmt()
            .with_env_filter(env_filter)
            .event_format(runc::JsonLines)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(env_filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init(),
    }

    if cli.command.only_prints() {
        quiet_on_closed_stdout();
    }
    let roots = Roots::new(cli.root.as_deref());
    let (log, log_format) = (cli.log.clone(), cli.log_format);
    let rootless = cli.rootless.as_deref() == Some("true");
    match dispatch(&roots, cli.command, rootless) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            let code = CodedError::code_of(&err);
            let msg = disk_full_advice(format!("{err:#}"), &roots);
            if let Some(path) = &log {
                runc::append_log(path, log_format, "error", &msg);
            }
            say_error(msg);
            ExitCode::from(code as u8)
        }
    }
}

impl Command {
    /// Commands that only print what they read, so that a reader that goes
    /// away (`capsa inspect demo | head -1`) may simply end them.
    fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Ps(_)
                | Command::Logs(_)
                | Command::Inspect(_)
                | Command::Stats(_)
                | Command::Top(_)
                | Command::Port(_)
                | Command::Images(_)
                | Command::History(_)
                | Command::State(_)
                | Command::List(_)
                | Command::Features
                | Command::Events(_)
        )
    }
}

/// A write to a closed stdout ends the process quietly by SIGPIPE, as a
/// Go program's (docker's, runc's) does, instead of Rust's panic on
/// `println!`. Only for commands that hold nothing a signal could leak.
fn quiet_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition has no handler to
    // race with; capsa installs none for SIGPIPE.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
}

/// Reports a command line clap refused (or its help) and returns the exit
/// code: 125 for an error, 0 for help and version.
pub(crate) fn clap_failure(e: clap::Error) -> i32 {
    let code = if e.use_stderr() { EXIT_CAPSA_ERROR } else { 0 };
    if e.use_stderr() {
        // A runc client reads its --log file to say why we failed.
        if let Some((path, format)) = log_flags_from_argv() {
            let msg = e.render().to_string();
            let first = msg.lines().next().unwrap_or_default();
            runc::append_log(&path, format, "error", first);
        }
    }
    let _ = e.print();
    code
}

/// A full disk (or quota) is named by the path that could not be written;
/// this adds what to do about it.
fn disk_full_advice(msg: String, roots: &Roots) -> String {
    const FULL: [&str; 2] = ["No space left on device", "Disk quota exceeded"];
    if !FULL.iter().any(|f| msg.contains(f)) {
        return msg;
    }
    format!(
        "{msg}: free space on that filesystem (`df -h {}` shows what is left) and try again",
        roots.lib.display()
    )
}

/// `--log FILE` and `--log-format F` read straight from argv, for errors
/// found before clap could parse the command line.
fn log_flags_from_argv() -> Option<(PathBuf, runc::LogFormat)> {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            if a == name {
                args.get(i + 1).cloned()
            } else {
                a.strip_prefix(&format!("{name}=")).map(str::to_string)
            }
        })
    };
    let path = PathBuf::from(value("--log")?);
    let format = match value("--log-format").as_deref() {
        Some("json") => runc::LogFormat::Json,
        _ => runc::LogFormat::Text,
    };
    Some((path, format))
}

fn dispatch(roots: &Roots, command: Command, rootless: bool) -> anyhow::Result<i32> {
    match command {
        Command::Run(a) => containers::run(roots, *a),
        Command::Ps(a) => runc::ps(roots, a),
        Command::Logs(a) => containers::logs(roots, a),
        Command::Exec(a) => runc::exec(roots, a),
        Command::Stop(a) => containers::stop(roots, a),
        Command::Kill(a) => runc::kill(roots, a),
        Command::Rm(a) => containers::rm(roots, a),
        Command::Wait(a) => containers::wait(roots, a),
        Command::Inspect(a) => containers::inspect(roots, a),
        Command::Stats(a) => stats::stats(roots, a),
        Command::Top(a) => stats::top(roots, a),
        Command::Rename(a) => containers::rename(roots, a),
        Command::Cp(a) => containers::cp(roots, a),
        Command::Update(a) => containers::update(roots, a),
        Command::History(a) => images::history(roots, a),
        Command::Network(a) => networks::network(roots, a),
        Command::Port(a) => networks::port(roots, a),
        Command::Volume(a) => volumes::volume(roots, a),
        Command::System(a) => system::system(roots, a),
        Command::Load(a) => images::load(roots, a),
        Command::Pull(a) => images::pull(roots, a),
        Command::Push(a) => images::push(roots, a),
        Command::Login(a) => images::login(roots, a),
        Command::Logout(a) => images::logout(roots, a),
        Command::Images(a) => images::images(roots, a),
        Command::Rmi(a) => images::rmi(roots, a),
        Command::Tag(a) => images::tag(roots, a),
        Command::Save(a) => images::save(roots, a),
        Command::Commit(a) => images::commit(roots, a),
        Command::Build(a) => images::build(roots, a),
        Command::Compose(a) => compose::compose(roots, a),
        Command::Compare(a) => compare::compare(roots, a),
        Command::Kernel(a) => a.run(),
        Command::TestHost(a) => a.run(),
        Command::Bench(a) => bench::run(roots, a),
        Command::Create(a) => containers::create(roots, a),
        Command::Start(a) => containers::start(roots, a),
        Command::Restart(a) => containers::restart(roots, a),
        Command::State(a) => runc::state(roots, a),
        Command::Delete(a) => runc::delete(roots, a),
        Command::List(a) => runc::list(roots, a),
        Command::Features => runc::features(),
        Command::Spec(a) => runc::spec(a, rootless),
        Command::Events(a) => runc::events(roots, a),
        Command::Pause(a) => containers::pause(roots, a, true),
        Command::Unpause(a) => containers::pause(roots, a, false),
        Command::Resume(a) => runc::resume(roots, a),
        Command::Monitor { args } => std::process::exit(capsa_shim::monitor::spawn::main(&args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("capsa").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// `run -h` is docker's hostname flag; help stays on `--help`.
    #[test]
    fn run_short_h_is_hostname() {
        let Command::Run(a) = parse(&["run", "-h", "box", "demo"]).command else {
            panic!("not run");
        };
        assert_eq!(a.hostname.as_deref(), Some("box"));
        let err = Cli::try_parse_from(["capsa", "run", "--help"])
            .err()
            .expect("help");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = err.to_string();
        assert!(help.contains("-h, --hostname"), "{help}");
        assert!(!help.contains("-h, --help"), "{help}");
    }

    /// The command lines go-runc (containerd's runc shim) and conmon
    /// (podman) send, and the orders runc's users write.
    #[test]
    fn runc_clients_command_lines_parse() {
        let root = [
            "--root",
            "/run/containerd/runc/default",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
        ];
        let with_root = |rest: &[&str]| -> Vec<String> {
            root.iter()
                .chain(rest.iter())
                .map(|s| s.to_string())
                .collect()
        };
        for line in [
            with_root(&[
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/init.pid",
                "c1",
            ]),
            with_root(&[
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/init.pid",
                "--no-pivot",
                "--no-new-keyring",
                "--console-socket",
                "/tmp/s",
                "--detach",
                "--preserve-fds",
                "2",
                "c1",
            ]),
            with_root(&["start", "c1"]),
            with_root(&["state", "c1"]),
            with_root(&["kill", "c1", "9"]),
            with_root(&["kill", "--all", "c1", "15"]),
            with_root(&["delete", "--force", "c1"]),
            with_root(&[
                "exec",
                "--process",
                "/tmp/p.json",
                "--detach",
                "--pid-file",
                "/b/e.pid",
                "c1",
            ]),
            with_root(&[
                "exec",
                "--pid-file",
                "/x/pid",
                "--process",
                "/x/p.json",
                "--detach",
                "--tty",
                "--console-socket",
                "/x/s",
                "--process",
                "/x/p.json",
                "c1",
            ]),
            with_root(&["ps", "--format", "json", "c1"]),
            with_root(&["events", "--stats", "c1"]),
            with_root(&["pause", "c1"]),
            with_root(&["resume", "c1"]),
            vec![
                "--systemd-cgroup".into(),
                "--rootless=false".into(),
                "--root=/r".into(),
                "delete".into(),
                "c1".into(),
                "--force".into(),
            ],
            vec![
                "--debug".into(),
                "--rootless".into(),
                "list".into(),
                "-q".into(),
            ],
            vec!["kill".into(), "c1".into(), "KILL".into()],
            vec!["kill".into(), "--all".into(), "c1".into(), "9".into()],
            vec![
                "exec".into(),
                "--pid-file".into(),
                "f".into(),
                "c1".into(),
                "echo".into(),
                "-n".into(),
                "x".into(),
            ],
            vec!["ps".into(), "c1".into(), "-o".into(), "pid,comm".into()],
            vec![
                "spec".into(),
                "--rootless".into(),
                "-b".into(),
                "/tmp".into(),
            ],
            vec!["features".into()],
            vec!["__monitor".into(), "--x".into(), "y".into()],
        ] {
            let refs: Vec<&str> = line.iter().map(String::as_str).collect();
            parse(&refs);
        }
        let cli = parse(&["exec", "c1", "sh", "-c", "--pid-file"]);
        let Command::Exec(e) = cli.command else {
            panic!()
        };
        assert!(e.pid_file_is_none(), "flags after the command belong to it");
    }
}
