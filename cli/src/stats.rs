//! `capsa stats` and `capsa top`: what containers use and run, as docker
//! shows them, in both modes. Container mode reads the host's cgroups and
//! /proc; VM mode asks the guest agent, which reads the guest's, so the
//! columns mean the same in both (docs/isolation.md says where they differ).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use capsa_shim::record::{Isolation, Record};
use capsa_shim::usage::{self, ProcessInfo, Stats};
use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};
use chrono::{DateTime, Local, TimeZone};
use clap::Args;

use crate::format::{Fields, Format};
use crate::table;

const STATS_HEADERS: crate::format::Headers = &[
    ("ID", "CONTAINER ID"),
    ("Container", "CONTAINER"),
    ("Name", "NAME"),
    ("Isolation", "ISOLATION"),
    ("CPUPerc", "CPU %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("MemPerc", "MEM %"),
    ("NetIO", "NET I/O"),
    ("BlockIO", "BLOCK I/O"),
    ("PIDs", "PIDS"),
];
const STATS_TABLE: &str = "{{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}";

#[derive(Args)]
pub struct StatsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// Print one sample and exit (default: refresh every second).
    #[arg(long)]
    no_stream: bool,
    /// table, table TEMPLATE, json, or a template such as
    /// '{{.Name}} {{.CPUPerc}}'. Fields: ID, Container, Name, Isolation,
    /// CPUPerc, MemUsage, MemPerc, NetIO, BlockIO, PIDs.
    #[arg(long)]
    format: Option<String>,
    /// Containers (names or IDs); default: every running one.
    containers: Vec<String>,
}

/// One container's figures at one moment.
struct Sample {
    at: Instant,
    stats: Option<Stats>,
}

pub fn stats(roots: &Roots, args: StatsArgs) -> Result<i32> {
    let format = Format::parse(args.format.as_deref(), STATS_TABLE, STATS_HEADERS);
    let chosen = |roots: &Roots| -> Result<Vec<(String, Record)>> {
        if args.containers.is_empty() {
            return Ok(Record::list(roots)?
                .into_iter()
                .rev()
                .filter(|r| !r.name.is_empty())
                .filter(|r| args.all || r.status().is_up())
                .map(|r| (r.short_id().to_string(), r))
                .collect());
        }
        args.containers
            .iter()
            .map(|key| {
                Record::find(roots, key)
                    .map(|r| (key.clone(), r))
                    .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")).into())
            })
            .collect()
    };
    let live = !args.no_stream;
    let clear = live && std::io::stdout().is_terminal();
    let take = |recs: &[(String, Record)]| -> HashMap<String, Sample> {
        recs.iter()
            .map(|(_, r)| (r.id.clone(), sample(roots, r)))
            .collect()
    };
    // CPU % is the use between two samples a second apart.
    let mut previous = take(&chosen(roots)?);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let recs = chosen(roots)?;
        let now = take(&recs);
        let rows: Vec<Fields> = recs
            .iter()
            .map(|(key, r)| fields(roots, key, r, previous.get(&r.id), &now[&r.id]))
            .collect();
        if clear {
            // docker's redraw: clear the screen, home the cursor.
            print!("\x1b[2J\x1b[H");
        }
        format.print(&rows)?;
        let _ = std::io::stdout().flush();
        if !live {
            return Ok(0);
        }
        previous = now;
    }
}

/// A running container's figures now; a stopped one has none. One that
/// cannot be read is said on stderr and shown empty.
fn sample(roots: &Roots, rec: &Record) -> Sample {
    let stats = match rec.status().is_up().then(|| usage::stats(roots, rec)) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            eprintln!("capsa: warning: the figures of {}: {e:#}", rec.name);
            None
        }
        None => None,
    };
    Sample {
        at: Instant::now(),
        stats,
    }
}

fn fields(roots: &Roots, key: &str, rec: &Record, before: Option<&Sample>, now: &Sample) -> Fields {
    let row = |cpu: String, mem: String, memp: String, net: String, block: String, pids: String| {
        vec![
            ("ID", rec.short_id().to_string()),
            ("Container", key.to_string()),
            ("Name", rec.name.clone()),
            ("Isolation", rec.isolation.to_string()),
            ("CPUPerc", cpu),
            ("MemUsage", mem),
            ("MemPerc", memp),
            ("NetIO", net),
            ("BlockIO", block),
            ("PIDs", pids),
        ]
    };
    let Some(s) = &now.stats else {
        // Stopped (or its figures could not be read): docker's empty row.
        return row(
            "--".into(),
            "-- / --".into(),
            "--".into(),
            "--".into(),
            "--".into(),
            "--".into(),
        );
    };
    // docker: CPU time over wall time, 100% per busy CPU.
    let cpu = match before.and_then(|b| b.stats.as_ref().map(|s| (b.at, s))) {
        Some((at, old)) => {
            let wall = now.at.duration_since(at).as_micros().max(1) as f64;
            let used = s.cpu.usage_usec.saturating_sub(old.cpu.usage_usec) as f64;
            format!("{:.2}%", used / wall * 100.0)
        }
        None => "--".into(),
    };
    // Without a limit, what the container could use: the host's memory,
    // or the VM's.
    let limit = s
        .memory
        .limit_bytes
        .or_else(|| memory_available(roots, rec))
        .unwrap_or(0);
    let percent = if limit > 0 {
        s.memory.usage_bytes as f64 / limit as f64 * 100.0
    } else {
        0.0
    };
    row(
        cpu,
        format!(
            "{} / {}",
            table::binary_size(s.memory.usage_bytes),
            table::binary_size(limit)
        ),
        format!("{percent:.2}%"),
        format!(
            "{} / {}",
            table::size(s.net.rx_bytes),
            table::size(s.net.tx_bytes)
        ),
        match s.block {
            Some(b) => format!(
                "{} / {}",
                table::size(b.read_bytes),
                table::size(b.write_bytes)
            ),
            None => "--".into(),
        },
        s.pids.current.to_string(),
    )
}

