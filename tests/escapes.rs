//! Escape regressions (#15): the known ways out of a container, each tried
//! from inside one, each refused — and the host checked afterwards. VM mode
//! runs the same images inside its guest (tests/parity.sh: `device-nodes`).

use capsa_tests::{code, stderr, stdout, Env};

/// The first disk of this host, as "MAJOR:MINOR" (from /proc/partitions).
fn host_disk() -> String {
    let parts = std::fs::read_to_string("/proc/partitions").unwrap();
    parts
        .lines()
        .skip(2)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| format!("{}:{}", f[0], f[1]))
        })
        .expect("no disk in /proc/partitions")
}

/// Device nodes an image carries (the host's memory, its kernel log, its
/// disk) are files the container cannot open: its root is mounted nodev,
/// the device cgroup allows only the standard /dev set (cgroup v1), and
/// mknod is refused outright.
#[test]
fn device_nodes_in_an_image_open_nothing() {
    let disk = format!("dev:b:{}", host_disk());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("devs.tar");
    capsa_tests::demo_with_layer(
        &[
            ("mem", Some("dev:c:1:1")),
            ("kmsg", Some("dev:c:1:11")),
            ("disk", Some(disk.as_str())),
        ],
        "devs:latest",
        &archive,
    );
    let env = Env::with_demo();
    env.ok(&["load", "-i", archive.to_str().unwrap()]);
    let script = "for d in /mem /kmsg /disk; do head -c 1 $d > /dev/null 2>&1 && echo \"$d opened\" || echo \"$d refused\"; done
        echo x > /mem 2>/dev/null && echo mem written
        mknod /made c 1 1 2>/dev/null && echo mknod worked || echo mknod refused";
    let out = env.ok(&["run", "--rm", "devs", "sh", "-c", script]);
    assert_eq!(
        out, "/mem refused\n/kmsg refused\n/disk refused\nmknod refused\n",
        "a device node reached the host"
    );
    // The root is nodev: on cgroup v2, where libcontainer enforces no
    // device allow-list, that is what refuses them (parity case
    // device-nodes runs this on v2, in both modes).
    let root = env.ok(&[
        "run",
        "--rm",
        "devs",
        "sh",
        "-c",
        "grep ' / / ' /proc/self/mountinfo",
    ]);
    assert!(
        root.split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "nodev")),
        "{root}"
    );
    // With every capability the device cgroup still stands.
    let out = env.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "ALL",
        "devs",
        "sh",
        "-c",
        script,
    ]);
    assert!(
        out.starts_with("/mem refused\n/kmsg refused\n/disk refused\n"),
        "{out}"
    );
    env.assert_no_leaks(&[]);
}

/// Mounting, unmounting, new mount namespaces and pivot_root are refused:
/// the container cannot uncover what its mounts hide or reach the host's.
#[test]
fn mounts_from_inside_are_refused() {
    let env = Env::with_demo();
    for cmd in [
        "mkdir -p /m && mount -t tmpfs t /m",
        "mkdir -p /m && mount -t proc proc /m",
        "mkdir -p /m && mount --bind /proc /m",
        "umount /proc/kcore",
        "umount -l /sys",
        "mount -o remount,rw /sys",
        "mount -o remount,rw /proc/sys",
        "unshare -m true",
        "unshare -U -r true",
        "mkdir -p /n && pivot_root / /n",
    ] {
        let out = env.run(&["run", "--rm", "demo", "sh", "-c", cmd]);
        assert_ne!(code(&out), 0, "`{cmd}` worked: {}", stdout(&out));
    }
    env.assert_no_leaks(&[]);
}

