//! `capsa bench lifecycle`: container lifecycle latency of `/bin/true`, side
//! by side with Debian's runc and crun in one run. A measurement, not a test:
//! it prints medians, p90s and ratios and fails only when something could
//! not be measured at all.
//!
//! Rows, each timed from the bench process:
//!
//! (a) create → start → wait → delete of one prepared bundle (a plain rootfs
//!     directory copied from the demo image, and config.json from capsa's
//!     own spec generator), the same bundle for every tool:
//!     - capsa in process: the namespace backend's create, start, waitpid
//!       and delete (libcontainer), called directly — no process launch;
//!     - capsa, one process: `capsa bench __bundle-run`, a new capsa process
//!       doing the same as the row above, as `runc run` does in one process;
//!     - `runc run --bundle` and `crun run --bundle`: one process that
//!       creates, starts, waits and deletes.
//!
//! (b) end to end, including a fresh root filesystem per container:
//!     - `capsa run --rm --network none demo true`: the real binary (image
//!       lookup, overlay mount, spec generation, container record, the
//!       lifecycle, unmount, removal); no network, as runc's and crun's;
//!     - runc/crun + fresh rootfs as capsa's: the bench mounts the image's
//!       layers with capsa's own overlay code (volatile, as for `--rm`) and
//!       writes config.json, in process, runs `runc run`/`crun run`, then
//!       unmounts with capsa's code and removes the directory.
//!
//! Iterations are interleaved (each round runs every row once, in a rotated
//! order) so that machine noise falls on all rows alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsa_container::{rootfs, Runtime};
use capsa_image::spec::RunConfig;
use capsa_image::Store;
use capsa_shim::backend::ProcessIo;
use capsa_shim::Roots;
use clap::{Args, Subcommand};
use nix::mount::{umount2, MntFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Lifecycle latency of /bin/true: capsa vs runc vs crun, (a) from a
    /// prepared bundle, (b) end to end with `capsa run --rm demo true`.
    Lifecycle(LifecycleArgs),
    /// One create → start → wait → delete of BUNDLE in this process
    /// (internal: the "capsa, one process" row).
    #[command(name = "__bundle-run", hide = true)]
    BundleRun {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        id: String,
    },
}

#[derive(Args)]
pub struct LifecycleArgs {
    /// Measured iterations per row.
    #[arg(short = 'n', long, default_value_t = 50)]
    iterations: usize,
    /// Unmeasured rounds before the measured ones (warm caches, check that
    /// every tool works).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
}

pub fn run(roots: &Roots, args: BenchArgs) -> Result<i32> {
    match args.what {
        What::Lifecycle(a) => lifecycle(roots, a),
        What::BundleRun { state, bundle, id } => bundle_run(&state, &bundle, &id),
    }
}

/// The prefix of every container ID, cgroup and directory of one bench run.
fn tag() -> String {
    format!("capsa-bench-{}", std::process::id())
}

/// The rows of the table, in the order they are printed.
#[derive(Clone, Copy, PartialEq)]
enum Row {
    CapsaInProcess,
    CapsaProcess,
    PeerRun(Peer),
    CapsaRunRm,
    PeerFresh(Peer),
}

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Runc,
    Crun,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Runc => "runc",
            Peer::Crun => "crun",
        }
    }
}

impl Row {
    fn label(self) -> String {
        match self {
            Row::CapsaInProcess => "capsa, in process (libcontainer calls)".into(),
            Row::CapsaProcess => "capsa, one process (`capsa bench __bundle-run`)".into(),
            Row::PeerRun(p) => format!("{0} run --bundle (one {0} process)", p.name()),
            Row::CapsaRunRm => "capsa run --rm --network none demo true".into(),
            Row::PeerFresh(p) => format!("{} run + fresh rootfs as capsa's", p.name()),
        }
    }
    fn key(self) -> String {
        match self {
            Row::CapsaInProcess => "capsa-inproc".into(),
            Row::CapsaProcess => "capsa-proc".into(),
            Row::PeerRun(p) => format!("{}-run", p.name()),
            Row::CapsaRunRm => "capsa-run".into(),
            Row::PeerFresh(p) => format!("{}-fresh", p.name()),
        }
    }
}

