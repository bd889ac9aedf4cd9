//! Inputs that used to leave the user stuck: each now either works as it
//! does with docker, or fails with exit code 125 and one line naming the
//! path or flag it is about, leaving nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use capsa_tests::{files_under, stderr, stdout, Env};

/// Exit code 125, one line starting "capsa: error: " holding each of `needles`,
/// no escape codes, no new file under the root, no container, no leak.
fn assert_one_clear_line(
    env: &Env,
    out: &Output,
    before: &BTreeSet<PathBuf>,
    needles: &[&str],
    what: &str,
) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(125), "{what}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("capsa: error: "),
        "{what}: not one clear line: {err:?}"
    );
    assert!(!err.contains('\x1b'), "{what}: escape codes: {err:?}");
    for n in needles {
        assert!(err.contains(n), "{what}: {n:?} missing from {err:?}");
    }
    let new: Vec<_> = files_under(env.path())
        .difference(before)
        .cloned()
        .collect();
    assert!(new.is_empty(), "{what}: left behind {new:#?}");
    assert!(containers(env).is_empty(), "{what}: a container is left");
    env.assert_no_leaks(&[]);
}

/// The containers of `env` (its directory's entries but dot files).
fn containers(env: &Env) -> Vec<String> {
    let mut ids = env.container_ids();
    ids.retain(|id| !id.starts_with('.'));
    ids
}