/// The kernel knobs escapes have used (core_pattern runs a program as host
/// root on a crash; sysrq-trigger; the cgroup v1 release_agent, CVE-2022-0492)
/// are read-only in the container, and the host's values do not change.
#[test]
fn kernel_knobs_in_proc_and_sys_are_read_only() {
    let env = Env::with_demo();
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    for (path, value) in [
        ("/proc/sys/kernel/core_pattern", "|/tmp/escape"),
        ("/proc/sys/kernel/modprobe", "/tmp/escape"),
        ("/proc/sysrq-trigger", "h"),
        ("/proc/sys/vm/drop_caches", "3"),
        ("/sys/kernel/mm/transparent_hugepage/enabled", "never"),
        ("/sys/fs/cgroup/release_agent", "/tmp/escape"),
        ("/sys/fs/cgroup/notify_on_release", "1"),
        ("/sys/fs/cgroup/cgroup.subtree_control", "+pids"),
    ] {
        let out = env.run(&[
            "run",
            "--rm",
            "demo",
            "sh",
            "-c",
            &format!("echo '{value}' > {path}"),
        ]);
        assert_ne!(code(&out), 0, "{path} was writable");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    env.assert_no_leaks(&[]);
}

/// The container's root cannot raise its own limits through its view of
/// the cgroup file system (youki mounts cgroup v1 read-write whatever the
/// spec says; capsa remounts it read-only, as runc mounts it), in the
/// container's process and in an exec'd one; `--privileged` keeps docker's
/// read-write view.
#[test]
fn the_container_cannot_raise_its_own_limits() {
    let env = Env::with_demo();
    let script = "n=0; for f in pids/pids.max pids.max memory/memory.limit_in_bytes memory.max; do
          f=/sys/fs/cgroup/$f; [ -e $f ] || continue; n=$((n+1))
          echo max > $f 2>/dev/null || echo -1 > $f 2>/dev/null && echo \"$f raised\"
        done; echo \"$n tried\"; echo x > /sys/fs/cgroup/release_agent 2>/dev/null && echo agent written; cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null; exit 0";
    let limits = ["--pids-limit", "50", "--memory", "64m"];
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&limits);
    args.extend_from_slice(&["demo", "sh", "-c", script]);
    let out = env.ok(&args);
    assert!(
        !out.contains("raised") && !out.contains("agent written"),
        "{out}"
    );
    assert!(out.contains("2 tried\n50\n"), "{out}");
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(&limits);
    args.extend_from_slice(&["demo", "sleep", "300"]);
    let id = env.ok(&args);
    let out = env.ok(&["exec", id.trim(), "sh", "-c", script]);
    assert!(out.contains("2 tried\n50\n"), "exec: {out}");
    env.ok(&["rm", "-f", id.trim()]);
    let out = env.ok(&[
        "run",
        "--rm",
        "--privileged",
        "demo",
        "sh",
        "-c",
        "grep -c ' /sys/fs/cgroup/[a-z]* cgroup rw' /proc/mounts",
    ]);
    assert_ne!(out.trim(), "0", "--privileged: {out}");
    env.assert_no_leaks(&[]);
}

/// No file descriptor or directory of the host reaches the container
/// (CVE-2024-21626 class): its process holds only its standard streams,
/// and a working directory through /proc/self/fd is refused, for `run`
/// and for `exec` alike.
#[test]
fn no_host_descriptor_or_directory_reaches_the_container() {
    let env = Env::with_demo();
    // What the container's first process holds: stdin, stdout, stderr.
    let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    let id = id.trim();
    let fds = env.ok(&["exec", id, "ls", "/proc/1/fd"]);
    assert_eq!(
        fds, "0\n1\n2\n",
        "the container's process holds more: {fds}"
    );
    for n in 3..8 {
        let cwd = format!("/proc/self/fd/{n}");
        let out = env.run(&["run", "--rm", "-w", &cwd, "demo", "ls", "-a"]);
        assert_ne!(code(&out), 0, "run -w {cwd} worked: {}", stdout(&out));
        let said = "lead outside the container";
        assert!(stderr(&out).contains(said), "{}", stderr(&out));
        let out = env.run(&["exec", "-w", &cwd, id, "ls", "-a"]);
        assert_ne!(code(&out), 0, "exec -w {cwd} worked: {}", stdout(&out));
        assert!(stderr(&out).contains(said), "{}", stderr(&out));
    }
    env.ok(&["rm", "-f", id]);
    assert_eq!(env.container_ids().len(), 0);
    env.assert_no_leaks(&[]);
}

