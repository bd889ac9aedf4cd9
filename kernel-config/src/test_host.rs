//! The KVM test host: run one command as root inside a Linux that has a real
//! `/dev/kvm`, on machines whose own `/dev/kvm` cannot run an ordinary guest
//! (PVM; see `docs/guest-kernel.md`).
//!
//! [`TestHost::run`] boots the test-host kernel under `qemu-system-x86_64`
//! with TCG and an emulated AMD SVM CPU. Inside it:
//!
//! - this machine's `/` is shared read-only over virtio-9p, and an overlay
//!   with a tmpfs upper layer makes it look writable: every path of this
//!   machine (the checkout, `target/`, `/var/lib/capsa`, `/var/cache/capsa`,
//!   `/tmp`) is there unchanged, and writes are thrown away at the end;
//! - `/proc`, `/sys`, `/dev` (with `/dev/kvm` and `/dev/net/tun`), `/dev/pts`,
//!   `/dev/shm` and a fresh `/run` are mounted, cgroup2 at `/sys/fs/cgroup`;
//! - with [`TestHost::scratch_disk`], an empty ext4 file system on a
//!   virtio-blk disk is mounted at `/mnt/scratch` (for what tmpfs does not
//!   do as a disk file system does: user xattrs, stable directory offsets);
//! - the command runs with the given working directory and environment,
//!   stdin from `/dev/null`, its stdout and stderr streamed back over two
//!   virtio-serial ports, and its exit status over a third.
//!
//! The qemu process is killed and reaped on every path: normal exit, time
//! limit, error, panic (drop guard), and the death of the calling thread
//! (`PR_SET_PDEATHSIG`).
//!
//! A run that does not end with the command's own exit status is never
//! passed off as one: it is an error holding a [`HostFailure`] (a kernel
//! crash on the test host's console, a hang, qemu failing, the time limit),
//! whose message starts with what happened and goes on with the console's
//! last lines. [`host_failure`] gets it back from an [`anyhow::Error`];
//! `capsa test-host` exits with [`FailureKind::exit_code`].

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::initramfs;
use crate::Kind;

mod console;
pub use console::{find_crash, Crash, CrashKind};

/// The qemu binary used unless [`TestHost::qemu`] or `CAPSA_TEST_HOST_QEMU`
/// says otherwise.
pub const QEMU: &str = "qemu-system-x86_64";
/// Default time limit for one test-host run (boot included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Default test-host memory. qemu allocates it lazily, so a large value costs
/// nothing until used; it must hold the microVMs started inside.
pub const DEFAULT_MEMORY_MIB: u32 = 4096;

/// The exit code the test host's init reports when it cannot run the command
/// at all (docker's convention for the runtime's own errors).
pub const EXIT_SETUP_FAILED: i32 = 125;

/// Default silence limit: a run with no output at all (console, stdout,
/// stderr) for this long is stopped as hung. `CAPSA_TEST_HOST_SILENCE=SECS`
/// or [`TestHost::silence_limit`] change it.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(300);
/// The silence allowed before the command has started (the kernel boots
/// with `quiet`, and boots take up to a minute on a busy machine): the
/// silence limit, but at least this.
pub const BOOT_SILENCE: Duration = Duration::from_secs(180);
/// Once the console shows a kernel crash, the run is stopped after this
/// much silence (the rest of the report has come by then; after a double
/// fault qemu may spin forever without another word).
const CRASH_GRACE: Duration = Duration::from_secs(10);
/// After the exit status has come, qemu gets this long to power off.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);
/// How often the test host's init writes to the heartbeat port (seconds).
const HEARTBEAT_SECS: u32 = 2;

/// `capsa test-host`'s exit code when the test host's kernel crashed.
pub const EXIT_KERNEL_CRASH: i32 = 240;
/// … when the test host hung (no output, and its heartbeat stopped too).
pub const EXIT_HOST_HUNG: i32 = 241;
/// … when qemu failed or ended before the command's exit status came.
pub const EXIT_QEMU_FAILED: i32 = 242;
/// … when the time limit passed while output was still coming.
pub const EXIT_TIMED_OUT: i32 = 243;
/// … when the command went silent in a test host that was still alive.
pub const EXIT_COMMAND_HUNG: i32 = 244;

/// The machine is TCG-emulated, with an AMD CPU model that has SVM and nested
/// paging, so the test-host kernel's KVM_AMD gives a working /dev/kvm.
/// The `-feature`s are EPYC features TCG cannot emulate anyway; naming them
/// only silences qemu's warning about each of them (28 lines that would bury
/// the console tail in error messages).
/// `-accel` is added apart: `tcg`, or `CAPSA_TEST_HOST_ACCEL` (e.g.
/// `tcg,thread=single`, which scripts/stress-test-host.sh compares).
const QEMU_MACHINE: &[&str] = &[
    "-M",
    "microvm,acpi=off",
    "-cpu",
    "EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,\
     -topoext,-perfctr-core,-clzero,-xsaveerptr,-ibpb,-nrip-save,-xsavec,-xsaves",
];

/// The test host's kernel command line. qemu's microvm appends the
/// `virtio_mmio.device=` entries for the devices below (acpi=off).
/// `reboot=t` + qemu's `-no-reboot`: the init's final `reboot -f` ends qemu;
/// `panic=-1`: so does a kernel panic, instead of hanging until the timeout.
/// [`tsc_cmdline`] adds the TSC frequency.
/// `kvm_amd.npt=0`: the test host's KVM runs its microVMs on shadow page
/// tables, so qemu's TCG never emulates nested paging. With nested paging,
/// stress runs (scripts/stress-test-host.sh, docs/guest-kernel.md) found
/// memory corrupted in the test host and in its guests (a kernel pointer in
/// a TDP MMU entry, guests triple-faulting, guests stuck booting) in every
/// setup tried; with shadow paging, 17 of 17 runs were clean, each a little
/// slower. `CAPSA_TEST_HOST_APPEND=kvm_amd.npt=1` turns it back on.
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t rdinit=/init kvm_amd.npt=0";

