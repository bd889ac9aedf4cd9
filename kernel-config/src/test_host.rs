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
//! - the command runs with the given working directory and environment,
//!   stdin from `/dev/null`, its stdout and stderr streamed back over two
//!   virtio-serial ports, and its exit status over a third.
//!
//! The qemu process is killed and reaped on every path: normal exit, time
//! limit, error, panic (drop guard), and the death of the calling thread
//! (`PR_SET_PDEATHSIG`).

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

/// The qemu binary used unless [`TestHost::qemu`] says otherwise.
pub const QEMU: &str = "qemu-system-x86_64";
/// Default time limit for one test-host run (boot included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Default test-host memory. qemu allocates it lazily, so a large value costs
/// nothing until used; it must hold the microVMs started inside.
pub const DEFAULT_MEMORY_MIB: u32 = 4096;

/// The exit code the test host's init reports when it cannot run the command
/// at all (docker's convention for the runtime's own errors).
pub const EXIT_SETUP_FAILED: i32 = 125;

/// The machine is TCG-emulated, with an AMD CPU model that has SVM and nested
/// paging, so the test-host kernel's KVM_AMD gives a working /dev/kvm.
/// The `-feature`s are EPYC features TCG cannot emulate anyway; naming them
/// only silences qemu's warning about each of them (28 lines that would bury
/// the console tail in error messages).
const QEMU_MACHINE: &[&str] = &[
    "-M",
    "microvm,acpi=off",
    "-accel",
    "tcg",
    "-cpu",
    "EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,\
     -topoext,-perfctr-core,-clzero,-xsaveerptr,-ibpb,-nrip-save,-xsavec,-xsaves",
];

/// The test host's kernel command line. qemu's microvm appends the
/// `virtio_mmio.device=` entries for the devices below (acpi=off).
/// `reboot=t` + qemu's `-no-reboot`: the init's final `reboot -f` ends qemu;
/// `panic=-1`: so does a kernel panic, instead of hanging until the timeout.
/// [`tsc_cmdline`] adds the TSC frequency.
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t rdinit=/init";

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
[ -e /dev/kvm ] || msg "warning: /dev/kvm is missing (is the CPU model without SVM?)"
ip link set lo up 2>/dev/null
hostname capsa-test-host
cp /run.sh $r/run/capsa-test-host.sh

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

/// One command to run inside a fresh test host; a builder like
/// [`std::process::Command`].
#[derive(Debug, Clone)]
pub struct TestHost {
    argv: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    memory_mib: u32,
    cpus: u32,
    kernel: Option<PathBuf>,
    qemu: PathBuf,
    show_console: bool,
    extra_cmdline: String,
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
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: 2,
            kernel: None,
            qemu: PathBuf::from(QEMU),
            show_console: std::env::var_os("CAPSA_TEST_HOST_CONSOLE").is_some_and(|v| v != "0"),
            extra_cmdline: std::env::var("CAPSA_TEST_HOST_APPEND").unwrap_or_default(),
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

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
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
        let mut img = initramfs::busybox_init(INIT)?;
        img.file("run.sh", 0o755, self.script(&cwd));
        img.write_to(&initrd)?;

        let mut ports = Vec::new();
        for (name, stream) in [
            ("stdout", Stream::Stdout),
            ("stderr", Stream::Stderr),
            ("status", Stream::Console), // stream unused for the status port
        ] {
            ports.push((name, stream, Fifo::create(work.path(), name)?));
        }

        let mut cmd = Command::new(&self.qemu);
        cmd.args(QEMU_MACHINE)
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
                "virtio-serial-device,max_ports=4",
            ]);
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
            Source::new(Reader::Out(qemu_out), Stream::Console),
            Source::new(Reader::Err(qemu_err), Stream::Console),
        ];
        let mut status_idx = 0;
        for (name, stream, fifo) in ports {
            if name == "status" {
                status_idx = sources.len();
            }
            sources.push(Source::new(Reader::Fifo(fifo.reader), stream));
        }
        let mut console = Vec::new();
        let mut status = Vec::new();
        let show_console = self.show_console;
        let mut dispatch = |idx: usize, stream: Stream, data: &[u8]| {
            if idx == status_idx {
                status.extend_from_slice(data);
            } else if stream == Stream::Console {
                console.extend_from_slice(data);
                if show_console {
                    sink(Stream::Console, data);
                }
            } else {
                sink(stream, data);
            }
        };

        let deadline = start + self.timeout;
        let exit: ExitStatus = loop {
            poll_readable(&sources, Duration::from_millis(100));
            for (i, s) in sources.iter_mut().enumerate() {
                s.drain(|stream, d| dispatch(i, stream, d))?;
            }
            if let Some(st) = guard.try_wait()? {
                for (i, s) in sources.iter_mut().enumerate() {
                    s.drain(|stream, d| dispatch(i, stream, d))?;
                }
                break st;
            }
            if Instant::now() >= deadline {
                guard.kill();
                for (i, s) in sources.iter_mut().enumerate() {
                    s.drain(|stream, d| dispatch(i, stream, d))?;
                }
                bail!(
                    "the KVM test host timed out after {:?} running {}; its console ended with:\n{}",
                    self.timeout,
                    self.describe(),
                    tail(&console, 30)
                );
            }
        };
        let elapsed = start.elapsed();
        let text = String::from_utf8_lossy(&status);
        let code = match text.trim().parse::<i32>() {
            Ok(code) => code,
            Err(_) => bail!(
                "the KVM test host ended ({exit}) without reporting the exit status of {}; its console ended with:\n{}",
                self.describe(),
                tail(&console, 30)
            ),
        };
        if code == EXIT_SETUP_FAILED {
            tracing::warn!(
                "the test host may have failed to set up (exit {code}); console:\n{}",
                tail(&console, 15)
            );
        }
        Ok(Outcome {
            code,
            stdout: Vec::new(),
            stderr: Vec::new(),
            console,
            elapsed,
        })
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
    stream: Stream,
    eof: bool,
}

impl Source {
    fn new(reader: Reader, stream: Stream) -> Source {
        Source {
            reader,
            stream,
            eof: false,
        }
    }

    /// Reads everything available now.
    fn drain(&mut self, mut f: impl FnMut(Stream, &[u8])) -> Result<()> {
        let mut buf = [0u8; 16384];
        while !self.eof {
            match self.reader.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => f(self.stream, &buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the test host's output"),
            }
        }
        Ok(())
    }
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error()).context("fcntl O_NONBLOCK");
    }
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

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail(b"a", 5), "a");
    }
}