/// `run -i` and `exec` hand the container pipes, never the caller's own
/// standard streams: through /proc/self/fd a process can reopen what it
/// holds with other rights, so a file fed in as stdin could be written and
/// the user's terminal typed into (TIOCSTI), as docker and podman avoid by
/// relaying the streams.
#[test]
fn the_callers_own_streams_never_reach_the_container() {
    let env = Env::with_demo();
    let dir = tempfile::tempdir().unwrap();
    let fed = dir.path().join("fed");
    std::fs::write(&fed, "original\n").unwrap();
    // Reopen stdin for writing, say what each stream is, then drain stdin.
    let script = "echo changed 2>/dev/null > /proc/self/fd/0; \
        for n in 0 1 2; do echo \"$n $(readlink /proc/self/fd/$n)\"; done; cat > /dev/null";
    let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    let id = id.trim();
    for (how, args) in [
        (
            "run -i",
            vec!["run", "--rm", "-i", "demo", "sh", "-c", script],
        ),
        ("exec -i", vec!["exec", "-i", id, "sh", "-c", script]),
        ("exec", vec!["exec", id, "sh", "-c", script]),
    ] {
        let out_file = dir.path().join("out");
        let status = env
            .cmd(&args)
            .stdin(std::fs::File::open(&fed).unwrap())
            .stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .status()
            .unwrap();
        let out = std::fs::read_to_string(&out_file).unwrap();
        assert!(status.success(), "{how}: {status} {out}");
        assert_eq!(
            std::fs::read_to_string(&fed).unwrap(),
            "original\n",
            "{how}: the container wrote the file fed in as its stdin"
        );
        for line in out.lines() {
            let (n, target) = line.split_once(' ').unwrap();
            // Without -i, stdin is the null device, as docker's.
            let relayed = target.starts_with("pipe:") || (n == "0" && target == "/dev/null");
            assert!(relayed, "{how}: fd {n} is the caller's {target}");
        }
        assert_eq!(out.lines().count(), 3, "{how}: {out}");
    }
    env.ok(&["rm", "-f", id]);
    env.assert_no_leaks(&[]);
}

/// Symlinks an image leaves where a volume goes (absolute, climbing out)
/// resolve inside the container's root: the volume is mounted there, never
/// on the host's path (CVE-2021-30465 class, without the race).
#[test]
fn a_volume_through_an_image_symlink_stays_in_the_container() {
    let probe = "/etc/capsa-escape-probe";
    assert!(
        !std::path::Path::new(probe).exists(),
        "{probe} exists before the test"
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("links.tar");
    capsa_tests::demo_with_layer(
        &[("abs", Some("/")), ("up", Some("../../../../../../.."))],
        "links:latest",
        &archive,
    );
    let env = Env::with_demo();
    env.ok(&["load", "-i", archive.to_str().unwrap()]);
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("f"), "host-volume\n").unwrap();
    for through in ["/abs/etc/capsa-escape-probe", "/up/etc/capsa-escape-probe"] {
        let v = format!("{}:{through}", vol.path().display());
        let out = env.run(&[
            "run",
            "--rm",
            "-v",
            &v,
            "links",
            "cat",
            "/etc/capsa-escape-probe/f",
        ]);
        assert!(
            !std::path::Path::new(probe).exists(),
            "-v …:{through} made {probe} on the host"
        );
        // Mounted inside (the container sees it at the resolved path), or
        // refused: either way nothing on the host.
        assert!(
            stdout(&out) == "host-volume\n" || code(&out) != 0,
            "{through}: {} {}",
            stdout(&out),
            stderr(&out)
        );
    }
    env.assert_no_leaks(&[]);
}