/// Kernel arguments that give the test host a usable TSC.
///
/// Why: the test host has no HPET or ACPI PM timer, and calibrating the TSC
/// against the PIT fails under TCG whenever this machine is busy ("Fast TSC
/// calibration failed", "Marking TSC unstable due to could not calculate TSC
/// khz"). Then tsc_khz is 0, and KVM in the test host never enters a guest:
/// kvm_guest_time_update() finds cpu_tsc_khz == 0, re-requests a clock
/// update and returns, forever (the inner vCPU spins in KVM_RUN at the reset
/// vector with zero exits). Under TCG the guest TSC is this machine's TSC,
/// so we measure its rate here and hand it over with `tsc_early_khz`;
/// `tsc=reliable` skips the cross-CPU sync check and the clocksource
/// watchdog, which fail for the same reason.
fn tsc_cmdline() -> String {
    format!("tsc=reliable tsc_early_khz={}", host_tsc_khz())
}

/// This machine's TSC rate in kHz: `CAPSA_TEST_HOST_TSC_KHZ`, or measured
/// against CLOCK_MONOTONIC over 50 ms (good to about 0.1%).
fn host_tsc_khz() -> u64 {
    if let Some(khz) = std::env::var("CAPSA_TEST_HOST_TSC_KHZ")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return khz;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86-64.
        let rdtsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), rdtsc());
        std::thread::sleep(Duration::from_millis(50));
        let (c1, t1) = (rdtsc(), Instant::now());
        let ns = t1.duration_since(t0).as_nanos() as u64;
        c1.wrapping_sub(c0).saturating_mul(1_000_000) / ns.max(1)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        1_000_000
    }
}

/// /init of the test host (busybox sh). The command's script is /run.sh.
const INIT: &str = r#"#!/bin/sh
# capsa KVM test host init: mount this machine's / (read-only, 9p) under a
# tmpfs overlay, run /run.sh in it, report its exit status, and power off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

msg() { echo "capsa-test-host: $*"; }
port() {
  for p in /sys/class/virtio-ports/*; do
    if [ "$(cat "$p/name" 2>/dev/null)" = "$1" ]; then echo "/dev/${p##*/}"; return 0; fi
  done
  return 1
}
st=$(port capsa.status)
# A line every few seconds from the test host itself (nothing here touches
# the 9p share), so the harness can tell a stuck test host from a command
# that is merely silent.
hb=$(port capsa.heartbeat) && (echo .; while sleep HEARTBEAT_SECS; do echo .; done) >"$hb" 2>/dev/null &
finish() {
  if [ -n "$st" ]; then echo "$1" >"$st"; else msg "no status port; exit status $1"; fi
  reboot -f
  sleep 10
}
die() { msg "error: $*"; finish 125; }

out=$(port capsa.stdout) && err=$(port capsa.stderr) && [ -n "$st" ] \
  || die "the virtio-serial ports capsa.stdout/stderr/status are missing"

mkdir -p /host /scratch /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
  || die "cannot mount this machine's / over virtio-9p"
mount -t tmpfs -o mode=0755 scratch /scratch
mkdir -p /scratch/upper /scratch/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/scratch/upper,workdir=/scratch/work /newroot \
  || die "cannot mount the scratch overlay on this machine's /"

r=/newroot
mount -t proc proc $r/proc || die "mount /proc"
mount -t sysfs sysfs $r/sys || die "mount /sys"
mount -t devtmpfs devtmpfs $r/dev || die "mount /dev"
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 shm $r/dev/shm
mount -t tmpfs -o mode=0755 run $r/run || die "mount /run"
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null || msg "warning: no cgroup2 at /sys/fs/cgroup"
if [ -b $r/dev/vda ]; then
  mkdir -p $r/mnt/scratch && mount -t ext4 $r/dev/vda $r/mnt/scratch || die "mount the scratch disk"
fi
[ -e /dev/kvm ] || msg "warning: /dev/kvm is missing (is the CPU model without SVM?)"
ip link set lo up 2>/dev/null
hostname capsa-test-host
cp /run.sh $r/run/capsa-test-host.sh

echo started >"$st"
# The new root moves onto / before the chroot, so the command's root is a
# mount root, as on a booted host: programs that enter other mount
# namespaces (a container's, for exec) resolve paths as they would there.
(cd $r && mount --move . / && exec chroot . /bin/sh /run/capsa-test-host.sh) </dev/null >"$out" 2>"$err"
finish $?
"#;

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's stdout.
    Stdout,
    /// The command's stderr.
    Stderr,
    /// The test host's serial console and qemu's own messages.
    Console,
}

/// The result of one test-host run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command's exit code (128+N if it was killed by signal N; 127 if not
    /// found; [`EXIT_SETUP_FAILED`] if the test host could not run it).
    pub code: i32,
    /// The command's stdout (only filled by [`TestHost::output`]).
    pub stdout: Vec<u8>,
    /// The command's stderr (only filled by [`TestHost::output`]).
    pub stderr: Vec<u8>,
    /// The test host's console and qemu's messages (always kept).
    pub console: Vec<u8>,
    /// Wall time from starting qemu to its exit.
    pub elapsed: Duration,
}

/// How a test-host run failed to give the command's own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The test host's kernel crashed (panic, oops, BUG, double fault on
    /// its console), whether or not the command's exit status came after.
    KernelCrash,
    /// No output for the silence limit, and the test host's own heartbeat
    /// stopped too: the test host (its kernel, or qemu) is stuck.
    HostHung,
    /// qemu exited (or failed to run) before the command's exit status
    /// came, with no kernel crash on the console: a qemu error, or the test
    /// host reset (a triple fault) or powered off on its own.
    QemuFailed,
    /// The time limit passed while output was still coming.
    TimedOut,
    /// No output for the silence limit while the test host itself was
    /// alive (its heartbeat kept coming): the command is stuck. This one is
    /// the command's failure rather than the test host's.
    CommandHung,
}

