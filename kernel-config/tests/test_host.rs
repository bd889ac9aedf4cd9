//! Boots capsa's kernels for real: the KVM test host under qemu TCG with an
//! emulated SVM CPU, and inside it the guest kernel under KVM.
//!
//! Prerequisites (qemu-system-x86, linux-source-6.1, busybox-static; see
//! scripts/setup.sh) are required: if one is missing these tests fail with a
//! message saying what to install. The first run builds both kernels (minutes).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capsa_kernel::test_host::{TestHost, QEMU};
use capsa_kernel::{initramfs, kernel_path, Kind};

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
        .expect("running qemu inside the KVM test host");
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
        .expect("running a command in the KVM test host");
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
    let start = Instant::now();
    let err = TestHost::new("sleep")
        .arg("1000")
        .timeout(Duration::from_secs(5))
        .output()
        .expect_err("sleep 1000 must hit the 5 s limit");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
}
