//! clap argument structs for `capsa kernel …` and `capsa test-host …`.
//! The `capsa` binary wires them in as subcommands; each `run` returns the
//! process exit code.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::test_host::{host_failure, TestHost};
use crate::{kernel_config, kernel_path, Kind};

/// `capsa kernel path|config [--test-host]`
#[derive(Debug, Args)]
pub struct KernelArgs {
    #[command(subcommand)]
    pub command: KernelCommand,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Print the path of the built guest kernel (vmlinux), building it first
    /// if it is not cached.
    Path(KindArg),
    /// Print the resolved kernel config (building the kernel if needed).
    Config(KindArg),
}

#[derive(Debug, Args)]
pub struct KindArg {
    /// The KVM test-host kernel instead of the microVM guest kernel.
    #[arg(long)]
    pub test_host: bool,
}

impl KindArg {
    fn kind(&self) -> Kind {
        if self.test_host {
            Kind::TestHost
        } else {
            Kind::Guest
        }
    }
}

impl KernelArgs {
    pub fn run(self) -> Result<i32> {
        let mut out = std::io::stdout().lock();
        match self.command {
            KernelCommand::Path(k) => writeln!(out, "{}", kernel_path(k.kind())?.display())?,
            KernelCommand::Config(k) => out.write_all(kernel_config(k.kind())?.as_bytes())?,
        }
        Ok(0)
    }
}

/// `capsa test-host [--timeout SECS] -- COMMAND [ARGS...]`
///
/// Boots the KVM test host (qemu TCG with an emulated SVM CPU) and runs
/// COMMAND in it as root, with /dev/kvm, this machine's files at their usual
/// paths (read-only underneath, writable through a throw-away overlay) and the
/// current directory. Exits with COMMAND's exit code, or, when the test host
/// fails instead, with one of its own: 240 its kernel crashed, 241 it hung,
/// 242 qemu failed, 243 the time limit passed, 244 the command hung in a live
/// test host (see docs/guest-kernel.md).
#[derive(Debug, Args)]
pub struct TestHostArgs {
    /// Time limit in seconds for the whole run, boot included.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,

    /// Stop the run as hung after this many seconds without any output
    /// (console, stdout, stderr); default CAPSA_TEST_HOST_SILENCE or 300.
    #[arg(long, value_name = "SECS")]
    pub silence: Option<u64>,

    /// Memory of the test host in MiB (it must hold the microVMs it runs).
    #[arg(long, value_name = "MIB", default_value_t = crate::test_host::DEFAULT_MEMORY_MIB)]
    pub memory: u32,

    /// Virtual CPUs of the test host.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,

    /// An empty ext4 file system of this many MiB at /mnt/scratch.
    #[arg(long, value_name = "MIB")]
    pub scratch_disk: Option<u32>,

    /// Show the test host's console (kernel messages) on stderr.
    #[arg(long)]
    pub console: bool,

    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// Variables passed through to the command, besides PATH.
fn passes_through(key: &str) -> bool {
    key.starts_with("CAPSA_") || matches!(key, "RUST_LOG" | "RUST_BACKTRACE" | "PATH" | "TERM")
}

impl TestHostArgs {
    pub fn run(self) -> Result<i32> {
        let (program, args) = self.command.split_first().expect("clap requires a command");
        let mut host = TestHost::new(program)
            .args(args)
            .timeout(Duration::from_secs(self.timeout))
            .memory_mib(self.memory)
            .cpus(self.cpus);
        if self.console {
            host = host.show_console(true);
        }
        if let Some(mib) = self.scratch_disk {
            host = host.scratch_disk(mib);
        }
        if let Some(secs) = self.silence {
            host = host.silence_limit(Duration::from_secs(secs));
        }
        for (k, v) in std::env::vars_os() {
            if k.to_str().is_some_and(passes_through) {
                host = host.env(k, v);
            }
        }
        match host.run() {
            Ok(outcome) => {
                tracing::info!(code = outcome.code, elapsed = ?outcome.elapsed, "test host finished");
                Ok(outcome.code)
            }
            Err(err) => match host_failure(&err) {
                // Not capsa's error: say what happened and exit with its code.
                Some(failure) => {
                    eprintln!("capsa test-host: {failure}");
                    Ok(failure.exit_code())
                }
                None => Err(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(Subcommand)]
    enum Cmd {
        Kernel(KernelArgs),
        TestHost(TestHostArgs),
    }

    #[test]
    fn parses_kernel_path_test_host() {
        let cli = Cli::try_parse_from(["capsa", "kernel", "path", "--test-host"]).unwrap();
        match cli.cmd {
            Cmd::Kernel(KernelArgs {
                command: KernelCommand::Path(k),
            }) => assert_eq!(k.kind(), Kind::TestHost),
            _ => panic!("wrong subcommand"),
        }
        let cli = Cli::try_parse_from(["capsa", "kernel", "config"]).unwrap();
        match cli.cmd {
            Cmd::Kernel(KernelArgs {
                command: KernelCommand::Config(k),
            }) => assert_eq!(k.kind(), Kind::Guest),
            _ => panic!("wrong subcommand"),
        }
    }

    #[test]
    fn parses_test_host_command_with_its_own_flags() {
        let cli = Cli::try_parse_from([
            "capsa",
            "test-host",
            "--timeout",
            "30",
            "--",
            "ls",
            "-l",
            "--all",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::TestHost(a) => {
                assert_eq!(a.timeout, 30);
                assert_eq!(a.silence, None);
                assert_eq!(a.command, vec!["ls", "-l", "--all"]);
            }
            _ => panic!("wrong subcommand"),
        }
        assert!(Cli::try_parse_from(["capsa", "test-host"]).is_err());
    }
}