impl FailureKind {
    /// The exit code `capsa test-host` gives it (240–244; see
    /// `docs/guest-kernel.md`).
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::KernelCrash => EXIT_KERNEL_CRASH,
            FailureKind::HostHung => EXIT_HOST_HUNG,
            FailureKind::QemuFailed => EXIT_QEMU_FAILED,
            FailureKind::TimedOut => EXIT_TIMED_OUT,
            FailureKind::CommandHung => EXIT_COMMAND_HUNG,
        }
    }

    /// The kind for an exit code of `capsa test-host`, if it is one of them.
    pub fn from_exit_code(code: i32) -> Option<FailureKind> {
        [
            FailureKind::KernelCrash,
            FailureKind::HostHung,
            FailureKind::QemuFailed,
            FailureKind::TimedOut,
            FailureKind::CommandHung,
        ]
        .into_iter()
        .find(|k| k.exit_code() == code)
    }

    /// A short name for counting: `kernel-crash`, `host-hung`,
    /// `qemu-failed`, `timed-out`, `command-hung`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::KernelCrash => "kernel-crash",
            FailureKind::HostHung => "host-hung",
            FailureKind::QemuFailed => "qemu-failed",
            FailureKind::TimedOut => "timed-out",
            FailureKind::CommandHung => "command-hung",
        }
    }

    /// Whether the test host (or qemu) failed, as opposed to the command
    /// (which only [`FailureKind::CommandHung`] and, often,
    /// [`FailureKind::TimedOut`] are).
    pub fn is_host_failure(self) -> bool {
        matches!(
            self,
            FailureKind::KernelCrash | FailureKind::HostHung | FailureKind::QemuFailed
        )
    }
}

/// A test-host run that did not end with the command's own exit status (or
/// whose test host crashed on the way). [`TestHost::run`],
/// [`TestHost::output`] and [`TestHost::run_with`] return it inside their
/// error; [`host_failure`] gets it back. Its message's first line says what
/// happened ("KVM test host crashed: kernel panic …", "KVM test host hung:
/// no output for 300 s …", "qemu failed: …"); the console's last lines and
/// the command's last output follow.
#[derive(Debug, Clone)]
pub struct HostFailure {
    pub kind: FailureKind,
    /// The kernel crash on the console, if any (always for
    /// [`FailureKind::KernelCrash`]).
    pub crash: Option<Crash>,
    /// The command line that was running.
    pub command: String,
    /// The command's exit code, if it came anyway.
    pub status: Option<i32>,
    /// When the command started, counted from qemu's start (`None`: the
    /// test host never got that far).
    pub started: Option<Duration>,
    /// How long there had been no output when the run ended.
    pub silence: Duration,
    /// How long ago the test host's heartbeat had last come (`None`: never).
    pub heartbeat: Option<Duration>,
    /// How qemu ended (`None`: the harness killed it).
    pub qemu_exit: Option<String>,
    /// The silence limit or time limit that ended the run, when one did.
    pub limit: Option<Duration>,
    /// Wall time from starting qemu to the end.
    pub elapsed: Duration,
    /// The test host's whole console and qemu's messages.
    pub console: Vec<u8>,
    /// The last few KiB of the command's stdout and stderr, as they came.
    pub output_tail: Vec<u8>,
}

/// The [`HostFailure`] inside an error from [`TestHost`], if that is what
/// it is (also through added context).
pub fn host_failure(err: &anyhow::Error) -> Option<&HostFailure> {
    err.downcast_ref::<HostFailure>()
}

/// For tests: `.expect_ran()` on what [`TestHost::output`], [`TestHost::run`]
/// or [`TestHost::run_with`] returned gives the [`Outcome`], or panics with a
/// message whose first line says what went wrong: the test host's failure
/// itself ("KVM test host crashed: …", "KVM test host hung: …", "qemu
/// failed: …"), or why the test host could not run at all.
pub trait ExpectRan {
    fn expect_ran(self) -> Outcome;
}

impl ExpectRan for Result<Outcome> {
    #[track_caller]
    fn expect_ran(self) -> Outcome {
        match self {
            Ok(outcome) => outcome,
            Err(err) if host_failure(&err).is_some() => panic!("{err:#}"),
            Err(err) => panic!(
                "the KVM test host could not run (see scripts/setup.sh and \
                 docs/guest-kernel.md): {err:#}"
            ),
        }
    }
}

/// How many console lines a failure message shows.
const CONSOLE_LINES: usize = 20;
/// How many of the command's last output lines a failure message shows.
const OUTPUT_LINES: usize = 10;
/// How much of the command's output a failure keeps.
const OUTPUT_TAIL_BYTES: usize = 4096;