const ROWS: [Row; 7] = [
    Row::CapsaInProcess,
    Row::CapsaProcess,
    Row::PeerRun(Peer::Runc),
    Row::PeerRun(Peer::Crun),
    Row::CapsaRunRm,
    Row::PeerFresh(Peer::Runc),
    Row::PeerFresh(Peer::Crun),
];

const ROWS_EXPLAINED: &str =
    "  what each row includes (wall clock, timed from this process; CPU: user + system
  time of this process and of every process it waited for, so less sensitive to
  other load on the host than the wall clock):
    capsa, in process: libcontainer create (clone of the container's init, namespaces,
      cgroups, mounts, pivot_root, seccomp) + start + waitpid + delete (state, cgroups);
      no launch of a runtime binary
    capsa, one process / runc run / crun run: fork+exec of the runtime binary, which
      creates, starts, waits for and deletes the container, and exits
    capsa run --rm: the whole CLI: image lookup, overlay mount (volatile, as for every
      --rm container), spec generation, container record and log, the lifecycle,
      unmount, removal of the container's directory; --network none, as the peers
      have no network (--network bridge adds netavark's setup and teardown)
    runc/crun + fresh rootfs as capsa's: capsa's own code mounts the same overlay
      (in this process), config.json is written, `run --bundle`, capsa's unmount, rm -r
";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: std::os::raw::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Everything one bench run puts on the host, removed again on drop.
struct Bench {
    dir: PathBuf,
    /// The prepared bundle (rootfs/ and config.json).
    bundle: PathBuf,
    /// config.json's bytes, written again into each fresh bundle.
    config: Vec<u8>,
    layers: Vec<PathBuf>,
    capsa_exe: PathBuf,
    roots: Roots,
    peers: Vec<(Peer, PathBuf)>,
    counter: usize,
    /// Phases of the last in-process run: create, start, wait, delete.
    last_phases: [Duration; 4],
}

impl Bench {
    fn state(&self, name: &str) -> PathBuf {
        self.dir.join("state").join(name)
    }

    /// libcontainer's state for the in-process rows lives under here.
    fn capsa_state_roots(&self) -> Roots {
        Roots {
            lib: self.dir.clone(),
            run: self.state("capsa"),
        }
    }

    fn peer_exe(&self, peer: Peer) -> &Path {
        &self.peers.iter().find(|(p, _)| *p == peer).expect("peer").1
    }

    fn next_id(&mut self, row: Row) -> String {
        self.counter += 1;
        format!("{}-{}-{}", tag(), row.key(), self.counter)
    }

    /// Runs one iteration of `row`; returns how long it took (wall clock)
    /// and the CPU time it used (user + system, of this process and of the
    /// processes it waited for).
    fn once(&mut self, row: Row) -> Result<(Duration, Duration)> {
        let id = self.next_id(row);
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        match row {
            Row::CapsaInProcess => {
                let (code, phases) = lifecycle_once(&self.capsa_state_roots(), &self.bundle, &id)?;
                check_code(row, code)?;
                self.last_phases = phases;
            }
            Row::CapsaProcess => {
                let mut cmd = Command::new(&self.capsa_exe);
                cmd.arg("bench")
                    .arg("__bundle-run")
                    .arg("--state")
                    .arg(self.state("capsa"))
                    .arg("--bundle")
                    .arg(&self.bundle)
                    .arg(&id);
                spawn(row, cmd)?;
            }
            Row::PeerRun(p) => {
                let mut cmd = Command::new(self.peer_exe(p));
                cmd.arg("--root")
                    .arg(self.state(p.name()))
                    .arg("run")
                    .arg("--bundle")
                    .arg(&self.bundle)
                    .arg(&id);
                spawn(row, cmd)?;
            }
            Row::CapsaRunRm => {
                let mut cmd = Command::new(&self.capsa_exe);
                cmd.arg("--root").arg(&self.roots.lib).args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "demo",
                    "true",
                ]);
                spawn(row, cmd)?;
            }
            Row::PeerFresh(p) => {
                let b = self.dir.join("fresh").join(&id);
                let rootfs = b.join("rootfs");
                // The root filesystem made and removed by capsa's own code,
                // as `capsa run --rm` does (a volatile overlay).
                let result = (|| {
                    rootfs::mount_overlay(
                        &self.layers,
                        &b.join("upper"),
                        &b.join("work"),
                        &rootfs,
                        true,
                        None,
                    )?;
                    fs::write(b.join("config.json"), &self.config)?;
                    let mut cmd = Command::new(self.peer_exe(p));
                    cmd.arg("--root")
                        .arg(self.state(p.name()))
                        .arg("run")
                        .arg("--bundle")
                        .arg(&b)
                        .arg(&id);
                    spawn(row, cmd)
                })();
                let unmounted = rootfs::unmount(&rootfs);
                fs::remove_dir_all(&b).with_context(|| format!("removing {}", b.display()))?;
                result?;
                unmounted?;
            }
        }
        let wall = t0.elapsed();
        Ok((wall, cpu_time().saturating_sub(cpu0)))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        cleanup(&self.dir, &self.peers);
    }
}

