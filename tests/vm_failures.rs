//! VM mode fails clearly and cleanly: an agent that never answers, a guest
//! kernel panic, capsa-vmm killed mid-run and a share's virtiofsd killed
//! mid-run each end with exit 125 or 137 and a reason, and leave no
//! container, VMM, daemon, mount or socket behind. One KVM test-host boot
//! runs them all (tests/vm_failures.sh).

use std::process::Command;

use capsa_kernel::test_host::{ExpectRan, TestHost};
use capsa_tests::capsa_bin;

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("@@ {name}"))
        .unwrap_or_else(|| panic!("no section {name} in:\n{out}"));
    let rest = &out[start + 3..];
    &rest[..rest.find("@@ ").unwrap_or(rest.len())]
}

#[test]
fn timeouts_panics_and_killed_vmms_and_daemons_are_reported_and_cleaned_up() {
    capsa_tests::require_root();
    // PID 1 that exits at once: the guest kernel panics ("Attempted to kill init").
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = dir.path().join("exit0.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let exit0 = dir.path().join("exit0");
    let cc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&exit0)
        .arg(&src)
        .status()
        .expect("gcc is needed to build the panicking init (build-essential, scripts/setup.sh)");
    assert!(cc.success(), "gcc -static failed (is libc6-dev installed?)");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/vm_failures.sh");
    let out = TestHost::new("/bin/sh")
        .arg(script)
        .arg(capsa_bin())
        .arg(&exit0)
        .output()
        .expect_ran();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // stdout and stderr arrive separately; the sections are in stdout and
    // the messages in stderr, so check messages on the whole text.
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();

    assert!(
        section(&stdout, "agent-timeout").contains("rc=125"),
        "{text}"
    );
    assert!(
        text.contains("the guest agent did not answer within 5s"),
        "{text}"
    );

    assert!(
        section(&stdout, "kernel-panic").contains("rc=125"),
        "{text}"
    );
    assert!(text.contains("panicked"), "{text}");

    let killed = section(&stdout, "vmm-killed");
    // The VMM runs jailed (vmm/src/jail.rs): a uid and gid of its own, no
    // capability in any set, no_new_privs, seccomp, PID 1 of a namespace
    // of its own, an empty read-only root, no namespace shared with the
    // host; and the VM still serves exec through it.
    let empty = "0000000000000000";
    assert!(
        killed.contains(&format!(
            "jail uid=own gid=own caps={empty},{empty},{empty},{empty} nnp=1 seccomp=2 nspid=1 \
             root=0 mounts=1:/ ro,nosuid,nodev,noexec"
        )),
        "{text}"
    );
    assert!(!killed.contains("jail shares"), "{text}");
    assert!(killed.contains("exec in the jailed VM: ok"), "{text}");
    // In a cgroup of its own, bounded: the guest's memory and some more,
    // a few tasks.
    assert!(
        killed.contains("vmm cgroup=/capsa/ID memory=guest+256M pids=128"),
        "{text}"
    );
    assert!(killed.contains("rc=137"), "{text}");
    assert!(killed.contains("killed with SIGKILL"), "{text}");

    // A share's daemon killed mid-run ends the VM with one error that
    // names it, instead of a guest hung on its files.
    let fs = section(&stdout, "virtiofsd-killed");
    // The daemon serving the share is confined: seccomp on, the share as
    // its whole root (volume 0 bound in it), a network namespace of its
    // own, a user namespace of its own (so no capability over the host)
    // mapping every id to itself (so the guest's root writes as host root,
    // as in container mode), in the VM's cgroup.
    assert!(
        fs.contains(
            "daemon Seccomp:2 root=0, vol0=by-root,only-this, net=own userns=own:0:0:4294967295 cgroup=/capsa/ID"
        ),
        "{text}"
    );
    assert!(fs.contains("by-root owner=0:0"), "{text}");
    assert!(fs.contains("rc=125"), "{text}");
    assert!(
        fs.contains("virtio-fs capsa-volumes: its virtiofsd closed the connection"),
        "{text}"
    );

    // With --userns=auto the daemon is the container's root on the host.
    let uns = section(&stdout, "virtiofsd-userns");
    assert!(
        uns.contains("daemon uid=capsa-base userns=own Seccomp:2"),
        "{text}"
    );
    assert!(uns.contains("written as capsa-base"), "{text}");
    assert!(uns.contains("Permission denied"), "{text}");

    assert!(
        stdout.contains(
            "@@ leftovers containers=0 vmms=0 virtiofsd=0 mounts=0 sockets=0 jails=0 cgroups=0"
        ),
        "{text}"
    );
}
