//! Boots capsa's kernels for real: the KVM test host under qemu TCG with an
//! emulated SVM CPU, and inside it the guest kernel under KVM.
//!
//! Prerequisites (qemu-system-x86, linux-source-6.1, busybox-static; see
//! scripts/setup.sh) are required: if one is missing these tests fail with a
//! message saying what to install. The first run builds both kernels (minutes).

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use capsa_kernel::test_host::{
    host_failure, CrashKind, ExpectRan, FailureKind, Stream, TestHost, QEMU,
};
use capsa_kernel::{initramfs, kernel_path, Kind};

/// One test-host boot at a time: they share this machine's two cores, and
/// the hang tests judge timing (a heartbeat every 2 s) that a crowd of
/// emulated machines would blur.
fn one_boot_at_a_time() -> MutexGuard<'static, ()> {
    static BOOTS: Mutex<()> = Mutex::new(());
    BOOTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn require_qemu() {
    match Command::new(QEMU).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "{QEMU} is required for this test and is not usable ({other:?}): install the Debian package qemu-system-x86 (scripts/setup.sh)"
        ),
    }
}

fn kernel(kind: Kind) -> std::path::PathBuf {
    kernel_path(kind).unwrap_or_else(|e| {
        panic!("the {kind} kernel is required for this test and could not be built: {e:#}")
    })
}

/// A scratch directory under cargo's target dir: a path of this machine, so
/// the test host sees it at the same place.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kernel-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a scratch directory under CARGO_TARGET_TMPDIR")
}