/// Kills and deletes whatever containers of this run are left, unmounts
/// what is mounted under `dir`, removes it and this run's cgroups.
fn cleanup(dir: &Path, peers: &[(Peer, PathBuf)]) {
    for (peer, exe) in peers {
        let state = dir.join("state").join(peer.name());
        for id in dir_names(&state) {
            let _ = Command::new(exe)
                .arg("--root")
                .arg(&state)
                .args(["delete", "-f", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let capsa = Runtime::new(dir.join("state").join("capsa").join("runtime"));
    for id in dir_names(capsa.state_dir()) {
        let _ = capsa.delete(&id);
    }
    // Deepest first.
    let mut mounts = mount_points_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(dir);
    for cg in cgroup_dirs() {
        let _ = fs::remove_dir(&cg);
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// This run's cgroup directory in every hierarchy where it exists.
fn cgroup_dirs() -> Vec<PathBuf> {
    let name = tag();
    let base = Path::new("/sys/fs/cgroup");
    let mut out = vec![base.join(&name)];
    if let Ok(rd) = fs::read_dir(base) {
        out.extend(rd.flatten().map(|e| e.path().join(&name)));
    }
    out.into_iter().filter(|p| p.is_dir()).collect()
}

fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(mp.replace("\\040", " ")))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

fn check_code(row: Row, code: i32) -> Result<()> {
    if code != 0 {
        bail!("{}: /bin/true exited with {code}", row.label());
    }
    Ok(())
}

fn spawn(row: Row, mut cmd: Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("{}: starting {:?}", row.label(), cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{}: {} ({})",
            row.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// create → start → wait → delete of `bundle` with capsa's namespace
/// backend, in this process. Returns the container's exit code.
/// Also returns how long each phase took: create, start, wait, delete.
fn lifecycle_once(state: &Roots, bundle: &Path, id: &str) -> Result<(i32, [Duration; 4])> {
    let backend = Runtime::new(state.runtime());
    let mut phases = [Duration::ZERO; 4];
    let mut t = Instant::now();
    let mut lap = |i: usize| {
        phases[i] = t.elapsed();
        t = Instant::now();
    };
    let result = (|| {
        let pid = backend.create(id, bundle, ProcessIo::default())?;
        lap(0);
        backend.start(id)?;
        lap(1);
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, code)) => break Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break Err(e).context("waiting for the container"),
            }
        }
    })();
    lap(2);
    let deleted = backend.delete(id);
    lap(3);
    let code = result?;
    deleted?;
    Ok((code, phases))
}

fn bundle_run(state: &Path, bundle: &Path, id: &str) -> Result<i32> {
    let roots = Roots {
        lib: state.to_path_buf(),
        run: state.to_path_buf(),
    };
    Ok(lifecycle_once(&roots, bundle, id)?.0)
}

fn find_peer(peer: Peer) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(peer.name()))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{0} is not installed, so it cannot be measured: install Debian's {0} package \
                 (scripts/setup.sh does)",
                peer.name()
            )
        })
}