/// What a container without a memory limit can use: its VM's memory in VM
/// mode, the host's in container mode.
fn memory_available(roots: &Roots, rec: &Record) -> Option<u64> {
    if rec.isolation == Isolation::Vm {
        let paths = capsa_shim::paths::ContainerPaths::new(roots, &rec.id);
        return capsa_shim::microvm::booted_size(&paths)
            .ok()
            .map(|(mem, _)| mem);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo.lines().find_map(|l| {
        let kib = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|k| k * 1024)
    })
}

#[derive(Args)]
pub struct TopArgs {
    /// The container (name or ID).
    container: String,
    /// ps options (container mode; default: -ef's columns).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    ps_options: Vec<String>,
}

/// docker's `top`: the container's processes. Without ps options both
/// modes print `ps -ef`'s columns, from the host's /proc in container
/// mode and the guest's in VM mode (guest PIDs). With options, container
/// mode runs the host's `ps` with them and keeps the container's rows, as
/// docker does; a guest has no `ps` to run them.
pub fn top(roots: &Roots, args: TopArgs) -> Result<i32> {
    let rec = Record::find(roots, &args.container)
        .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
    if !rec.status().is_up() {
        return Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!("container {} is not running", rec.name),
        )
        .into());
    }
    let options = args.ps_options;
    let default = options.is_empty() || options == ["-ef"];
    if !default && rec.isolation == Isolation::Vm {
        return Err(CodedError::new(
            EXIT_CAPSA_ERROR,
            format!(
                "capsa top of a VM-mode container shows ps -ef's columns only: its processes run in the guest, where there is no ps to pass {:?} to",
                options.join(" ")
            ),
        )
        .into());
    }
    if default {
        let procs = usage::top(roots, &rec)?;
        let rows: Vec<Vec<String>> = procs.iter().map(ps_ef_row).collect();
        crate::table::print(
            &["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
            &rows,
        );
        return Ok(0);
    }
    let pids = usage::pids(roots, &rec)?;
    let rows = crate::runc::host_ps(&options, &pids)
        .map_err(|e| CodedError::new(EXIT_CAPSA_ERROR, format!("{e:#}")))?;
    print!("{rows}");
    Ok(0)
}

/// `ps -ef`'s columns for one process: user name as the host knows it (as
/// docker's `top` shows it), CPU %, start time and CPU time.
fn ps_ef_row(p: &ProcessInfo) -> Vec<String> {
    let user = nix::unistd::User::from_uid(p.uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| p.uid.to_string());
    let now = chrono::Utc::now().timestamp();
    let elapsed = (now - p.started).max(1) as u64;
    let started: DateTime<Local> = Local
        .timestamp_opt(p.started, 0)
        .single()
        .unwrap_or_else(Local::now);
    let stime = if started.date_naive() == Local::now().date_naive() {
        started.format("%H:%M").to_string()
    } else {
        started.format("%b%d").to_string()
    };
    let secs = p.cpu_ms / 1000;
    vec![
        user,
        p.pid.to_string(),
        p.ppid.to_string(),
        (p.cpu_ms / 10 / elapsed).to_string(),
        stime,
        p.tty.clone(),
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
        p.cmd.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_ef_columns() {
        let p = ProcessInfo {
            pid: 7,
            ppid: 1,
            uid: 0,
            started: chrono::Utc::now().timestamp() - 100,
            cpu_ms: 50_000,
            tty: "?".into(),
            cmd: "sleep 60".into(),
        };
        let r = ps_ef_row(&p);
        assert_eq!(r[0], "root");
        assert_eq!((r[1].as_str(), r[2].as_str()), ("7", "1"));
        assert_eq!(r[3], "50", "50 s of CPU in 100 s");
        assert_eq!(r[6], "00:00:50");
        assert_eq!(r[7], "sleep 60");
    }
}
