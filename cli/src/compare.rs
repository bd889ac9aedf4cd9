//! `capsa compare IMAGE [CMD…]`: the same image and command in both
//! isolation modes, side by side — output and exit code, time to start
//! and to finish, the host memory each costs, what each sees (kernel,
//! processes, devices) and what stands between it and the host. Every
//! number is measured in this run through capsa's own commands (run -d,
//! wait, logs, exec, stats, inspect), as a user would.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use capsa_shim::{Roots, EXIT_CAPSA_ERROR};
use clap::Args;
use serde::Serialize;

use crate::child::Capsa;

#[derive(Args)]
pub struct CompareArgs {
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also draw the costs as a bar chart (SVG).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Serialize)]
struct Mode {
    isolation: &'static str,
    exit_code: i32,
    stdout: String,
    stderr: String,
    /// Seconds from `run -d` to the command running, and to its end.
    start_seconds: f64,
    finish_seconds: f64,
    /// Host memory of an idle container of the image: the container's
    /// cgroup, or the VMM's resident set (guest memory it touched included).
    host_memory_bytes: Option<u64>,
    kernel: Option<String>,
    processes_seen: Option<u64>,
    devices_seen: Option<u64>,
    /// System calls the container's seccomp filter allows (an allow list:
    /// the rest are refused).
    seccomp_allowed: usize,
    /// The boundary under the container's own confinement.
    boundary: String,
}

#[derive(Serialize)]
struct Report {
    image: String,
    command: Vec<String>,
    same_output: bool,
    same_exit_code: bool,
    in_test_host: bool,
    modes: Vec<Mode>,
}

pub fn compare(roots: &Roots, args: CompareArgs) -> Result<i32> {
    let c = Capsa { roots };
    let mut modes = Vec::new();
    for isolation in ["container", "vm"] {
        modes.push(measure(&c, isolation, &args.image, &args.command)?);
    }
    let report = Report {
        image: args.image.clone(),
        command: args.command.clone(),
        same_output: modes[0].stdout == modes[1].stdout && modes[0].stderr == modes[1].stderr,
        same_exit_code: modes[0].exit_code == modes[1].exit_code,
        in_test_host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .is_ok_and(|h| h.trim() == "capsa-test-host"),
        modes,
    };
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&report))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(0)
}

fn measure(c: &Capsa, isolation: &'static str, image: &str, command: &[String]) -> Result<Mode> {
    let tag = format!("compare-{isolation}-{}", std::process::id());
    // The command, timed: `run -d` returns once it runs; `wait` at its end.
    // No network: the timing is the isolation's; a bridge adds netavark's
    // setup and teardown, the same in both modes (docs/networking.md).
    let mut run = vec![
        "run",
        "-d",
        "--name",
        &tag,
        "--network",
        "none",
        "--isolation",
        isolation,
        image,
    ];
    run.extend(command.iter().map(String::as_str));
    let t0 = Instant::now();
    let started = c.stdout(&run);
    let start_seconds = t0.elapsed().as_secs_f64();
    if let Err(e) = started {
        let _ = c.out(&["rm", "-f", &tag]);
        return Err(e);
    }
    let waited = c.stdout(&["wait", &tag]);
    let finish_seconds = t0.elapsed().as_secs_f64();
    let (_, stdout, stderr) = c.out(&["logs", &tag])?;
    let _ = c.out(&["rm", "-f", &tag]);
    let exit_code = waited?.trim().parse().unwrap_or(EXIT_CAPSA_ERROR);

    // What it costs and sees: an idle container of the same image.
    let idle = format!("{tag}-idle");
    let mut host_memory_bytes = None;
    let (mut kernel, mut processes_seen, mut devices_seen) = (None, None, None);
    if c.stdout(&[
        "run",
        "-d",
        "--name",
        &idle,
        "--network",
        "none",
        "--isolation",
        isolation,
        image,
        "sleep",
        "60",
    ])
    .is_ok()
    {
        std::thread::sleep(std::time::Duration::from_millis(500));
        host_memory_bytes = host_memory(c, isolation, &idle);
        let ask = |script: &str| {
            c.stdout(&["exec", &idle, "sh", "-c", script])
                .ok()
                .map(|s| s.trim().to_string())
        };
        kernel = ask("uname -rv");
        processes_seen = ask("ls /proc | grep -c '^[0-9]'").and_then(|s| s.parse().ok());
        devices_seen = ask("ls /dev | wc -l").and_then(|s| s.parse().ok());
    }
    let boundary = match isolation {
        "container" => "the host kernel: namespaces, cgroups, capabilities, seccomp".to_string(),
        _ => vm_boundary(c, &idle).unwrap_or_else(|| "KVM: its own guest kernel".into()),
    };
    let _ = c.out(&["rm", "-f", &idle]);
    Ok(Mode {
        isolation,
        exit_code,
        stdout,
        stderr,
        start_seconds,
        finish_seconds,
        host_memory_bytes,
        kernel,
        processes_seen,
        devices_seen,
        seccomp_allowed: capsa_image::spec::allowed_syscalls(&capsa_image::spec::default_seccomp()),
        boundary,
    })
}