impl HostFailure {
    /// `capsa test-host`'s exit code for it.
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }

    /// The message's first line.
    pub fn summary(&self) -> String {
        let secs = |d: Duration| d.as_secs();
        let phase = match self.started {
            Some(at) => format!(
                "`{}` had run {} s",
                self.command,
                secs(self.elapsed.saturating_sub(at))
            ),
            None => format!("while booting, before `{}` started", self.command),
        };
        match self.kind {
            FailureKind::KernelCrash => {
                let crash = self.crash.as_ref().expect("a kernel crash has a crash");
                let after = match self.status {
                    Some(code) => format!(
                        "; the command's exit status {code} came after it but is not trusted"
                    ),
                    None => String::new(),
                };
                format!(
                    "KVM test host crashed: {} ({phase}{after})",
                    crash.signature()
                )
            }
            FailureKind::HostHung => format!(
                "KVM test host hung: no output for {} s, and {} ({phase})",
                secs(self.silence),
                match self.heartbeat {
                    Some(d) => format!("its heartbeat stopped {} s ago", secs(d)),
                    None => "its init never sent a heartbeat".to_string(),
                }
            ),
            FailureKind::CommandHung => format!(
                "KVM test host: the command hung: no output for {} s while the test host stayed \
                 alive (its heartbeat came {} s ago; {phase})",
                secs(self.silence),
                self.heartbeat.map_or(0, secs)
            ),
            FailureKind::QemuFailed => {
                let how = self.qemu_exit.as_deref().unwrap_or("was killed");
                let why = if self.qemu_exit.as_deref() == Some("exit status: 0") {
                    " (the test host reset or powered off with no kernel crash on its console: \
                     a triple fault, or something in it rebooted)"
                } else {
                    ""
                };
                format!(
                    "qemu failed: the KVM test host's qemu exited ({how}) before the command's \
                     exit status came{why} ({phase})"
                )
            }
            FailureKind::TimedOut => format!(
                "KVM test host run timed out after {} s with output still coming ({phase})",
                secs(self.limit.unwrap_or(self.elapsed))
            ),
        }
    }

    /// The console lines the message shows: from just before a crash's
    /// first line (its report), else the last ones.
    fn console_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.console);
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let last = lines.len().saturating_sub(CONSOLE_LINES);
        let from = match &self.crash {
            Some(c) => c.line_index.saturating_sub(2).min(last),
            None => last,
        };
        let to = lines.len().min(from + 2 * CONSOLE_LINES);
        let mut out = lines[from..to].join("\n");
        if to < lines.len() {
            out.push_str(&format!(
                "\n[… {} more lines]\n{}",
                lines.len() - to,
                lines[lines.len().saturating_sub(5).max(to)..].join("\n")
            ));
        }
        out
    }
}