fn version(exe: &Path) -> String {
    Command::new(exe)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Makes the prepared bundle: the image's layers flattened into a plain
/// directory (through an overlay mount, so whiteouts are honoured), and
/// config.json for /bin/true.
fn prepare_bundle(bench: &mut Bench, image: &capsa_image::Image) -> Result<()> {
    let rootfs = bench.bundle.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    let scratch = bench.dir.join("prep");
    let merged = scratch.join("merged");
    for d in [scratch.join("upper"), scratch.join("work"), merged.clone()] {
        fs::create_dir_all(&d)?;
    }
    rootfs::mount_overlay(
        &bench.layers,
        &scratch.join("upper"),
        &scratch.join("work"),
        &merged,
        true,
        None,
    )?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(merged.join("."))
        .arg(&rootfs)
        .status();
    umount2(&merged, MntFlags::empty()).context("unmounting the preparation overlay")?;
    fs::remove_dir_all(&scratch)?;
    if !copied.context("running cp")?.success() {
        bail!("copying the image's files into {} failed", rootfs.display());
    }

    let rc = RunConfig {
        container_id: tag(),
        args: Some(vec!["/bin/true".into()]),
        ..Default::default()
    };
    let mut spec = capsa_image::spec::generate(image, &rootfs, std::slice::from_ref(&rootfs), &rc)?;
    // Relative to the bundle, so one config.json serves every bundle.
    if let Some(root) = spec.root_mut() {
        root.set_path(PathBuf::from("rootfs"));
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{}", tag()))));
    }
    bench.config = serde_json::to_vec_pretty(&spec)?;
    fs::write(bench.bundle.join("config.json"), &bench.config)?;
    Ok(())
}

fn lifecycle(roots: &Roots, args: LifecycleArgs) -> Result<i32> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let peers = vec![
        (Peer::Runc, find_peer(Peer::Runc)?),
        (Peer::Crun, find_peer(Peer::Crun)?),
    ];
    let store = Store::open(&roots.images())?;
    if store.get("demo").is_err() {
        eprintln!(
            "loading the demo image (capsa load --demo) into {}",
            roots.lib.display()
        );
        store.load_demo()?;
    }
    let image = store.get("demo")?;
    let layers = store.layer_dirs(&image)?;

    let dir = roots.lib.join(tag());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut bench = Bench {
        bundle: dir.join("bundle"),
        dir,
        config: Vec::new(),
        layers,
        capsa_exe: capsa_container::self_exe::path().context("locating the capsa binary")?,
        roots: roots.clone(),
        peers,
        counter: 0,
        last_phases: [Duration::ZERO; 4],
    };
    prepare_bundle(&mut bench, &image)?;

    // Ctrl-C stops after the current iteration and still cleans up.
    let handler = nix::sys::signal::SigHandler::Handler(on_interrupt);
    let action = nix::sys::signal::SigAction::new(
        handler,
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(sig, &action)? };
    }

    let load_before = loadavg();
    let versions: Vec<String> = bench
        .peers
        .iter()
        .map(|(p, exe)| format!("{}: {}", p.name(), version(exe)))
        .collect();

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let rounds = args.warmup + args.iterations;
    for round in 0..rounds {
        for k in 0..ROWS.len() {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bail!("interrupted; everything the bench made has been removed");
            }
            let i = (round + k) % ROWS.len();
            let (took, used) = bench.once(ROWS[i]).map_err(|e| {
                e.context(if round < args.warmup {
                    "a warm-up run failed (crun 1.8.1 needs the hugetlb cgroup v1 hierarchy \
                     mounted: scripts/setup.sh does it)"
                } else {
                    "a measured run failed"
                })
            })?;
            if round >= args.warmup {
                samples[i].push(ms(took));
                cpu[i].push(ms(used));
                if ROWS[i] == Row::CapsaInProcess {
                    for (p, d) in phases.iter_mut().zip(bench.last_phases) {
                        p.push(ms(d));
                    }
                }
            }
        }
    }
    let load_after = loadavg();

    let stats: Vec<Stats> = samples
        .iter()
        .zip(&cpu)
        .map(|(s, c)| Stats::of(s).with_cpu(c))
        .collect();
    let get = |r: Row| &stats[ROWS.iter().position(|x| *x == r).expect("row")];

    println!("capsa bench lifecycle: /bin/true in the demo image");
    println!(
        "  {} measured iterations per row after {} warm-up rounds, interleaved (rotated order each round)",
        args.iterations, args.warmup
    );
    println!(
        "  host: {} CPUs, load average {load_before} (start) -> {load_after} (end)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  peers: {}", versions.join("; "));
    println!(
        "  bundle: rootfs copied from demo ({} layer(s)) + config.json from capsa's spec generator\n          \
         (args [/bin/true], no terminal, pid/ipc/uts/mount/cgroup/net namespaces, seccomp, cgroupsPath /{})",
        bench.layers.len(),
        tag()
    );
    println!();
    println!(
        "  {:<50} {:>8} {:>8} {:>8} {:>10}",
        "times in ms", "median", "p90", "min", "CPU (med)"
    );
    println!("  (a) create -> start -> wait -> delete of the prepared bundle");
    for r in &ROWS[..4] {
        get(*r).print(&r.label());
        if *r == Row::CapsaInProcess {
            for (name, p) in ["create", "start", "wait", "delete"].iter().zip(&phases) {
                Stats::of(p).print(&format!("  of which {name}"));
            }
        }
    }
    println!("  (b) end to end, fresh root filesystem per container");
    for r in &ROWS[4..] {
        get(*r).print(&r.label());
    }
    println!();
    println!("  ratios of medians, wall clock (CPU time in brackets); below 1.00: capsa is faster");
    let ratio = |a: Row, b: Row| {
        format!(
            "{:.2} ({:.2})",
            get(a).median / get(b).median,
            get(a).cpu / get(b).cpu
        )
    };
    for (capsa, what) in [
        (Row::CapsaInProcess, "(a) capsa in process"),
        (Row::CapsaProcess, "(a) capsa one process"),
    ] {
        println!(
            "    {what:<24} / runc run: {}   / crun run: {}",
            ratio(capsa, Row::PeerRun(Peer::Runc)),
            ratio(capsa, Row::PeerRun(Peer::Crun))
        );
    }
    println!(
        "    {:<24} / runc + fresh rootfs: {}   / crun + fresh rootfs: {}",
        "(b) capsa run --rm",
        ratio(Row::CapsaRunRm, Row::PeerFresh(Peer::Runc)),
        ratio(Row::CapsaRunRm, Row::PeerFresh(Peer::Crun))
    );
    println!();
    print!("{ROWS_EXPLAINED}");

    drop(bench);
    let left: Vec<PathBuf> = cgroup_dirs();
    if !left.is_empty() {
        eprintln!("warning: cgroups left behind: {left:?}");
    }
    Ok(0)
}

/// User + system CPU time of this process and its waited-for descendants.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
        .into_iter()
        .filter_map(|who| getrusage(who).ok())
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        })
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    median: f64,
    p90: f64,
    min: f64,
    /// Median CPU time, where measured (not for the phases).
    cpu: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        // Nearest rank.
        let p90 = s[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
        Stats {
            median,
            p90,
            min: s[0],
            cpu: f64::NAN,
        }
    }

    fn with_cpu(mut self, cpu: &[f64]) -> Stats {
        self.cpu = Stats::of(cpu).median;
        self
    }

    fn print(&self, label: &str) {
        let cpu = if self.cpu.is_nan() {
            String::new()
        } else {
            format!("{:.1}", self.cpu)
        };
        println!(
            "    {label:<48} {:>8.1} {:>8.1} {:>8.1} {cpu:>10}",
            self.median, self.p90, self.min
        );
    }
}
