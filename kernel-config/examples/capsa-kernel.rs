//! A stand-alone front end for this crate, wired exactly as `capsa` wires it:
//!
//!     cargo run -p capsa-kernel --example capsa-kernel -- kernel path --test-host
//!     cargo run -p capsa-kernel --example capsa-kernel -- test-host -- ls -l /dev/kvm

use std::process::ExitCode;

use capsa_kernel::cli::{KernelArgs, TestHostArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The guest and test-host kernels.
    Kernel(KernelArgs),
    /// Run a command inside the KVM test host.
    TestHost(TestHostArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Kernel(a) => a.run(),
        Command::TestHost(a) => a.run(),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("capsa: {e:#}");
            ExitCode::from(125)
        }
    }
}