impl std::fmt::Display for HostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.summary())?;
        let console = self.console_excerpt();
        if console.trim().is_empty() {
            write!(f, "\n--- the test host's console was empty ---")?;
        } else {
            write!(f, "\n--- the test host's console ---\n{console}")?;
        }
        if !self.output_tail.is_empty() {
            write!(
                f,
                "\n--- the command's last output ---\n{}",
                tail(&self.output_tail, OUTPUT_LINES)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for HostFailure {}

/// One command to run inside a fresh test host; a builder like
/// [`std::process::Command`].
#[derive(Debug, Clone)]
pub struct TestHost {
    argv: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    silence: Duration,
    memory_mib: u32,
    cpus: u32,
    kernel: Option<PathBuf>,
    qemu: PathBuf,
    show_console: bool,
    extra_cmdline: String,
    scratch_mib: Option<u32>,
}

impl TestHost {
    /// Runs `program` (looked up in PATH inside the test host).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        TestHost {
            argv: vec![program.as_ref().to_os_string()],
            cwd: None,
            env: vec![
                (
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
                ("HOME".into(), "/root".into()),
            ],
            timeout: DEFAULT_TIMEOUT,
            silence: std::env::var("CAPSA_TEST_HOST_SILENCE")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map_or(DEFAULT_SILENCE, Duration::from_secs),
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: 2,
            kernel: None,
            qemu: std::env::var_os("CAPSA_TEST_HOST_QEMU")
                .map_or(PathBuf::from(QEMU), PathBuf::from),
            show_console: std::env::var_os("CAPSA_TEST_HOST_CONSOLE").is_some_and(|v| v != "0"),
            extra_cmdline: std::env::var("CAPSA_TEST_HOST_APPEND").unwrap_or_default(),
            scratch_mib: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets (or replaces) an environment variable of the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_os_string()));
        self
    }

    /// The command's working directory (a path of this machine); default:
    /// this process's current directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The time limit for the whole run, boot included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The silence limit: with no output at all (console, stdout, stderr)
    /// for this long, the run is stopped as hung (default
    /// [`DEFAULT_SILENCE`], or `CAPSA_TEST_HOST_SILENCE=SECS`). Before the
    /// command starts, at least [`BOOT_SILENCE`] is allowed.
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence = limit;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Gives the test host an empty ext4 file system of `mib` MiB (a sparse
    /// file, thrown away at the end) at `/mnt/scratch`.
    pub fn scratch_disk(mut self, mib: u32) -> Self {
        self.scratch_mib = Some(mib);
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// Boot this kernel instead of the built test-host kernel.
    pub fn kernel(mut self, vmlinux: impl AsRef<Path>) -> Self {
        self.kernel = Some(vmlinux.as_ref().to_path_buf());
        self
    }

    pub fn qemu(mut self, qemu: impl AsRef<Path>) -> Self {
        self.qemu = qemu.as_ref().to_path_buf();
        self
    }

    /// Appends to the test host's kernel command line (also
    /// `CAPSA_TEST_HOST_APPEND=…`), e.g. `kvm_amd.npt=0` when debugging.
    pub fn append_cmdline(mut self, args: &str) -> Self {
        self.extra_cmdline.push(' ');
        self.extra_cmdline.push_str(args);
        self
    }

    /// Copy the test host's console to this process's stderr as it comes
    /// (also on with `CAPSA_TEST_HOST_CONSOLE=1`).
    pub fn show_console(mut self, on: bool) -> Self {
        self.show_console = on;
        self
    }

    /// Runs the command, streaming its stdout and stderr to this process's.
    /// An error that is a [`HostFailure`] (see [`host_failure`]) means the
    /// test host failed, not the command.
    pub fn run(&self) -> Result<Outcome> {
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        self.run_with(&mut |stream, data| {
            let _ = match stream {
                Stream::Stdout => {
                    let mut o = stdout.lock();
                    o.write_all(data).and_then(|_| o.flush())
                }
                Stream::Stderr | Stream::Console => {
                    let mut e = stderr.lock();
                    e.write_all(data).and_then(|_| e.flush())
                }
            };
        })
    }

    /// Runs the command and collects its stdout and stderr.
    pub fn output(&self) -> Result<Outcome> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut outcome = self.run_with(&mut |stream, data| match stream {
            Stream::Stdout => stdout.extend_from_slice(data),
            Stream::Stderr => stderr.extend_from_slice(data),
            Stream::Console => {
                let _ = std::io::stderr().write_all(data);
            }
        })?;
        outcome.stdout = stdout;
        outcome.stderr = stderr;
        Ok(outcome)
    }

    /// Runs the command, passing every chunk of output to `sink` as it
    /// arrives. Console chunks go to `sink` only if `show_console` is on
    /// (they are always kept in [`Outcome::console`]).
    ///
    /// `Ok` means the command's exit status came and the test host's
    /// kernel did not crash; a kernel crash, a hang, qemu ending without
    /// the status and the time limit are errors holding a [`HostFailure`].
    pub fn run_with(&self, sink: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => {
                crate::kernel_path(Kind::TestHost).context("building the KVM test-host kernel")?
            }
        };
        if !kernel.is_file() {
            bail!("test-host kernel {} does not exist", kernel.display());
        }
        let cwd = match &self.cwd {
            Some(d) => d.clone(),
            None => std::env::current_dir().context("reading the current directory")?,
        };

        let work = tempfile::Builder::new()
            .prefix("capsa-test-host-")
            .tempdir()
            .context("creating the test host's work directory")?;
        let initrd = work.path().join("initramfs.cpio");
        let init = INIT.replace("HEARTBEAT_SECS", &HEARTBEAT_SECS.to_string());
        let mut img = initramfs::busybox_init(&init)?;
        img.file("run.sh", 0o755, self.script(&cwd));
        img.write_to(&initrd)?;

        let mut ports = Vec::new();
        for (name, chan) in [
            ("stdout", Chan::Stdout),
            ("stderr", Chan::Stderr),
            ("status", Chan::Status),
            ("heartbeat", Chan::Heartbeat),
        ] {
            ports.push((name, chan, Fifo::create(work.path(), name)?));
        }

        let mut cmd = Command::new(&self.qemu);
        let accel = std::env::var("CAPSA_TEST_HOST_ACCEL").unwrap_or_else(|_| "tcg".into());
        cmd.args(QEMU_MACHINE)
            .args(["-accel", &accel])
            .arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(format!("{}M", self.memory_mib))
            .args(["-name", "capsa-test-host"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "{CMDLINE} {} {}",
                tsc_cmdline(),
                self.extra_cmdline.trim()
            ))
            .args([
                "-chardev",
                "stdio,id=con,signal=off",
                "-serial",
                "chardev:con",
            ])
            .args([
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot",
                "-device",
                "virtio-serial-device,max_ports=5",
            ]);
        if let Some(mib) = self.scratch_mib {
            let disk = work.path().join("scratch.ext4");
            File::create(&disk)
                .and_then(|f| f.set_len(u64::from(mib) << 20))
                .context("creating the test host's scratch disk")?;
            let mkfs = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
                .arg(&disk)
                .output()
                .context("running mkfs.ext4 (e2fsprogs) for the scratch disk")?;
            if !mkfs.status.success() {
                bail!(
                    "mkfs.ext4 of the scratch disk failed: {}",
                    String::from_utf8_lossy(&mkfs.stderr).trim()
                );
            }
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=scratch,format=raw,cache=unsafe",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=scratch"]);
        }
        for (i, (name, _, fifo)) in ports.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!("pipe,id=port{i},path={}", fifo.base.display()))
                .arg("-device")
                .arg(format!(
                    "virtserialport,chardev=port{i},name=capsa.{name},nr={}",
                    i + 1
                ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec. It makes the kernel kill qemu if this thread dies.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tracing::debug!(?cmd, "starting the KVM test host");
        let start = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                anyhow!(
                    "{} is missing: install the Debian package qemu-system-x86 (scripts/setup.sh)",
                    self.qemu.display()
                )
            } else {
                anyhow!("starting {}: {e}", self.qemu.display())
            }
        })?;
        let mut guard = QemuGuard(Some(child));
        let child = guard.0.as_mut().expect("just set");
        let qemu_out = child.stdout.take().expect("piped");
        let qemu_err = child.stderr.take().expect("piped");
        set_nonblocking(qemu_out.as_raw_fd())?;
        set_nonblocking(qemu_err.as_raw_fd())?;

        let mut sources: Vec<Source> = vec![
            Source::new(Reader::Out(qemu_out), Chan::Console),
            Source::new(Reader::Err(qemu_err), Chan::Console),
        ];
        for (_, chan, fifo) in ports {
            sources.push(Source::new(Reader::Fifo(fifo.reader), chan));
        }

        let show_console = self.show_console;
        let mut watch = Watch::new(start);
        let mut dispatch = |chan: Chan, data: &[u8], watch: &mut Watch| {
            watch.record(chan, data);
            match chan {
                Chan::Stdout => sink(Stream::Stdout, data),
                Chan::Stderr => sink(Stream::Stderr, data),
                Chan::Console if show_console => sink(Stream::Console, data),
                _ => {}
            }
        };
        let mut drain_all = |sources: &mut Vec<Source>, watch: &mut Watch| -> Result<()> {
            for s in sources.iter_mut() {
                let chan = s.chan;
                s.drain(|d| dispatch(chan, d, watch))?;
            }
            Ok(())
        };

        let deadline = start + self.timeout;
        let mut stopped_at = None;
        let (qemu_exit, limit) = loop {
            poll_readable(&sources, Duration::from_millis(100));
            drain_all(&mut sources, &mut watch)?;
            if let Some(st) = guard.try_wait()? {
                drain_all(&mut sources, &mut watch)?;
                break (Some(st), None);
            }
            let now = Instant::now();
            let stop = if now >= deadline {
                Some(Stop::Timeout)
            } else if watch.code.is_some() && now.duration_since(watch.code_at) >= POWER_OFF_GRACE {
                Some(Stop::PowerOff)
            } else {
                let silent_limit = if watch.crash.is_some() {
                    self.silence.min(CRASH_GRACE)
                } else if watch.started.is_none() {
                    self.silence.max(BOOT_SILENCE)
                } else {
                    self.silence
                };
                (now.duration_since(watch.last_output) >= silent_limit)
                    .then_some(Stop::Silence(silent_limit))
            };
            if let Some(stop) = stop {
                stopped_at = Some(now);
                guard.kill();
                drain_all(&mut sources, &mut watch)?;
                match stop {
                    Stop::Timeout => break (None, Some((FailureKind::TimedOut, self.timeout))),
                    Stop::Silence(limit) => {
                        let alive = watch
                            .last_heartbeat
                            .is_some_and(|t| now.duration_since(t) < heartbeat_fresh(self.silence));
                        let kind = if alive {
                            FailureKind::CommandHung
                        } else {
                            FailureKind::HostHung
                        };
                        break (None, Some((kind, limit)));
                    }
                    Stop::PowerOff => {
                        tracing::warn!(
                            "the test host did not power off within {POWER_OFF_GRACE:?} after \
                             reporting the exit status; killed qemu"
                        );
                        break (None, None);
                    }
                }
            }
        };
        let elapsed = start.elapsed();
        // Ages are taken when the harness decided to stop qemu.
        let end = stopped_at.unwrap_or_else(Instant::now);
        let crash = find_crash(&watch.console);
        let kind = if crash.is_some() {
            Some(FailureKind::KernelCrash)
        } else if watch.code.is_some() {
            None
        } else if let Some((kind, _)) = limit {
            Some(kind)
        } else {
            Some(FailureKind::QemuFailed)
        };
        let Some(kind) = kind else {
            let code = watch.code.expect("checked above");
            if code == EXIT_SETUP_FAILED {
                tracing::warn!(
                    "the test host may have failed to set up (exit {code}); console:\n{}",
                    tail(&watch.console, 15)
                );
            }
            return Ok(Outcome {
                code,
                stdout: Vec::new(),
                stderr: Vec::new(),
                console: watch.console,
                elapsed,
            });
        };
        let failure = HostFailure {
            kind,
            crash,
            command: self.short_description(),
            status: watch.code,
            started: watch.started.map(|t| t.duration_since(start)),
            silence: end.duration_since(watch.last_output),
            heartbeat: watch.last_heartbeat.map(|t| end.duration_since(t)),
            qemu_exit: qemu_exit.map(|st| st.to_string()),
            limit: limit.map(|(_, l)| l),
            elapsed,
            console: watch.console,
            output_tail: watch.output_tail,
        };
        tracing::debug!(kind = failure.kind.label(), "test-host run failed");
        Err(anyhow::Error::new(failure))
    }

    /// The command line for a one-line message: its first line, at most
    /// 80 characters.
    fn short_description(&self) -> String {
        let full = self.describe();
        let first = full.lines().next().unwrap_or_default();
        let mut short: String = first.chars().take(80).collect();
        if short.len() < full.len() {
            short.push('…');
        }
        short
    }

    fn describe(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The shell script the test host runs: cd, environment, exec.
    fn script(&self, cwd: &Path) -> Vec<u8> {
        let mut s = b"#!/bin/sh\n".to_vec();
        s.extend_from_slice(b"cd ");
        s.extend_from_slice(&shell_quote(cwd.as_os_str()));
        s.extend_from_slice(b" || exit 125\n");
        for (k, v) in &self.env {
            let key = k.as_bytes();
            let valid = !key.is_empty()
                && !key[0].is_ascii_digit()
                && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
            if !valid {
                tracing::warn!(key = %k.to_string_lossy(), "skipping an invalid environment variable name");
                continue;
            }
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            s.extend_from_slice(b"export ");
            s.extend_from_slice(&shell_quote(&kv));
            s.push(b'\n');
        }
        s.extend_from_slice(b"exec");
        for a in &self.argv {
            s.push(b' ');
            s.extend_from_slice(&shell_quote(a));
        }
        s.push(b'\n');
        s
    }
}