/// Issue 3's proof that the guest kernel works before capsa's own VMM does:
/// qemu `-M microvm -enable-kvm` inside the test host boots the guest kernel
/// with an initramfs whose /init prints a line and reboots.
#[test]
fn guest_kernel_boots_under_kvm_inside_the_test_host() {
    require_qemu();
    let _boot = one_boot_at_a_time();
    let guest = kernel(Kind::Guest);
    kernel(Kind::TestHost);
    let dir = scratch();
    let initrd = dir.path().join("hello.cpio");
    initramfs::write_busybox_init(
        &initrd,
        "#!/bin/sh\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox echo \"capsa guest kernel is up: $(/bin/busybox uname -r) on $(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"\n\
         /bin/busybox reboot -f\n",
    )
    .unwrap();

    let start = Instant::now();
    let out = TestHost::new(QEMU)
        .args(["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host"])
        .args(["-m", "256M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&guest)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
        .timeout(Duration::from_secs(300))
        .output()
        .expect_ran();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "test host boot + inner KVM guest boot + exit: {:.1?} (qemu in the test host ran {:.1?})",
        start.elapsed(),
        out.elapsed
    );
    assert_eq!(
        out.code,
        0,
        "inner qemu failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ntest-host console:\n{}",
        String::from_utf8_lossy(&out.console)
    );
    assert!(
        stdout.contains("capsa guest kernel is up: 6.1.") && stdout.contains(" on kvm-clock"),
        "the guest's /init line is missing (or it is not on kvm-clock)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// What tests of capsa rely on: exit codes come back, stdout and stderr stay
/// apart, /dev/kvm is there, this machine's paths are visible and writable
/// without the writes reaching this machine.
#[test]
fn test_host_runs_a_command_like_a_local_one() {
    require_qemu();
    let _boot = one_boot_at_a_time();
    kernel(Kind::TestHost);
    let dir = scratch();
    let marker = dir.path().join("marker");
    std::fs::write(&marker, "from the host\n").unwrap();
    let script = format!(
        "set -e\n\
         test -c /dev/kvm\n\
         test -c /dev/net/tun\n\
         test \"$(id -u)\" = 0\n\
         test \"$PWD\" = {dir}\n\
         test \"$CAPSA_TEST_VAR\" = 'a b'\n\
         cat {marker}\n\
         echo changed > {marker}\n\
         mkdir -p /var/lib/capsa/test-host-probe && touch /var/lib/capsa/test-host-probe/x\n\
         echo to-stderr >&2\n\
         exit 7\n",
        dir = dir.path().display(),
        marker = marker.display()
    );
    let out = TestHost::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("CAPSA_TEST_VAR", "a b")
        .timeout(Duration::from_secs(300))
        .output()
        .expect_ran();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.code,
        7,
        "stdout:\n{stdout}\nstderr:\n{stderr}\nconsole:\n{}",
        String::from_utf8_lossy(&out.console)
    );
    assert_eq!(stdout, "from the host\n");
    assert_eq!(stderr, "to-stderr\n");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "from the host\n",
        "a write inside the test host reached this machine"
    );
    assert!(!Path::new("/var/lib/capsa/test-host-probe").exists());
}

/// The time limit kills qemu and says so.
#[test]
fn test_host_time_limit_is_enforced() {
    require_qemu();
    kernel(Kind::TestHost);
    let _boot = one_boot_at_a_time();
    let start = Instant::now();
    let err = TestHost::new("sleep")
        .arg("1000")
        .timeout(Duration::from_secs(5))
        .output()
        .expect_err("sleep 1000 must hit the 5 s limit");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert_eq!(
        host_failure(&err).map(|f| f.kind),
        Some(FailureKind::TimedOut),
        "{err:#}"
    );
}

/// Issue 16: a kernel panic in the test host is reported as one, not as the
/// command's result. The command makes the test host's kernel panic for
/// real: `vm.panic_on_oom`, then more memory than the test host has.
#[test]
fn a_test_host_kernel_panic_is_reported_as_one() {
    require_qemu();
    kernel(Kind::TestHost);
    let _boot = one_boot_at_a_time();
    let start = Instant::now();
    let err = TestHost::new("sh")
        .args([
            "-c",
            "echo 1 > /proc/sys/vm/overcommit_memory && echo 1 > /proc/sys/vm/panic_on_oom \
             && echo 'filling memory' && exec dd if=/dev/zero of=/dev/null bs=1G count=1",
        ])
        .memory_mib(512)
        .timeout(Duration::from_secs(300))
        .output()
        .expect_err("the test host's kernel must panic");
    let text = format!("{err:#}");
    eprintln!("reported after {:.1?}:\n{text}", start.elapsed());
    let failure = host_failure(&err).unwrap_or_else(|| panic!("not a HostFailure: {text}"));
    assert_eq!(failure.kind, FailureKind::KernelCrash, "{text}");
    assert_eq!(failure.exit_code(), 240);
    let crash = failure.crash.as_ref().expect("the crash");
    assert_eq!(crash.kind, CrashKind::Panic, "{text}");
    assert_eq!(crash.comm.as_deref(), Some("dd"), "{text}");
    assert!(
        text.starts_with(
            "KVM test host crashed: kernel panic — Out of memory: system-wide panic_on_oom is enabled"
        ),
        "{text}"
    );
    // The console's report and the command's last words follow.
    assert!(text.contains("\nCall Trace:"), "{text}");
    assert!(
        text.ends_with("--- the command's last output ---\nfilling memory"),
        "{text}"
    );
    assert!(failure.started.is_some(), "{text}");
    assert_eq!(failure.status, None);
}

/// Issue 16: a command that goes silent in a live test host is stopped
/// after the silence limit and reported as hung, not left to the time limit.
#[test]
fn a_silent_command_is_reported_as_hung() {
    require_qemu();
    kernel(Kind::TestHost);
    let _boot = one_boot_at_a_time();
    let start = Instant::now();
    let err = TestHost::new("sh")
        .args(["-c", "echo ready; exec sleep 1000"])
        .silence_limit(Duration::from_secs(20))
        .timeout(Duration::from_secs(300))
        .output()
        .expect_err("sleep 1000 must hit the silence limit");
    let elapsed = start.elapsed();
    let text = format!("{err:#}");
    eprintln!("reported after {elapsed:.1?}:\n{text}");
    let failure = host_failure(&err).unwrap_or_else(|| panic!("not a HostFailure: {text}"));
    assert_eq!(failure.kind, FailureKind::CommandHung, "{text}");
    assert_eq!(failure.exit_code(), 244);
    assert!(
        text.starts_with(
            "KVM test host: the command hung: no output for 20 s while the test host stayed alive"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("--- the command's last output ---\nready"),
        "{text}"
    );
    assert!(elapsed < Duration::from_secs(200), "{elapsed:?}");
}

/// Issue 16: a test host that stops altogether (qemu frozen here with
/// SIGSTOP, as qemu spinning after a double fault looks from outside) is
/// reported as the test host hanging, told apart from a silent command by
/// its missing heartbeat.
#[test]
fn a_frozen_test_host_is_reported_as_hung() {
    require_qemu();
    kernel(Kind::TestHost);
    let _boot = one_boot_at_a_time();
    // Marks this test's qemu among the machine's others (its command line).
    let mark = format!("capsa_test.freeze={}-{}", std::process::id(), start_nanos());
    let mut frozen = None;
    let err = TestHost::new("sh")
        .args(["-c", "echo ready; exec sleep 1000"])
        .append_cmdline(&mark)
        .silence_limit(Duration::from_secs(20))
        .timeout(Duration::from_secs(300))
        .run_with(&mut |stream, data| {
            if stream == Stream::Stdout && frozen.is_none() && data.starts_with(b"ready") {
                let pid = pid_with_arg(&mark).expect("this test's qemu process");
                // SAFETY: a plain kill(2) on a pid we just found.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
                frozen = Some(Instant::now());
            }
        })
        .expect_err("a frozen test host must hit the silence limit");
    let text = format!("{err:#}");
    eprintln!("{text}");
    assert!(frozen.is_some(), "the command never said ready: {text}");
    let failure = host_failure(&err).unwrap_or_else(|| panic!("not a HostFailure: {text}"));
    assert_eq!(failure.kind, FailureKind::HostHung, "{text}");
    assert_eq!(failure.exit_code(), 241);
    assert!(
        text.starts_with("KVM test host hung: no output for 20 s, and its heartbeat stopped "),
        "{text}"
    );
}

/// qemu failing, and qemu's view of a crash, without booting anything: a
/// stand-in "qemu" script that says something and ends.
#[test]
fn qemu_failures_are_told_apart_from_the_command() {
    let dir = scratch();
    let fake = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    };
    let run = |qemu: &Path| {
        TestHost::new("true")
            .qemu(qemu)
            // Any file will do: the stand-in does not boot it.
            .kernel("/bin/sh")
            .timeout(Duration::from_secs(60))
            .output()
            .expect_err("the stand-in never reports an exit status")
    };

    let err = run(&fake(
        "qemu-error",
        "echo 'qemu-system-x86_64: -device virtio-serial-device: no such bus' >&2; exit 1",
    ));
    let text = format!("{err:#}");
    assert_eq!(
        host_failure(&err).map(|f| f.kind),
        Some(FailureKind::QemuFailed),
        "{text}"
    );
    assert!(
        text.starts_with(
            "qemu failed: the KVM test host's qemu exited (exit status: 1) before the command's \
             exit status came (while booting, before `true` started)\n"
        ),
        "{text}"
    );
    assert!(text.contains("no such bus"), "{text}");

    let err = run(&fake("qemu-abort", "kill -ABRT $$"));
    let text = format!("{err:#}");
    assert!(
        text.starts_with("qemu failed: the KVM test host's qemu exited (signal: 6 (SIGABRT)"),
        "{text}"
    );

    let err = run(&fake("qemu-reset", "exit 0"));
    let text = format!("{err:#}");
    assert!(
        text.contains("the test host reset or powered off"),
        "{text}"
    );

    // A panic on the console (qemu's stdout) with panic=-1 ends qemu with
    // status 0: a kernel crash, not a qemu failure.
    let err = run(&fake(
        "qemu-panic",
        "printf 'Kernel panic - not syncing: VFS: Unable to mount root fs\\r\\n'; exit 0",
    ));
    let text = format!("{err:#}");
    let failure = host_failure(&err).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(failure.kind, FailureKind::KernelCrash, "{text}");
    assert_eq!(failure.exit_code(), 240);
    assert!(
        text.starts_with(
            "KVM test host crashed: kernel panic — VFS: Unable to mount root fs (while booting"
        ),
        "{text}"
    );
}

fn start_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The process whose command line has `arg` in one of its arguments.
fn pid_with_arg(arg: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|&b| b == 0)
            .any(|a| String::from_utf8_lossy(a).contains(arg))
            .then_some(pid)
    })
}
