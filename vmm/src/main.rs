//! `capsa-vmm`: run one KVM microVM. See `capsa-vmm --help`.

use std::process::ExitCode as ProcessExit;

use capsa_vmm::config::Cli;
use capsa_vmm::vmm::RunOptions;
use capsa_vmm::{ExitCode, Vmm, VmmExit};
use clap::Parser;

fn exit(code: ExitCode) -> ProcessExit {
    ProcessExit::from(code.code() as u8)
}

fn console_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return " (the guest printed nothing on its console)".into();
    }
    let mut s = String::from("; last console lines:");
    for l in lines {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

fn main() -> ProcessExit {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: capsa reads this stream
        // and repeats its lines in its own error messages.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cfg = match cli.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("capsa-vmm: {e}");
            return exit(e.exit_code());
        }
    };
    let opts = RunOptions {
        report_first_run: cli.report_first_run,
        exit_after_first_run: cli.exit_after_first_run,
        seccomp: !cli.no_seccomp,
    };
    let vmm = match Vmm::build(&cfg, opts) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("capsa-vmm: {e}");
            return exit(e.exit_code());
        }
    };
    if cli.jail {
        if let Err(e) = capsa_vmm::jail::enter() {
            eprintln!("capsa-vmm: {e}");
            return exit(e.exit_code());
        }
    }
    let events = vmm.events().clone();
    match vmm.run() {
        Ok(VmmExit::PowerOff) | Ok(VmmExit::Reset) => exit(ExitCode::Ok),
        Ok(VmmExit::Terminated) => exit(ExitCode::Terminated),
        Ok(VmmExit::GuestPanic) => {
            let what = events
                .panic_line()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            eprintln!(
                "capsa-vmm: the guest kernel panicked{what}{}",
                console_tail(&events.console_tail())
            );
            exit(ExitCode::GuestPanic)
        }
        Ok(VmmExit::GuestCrash(why)) => {
            eprintln!(
                "capsa-vmm: the guest crashed: {why}{}",
                console_tail(&events.console_tail())
            );
            exit(ExitCode::GuestCrash)
        }
        Ok(VmmExit::VmmError(why)) => {
            eprintln!("capsa-vmm: {why}");
            exit(ExitCode::VmmError)
        }
        Err(e) => {
            eprintln!("capsa-vmm: {e}");
            exit(e.exit_code())
        }
    }
}