/// Single-quotes `s` for sh (any bytes but NUL).
fn shell_quote(s: &OsStr) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in s.as_bytes() {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills and reaps qemu unless it has already been reaped.
struct QemuGuard(Option<Child>);

impl QemuGuard {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let child = self.0.as_mut().expect("qemu already reaped");
        match child.try_wait().context("waiting for qemu")? {
            Some(st) => {
                self.0 = None;
                Ok(Some(st))
            }
            None => Ok(None),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A qemu `pipe` chardev: qemu reads `<base>.in` and writes `<base>.out`. We
/// hold `.out` open read-write and non-blocking, so opening never waits for
/// qemu and reading never sees a premature end of file.
struct Fifo {
    base: PathBuf,
    reader: File,
}

impl Fifo {
    fn create(dir: &Path, name: &str) -> Result<Fifo> {
        let base = dir.join(name);
        for ext in ["in", "out"] {
            let p = base.with_extension(ext);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("mkfifo {}", p.display()))?;
        }
        let reader = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(base.with_extension("out"))
            .with_context(|| format!("opening {}.out", base.display()))?;
        Ok(Fifo { base, reader })
    }
}

enum Reader {
    Out(ChildStdout),
    Err(ChildStderr),
    Fifo(File),
}

impl Reader {
    fn fd(&self) -> RawFd {
        match self {
            Reader::Out(r) => r.as_raw_fd(),
            Reader::Err(r) => r.as_raw_fd(),
            Reader::Fifo(r) => r.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::Out(r) => r.read(buf),
            Reader::Err(r) => r.read(buf),
            Reader::Fifo(r) => r.read(buf),
        }
    }
}

struct Source {
    reader: Reader,
    chan: Chan,
    eof: bool,
}

impl Source {
    fn new(reader: Reader, chan: Chan) -> Source {
        Source {
            reader,
            chan,
            eof: false,
        }
    }

    /// Reads everything available now.
    fn drain(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        let mut buf = [0u8; 16384];
        while !self.eof {
            match self.reader.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => f(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the test host's output"),
            }
        }
        Ok(())
    }
}

/// Where a chunk of the test host's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chan {
    /// The serial console and qemu's own messages.
    Console,
    Stdout,
    Stderr,
    /// `started`, then the command's exit code.
    Status,
    /// A line every [`HEARTBEAT_SECS`] from the test host's init.
    Heartbeat,
}

/// Why the harness stopped qemu.
enum Stop {
    Timeout,
    Silence(Duration),
    PowerOff,
}

/// A heartbeat younger than this means the test host is alive.
fn heartbeat_fresh(silence: Duration) -> Duration {
    (silence / 2).clamp(Duration::from_secs(5), Duration::from_secs(30))
}

/// What the harness learns while a run goes on.
struct Watch {
    console: Vec<u8>,
    /// How much of `console` has been searched for a crash (whole lines).
    scanned: usize,
    crash: Option<Crash>,
    status: Vec<u8>,
    code: Option<i32>,
    code_at: Instant,
    started: Option<Instant>,
    last_output: Instant,
    last_heartbeat: Option<Instant>,
    output_tail: Vec<u8>,
}

impl Watch {
    fn new(start: Instant) -> Watch {
        Watch {
            console: Vec::new(),
            scanned: 0,
            crash: None,
            status: Vec::new(),
            code: None,
            code_at: start,
            started: None,
            last_output: start,
            last_heartbeat: None,
            output_tail: Vec::new(),
        }
    }

    fn record(&mut self, chan: Chan, data: &[u8]) {
        let now = Instant::now();
        if chan == Chan::Heartbeat {
            self.last_heartbeat = Some(now);
            return;
        }
        self.last_output = now;
        match chan {
            Chan::Console => {
                self.console.extend_from_slice(data);
                if self.crash.is_none() {
                    // Search the new whole lines only (a crash line split
                    // across two reads is found with its second half).
                    if let Some(nl) = self.console.iter().rposition(|&b| b == b'\n') {
                        if nl + 1 > self.scanned {
                            let from = self.console[..self.scanned]
                                .iter()
                                .rposition(|&b| b == b'\n')
                                .map_or(0, |i| i + 1);
                            self.crash = find_crash(&self.console[from..=nl]);
                            self.scanned = nl + 1;
                        }
                    }
                }
            }
            Chan::Stdout | Chan::Stderr => {
                self.output_tail.extend_from_slice(data);
                let excess = self.output_tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
                self.output_tail.drain(..excess);
            }
            Chan::Status => {
                self.status.extend_from_slice(data);
                // Whole lines only: a code may come in two reads.
                let whole = self
                    .status
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let text = String::from_utf8_lossy(&self.status[..whole]);
                for line in text.lines() {
                    match line.trim() {
                        "started" => {
                            self.started.get_or_insert(now);
                        }
                        l => {
                            if let Ok(code) = l.parse::<i32>() {
                                if self.code.is_none() {
                                    self.code_at = now;
                                }
                                self.code = Some(code);
                            }
                        }
                    }
                }
            }
            Chan::Heartbeat => {}
        }
    }
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).context("fcntl O_NONBLOCK")?;
    Ok(())
}