/// Runs `capsa run --rm ARGS` and asserts success; returns stdout.
fn run_ok(env: &Env, args: &[&str]) -> String {
    let mut full = vec!["run", "--rm"];
    full.extend_from_slice(args);
    let out = env.run(&full);
    assert!(
        out.status.success(),
        "capsa {full:?} failed ({:?}): {}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    assert!(containers(env).is_empty(), "{full:?}: container left");
    stdout(&out)
}

/// The demo image with one more layer on top holding `entries` (see
/// [`capsa_tests::demo_with_layer`]), loaded as `demo` into a new env.
fn demo_with_layer(entries: &[(&str, Option<&str>)]) -> Env {
    let archive = tempfile::NamedTempFile::new().unwrap();
    capsa_tests::demo_with_layer(entries, "demo:latest", archive.path());
    let env = Env::new();
    env.ok(&["load", "-i", archive.path().to_str().unwrap()]);
    env
}

/// A path on the host that no test has made, for links that point there.
fn host_path(tag: &str) -> PathBuf {
    let p = PathBuf::from(format!(
        "/var/tmp/capsa-messages-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// Item 1: `-w DIR` that the image lacks is created (root-owned, 0755) in
/// the container's root filesystem, as docker and runc do; a symlink in
/// the path is resolved inside the root filesystem, never onto the host;
/// a path through a regular file is refused in one line naming it.
#[test]
fn a_missing_workdir_is_created_inside_the_rootfs() {
    let outside = host_path("workdir");
    let outside_s = outside.display().to_string();
    // /escape -> the host path, /up -> ../../../.. of it.
    let env = demo_with_layer(&[
        ("escape", Some(&outside_s)),
        ("up", Some("../../../../../var/tmp")),
    ]);

    let out = run_ok(
        &env,
        &[
            "-w",
            "/nonexistent/deeper",
            "demo",
            "sh",
            "-c",
            "pwd; stat -c %u:%g:%a .",
        ],
    );
    assert_eq!(out, "/nonexistent/deeper\n0:0:755\n");

    // With a read-only root filesystem too (docker creates it before).
    let out = run_ok(&env, &["--read-only", "-w", "/made", "demo", "pwd"]);
    assert_eq!(out, "/made\n");

    // Through an absolute link to nowhere: the directory is made where the
    // link points inside the container (where the process then is), and
    // not on the host.
    let out = run_ok(
        &env,
        &[
            "-w",
            "/escape/sub",
            "demo",
            "sh",
            "-c",
            "pwd; ls -d /escape/sub",
        ],
    );
    assert_eq!(out, format!("{outside_s}/sub\n/escape/sub\n"));
    assert!(!outside.exists(), "created on the host: {outside_s}");
    let out = run_ok(&env, &["-w", "/up/capsa-up-test", "demo", "pwd"]);
    assert_eq!(out, "/var/tmp/capsa-up-test\n");
    assert!(!Path::new("/var/tmp/capsa-up-test").exists());

    let before = files_under(env.path());
    let out = env.run(&["run", "--rm", "-w", "/etc/passwd/sub", "demo", "true"]);
    assert_one_clear_line(
        &env,
        &out,
        &before,
        &["/etc/passwd", "-w"],
        "-w through a file",
    );
    let out = env.run(&["run", "--rm", "-w", "/etc/passwd", "demo", "true"]);
    assert_one_clear_line(&env, &out, &before, &["/etc/passwd"], "-w on a file");
}

/// Item 2: an image whose /etc/hosts, /etc/hostname or /etc/resolv.conf is
/// a symlink (absolute or relative, dangling or not) runs, with capsa's
/// files where the links point inside the container; nothing is written
/// or mounted where the links would point on the host.
#[test]
fn etc_files_that_are_symlinks_are_followed_inside_the_rootfs() {
    let outside = host_path("hostname");
    let outside_s = outside.display().to_string();
    let env = demo_with_layer(&[
        ("run", None),
        // Absolute, dangling (as systemd-resolved images have it).
        (
            "etc/resolv.conf",
            Some("/run/systemd/resolve/stub-resolv.conf"),
        ),
        // Relative, dangling, leaving the root with too many "..".
        ("etc/hosts", Some("../../../../run/capsa-hosts")),
        // Absolute, to a path that exists on the host: /var/tmp.
        ("etc/hostname", Some(&outside_s)),
    ]);
    let show = "cat /etc/hostname /etc/hosts; echo ---; cat /run/systemd/resolve/stub-resolv.conf \
                | head -1 | wc -l; cat /run/capsa-hosts | grep -c localhost";
    let none = ["--network", "none", "-h", "box", "demo", "sh", "-c", show];
    let out = run_ok(&env, &none);
    assert!(
        out.starts_with("box\n127.0.0.1\tlocalhost\n") && out.contains("127.0.1.1\tbox\n"),
        "{out}"
    );
    // Without a network no resolv.conf is mounted: the image's link stays.
    assert!(out.ends_with("---\n0\n2\n"), "{out}");
    // On the default network the resolver file lands where the link points,
    // inside the container's root.
    let out = run_ok(&env, &["-h", "box", "demo", "sh", "-c", show]);
    assert!(
        out.contains("\tbox\n") && out.ends_with("---\n1\n2\n"),
        "{out}"
    );

    // With the host's network, the host's resolv.conf is mounted too.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let out = run_ok(
        &env,
        &[
            "--network",
            "host",
            "-h",
            "box",
            "demo",
            "cat",
            "/etc/resolv.conf",
            "/etc/hostname",
        ],
    );
    assert_eq!(out, format!("{host_resolv}box\n"));

    assert!(!outside.exists(), "written on the host: {outside_s}");
    assert!(!Path::new("/run/capsa-hosts").exists());
    env.assert_no_leaks(&[]);
}

/// Item 3: a full disk under the state root is reported with the path
/// that could not be written and what to do, for `load` and for `run`,
/// and leaves no half-written image or container.
#[test]
fn a_full_disk_names_the_path() {
    let env = Env::new();
    let root = env.path().to_path_buf();
    let mount = |size: &str| {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", root.display());
    };
    let umount = || {
        let _ = std::process::Command::new("umount").arg(&root).status();
    };
    // The demo image does not fit into 1 MiB.
    mount("1m");
    let result = std::panic::catch_unwind(|| {
        let before = files_under(&root);
        let out = env.run(&["load", "--demo"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains(&root.display().to_string()), "no path: {err}");
        assert!(err.contains("free"), "no advice: {err}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
        let new: Vec<_> = files_under(&root).difference(&before).cloned().collect();
        assert!(new.is_empty(), "left behind {new:#?}");
        assert!(env.ok(&["images", "-q"]).trim().is_empty());
    });
    umount();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // Room for the image, then filled up: `run` cannot write its files.
    mount("64m");
    let result = std::panic::catch_unwind(|| {
        env.ok(&["load", "--demo"]);
        let filler = root.join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status();
        let out = env.run(&["run", "--rm", "demo", "true"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains(&root.display().to_string()), "no path: {err}");
        assert!(err.contains("free"), "no advice: {err}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(containers(&env).is_empty(), "container left");
        std::fs::remove_file(&filler).unwrap();
        // With room again, it runs.
        assert_eq!(run_ok(&env, &["demo", "echo", "ok"]), "ok\n");
    });
    umount();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    env.assert_no_leaks(&[]);
}

/// Item 4: a `--kernel` that is no kernel image is the one error, before
/// anything else (the PVM check, the VMM), in one line without colour.
#[test]
fn a_kernel_that_is_no_kernel_is_named() {
    let env = Env::with_demo();
    let before = files_under(env.path());
    let out = env.run(&[
        "run",
        "--rm",
        "--isolation",
        "vm",
        "--kernel",
        "/etc/passwd",
        "demo",
        "true",
    ]);
    assert_one_clear_line(
        &env,
        &out,
        &before,
        &["--kernel /etc/passwd", "not a kernel image", "vmlinux"],
        "--kernel /etc/passwd",
    );
    assert!(!stderr(&out).contains("PVM"), "{}", stderr(&out));
    let out = env.run(&[
        "run",
        "--isolation",
        "vm",
        "--kernel",
        "/no/such/vmlinux",
        "demo",
        "true",
    ]);
    assert_one_clear_line(&env, &out, &before, &["/no/such/vmlinux"], "missing kernel");
}

/// Flags VM mode cannot honour are refused at once, before the host check
/// and before any disk is built, with one line naming the flag.
#[test]
fn flags_vm_mode_cannot_honour_are_refused_first() {
    let env = Env::with_demo();
    let before = files_under(env.path());
    let host = host_path("vm-rw");
    std::fs::create_dir_all(&host).unwrap();
    // A single file cannot be shared read-write (directories can).
    let file = host.join("config.yaml");
    std::fs::write(&file, "a: 1\n").unwrap();
    let rw = format!("{}:/data", file.display());
    for (args, needles, what) in [
        (
            vec!["--network", "host"],
            vec!["--network host", "VM-mode"],
            "--network host",
        ),
        (
            vec!["-v", rw.as_str()],
            vec!["single files read-only", ":/data:ro"],
            "-v FILE:CTR (read-write)",
        ),
    ] {
        let mut full = vec!["run", "--rm", "--isolation", "vm"];
        full.extend_from_slice(&args);
        full.extend_from_slice(&["demo", "true"]);
        let out = env.run(&full);
        assert_one_clear_line(&env, &out, &before, &needles, what);
        assert!(!stderr(&out).contains("PVM"), "{what}: {}", stderr(&out));
    }
    let _ = std::fs::remove_dir_all(&host);
}

/// The container's pids limit as its own cgroup shows it.
const PIDS_MAX: &str =
    "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max";

/// Item 5: `--pids-limit -1` and `0` mean no limit, as with docker; no
/// flag means podman's default limit.
#[test]
fn pids_limit_minus_one_and_zero_mean_unlimited() {
    let env = Env::with_demo();
    for v in ["-1", "0"] {
        let out = run_ok(&env, &["--pids-limit", v, "demo", "sh", "-c", PIDS_MAX]);
        assert_eq!(out, "max\n", "--pids-limit {v}");
    }
    let out = run_ok(&env, &["--pids-limit=-1", "demo", "sh", "-c", PIDS_MAX]);
    assert_eq!(out, "max\n");
    let out = run_ok(&env, &["--pids-limit", "42", "demo", "sh", "-c", PIDS_MAX]);
    assert_eq!(out, "42\n");
    // Not given: podman's default, so one fork bomb cannot starve the host.
    let out = run_ok(&env, &["demo", "sh", "-c", PIDS_MAX]);
    assert_eq!(out, "2048\n");
    let before = files_under(env.path());
    let out = env.run(&["run", "--rm", "--pids-limit", "-2", "demo", "true"]);
    assert_one_clear_line(
        &env,
        &out,
        &before,
        &["--pids-limit", "-2"],
        "--pids-limit -2",
    );
}

/// Item 6: `--memory` takes exactly docker's sizes and refuses the rest
/// (an exponent, a sign, an overflow) naming the flag; `--cpus` refuses
/// what is not a number of CPUs this host has.
#[test]
fn memory_and_cpus_values_are_checked() {
    let env = Env::with_demo();
    let before = files_under(env.path());
    for bad in [
        "1e30",
        "-1",
        "nan",
        "12x",
        "1.5.5g",
        "8192p",
        "99999999999999999999",
    ] {
        let out = env.run(&["run", "--rm", &format!("--memory={bad}"), "demo", "true"]);
        assert_one_clear_line(&env, &out, &before, &["--memory", bad], bad);
    }
    let out = env.run(&["run", "--rm", "--memory", "1k", "demo", "true"]);
    assert_one_clear_line(&env, &out, &before, &["--memory", "6m"], "--memory 1k");

    let limit = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    assert_eq!(
        run_ok(&env, &["--memory", "64m", "demo", "sh", "-c", limit]),
        "67108864\n"
    );
    assert_eq!(
        run_ok(&env, &["--memory", "0.5g", "demo", "sh", "-c", limit]),
        "536870912\n"
    );

    // The runs above logged their events (events.jsonl): what a refused
    // run must not add is counted from here.
    let before = files_under(env.path());
    let cpus = std::thread::available_parallelism().unwrap().get();
    let too_many = (cpus + 1).to_string();
    for bad in ["-1", "nan", "inf", "1e3", "0.001", "abc", too_many.as_str()] {
        let out = env.run(&["run", "--rm", "--cpus", bad, "demo", "true"]);
        assert_one_clear_line(&env, &out, &before, &["--cpus", bad], bad);
    }
    let quota = "cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us 2>/dev/null \
                 || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max";
    assert_eq!(
        run_ok(&env, &["--cpus", "0.5", "demo", "sh", "-c", quota]),
        "50000\n"
    );
    assert_eq!(
        run_ok(&env, &["--cpus", "0", "demo", "sh", "-c", quota]),
        "-1\n"
    );
}

/// A user ID of 4294967295 is (uid_t)-1: the kernel's "no change", which
/// would leave the process root. `run -u` and `exec -u` refuse it.
#[test]
fn user_id_minus_one_is_refused() {
    let env = Env::with_demo();
    for user in ["4294967295", "4294967295:4294967295", "0:4294967295"] {
        let out = env.run(&["run", "--rm", "-u", user, "demo", "id"]);
        assert_eq!(out.status.code(), Some(125), "-u {user}: {}", stdout(&out));
        assert!(stderr(&out).contains("4294967295"), "{}", stderr(&out));
    }
    let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    let id = id.trim();
    let out = env.run(&["exec", "-u", "4294967295", id, "id"]);
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    env.ok(&["rm", "-f", id]);
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[id.to_string()]);
}