/// The container's cgroup usage (container mode), or its VMM's resident
/// set on the host (VM mode).
fn host_memory(c: &Capsa, isolation: &str, name: &str) -> Option<u64> {
    if isolation == "container" {
        let usage = c
            .stdout(&["stats", "--no-stream", "--format", "{{.MemUsage}}", name])
            .ok()?;
        return parse_size(usage.split('/').next()?.trim());
    }
    let pid = c.stdout(&["inspect", "-f", "{{.State.Pid}}", name]).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `1.5MiB`, `312KiB`, `2GiB`, `100B`.
fn parse_size(s: &str) -> Option<u64> {
    let i = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let n: f64 = s[..i].parse().ok()?;
    let mult = match &s[i..] {
        "B" => 1.0,
        "KiB" | "kB" | "KB" => 1024.0,
        "MiB" | "MB" => 1024.0 * 1024.0,
        "GiB" | "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// The VM's devices, from the configuration its VMM booted with.
fn vm_boundary(c: &Capsa, name: &str) -> Option<String> {
    let id = c.stdout(&["inspect", "-f", "{{.Id}}", name]).ok()?;
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            c.roots
                .lib
                .join("containers")
                .join(id.trim())
                .join("vm.json"),
        )
        .ok()?,
    )
    .ok()?;
    let count = |k: &str| cfg[k].as_array().map_or(0, Vec::len);
    let mut devices = vec![format!("{} virtio-blk", count("disks"))];
    if count("nets") > 0 {
        devices.push(format!("{} virtio-net", count("nets")));
    }
    if count("fs") > 0 {
        devices.push(format!("{} virtio-fs", count("fs")));
    }
    if !cfg["vsock"].is_null() {
        devices.push("vsock".into());
    }
    devices.push("serial".into());
    Some(format!(
        "KVM, a guest kernel of its own; VMM devices: {}",
        devices.join(", ")
    ))
}

fn print_table(r: &Report) {
    let [a, b] = [&r.modes[0], &r.modes[1]];
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
    let mem = |v: Option<u64>| v.map_or("-".into(), |n| format!("{:.1} MiB", n as f64 / 1048576.0));
    let secs = |s: f64| format!("{s:.3} s");
    let rows: Vec<(&str, String, String)> = vec![
        (
            "output",
            short(&a.stdout),
            if r.same_output {
                "the same".into()
            } else {
                short(&b.stdout)
            },
        ),
        (
            "exit code",
            a.exit_code.to_string(),
            b.exit_code.to_string(),
        ),
        (
            "time to start",
            secs(a.start_seconds),
            secs(b.start_seconds),
        ),
        (
            "time to finish",
            secs(a.finish_seconds),
            secs(b.finish_seconds),
        ),
        (
            "host memory, idle",
            mem(a.host_memory_bytes),
            mem(b.host_memory_bytes),
        ),
        ("kernel it sees", opt(&a.kernel), opt(&b.kernel)),
        (
            "processes it sees",
            num(a.processes_seen),
            num(b.processes_seen),
        ),
        ("entries in /dev", num(a.devices_seen), num(b.devices_seen)),
        (
            "seccomp allows",
            format!("{} syscalls", a.seccomp_allowed),
            format!("{} syscalls (in the guest)", b.seccomp_allowed),
        ),
        ("under that", a.boundary.clone(), b.boundary.clone()),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, x, y)| vec![k.to_string(), x, y])
        .collect();
    crate::table::print(&["", "container", "vm"], &rows);
    if r.in_test_host {
        println!(
            "(measured inside the KVM test host: VM-mode times include its nested virtualization)"
        );
    }
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    let more = if s.lines().count() > 1 { " …" } else { "" };
    format!("{:.40}{more}", line)
}

/// A bar chart's metric: its name, its value in a mode, its unit.
type Metric = (&'static str, fn(&Mode) -> f64, &'static str);

/// Two groups of bars (container, vm) for start, finish and memory, each
/// metric scaled to its own maximum.
fn plot(r: &Report) -> String {
    let metrics: [Metric; 3] = [
        ("start", |m| m.start_seconds, "s"),
        ("finish", |m| m.finish_seconds, "s"),
        (
            "memory",
            |m| m.host_memory_bytes.unwrap_or(0) as f64 / 1048576.0,
            "MiB",
        ),
    ];
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"480\" height=\"260\" font-family=\"sans-serif\" font-size=\"12\">\n",
    );
    svg.push_str(&format!(
        "<text x=\"10\" y=\"18\">capsa compare {}</text>\n",
        xml(&r.image)
    ));
    for (i, (name, f, unit)) in metrics.iter().enumerate() {
        let max = r.modes.iter().map(f).fold(0.0, f64::max).max(1e-9);
        let x0 = 30 + i as u32 * 150;
        for (j, m) in r.modes.iter().enumerate() {
            let v = f(m);
            let h = (v / max * 160.0).max(1.0);
            let x = x0 + j as u32 * 55;
            let color = if j == 0 { "#4e79a7" } else { "#e15759" };
            svg.push_str(&format!(
                "<rect x=\"{x}\" y=\"{:.1}\" width=\"45\" height=\"{h:.1}\" fill=\"{color}\"/>\n<text x=\"{x}\" y=\"{:.1}\">{v:.2} {unit}</text>\n<text x=\"{x}\" y=\"235\">{}</text>\n",
                210.0 - h,
                205.0 - h,
                m.isolation
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{x0}\" y=\"252\" font-weight=\"bold\">{name}</text>\n"
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_stats_prints_them() {
        assert_eq!(parse_size("1.5MiB"), Some(1572864));
        assert_eq!(parse_size("312KiB"), Some(319488));
        assert_eq!(parse_size("100B"), Some(100));
        assert_eq!(parse_size("--"), None);
    }
}