/// Waits until one of the sources is readable or `timeout` passes.
fn poll_readable(sources: &[Source], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = sources
        .iter()
        .filter(|s| !s.eof)
        .map(|s| libc::pollfd {
            fd: s.reader.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of pollfd for its length. Errors (EINTR)
    // just end the wait early; the caller loops.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_sh() {
        let host = TestHost::new("printf")
            .arg("%s|")
            .args(["a b", "it's", "$HOME", "`x`", "\\n"])
            .env("X_Y", "v'w");
        let dir = tempfile::tempdir().unwrap();
        let script = host.script(dir.path());
        let out = Command::new("sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a b|it's|$HOME|`x`|\\n|"
        );
        let text = String::from_utf8_lossy(&script);
        assert!(text.contains("export 'X_Y=v'\\''w'"), "{text}");
    }

    #[test]
    fn tsc_rate_is_plausible() {
        let khz = host_tsc_khz();
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
    }

    fn failure(kind: FailureKind, console: &str) -> HostFailure {
        HostFailure {
            kind,
            crash: find_crash(console.as_bytes()),
            command: "sh -c true".into(),
            status: None,
            started: Some(Duration::from_secs(4)),
            silence: Duration::from_secs(300),
            heartbeat: Some(Duration::from_secs(290)),
            qemu_exit: None,
            limit: Some(Duration::from_secs(300)),
            elapsed: Duration::from_secs(310),
            console: console.as_bytes().to_vec(),
            output_tail: b"scenario 1 PASS\nscenario 2 ...\n".to_vec(),
        }
    }

    #[test]
    fn failure_messages_say_what_happened_first() {
        let panic = "kvm: no hardware support for 'kvm_intel'\r\n\
                     Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled\r\n\
                     CPU: 0 PID: 70 Comm: dd Not tainted 6.1.192 #1\r\n";
        let f = failure(FailureKind::KernelCrash, panic);
        let text = f.to_string();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            "KVM test host crashed: kernel panic — Out of memory: system-wide panic_on_oom is \
             enabled [task dd] (`sh -c true` had run 306 s)"
        );
        assert!(
            text.contains("--- the test host's console ---\nkvm: no hardware"),
            "{text}"
        );
        assert!(
            text.ends_with("--- the command's last output ---\nscenario 1 PASS\nscenario 2 ..."),
            "{text}"
        );

        let crashed_then_exited = HostFailure {
            status: Some(0),
            ..failure(FailureKind::KernelCrash, panic)
        };
        assert!(crashed_then_exited
            .summary()
            .contains("the command's exit status 0 came after it but is not trusted"));

        let hung = failure(FailureKind::HostHung, "capsa-test-host: x\n");
        assert_eq!(
            hung.summary(),
            "KVM test host hung: no output for 300 s, and its heartbeat stopped 290 s ago \
             (`sh -c true` had run 306 s)"
        );
        let booting = HostFailure {
            started: None,
            heartbeat: None,
            ..failure(FailureKind::HostHung, "")
        };
        assert_eq!(
            booting.to_string().lines().collect::<Vec<_>>()[..2],
            [
                "KVM test host hung: no output for 300 s, and its init never sent a heartbeat \
                 (while booting, before `sh -c true` started)",
                "--- the test host's console was empty ---"
            ]
        );
        let silent = HostFailure {
            heartbeat: Some(Duration::from_secs(1)),
            ..failure(FailureKind::CommandHung, "")
        };
        assert!(silent.summary().starts_with(
            "KVM test host: the command hung: no output for 300 s while the test host stayed alive"
        ));
        let qemu = HostFailure {
            qemu_exit: Some("exit status: 0".into()),
            ..failure(FailureKind::QemuFailed, "")
        };
        assert!(qemu.summary().starts_with(
            "qemu failed: the KVM test host's qemu exited (exit status: 0) before the command's exit status came (the test host reset"
        ));
        let timeout = failure(FailureKind::TimedOut, "");
        assert!(timeout
            .summary()
            .starts_with("KVM test host run timed out after 300 s"));

        // Found again through added context, as callers see it.
        let err = anyhow::Error::new(failure(FailureKind::HostHung, "")).context("running x");
        assert_eq!(
            host_failure(&err).map(|f| f.kind),
            Some(FailureKind::HostHung)
        );
        assert!(format!("{err:#}").starts_with("running x: KVM test host hung: "));
        assert!(host_failure(&anyhow!("other")).is_none());
    }

    #[test]
    fn expect_ran_leads_with_the_failure() {
        let hung: Result<Outcome> = Err(anyhow::Error::new(failure(FailureKind::HostHung, "")));
        let msg = std::panic::catch_unwind(|| hung.expect_ran()).unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("KVM test host hung: no output for 300 s"),
            "{msg}"
        );
        let setup: Result<Outcome> = Err(anyhow!("qemu-system-x86_64 is missing"));
        let msg = std::panic::catch_unwind(|| setup.expect_ran()).unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("the KVM test host could not run (see scripts/setup.sh"),
            "{msg}"
        );
        assert!(msg.ends_with(": qemu-system-x86_64 is missing"), "{msg}");
    }

    #[test]
    fn a_long_crash_report_shows_its_start_and_its_end() {
        let mut console = String::from("booting\n");
        console.push_str("BUG: unable to handle page fault for address: ffffc90000000000\n");
        for i in 0..100 {
            console.push_str(&format!("trace line {i}\n"));
        }
        let text = failure(FailureKind::KernelCrash, &console).to_string();
        assert!(
            text.contains("---\nbooting\nBUG: unable to handle"),
            "{text}"
        );
        assert!(
            text.contains("trace line 37\n[… 62 more lines]\ntrace line 95\n"),
            "{text}"
        );
        assert!(text.contains("trace line 99\n--- the command's"), "{text}");
    }

    #[test]
    fn exit_codes_are_distinct_and_named() {
        let kinds = [
            FailureKind::KernelCrash,
            FailureKind::HostHung,
            FailureKind::QemuFailed,
            FailureKind::TimedOut,
            FailureKind::CommandHung,
        ];
        for (k, code) in kinds.into_iter().zip(240..) {
            assert_eq!(k.exit_code(), code);
            assert_eq!(FailureKind::from_exit_code(code), Some(k));
        }
        assert_eq!(FailureKind::from_exit_code(EXIT_SETUP_FAILED), None);
        assert_eq!(FailureKind::from_exit_code(0), None);
        assert!(FailureKind::HostHung.is_host_failure());
        assert!(!FailureKind::CommandHung.is_host_failure());
    }

    #[test]
    fn watch_reads_status_console_and_heartbeat() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        w.record(Chan::Status, b"star");
        assert!(w.started.is_none());
        w.record(Chan::Status, b"ted\n1");
        assert!(w.started.is_some());
        assert_eq!(w.code, None, "half a code is not a code");
        w.record(Chan::Status, b"25\n");
        assert_eq!(w.code, Some(125));

        w.record(Chan::Console, b"fine\nKernel pan");
        assert!(w.crash.is_none());
        w.record(Chan::Console, b"ic - not syncing: Fatal exception\r\n");
        assert_eq!(w.crash.as_ref().map(|c| c.kind), Some(CrashKind::Panic));

        let before = w.last_output;
        std::thread::sleep(Duration::from_millis(2));
        w.record(Chan::Heartbeat, b".\n");
        assert_eq!(w.last_output, before, "a heartbeat is not output");
        assert!(w.last_heartbeat.is_some());
        w.record(Chan::Stderr, &[b'x'; 10000]);
        assert!(w.last_output > before);
        assert_eq!(w.output_tail.len(), OUTPUT_TAIL_BYTES);
    }

    #[test]
    fn one_line_command_description() {
        let host = TestHost::new("sh").args(["-c", "set -e\necho a\necho b"]);
        assert_eq!(host.short_description(), "sh -c set -e…");
        let long = TestHost::new("x".repeat(100));
        assert_eq!(long.short_description().chars().count(), 81);
        assert_eq!(TestHost::new("true").short_description(), "true");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail(b"a", 5), "a");
    }
}