/// The runtime's own binary cannot be overwritten from inside a container
/// (CVE-2019-5736): an image's command `/proc/self/exe` (or a script
/// starting `#!/proc/self/exe`) makes the kernel run the runtime's binary
/// in the container, where another of its processes opens it through
/// /proc/PID/exe and writes it once nothing runs it, so that root on the
/// host runs the attacker's code next. The runc command line is where
/// nothing of capsa outlives the call (a docker-style container's monitor
/// runs the binary, and the kernel then refuses the write with ETXTBSY
/// anyway), so the attack goes through it, against a copy of capsa.
#[test]
fn the_runtime_binary_cannot_be_overwritten_from_inside() {
    use std::process::{Command, Stdio};
    let env = Env::with_demo();
    let dir = tempfile::Builder::new()
        .prefix("capsa-exe-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let capsa = dir.path().join("capsa");
    std::fs::copy(capsa_tests::capsa_bin(), &capsa).unwrap();
    let original = std::fs::read(&capsa).unwrap();
    // Output to a file: a container's process inherits it, as from runc.
    let log = dir.path().join("capsa.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let copy = |args: &[&str]| {
        let mut c = Command::new(&capsa);
        c.arg("--root").arg(env.path()).args(args);
        let out = std::fs::File::create(&log).unwrap();
        c.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        c
    };
    let ok = |args: &[&str]| {
        let st = copy(args).status().unwrap();
        assert!(st.success(), "capsa {args:?}: {}", log_text());
    };

    // A bundle of the demo image plus what the (dynamically linked) capsa
    // binary needs to start: the attacker's image would carry a libc.
    let bundle = dir.path().join("bundle");
    capsa_tests::demo_bundle(&env, &bundle);
    let ldd = Command::new("ldd").arg(&capsa).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = bundle.join("rootfs").join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let b = bundle.to_str().unwrap();
    ok(&["spec", "--bundle", b]);
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "300"]);
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let id = format!("exe{}", std::process::id());
    ok(&["create", "--bundle", b, &id]);
    ok(&["start", &id]);

    // capsa's binary, run in the container as `/proc/self/exe`, waits
    // reading its stdin (a pipe held here); capsa's own command returns.
    let mut held = copy(&[
        "exec",
        "--detach",
        &id,
        "/proc/self/exe",
        "load",
        "-i",
        "/dev/stdin",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let stdin = held.stdin.take();
    assert!(
        held.wait().unwrap().success(),
        "exec --detach: {}",
        log_text()
    );
    // Another process of the container opens it through /proc/PID/exe,
    // waits until it has ended, then writes through that descriptor.
    let attack = r#"
        for p in /proc/[0-9]*; do
          case $(readlink $p/exe) in /bin/busybox|"") continue ;; esac
          exec 3< $p/exe && echo grabbed > /result
          while [ -e $p ]; do sleep 0.05; done
          printf PWNED 2>> /result 1<> /proc/self/fd/3 && echo written >> /result
          echo done >> /result
          exit
        done
        echo "no process runs capsa's binary" > /result; echo done >> /result"#;
    ok(&["exec", "--detach", &id, "sh", "-c", attack]);
    // (The attack's own output is its file; the log is the binary's.)
    let result = bundle.join("rootfs/result");
    let read = || std::fs::read_to_string(&result).unwrap_or_default();
    let wait_for = |what: &str| {
        for _ in 0..400 {
            if read().contains(what) || read().contains("done") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the attack never said {what:?}: {}", read());
    };
    wait_for("grabbed");
    drop(stdin); // the binary in the container reads EOF and ends
    wait_for("done");
    let said = read();
    assert!(said.starts_with("grabbed"), "{said}\n{}", log_text());
    assert!(
        std::fs::read(&capsa).unwrap() == original,
        "the container wrote the runtime's binary: {said}"
    );
    assert!(!said.contains("written"), "{said}");
    assert!(said.contains("Read-only file system"), "{said}");

    ok(&["delete", "--force", &id]);
    assert_eq!(env.container_ids().len(), 0);
    env.assert_no_leaks(&[id]);
}

/// The container's monitor (capsa's process that holds its streams and
/// saves its exit) is out of the container's reach: not among the
/// processes it sees, and a signal to its host PID reaches nothing (the
/// container's own PID namespace; no CAP_SYS_PTRACE or CAP_KILL beyond it).
#[test]
fn the_monitor_is_out_of_the_containers_reach() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    let id = id.trim();
    let monitors: Vec<String> = capsa_tests::monitor_processes(id)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert!(!monitors.is_empty(), "no monitor of {id} found");
    let seen = env.ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
    ]);
    assert!(!seen.contains("__monitor"), "{seen}");
    for pid in &monitors {
        let out = env.run(&["exec", id, "kill", "-0", pid]);
        assert_ne!(code(&out), 0, "the container signalled the monitor {pid}");
        assert!(stderr(&out).contains("No such process"), "{}", stderr(&out));
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    env.ok(&["rm", "-f", id]);
    env.assert_no_leaks(&[]);
}
