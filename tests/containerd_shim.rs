//! containerd-shim-capsa-v2 through the real clients: a private containerd
//! (its own root, state dir and sockets under a temp dir) and `ctr`, in both
//! isolation modes.
//!
//! tests/containerd_shim.sh does the driving and prints one line per case;
//! container mode runs it on this machine, VM mode inside one KVM test-host
//! boot (VM mode needs real KVM, which this machine's PVM /dev/kvm is not).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capsa_kernel::test_host::{ExpectRan, TestHost};
use capsa_tests::capsa_bin;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/containerd_shim.sh");

/// The shim under test: `$CAPSA_CONTAINERD_SHIM`, or the one next to `capsa`.
fn shim_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAPSA_CONTAINERD_SHIM") {
        return PathBuf::from(p);
    }
    let bin = capsa_bin().with_file_name("containerd-shim-capsa-v2");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (cargo build --release --workspace --bins)",
        bin.display()
    );
    bin
}

fn require_containerd() {
    for tool in ["containerd", "ctr"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not installed: these tests drive the shim through the real containerd \
             (Debian package `containerd`; scripts/setup.sh installs it)"
        );
    }
}

/// case name -> (exit code, stdout, stderr) from the script's "@@" lines.
type Cases = BTreeMap<String, (String, String, String)>;

fn parse(out: &str) -> Cases {
    let mut cases = Cases::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("@@ ") else {
            continue;
        };
        let (name, rest) = rest.split_once(" code=").unwrap_or((rest, ""));
        let (code, rest) = rest.split_once(" out=").unwrap_or((rest, ""));
        let (o, e) = rest.split_once(" err=").unwrap_or((rest, ""));
        cases.insert(name.into(), (code.into(), o.into(), e.into()));
    }
    cases
}

/// Checks the cases both modes share; `ctx` is printed on failure.
fn check(mode: &str, cases: &Cases, ctx: &str) {
    let get = |name: &str| {
        cases
            .get(name)
            .unwrap_or_else(|| panic!("{mode}: case {name} missing\n{ctx}"))
    };
    let expect = |name: &str, code: &str, out: &str| {
        let (c, o, e) = get(name);
        assert!(
            c == code && o.contains(out),
            "{mode}: case {name}: code={c} out={o:?} err={e:?}; want code={code}, out containing {out:?}\n{ctx}"
        );
    };
    expect("containerd-up", "0", "yes");
    assert!(
        !get("image").1.is_empty(),
        "{mode}: no image imported\n{ctx}"
    );
    expect("run-exit", "3", "hi|");
    assert!(
        get("run-exit").2.contains("oops|"),
        "{mode}: stderr lost\n{ctx}"
    );
    expect("run-stdin", "0", "LINE ONE|LINE TWO|");
    expect("run-detached", "0", "");
    expect("exec", "4", "x|");
    expect("exec-stdin", "0", "LINE ONE|LINE TWO|");
    let (c, o, _) = get("ps");
    assert!(
        c == "0" && o.trim_end_matches('|').parse::<u32>().unwrap_or(0) >= 1,
        "{mode}: ps: {o}\n{ctx}"
    );
    expect("metrics", "0", "");
    expect("status-running", "0", "RUNNING");
    expect("kill", "0", "");
    expect("status-stopped", "0", "STOPPED");
    let (c, _, _) = get("exec-when-stopped");
    assert_ne!(
        c, "0",
        "{mode}: exec into a stopped container was accepted\n{ctx}"
    );
    // ctr 1.6 reports a task's non-zero status on delete as a warning.
    expect("task-delete", "0", "");
    assert!(
        get("task-delete").2.contains("exit code 137"),
        "{mode}: task delete\n{ctx}"
    );
    expect("container-delete", "0", "");
    expect("run-killed", "137", "");
    expect("two-running", "0", "2|");
    expect("two-exec", "0", "five|six|");
    expect("two-delete", "0", "0 0|");
    let e = &get("two-delete").2;
    assert!(
        e.contains("task c5 exit with non-zero exit code 137")
            && e.contains("task c6 exit with non-zero exit code 137"),
        "{mode}: two-delete\n{ctx}"
    );
    expect("tty", "5", "is-a-tty");
    // The pod: one kernel for both containers; in VM mode not the
    // host's, and one VM for the pod.
    let (_, kernels, _) = get("pod-kernels");
    let k: Vec<&str> = kernels.split('|').collect();
    assert!(k.len() >= 6, "{mode}: pod-kernels {kernels:?}\n{ctx}");
    assert_eq!(
        k[0], k[1],
        "{mode}: a pod's containers on two kernels\n{ctx}"
    );
    assert!(k[4].starts_with("net:["), "{mode}: {kernels:?}\n{ctx}");
    assert_eq!(
        k[4], k[5],
        "{mode}: the member is not in the pod's network namespace\n{ctx}"
    );
    if mode == "vm" {
        assert_ne!(k[0], k[2], "vm: a pod on the host's kernel\n{ctx}");
        assert_eq!(k[3], "1", "vm: the pod runs {} VMs\n{ctx}", k[3]);
    } else {
        assert_eq!(k[0], k[2], "container: {kernels:?}\n{ctx}");
    }
    expect("pod-sandbox-alive", "0", "sandbox-alive");
    expect("pod-delete", "0", "");
    expect("containers-left", "0", "0|");
    expect("leak-shims", "0", "0");
    expect("leak-mounts", "0", "0");
    expect("leak-capsa-state", "0", "0");
    expect("leak-cgroups", "0", "0");
    expect("leak-sockets", "0", "0");
    expect("done", "0", "");
}

fn script_cmd(work: &Path, mode: &str) -> String {
    format!(
        "sh {SCRIPT} {} {mode} {} {}",
        work.display(),
        shim_bin().display(),
        capsa_bin().display()
    )
}

#[test]
fn container_mode_through_containerd() {
    capsa_tests::require_root();
    require_containerd();
    // Short: containerd's socket paths must fit in sockaddr_un.
    let work = tempfile::Builder::new()
        .prefix("cshim-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let start = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script_cmd(work.path(), "container"))
        .output()
        .expect("running the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(work.path().join("containerd.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let ctx = format!(
        "script output:\n{stdout}\nstderr:\n{}\ncontainerd log (last lines):\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "container mode: {:.1} s\n{stdout}",
        start.elapsed().as_secs_f64()
    );
    check("container", &parse(&stdout), &ctx);
}

#[test]
fn vm_mode_through_containerd_in_the_test_host() {
    capsa_tests::require_root();
    require_containerd();
    // In the test host only /run is a real writable tmpfs.
    let cmd = format!(
        "mkdir -p /run/cs && {}",
        script_cmd(Path::new("/run/cs"), "vm")
    );
    let start = Instant::now();
    let out = TestHost::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{cmd}; echo '#### containerd log'; tail -40 /run/cs/containerd.log"
        ))
        .timeout(Duration::from_secs(900))
        .output()
        .expect_ran();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ctx = format!(
        "output:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "vm mode (one test-host boot): {:.1} s\n{stdout}",
        start.elapsed().as_secs_f64()
    );
    check("vm", &parse(&stdout), &ctx);
}
