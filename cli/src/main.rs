//! `capsa`: run OCI images as namespace containers or in microVMs, with the
//! commands docker users know. This binary is a thin layer: images come from
//! `capsa-image`, the container lifecycle from `capsa-shim`.

mod bench;
mod containers;
mod images;
mod run_flags;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};

#[derive(Parser)]
#[command(
    name = "capsa",
    version,
    about = "Run OCI images as namespace containers or inside KVM microVMs",
    propagate_version = true
)]
struct Cli {
    /// State directory (images, containers); default /var/lib/capsa and /run/capsa.
    #[arg(long, global = true, env = "CAPSA_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container.
    Run(Box<run_flags::RunArgs>),
    /// List containers.
    Ps(containers::PsArgs),
    /// Show a container's output.
    Logs(containers::LogsArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Stop containers: the stop signal, then SIGKILL after a timeout.
    Stop(containers::StopArgs),
    /// Send a signal to containers.
    Kill(containers::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Wait for containers to stop and print their exit codes.
    Wait(containers::WaitArgs),
    /// Show details of containers or images as JSON.
    Inspect(containers::InspectArgs),
    /// Import images from an OCI layout or `docker save` archive, or make the demo image.
    Load(images::LoadArgs),
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Remove images.
    Rmi(images::RmiArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Write an image to an OCI archive.
    Save(images::SaveArgs),
    /// The guest kernel: where it is (building it first) and its config.
    Kernel(capsa_kernel::cli::KernelArgs),
    /// Run a command inside the KVM test host (a nested-KVM VM for hosts
    /// whose /dev/kvm cannot run ordinary guests).
    TestHost(capsa_kernel::cli::TestHostArgs),
    /// Measure capsa against runc and crun (container lifecycle latency).
    Bench(bench::BenchArgs),
    /// The monitor process of a detached container (internal).
    #[command(name = "__monitor", hide = true)]
    Monitor { id: String },
    #[command(name = "__oci-monitor", hide = true)]
    OciMonitor {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CAPSA_ERROR } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    // libcontainer logs every failure at error level from inside the
    // container's processes; capsa reports the same failure once, in its own
    // words, so its chatter is shown only at debug level and above.
    let level = cli.log_level.to_ascii_lowercase();
    let filter = if matches!(level.as_str(), "debug" | "trace") {
        level
    } else {
        format!("{level},libcontainer=off,libcgroups=off")
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();

    let roots = Roots::new(cli.root.as_deref());
    match dispatch(&roots, cli.command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            let code = err
                .downcast_ref::<CodedError>()
                .map_or(EXIT_CAPSA_ERROR, |c| c.code);
            eprintln!("capsa: {err:#}");
            ExitCode::from(code as u8)
        }
    }
}

fn dispatch(roots: &Roots, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(a) => containers::run(roots, *a),
        Command::Ps(a) => containers::ps(roots, a),
        Command::Logs(a) => containers::logs(roots, a),
        Command::Exec(a) => containers::exec(roots, a),
        Command::Stop(a) => containers::stop(roots, a),
        Command::Kill(a) => containers::kill(roots, a),
        Command::Rm(a) => containers::rm(roots, a),
        Command::Wait(a) => containers::wait(roots, a),
        Command::Inspect(a) => containers::inspect(roots, a),
        Command::Load(a) => images::load(roots, a),
        Command::Pull(a) => images::pull(roots, a),
        Command::Images(a) => images::images(roots, a),
        Command::Rmi(a) => images::rmi(roots, a),
        Command::Tag(a) => images::tag(roots, a),
        Command::Save(a) => images::save(roots, a),
        Command::Kernel(a) => a.run(),
        Command::TestHost(a) => a.run(),
        Command::Bench(a) => bench::run(roots, a),
        Command::Monitor { id } => containers::monitor(roots, &id),
        Command::OciMonitor { args } => std::process::exit(capsa_shim::oci::monitor_main(&args)),
    }
}
