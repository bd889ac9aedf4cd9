//! Container mode end to end: real namespace containers from the demo
//! image, driven through the `capsa` command line as a user would.

use capsa_tests::{code, stderr, stdout, Env};
use std::collections::BTreeMap;

#[test]
fn run_prints_output_and_leaves_nothing_behind() {
    let env = Env::with_demo();
    let out = env.run(&["run", "--rm", "demo", "echo", "hello", "world"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello world\n");
    assert!(env.container_ids().is_empty(), "--rm left a container");
    env.assert_no_leaks(&[]);
}

#[test]
fn exit_codes_follow_docker() {
    let env = Env::with_demo();
    for (cmd, want) in [("exit 0", 0), ("exit 1", 1), ("exit 7", 7)] {
        let out = env.run(&["run", "--rm", "demo", "sh", "-c", cmd]);
        assert_eq!(code(&out), want, "{cmd}: {}", stderr(&out));
    }
    let out = env.run(&["run", "--rm", "demo", "no-such-command"]);
    assert_eq!(code(&out), 127, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-command") && stderr(&out).contains("not found"),
        "unclear message: {}",
        stderr(&out)
    );
    let out = env.run(&["run", "--rm", "demo", "/etc/passwd"]);
    assert_eq!(code(&out), 126, "stderr: {}", stderr(&out));
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

#[test]
fn env_user_and_workdir_are_applied() {
    let env = Env::with_demo();
    let envfile = env.path().join("envfile");
    std::fs::write(&envfile, "# comment\nFROM_FILE=yes\n").unwrap();
    let out = env.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi there",
        "--env-file",
        envfile.to_str().unwrap(),
        "-u",
        "1000:1000",
        "-w",
        "/tmp",
        "demo",
        "sh",
        "-c",
        "echo $GREETING; echo $FROM_FILE; id -u; id -g; pwd",
    ]);
    assert_eq!(out, "hi there\nyes\n1000\n1000\n/tmp\n");
    // A user name is resolved from the image's /etc/passwd.
    let out = env.ok(&["run", "--rm", "-u", "nobody", "demo", "id", "-un"]);
    assert_eq!(out.trim(), "nobody");
}

#[test]
fn secure_defaults_are_in_force() {
    let env = Env::with_demo();
    let status = env.ok(&["run", "--rm", "demo", "cat", "/proc/self/status"]);
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // podman's default set: no MKNOD, NET_RAW or AUDIT_WRITE.
    assert_eq!(field("CapEff"), "00000000800405fb", "{status}");
    assert_eq!(field("CapBnd"), "00000000800405fb");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no seccomp filter");
    // Masked paths read as empty (which of them exist depends on the
    // host kernel's config).
    let masked = ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("none of the masked /proc files exists on this host");
    let out = env.run(&[
        "run",
        "--rm",
        "demo",
        "sh",
        "-c",
        &format!("wc -c < {masked}"),
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "0",
        "{masked} is not masked: {}",
        stderr(&out)
    );
    let out = env.run(&[
        "run",
        "--rm",
        "demo",
        "sh",
        "-c",
        "echo 1 > /proc/sys/kernel/domainname",
    ]);
    assert_ne!(code(&out), 0, "/proc/sys is writable");
    // seccomp denies what the capability set would not stop on its own.
    let out = env.run(&["run", "--rm", "demo", "unshare", "-U", "true"]);
    assert_ne!(code(&out), 0, "a user namespace could be created");
}

/// `capsa exec` starts its process with exactly the container's own
/// confinement (seccomp filter, capabilities, no_new_privileges, cgroup and
/// namespaces), as podman does: an exec'd process is no way around them.
#[test]
fn exec_gets_the_containers_confinement() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    let id = id.trim();
    let fields = "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; \
                  cat /proc/self/cgroup | sort";
    let init = env.ok(&["exec", id, "sh", "-c", &fields.replace("self", "1")]);
    let exec = env.ok(&["exec", id, "sh", "-c", fields]);
    assert!(
        exec.contains("Seccomp:\t2"),
        "no seccomp filter in exec: {exec}"
    );
    assert_eq!(exec, init, "exec'd process differs from the container's");
    // The container's PID namespace: its PID 1 is the container's process.
    assert_eq!(env.ok(&["exec", id, "cat", "/proc/1/comm"]), "sleep\n");
    // What the filter stops in the container's process it stops in exec.
    for cmd in ["unshare -U -r true", "unshare -U true"] {
        let out = env.run(&["exec", id, "sh", "-c", cmd]);
        assert_ne!(code(&out), 0, "exec ran `{cmd}`: {}", stdout(&out));
    }
    // An explicit user keeps the filter too.
    let out = env.ok(&[
        "exec",
        "-u",
        "1000",
        id,
        "grep",
        "Seccomp:",
        "/proc/self/status",
    ]);
    assert!(out.contains('2'), "{out}");
    env.ok(&["rm", "-f", id]);
    env.assert_no_leaks(&[id.to_string()]);
}

#[test]
fn read_only_root_volumes_and_tmpfs() {
    let env = Env::with_demo();
    let out = env.run(&["run", "--rm", "--read-only", "demo", "touch", "/x"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );

    let data = env.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    let ro = format!("{}:/data:ro", data.display());
    let out = env.run(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "demo",
        "sh",
        "-c",
        "cat /data/in.txt; touch /data/new",
    ]);
    assert_eq!(stdout(&out), "from the host\n");
    assert_ne!(code(&out), 0, "a read-only volume was writable");
    assert!(!data.join("new").exists());
    let rw = format!("{}:/data", data.display());
    env.ok(&[
        "run",
        "--rm",
        "-v",
        &rw,
        "demo",
        "sh",
        "-c",
        "echo out > /data/out.txt",
    ]);
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "out\n"
    );

    let out = env.ok(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        "demo",
        "sh",
        "-c",
        "echo ok > /scratch/f && cat /scratch/f && grep ' /scratch ' /proc/mounts",
    ]);
    assert!(out.starts_with("ok\n") && out.contains("tmpfs"), "{out}");
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    let env = Env::with_demo();
    // dd fills one 64 MB buffer in a 16 MB container: one allocation, as
    // parity.sh and the agent's test do, so the time to the OOM kill does
    // not depend on how busy the machine is.
    let out = env.run(&[
        "run",
        "--name",
        "hog",
        "--memory",
        "16m",
        "demo",
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1 && echo survived",
    ]);
    assert_eq!(
        code(&out),
        137,
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains("survived"));
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "hog"])).unwrap();
    assert_eq!(inspect[0]["oom_killed"], true, "{inspect}");
    assert_eq!(inspect[0]["exit_code"], 137);
    // docker's fields too.
    assert_eq!(inspect[0]["State"]["OOMKilled"], true, "{inspect}");
    assert_eq!(inspect[0]["State"]["ExitCode"], 137);
    assert_eq!(inspect[0]["State"]["Status"], "exited");
    assert_eq!(inspect[0]["HostConfig"]["Memory"], 16 << 20);
    let ids = env.container_ids();
    env.ok(&["rm", "hog"]);
    env.assert_no_leaks(&ids);
}

/// Reads a file of the container's cgroup in whichever hierarchy has it.
fn cgroup_file(id: &str, name: &str) -> Option<String> {
    capsa_tests::cgroup_hierarchies()
        .into_iter()
        .find_map(|h| std::fs::read_to_string(h.join("capsa").join(id).join(name)).ok())
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let env = Env::with_demo();
    // A subshell forks until the kernel refuses; the limit must hold.
    let id = env.ok(&[
        "run",
        "-d",
        "--pids-limit",
        "16",
        "demo",
        "sh",
        "-c",
        "(for i in $(seq 64); do sleep 30 & done) 2>/dev/null; sleep 30",
    ]);
    let id = id.trim();
    let mut refused = 0;
    for _ in 0..100 {
        let events = cgroup_file(id, "pids.events").expect("no pids cgroup for the container");
        refused = events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if refused > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let current: u64 = cgroup_file(id, "pids.current")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(refused > 0, "no fork was refused");
    assert!(current <= 16, "{current} processes ran under a limit of 16");
    env.ok(&["rm", "-f", id]);
    env.assert_no_leaks(&[id.to_string()]);
}

#[test]
fn cpu_quota_is_applied() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "--cpus", "0.5", "demo", "sleep", "30"]);
    let id = id.trim();
    let quota = cgroup_file(id, "cpu.cfs_quota_us")
        .or_else(|| cgroup_file(id, "cpu.max"))
        .expect("no cpu cgroup file for the container");
    assert!(quota.starts_with("50000"), "quota: {quota}");
    env.ok(&["rm", "-f", id]);
    env.assert_no_leaks(&[id.to_string()]);
}

#[test]
fn detached_lifecycle_ps_logs_exec_stop_wait_rm() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "demo",
        "sh",
        "-c",
        "echo started; echo oops >&2; sleep 300",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64);

    let ps = env.ok(&["ps"]);
    assert!(ps.contains("web") && ps.contains("Up"), "{ps}");

    // Logs keep stdout and stderr apart.
    let mut logs = env.run(&["logs", "web"]);
    for _ in 0..50 {
        if stdout(&logs).contains("started") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        logs = env.run(&["logs", "web"]);
    }
    assert_eq!(stdout(&logs), "started\n");
    assert_eq!(stderr(&logs), "oops\n");

    assert_eq!(env.ok(&["exec", "web", "echo", "inside"]), "inside\n");
    let out = env.run(&["exec", "web", "sh", "-c", "exit 3"]);
    assert_eq!(code(&out), 3);
    let out = env.run_stdin(&["exec", "-i", "web", "cat"], b"piped");
    assert_eq!(stdout(&out), "piped");
    // exec -d (docker's): returns at once, the process runs on with the
    // null device for its streams; -i or -t with it is refused.
    let out = env.run(&[
        "exec",
        "-d",
        "web",
        "sh",
        "-c",
        "sleep 1; o=$(readlink /proc/$$/fd/1); echo $o > /tmp/d1; mv /tmp/d1 /tmp/det",
    ]);
    assert_eq!(
        (code(&out), stdout(&out).as_str()),
        (0, ""),
        "{}",
        stderr(&out)
    );
    env.wait_for_file("web", "/tmp/det");
    assert_eq!(env.ok(&["exec", "web", "cat", "/tmp/det"]), "/dev/null\n");
    for flag in ["-i", "-t"] {
        let out = env.run(&["exec", "-d", flag, "web", "true"]);
        assert_eq!(code(&out), 125, "exec -d {flag}");
        assert!(stderr(&out).contains("drop -i and -t"), "{}", stderr(&out));
    }

    // rm without -f refuses a running container.
    let out = env.run(&["rm", "web"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("running"));

    // sh as PID 1 ignores SIGTERM, so stop escalates to SIGKILL.
    env.ok(&["stop", "-t", "1", "web"]);
    assert_eq!(env.ok(&["wait", "web"]).trim(), "137");
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert!(!env.ok(&["ps"]).contains("web"));

    // docker's --filter: one key's values are alternatives, keys must all
    // match; a status or exit filter looks at stopped containers too.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "other",
        "-l",
        "team=a",
        "-v",
        "dvol:/data",
        "demo",
        "sleep",
        "300",
    ]);
    let names = |filters: &[&str]| {
        let mut args = vec!["ps", "--format", "{{.Names}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        env.ok(&args)
    };
    assert_eq!(names(&["status=exited"]), "web\n");
    assert_eq!(names(&["exited=137", "name=we"]), "web\n");
    assert_eq!(names(&["exited=0"]), "");
    assert_eq!(names(&["status=running", "ancestor=demo"]), "other\n");
    assert_eq!(
        names(&["name=web", "name=other", "status=running"]),
        "other\n"
    );
    assert_eq!(names(&[&format!("id={}", &id[..8])]), "", "web is stopped");
    assert_eq!(names(&["isolation=container"]), "other\n");
    assert_eq!(names(&["label=team=a"]), "other\n");
    assert_eq!(names(&["label=team"]), "other\n");
    assert_eq!(names(&["label=team=b"]), "");
    // Several label filters must all match (docker's), unlike names.
    assert_eq!(names(&["label=team=a", "label=team"]), "other\n");
    assert_eq!(names(&["label=team=a", "label=nope"]), "");
    assert_eq!(names(&["volume=dvol"]), "other\n");
    assert_eq!(names(&["volume=/data"]), "other\n");
    assert_eq!(names(&["volume=/elsewhere"]), "");
    assert_eq!(names(&["network=bridge"]), "other\n");
    assert_eq!(names(&["network=elsewhere"]), "");
    assert_eq!(names(&["since=web"]), "other\n");
    assert_eq!(names(&["before=web"]), "");
    assert_eq!(
        env.ok(&[
            "ps",
            "-a",
            "--filter",
            "before=other",
            "--format",
            "{{.Names}}"
        ]),
        "web\n"
    );
    for bad in [
        "color=red",
        "status=sleeping",
        "exited=x",
        "name",
        "since=nosuch",
    ] {
        let out = env.run(&["ps", "--filter", bad]);
        assert_eq!(code(&out), 125, "{bad}");
        assert!(stderr(&out).contains("invalid filter"), "{}", stderr(&out));
    }
    env.ok(&["rm", "-f", "other"]);
    env.ok(&["volume", "rm", "dvol"]);

    env.ok(&["rm", "web"]);
    assert!(!env.ok(&["ps", "-a"]).contains("web"));
    env.assert_no_leaks(&[id]);
}

#[test]
fn kill_reports_128_plus_signal() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    let id = id.trim();
    env.ok(&["kill", "-s", "KILL", id]);
    assert_eq!(env.ok(&["wait", id]).trim(), "137");
    // A handled signal ends the process with the script's own code.
    let id2 = env.ok(&[
        "run",
        "-d",
        "demo",
        "sh",
        "-c",
        "trap 'exit 42' USR1; while true; do sleep 0.1; done",
    ]);
    let id2 = id2.trim();
    std::thread::sleep(std::time::Duration::from_millis(300));
    env.ok(&["kill", "-s", "USR1", id2]);
    assert_eq!(env.ok(&["wait", id2]).trim(), "42");
    env.ok(&["rm", id, id2]);
    env.assert_no_leaks(&[id.to_string(), id2.to_string()]);
}

#[test]
fn stdin_tty_and_hostname() {
    let env = Env::with_demo();
    let out = env.run_stdin(
        &["run", "--rm", "-i", "demo", "sh", "-c", "tr a-z A-Z"],
        b"shout\n",
    );
    assert_eq!(stdout(&out), "SHOUT\n");
    let out = env.ok(&[
        "run",
        "--rm",
        "-t",
        "demo",
        "sh",
        "-c",
        "test -t 1 && echo is-a-tty",
    ]);
    assert_eq!(out.trim_end(), "is-a-tty");
    let out = env.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box1",
        "demo",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep box1 /etc/hosts",
    ]);
    // On a network the name is the container's address, as docker's.
    assert!(out.starts_with("box1\nbox1\n10.89."), "{out}");
    assert!(out.ends_with("\tbox1\n"), "{out}");
}

#[test]
fn the_default_network_is_bridge_none_has_only_loopback_and_host_shares_ours() {
    let env = Env::with_demo();
    let ifaces = |net: &str| {
        let out = env.ok(&[
            "run",
            "--rm",
            "--network",
            net,
            "demo",
            "cat",
            "/proc/net/dev",
        ]);
        let names: Vec<String> = out
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect();
        names
    };
    assert_eq!(ifaces("none"), vec!["lo"]);
    // The default is docker's bridge: one more interface.
    let out = env.ok(&["run", "--rm", "demo", "ls", "/sys/class/net"]);
    assert_eq!(out, "eth0\nlo\n");
    // With the host's network the container sees the host's interfaces:
    // the one of its default route, by its MAC.
    let route = std::fs::read_to_string("/proc/net/route").unwrap();
    let uplink = route
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
        })
        .expect("this host has no default route");
    let mac = format!("/sys/class/net/{uplink}/address");
    let host = std::fs::read_to_string(&mac).unwrap();
    let out = env.ok(&["run", "--rm", "--network", "host", "demo", "cat", &mac]);
    assert_eq!(out, host);
}

#[test]
fn large_output_is_not_lost() {
    let env = Env::with_demo();
    // 20 MB through the pipe to us and into the log.
    let out = env.run(&[
        "run",
        "--name",
        "big",
        "demo",
        "sh",
        "-c",
        "head -c 20000000 /dev/zero | tr '\\0' x",
    ]);
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout.len(), 20_000_000);
    let logs = env.run(&["logs", "big"]);
    assert_eq!(logs.stdout.len(), 20_000_000);
    env.ok(&["rm", "big"]);
}

#[test]
fn inspect_shows_dockers_sections() {
    let env = Env::with_demo();
    let vol = tempfile::tempdir().unwrap();
    let v = format!("{}:/data:ro", vol.path().display());
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "-e",
        "GREETING=hi",
        "-u",
        "1000:1000",
        "-w",
        "/tmp",
        "--cpus",
        "0.5",
        "--pids-limit",
        "64",
        "-m",
        "64m",
        "--read-only",
        "-v",
        &v,
        "--hostname",
        "boxhost",
        "demo",
        "sleep",
        "300",
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "box"])).unwrap();
    let c = &inspect[0];
    assert_eq!(c["Id"], id.trim());
    assert_eq!(c["Name"], "/box");
    assert_eq!(c["State"]["Status"], "running", "{c}");
    assert_eq!(c["State"]["Running"], true);
    assert!(c["State"]["Pid"].as_i64().unwrap() > 1, "{c}");
    assert_eq!(c["Config"]["Hostname"], "boxhost");
    assert_eq!(c["Config"]["User"], "1000:1000");
    assert_eq!(c["Config"]["WorkingDir"], "/tmp");
    assert_eq!(c["Config"]["Cmd"], serde_json::json!(["sleep", "300"]));
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "GREETING=hi"),
        "{c}"
    );
    assert_eq!(c["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(c["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(c["HostConfig"]["PidsLimit"], 64);
    assert_eq!(c["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(c["HostConfig"]["Isolation"], "container");
    assert_eq!(
        c["Mounts"],
        serde_json::json!([{
            "Type": "bind", "Source": vol.path().display().to_string(),
            "Destination": "/data", "Mode": "ro", "RW": false
        }]),
        "{c}"
    );
    // Docker's default network.
    let bridge = &c["NetworkSettings"]["Networks"]["bridge"];
    assert!(
        bridge["IPAddress"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.89.")),
        "{c}"
    );
    assert_eq!(bridge["InterfaceName"], "eth0", "{c}");
    env.ok(&["rm", "-f", "box"]);
    env.assert_no_leaks(&[id.trim().to_string()]);
}

#[test]
fn pause_freezes_and_unpause_thaws_a_run_container() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "demo",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done",
    ]);
    let id = id.trim().to_string();
    // The shell truncates the file before it writes: retry an empty read.
    let count = || -> u64 {
        loop {
            if let Ok(n) = env.ok(&["exec", "ticker", "cat", "/tmp/n"]).trim().parse() {
                return n;
            }
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(env.ok(&["pause", "ticker"]), "ticker\n");
    assert!(env.ok(&["ps"]).contains("(Paused)"));
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "ticker"])).unwrap();
    assert_eq!(inspect[0]["State"]["Paused"], true);
    // Frozen: exec is refused, and the counter does not move.
    let out = env.run(&["exec", "ticker", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("is paused: unpause it first"),
        "{}",
        stderr(&out)
    );
    // cgroup v2's freeze file, or v1's freezer state.
    let frozen = cgroup_file(&id, "cgroup.freeze").is_some_and(|f| f.trim() == "1")
        || cgroup_file(&id, "freezer.state").is_some_and(|f| f.trim() == "FROZEN");
    assert!(frozen, "the cgroup is frozen");
    let out = env.run(&["unpause", "ticker"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let a = count();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(count() > a, "it runs again");
    // Paused again: stop still stops it (thawed first), and rm -f removes.
    env.ok(&["pause", "ticker"]);
    let out = env.run(&["unpause", "nosuch"]);
    assert_eq!(code(&out), 125);
    env.ok(&["stop", "-t", "1", "ticker"]);
    assert!(env.ok(&["ps", "-a"]).contains("Exited"));
    let out = env.run(&["pause", "ticker"]);
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    let second = env.ok(&["run", "-d", "demo", "sleep", "300"]);
    env.ok(&["pause", second.trim()]);
    env.ok(&["rm", "-f", second.trim()]);
    env.ok(&["rm", "ticker"]);
    env.assert_no_leaks(&[id, second.trim().to_string()]);
}

/// Named volumes (#12): made on first use and filled from the image's files
/// at the mount point (owner and mode too), kept across containers, listed
/// and inspected, refused for removal while a container uses them (one
/// line), pruned when unused; a bad name is refused before anything is made.
#[test]
fn named_volumes_are_filled_kept_and_guarded() {
    let env = Env::with_demo();
    // /home in the demo image holds user/ (owned by user).
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "homes:/home",
        "demo",
        "sh",
        "-c",
        "stat -c '%U %a' /home/user; echo kept > /home/note",
    ]);
    assert_eq!(out, "user 755\n");
    let data = env.path().join("volumes/homes/_data");
    assert_eq!(
        std::fs::read_to_string(data.join("note")).unwrap(),
        "kept\n"
    );
    // A second container sees the first one's file, not a fresh copy.
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "homes:/data:ro",
        "demo",
        "cat",
        "/data/note",
    ]);
    assert_eq!(out, "kept\n");
    assert_eq!(env.ok(&["volume", "ls", "-q"]), "homes\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", "homes"])).unwrap();
    assert_eq!(inspect[0]["Name"], "homes");
    assert_eq!(inspect[0]["Driver"], "local");
    assert_eq!(inspect[0]["Mountpoint"], data.display().to_string());

    // In use (even stopped): refused in one line; the data stays.
    env.ok(&[
        "run",
        "--name",
        "user1",
        "-v",
        "homes:/home",
        "demo",
        "true",
    ]);
    let c: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "user1"])).unwrap();
    assert_eq!(c[0]["Mounts"][0]["Type"], "volume", "{c}");
    assert_eq!(c[0]["Mounts"][0]["Name"], "homes", "{c}");
    let rm = env.run(&["volume", "rm", "homes"]);
    assert_eq!(code(&rm), 125);
    assert_eq!(
        stderr(&rm).trim(),
        "capsa: error: volume homes is in use by container user1: remove it first"
    );
    env.ok(&["volume", "prune"]);
    assert!(data.join("note").exists());
    env.ok(&["rm", "user1"]);

    // Unused now: prune takes it; create and rm work by name.
    env.ok(&["volume", "create", "--label", "team=ml", "scratch"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", "scratch"])).unwrap();
    assert_eq!(inspect[0]["Labels"]["team"], "ml");
    assert_eq!(env.ok(&["volume", "rm", "scratch"]), "scratch\n");
    assert_eq!(env.ok(&["volume", "prune"]), "Deleted Volumes:\nhomes\n");
    assert_eq!(env.ok(&["volume", "ls", "-q"]), "");
    assert!(!env.path().join("volumes/homes").exists());

    // Bad names: refused, nothing made.
    let bad = env.run(&["run", "--rm", "-v", "x!:/data", "demo", "true"]);
    assert_eq!(code(&bad), 125, "{}", stderr(&bad));
    assert!(stderr(&bad).contains("neither an absolute host path nor a volume name"));
    let bad = env.run(&["volume", "create", "a/b"]);
    assert_eq!(code(&bad), 125, "{}", stderr(&bad));
    assert_eq!(env.ok(&["volume", "ls", "-q"]), "");
    let missing = env.run(&["volume", "rm", "nope"]);
    assert_eq!(code(&missing), 125);
    assert!(stderr(&missing).contains("no such volume: nope"));
    env.assert_no_leaks(&[]);
}

/// `stats` and `top` (#13): a busy container's CPU, its memory limit and
/// PIDs, in docker's table, a template and JSON; `-a` shows a stopped one
/// with empty figures; top prints ps -ef's columns, or the host ps's with
/// options, the container's processes only; bad input is one line, 125.
#[test]
fn stats_and_top_show_a_containers_use_and_processes() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "-m",
        "96m",
        "demo",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let id = id.trim().to_string();
    env.ok(&["run", "--name", "done", "demo", "true"]);

    let table = env.ok(&["stats", "--no-stream"]);
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        "CONTAINER ID NAME CPU % MEM USAGE / LIMIT MEM % NET I/O BLOCK I/O PIDS",
        "{table}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "running containers only: {table}");
    assert!(
        rows[0].starts_with(&id[..12]) && rows[0].contains("busy"),
        "{table}"
    );
    assert!(rows[0].contains(" / 96MiB"), "the limit: {table}");

    let line = env.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.CPUPerc}} {{.PIDs}} {{.Isolation}}",
        "busy",
    ]);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((f[0], f[2], f[3]), ("busy", "1", "container"), "{line}");
    let cpu: f64 = f[1].trim_end_matches('%').parse().unwrap();
    assert!(cpu > 5.0, "a busy loop uses CPU: {line}");

    let json = env.ok(&["stats", "--no-stream", "-a", "--format", "json"]);
    let objs: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 2, "{json}");
    let stopped = objs.iter().find(|o| o["Name"] == "done").expect(&json);
    assert_eq!(stopped["CPUPerc"], "--", "{json}");
    assert_eq!(stopped["MemUsage"], "-- / --", "{json}");

    let top = env.ok(&["top", "busy"]);
    let mut tl = top.lines();
    assert_eq!(
        tl.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "{top}"
    );
    let procs: Vec<&str> = tl.collect();
    assert_eq!(procs.len(), 1, "{top}");
    assert!(
        procs[0].starts_with("root") && procs[0].ends_with("sh -c while :; do :; done"),
        "{top}"
    );
    let custom = env.ok(&["top", "busy", "-o", "pid,comm"]);
    assert_eq!(
        custom
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect::<Vec<_>>(),
        ["COMMAND", "sh"],
        "only the container's rows of the host's ps: {custom}"
    );

    assert_refused(
        &env,
        &[
            (vec!["stats", "--no-stream", "nosuch"], "nosuch"),
            (
                vec!["stats", "--no-stream", "--format", "{{.Nope}}"],
                "no field .Nope",
            ),
            (vec!["top", "done"], "is not running"),
            (vec!["top", "busy", "-o", "comm"], "no PID column"),
        ],
    );
    env.ok(&["rm", "-f", "busy", "done"]);
    env.assert_no_leaks(&[id]);
}

/// `rename` (#13): the new name works everywhere the old one did, the old
/// one is free again; a taken, invalid or unchanged name is one line, 125,
/// and changes nothing.
#[test]
fn rename_moves_a_containers_name() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "--name", "first", "demo", "sleep", "300"]);
    let id = id.trim().to_string();
    env.ok(&["run", "--name", "other", "demo", "true"]);
    assert_eq!(env.ok(&["rename", "first", "second"]), "");
    assert_eq!(env.ok(&["exec", "second", "echo", "hi"]), "hi\n");
    assert!(env.ok(&["ps"]).contains("second"));
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "second"])).unwrap();
    assert_eq!(inspect[0]["Name"], "/second");
    assert_eq!(
        code(&env.run(&["exec", "first", "true"])),
        125,
        "the old name is gone"
    );
    assert_refused(
        &env,
        &[
            (vec!["rename", "second", "other"], "already in use"),
            (vec!["rename", "second", "a b"], "invalid container name"),
            (vec!["rename", "second", "second"], "already named second"),
            (vec!["rename", "nosuch", "x"], "nosuch"),
        ],
    );
    // The old name can be taken again.
    env.ok(&["run", "--rm", "--name", "first", "demo", "true"]);
    // Its monitor, which read the record before the rename, keeps the new
    // name when the container stops.
    env.ok(&["stop", "-t", "1", "second"]);
    assert!(env.ok(&["ps", "-a"]).contains("second"));
    env.ok(&["rm", "-f", "second", "other"]);
    env.assert_no_leaks(&[id]);
}

/// `history` (#13): newest first, the top row with the image's ID, the
/// demo's build step with its layer's size, a layer the config's history
/// does not name shown as docker does, and --format / -q / --no-trunc.
#[test]
fn history_lists_an_images_steps() {
    let env = Env::with_demo();
    let table = env.ok(&["history", "demo"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>().join(" "),
        "IMAGE CREATED CREATED BY SIZE COMMENT",
        "{table}"
    );
    assert_eq!(lines.len(), 2, "{table}");
    let id = env.ok(&["images", "-q"]);
    assert!(lines[1].starts_with(id.trim()), "{table}");
    assert!(
        lines[1].contains("capsa load --demo (busybox-static)"),
        "{table}"
    );
    assert!(
        lines[1].contains("MB") || lines[1].contains("kB"),
        "the layer's size: {table}"
    );
    assert_eq!(env.ok(&["history", "-q", "demo"]), id);
    assert!(env
        .ok(&["history", "--no-trunc", "-q", "demo"])
        .starts_with("sha256:"));

    let archive = env.path().join("more.tar");
    capsa_tests::demo_with_layer(&[("extra", None)], "more:latest", &archive);
    env.ok(&["load", "-i", archive.to_str().unwrap()]);
    let by = env.ok(&[
        "history",
        "--format",
        "{{.ID}}|{{.CreatedBy}}|{{.Size}}",
        "more",
    ]);
    let rows: Vec<&str> = by.lines().collect();
    assert_eq!(rows.len(), 2, "{by}");
    let more_id = env.ok(&["history", "-q", "more"]);
    assert_eq!(
        rows[0],
        format!("{}||1.54kB", more_id.trim()),
        "the extra layer (a 1536-byte tar), not in the config's history: {by}"
    );
    assert!(rows[1].starts_with("<missing>|capsa load --demo"), "{by}");

    let out = env.run(&["history", "nosuch"]);
    assert_eq!(code(&out), 125);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// A stopped container's `cp` (and `commit`, `start`) holds that
/// container's own lock while it works (a VM-mode one boots the
/// container's VM on its disks, for seconds): `rm` of it waits, and never
/// removes the files under it, while another container starts at once.
/// And `rm` takes the containers lock too, as `create` does.
#[test]
fn rm_waits_for_the_containers_locks() {
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let env = Env::with_demo();
    env.ok(&["run", "--name", "other", "demo", "true"]);
    let is_held = |lock: &Path| {
        !Command::new("flock")
            .arg("-n")
            .arg(lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    let wait_held = |lock: &Path| {
        let t0 = Instant::now();
        while !is_held(lock) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} never held",
                lock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // `rm held`, which must wait until `release` has run.
    let rm_waits = |id: &str, release: &mut dyn FnMut()| {
        let rm = env
            .cmd(&["rm", "held"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            env.container_ids().iter().any(|i| i == id),
            "rm removed the container while it was held"
        );
        release();
        let out = rm.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "held\n");
        assert!(!env.container_ids().iter().any(|i| i == id));
    };
    let run_held = || {
        let before = env.container_ids();
        env.ok(&["run", "--name", "held", "demo", "true"]);
        env.container_ids()
            .into_iter()
            .find(|i| !before.contains(i))
            .unwrap()
    };

    // A copy into the stopped container, its tar read from our pipe.
    let id = run_held();
    let mut cp = env
        .cmd(&["cp", "-", "held:/tmp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_held(&env.path().join("containers").join(&id).join(".busy"));
    let t0 = Instant::now();
    let mut start = env
        .cmd(&["start", "other"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while start.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "start of another container waits for the copy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "copied", &b"hi\n"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    rm_waits(&id, &mut || {
        let mut stdin = cp.stdin.take().unwrap();
        stdin.write_all(&tar).unwrap();
        drop(stdin);
        let mut err = String::new();
        std::io::Read::read_to_string(&mut cp.stderr.take().unwrap(), &mut err).unwrap();
        assert!(cp.wait().unwrap().success(), "cp failed: {err}");
    });

    // The containers lock, held by another process.
    let id = run_held();
    let lock = env.path().join("containers/.lock");
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["-c", "read x"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    wait_held(&lock);
    rm_waits(&id, &mut || {
        drop(holder.stdin.take());
        holder.wait().unwrap();
    });

    env.ok(&["rm", "-f", "other"]);
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// docker's `start` and `restart` (#13): a stopped `capsa run` container
/// runs again with its files and its log kept, `start -a` attaches and
/// returns its exit code, a running one is left alone; an `--rm` one
/// cannot be restarted; nothing is left after `rm`.
#[test]
fn start_and_restart_run_a_container_again() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "again",
        "demo",
        "sh",
        "-c",
        "echo run >> /runs; wc -l < /runs; sleep 300",
    ]);
    let id = id.trim().to_string();
    let logs_show = |n: usize| {
        for _ in 0..200 {
            if env.ok(&["logs", "again"]).lines().count() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("logs: {:?}", env.ok(&["logs", "again"]));
    };
    logs_show(1);
    // A time between the two runs' output, in docker's --timestamps form
    // (fixed width, UTC: such strings compare as the times do).
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .unwrap();
    let between = String::from_utf8(date.stdout).unwrap().trim().to_string();
    assert_eq!(env.ok(&["restart", "-t", "1", "again"]), "again\n");
    logs_show(2);
    assert_eq!(
        env.ok(&["logs", "again"]),
        "1\n2\n",
        "the file survived, the log kept"
    );
    // docker's -t, --since and --until.
    let stamped = env.ok(&["logs", "-t", "again"]);
    let lines: Vec<(&str, &str)> = stamped
        .lines()
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    assert_eq!((lines[0].1, lines[1].1), ("1", "2"), "{stamped}");
    assert!(
        lines[0].0.len() == between.len()
            && lines[0].0 < between.as_str()
            && between.as_str() < lines[1].0,
        "{stamped} around {between}"
    );
    assert_eq!(env.ok(&["logs", "--since", &between, "again"]), "2\n");
    assert_eq!(env.ok(&["logs", "--until", &between, "again"]), "1\n");
    assert_eq!(env.ok(&["logs", "--since", "10m", "again"]), "1\n2\n");
    assert_eq!(env.ok(&["logs", "--until", "10m", "again"]), "");
    let bad = env.run(&["logs", "--since", "yesterday", "again"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("--since takes a time"),
        "{}",
        stderr(&bad)
    );
    // docker's --tail (-n): the last lines only.
    assert_eq!(env.ok(&["logs", "--tail", "1", "again"]), "2\n");
    assert_eq!(env.ok(&["logs", "-n", "all", "again"]), "1\n2\n");
    let bad = env.run(&["logs", "--tail", "some", "again"]);
    assert!(stderr(&bad).contains("neither a line count nor `all`"));
    assert_eq!(
        env.ok(&["start", "again"]),
        "again\n",
        "running: left alone"
    );
    assert_eq!(
        env.ok(&["exec", "again", "wc", "-l", "/runs"]).trim(),
        "2 /runs"
    );
    env.ok(&["stop", "-t", "1", "again"]);
    assert_eq!(env.ok(&["start", "again"]), "again\n");
    logs_show(3);
    assert!(env.ok(&["ps"]).contains("again"));

    let out = env.run(&[
        "run",
        "--name",
        "once",
        "demo",
        "sh",
        "-c",
        "echo said; exit 3",
    ]);
    assert_eq!(code(&out), 3);
    let out = env.run(&["start", "-a", "once"]);
    assert_eq!((code(&out), stdout(&out).as_str()), (3, "said\n"));
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "once"])).unwrap();
    assert_eq!(inspect[0]["State"]["ExitCode"], 3);

    let rm = env.ok(&["run", "-d", "--rm", "demo", "sleep", "300"]);
    assert_refused(
        &env,
        &[
            (vec!["restart", rm.trim()], "--rm"),
            (vec!["start", "-a", "once", "again"], "one container"),
        ],
    );
    let out = env.run(&["start", "nosuch"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    env.ok(&["rm", "-f", "again", "once", rm.trim()]);
    env.assert_no_leaks(&[id]);
}

/// docker's `create` (#13): a container from an image that waits, holding
/// nothing (no mount, cgroup or process), until `start` runs it, with the
/// flags it was created with; then it is an ordinary stopped container.
#[test]
fn create_makes_a_container_that_start_runs() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "create",
        "--name",
        "made",
        "-e",
        "X=from-create",
        "demo",
        "sh",
        "-c",
        "echo $X; echo run >> /runs; wc -l < /runs",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(!env.ok(&["ps"]).contains("made"), "not running");
    let listed = env.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(listed.contains("made Created"), "{listed}");
    assert_eq!(
        env.ok(&["inspect", "-f", "{{.State.Status}}", "made"]),
        "created\n"
    );
    let held = capsa_tests::leaks_of(env.path(), std::slice::from_ref(&id));
    assert!(held.is_empty(), "a created container holds {held:#?}");

    let out = env.run(&["start", "-a", "made"]);
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "from-create\n1\n"));
    let out = env.run(&["start", "-a", "made"]);
    assert_eq!(stdout(&out), "from-create\n2\n", "its writes kept");

    // -i: stdin at start -a -i; a detached start, then wait
    let inter = env.ok(&[
        "create", "-i", "--name", "inter", "demo", "tr", "a-z", "A-Z",
    ]);
    let out = env.run_stdin(&["start", "-a", "-i", "inter"], b"shout\n");
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "SHOUT\n"));
    let later = env.ok(&["create", "--name", "later", "demo", "sh", "-c", "exit 4"]);
    assert_eq!(env.ok(&["start", "later"]), "later\n");
    assert_eq!(env.ok(&["wait", "later"]), "4\n");

    assert_refused(
        &env,
        &[
            (vec!["create", "-d", "demo"], "capsa start"),
            (vec!["create", "no-such-image"], "no-such-image"),
            (vec!["create", "--name", "made", "demo"], "already in use"),
        ],
    );
    // Removed without -f: nothing runs.
    let idle = env.ok(&["create", "demo", "true"]);
    env.ok(&["rm", idle.trim()]);
    env.ok(&["rm", "made", "inter", "later"]);
    assert!(env.container_ids().is_empty());
    let ids = [id, inter, later, idle].map(|s| s.trim().to_string());
    env.assert_no_leaks(&ids);
}

/// docker's `events` (#13): each change of a `capsa run` container, in
/// order, with docker's attributes; --since/--until bound it, -f filters,
/// and without --until it follows new events.
#[test]
fn events_tell_what_happened_to_containers() {
    let env = Env::with_demo();
    let now = || {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
    };
    let since = now();
    let script = "trap 'exit 0' TERM; sleep 300 & wait";
    env.ok(&["run", "-d", "--name", "ev", "demo", "sh", "-c", script]);
    env.ok(&["pause", "ev"]);
    env.ok(&["unpause", "ev"]);
    env.ok(&["rename", "ev", "ev2"]);
    env.ok(&["stop", "-t", "5", "ev2"]);
    env.ok(&["rm", "ev2"]);
    let until = now();
    let shown = |extra: &[&str]| {
        let mut args = vec!["events", "--since", &since, "--until", &until];
        args.extend_from_slice(extra);
        env.ok(&args)
    };
    let template = "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}";
    assert_eq!(
        shown(&["--format", template]),
        "create ev <no value>\nstart ev <no value>\npause ev <no value>\nunpause ev <no value>\n\
         rename ev2 <no value>\nkill ev2 <no value>\ndie ev2 0\nstop ev2 <no value>\ndestroy ev2 <no value>\n"
    );
    let line = shown(&["-f", "event=kill", "-f", "container=ev2"]);
    assert!(
        line.contains(" container kill ") && line.contains("(image=demo, name=ev2, signal=15)"),
        "{line}"
    );
    let json = shown(&["--format", "json", "-f", "event=die"]);
    let e: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (&e["Type"], &e["status"], &e["from"]),
        (&"container".into(), &"die".into(), &"demo".into())
    );
    assert_eq!(shown(&["-f", "event=oom"]), "");
    assert_refused(
        &env,
        &[
            (
                vec!["events", "--since", "yesterday"],
                "--since takes a time",
            ),
            (vec!["events", "-f", "label=x"], "--filter"),
            (vec!["events", "--format", "{{.Nope"], "unclosed"),
        ],
    );

    // Following: the events of a container run after it started.
    let from = now();
    let mut follow = env
        .cmd(&[
            "events",
            "--since",
            &from,
            "--format",
            "{{.Action}}",
            "-f",
            "container=later",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    env.ok(&["run", "--rm", "--name", "later", "demo", "true"]);
    let mut seen = Vec::new();
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
        seen.push(l);
        if seen.last().map(String::as_str) == Some("destroy") {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen, ["create", "start", "die", "destroy"]);
    assert!(env.container_ids().is_empty());
}

/// docker's `commit` (#13): the container's changes (new files, hard
/// links, a deletion as a whiteout) become a layer on its image, with its
/// environment and the `--change`s in the config; the running container
/// goes on (frozen only while the layer is read); a stopped one commits too.
#[test]
fn commit_makes_an_image_of_a_containers_changes() {
    let env = Env::with_demo();
    let script = "mkdir -p /opt/d && echo f > /opt/d/f; echo data > /added; ln /added /hard; \
                  rm /etc/group; touch /ready; sleep 300";
    let id = env.ok(&[
        "run", "-d", "--name", "base", "-e", "MODE=x", "demo", "sh", "-c", script,
    ]);
    env.wait_for_file("base", "/ready");
    let image = env.ok(&[
        "commit",
        "-m",
        "my change",
        "-a",
        "me",
        "-c",
        r#"CMD ["cat", "/added"]"#,
        "-c",
        "ENV EXTRA=1",
        "base",
        "snap:v1",
    ]);
    assert!(
        image.starts_with("sha256:") && image.trim().len() == 71,
        "{image}"
    );
    assert_eq!(
        env.ok(&["exec", "base", "echo", "still-running"]),
        "still-running\n"
    );
    assert_eq!(env.ok(&["run", "--rm", "snap:v1"]), "data\n");
    let seen = env.ok(&[
        "run",
        "--rm",
        "snap:v1",
        "sh",
        "-c",
        "test -e /etc/group || echo no-group; cat /opt/d/f; echo $MODE $EXTRA; stat -c %h /added",
    ]);
    assert_eq!(seen, "no-group\nf\nx 1\n2\n");
    let history = env.ok(&[
        "history",
        "--format",
        "{{.CreatedBy}}|{{.Comment}}",
        "snap:v1",
    ]);
    assert!(
        history.starts_with("sh -c mkdir")
            && history.lines().next().unwrap().ends_with("|my change"),
        "{history}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "snap:v1"])).unwrap();
    assert_eq!(inspect[0]["config"]["author"], "me", "{inspect}");

    env.ok(&["stop", "-t", "1", "base"]);
    env.ok(&["commit", "base", "snap:v2"]);
    assert_eq!(
        env.ok(&["run", "--rm", "snap:v2", "cat", "/opt/d/f"]),
        "f\n"
    );
    assert_refused(
        &env,
        &[
            (vec!["commit", "nosuch"], "nosuch"),
            (vec!["commit", "-c", "RUN make", "base"], "--change"),
            (vec!["commit", "base", "Bad Name"], "Bad Name"),
        ],
    );
    env.ok(&["rm", "base"]);
    env.ok(&["rmi", "snap:v1", "snap:v2"]);
    env.assert_no_leaks(&[id.trim().to_string()]);
}

/// VM-mode `create` on this host (whose PVM cannot boot the guest, so
/// `--kernel` passes the host check): the container waits with its image's
/// disk and its own writable disk made. `commit` of it boots its VM to
/// reach that disk (parity case cp-stopped does it in the KVM test host);
/// here the boot fails, in one line, leaving the container as it was and
/// no VMM behind; `rm` then leaves nothing.
#[test]
fn vm_mode_create_waits_and_a_failed_boot_for_commit_leaves_it_as_it_was() {
    let env = Env::with_demo();
    let kernel = env.ok(&["kernel", "path"]);
    let id = env.ok(&[
        "create",
        "--isolation",
        "vm",
        "--kernel",
        kernel.trim(),
        "--name",
        "vmc",
        "demo",
        "true",
    ]);
    let dir = env.path().join("containers").join(id.trim());
    assert!(dir.join("writable.ext4").is_file(), "its writable disk");
    assert_refused(
        &env,
        &[(
            vec!["commit", "vmc", "never-made"],
            "booting the VM of stopped container vmc",
        )],
    );
    assert!(!env
        .ok(&["images", "--format", "{{.Repository}}"])
        .contains("never-made"));
    assert_eq!(
        env.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
            .trim(),
        "vmc Created"
    );
    env.ok(&["rm", "vmc"]);
    assert!(!dir.exists());
    env.assert_no_leaks(&[id.trim().to_string()]);
}

/// runc's command line (#13 item 4): a repeated flag takes its last value,
/// and a printing command whose reader went away ends quietly (SIGPIPE, as
/// a Go program does), never with a panic and a backtrace.
#[test]
fn repeated_flags_and_closed_stdout_end_as_runc_does() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::with_demo();
    let empty = Env::new();
    let images = std::process::Command::new(capsa_tests::capsa_bin())
        .args(["--root", &empty.path().display().to_string()])
        .args(["--root", &env.path().display().to_string(), "images", "-q"])
        .output()
        .unwrap();
    assert!(images.status.success(), "{}", stderr(&images));
    assert_eq!(
        stdout(&images).lines().count(),
        1,
        "the last --root's demo image"
    );
    for args in [&["inspect", "demo"][..], &["images"], &["history", "demo"]] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let done = child.wait_with_output().unwrap();
        let err = stderr(&done);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            // 13: SIGPIPE
            done.status.success() || done.status.signal() == Some(13),
            "{args:?}: {:?} {err}",
            done.status
        );
    }
}

/// docker's `--format` (#13) on ps, images and inspect: templates, `table`
/// with headers (also with no rows), JSON lines, nested inspect paths.
#[test]
fn format_flags_fill_dockers_templates() {
    let env = Env::with_demo();
    let empty = env.ok(&["ps", "--format", "table {{.Names}}\t{{.State}}"]);
    assert_eq!(
        empty.split_whitespace().collect::<Vec<_>>(),
        ["NAMES", "STATE"]
    );
    let id = env.ok(&["run", "-d", "--name", "fmt", "demo", "sleep", "300"]);
    let id = id.trim().to_string();
    assert_eq!(
        env.ok(&[
            "ps",
            "--format",
            "{{.Names}} {{.State}} {{.Isolation}} {{.ID}}"
        ]),
        format!("fmt running container {}\n", &id[..12])
    );
    let json = env.ok(&["ps", "--format", "json"]);
    let row: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (&row["Names"], &row["Image"]),
        (&"fmt".into(), &"demo".into())
    );
    assert_eq!(
        env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        "demo:latest\n"
    );
    // docker's `images REPOSITORY[:TAG]`: one repository, or one name.
    env.ok(&["tag", "demo", "demo:v2"]);
    env.ok(&["tag", "demo", "localhost:5000/other"]);
    let only = |args: &[&str]| {
        let mut a = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        a.extend_from_slice(args);
        env.ok(&a)
    };
    let mut listed: Vec<_> = only(&["demo"]).lines().map(String::from).collect();
    listed.sort();
    assert_eq!(listed, ["demo:latest", "demo:v2"]);
    assert_eq!(only(&["docker.io/library/demo:v2"]), "demo:v2\n");
    assert_eq!(
        only(&["localhost:5000/other"]),
        "localhost:5000/other:latest\n"
    );
    assert_eq!(only(&["demo:v3"]), "");
    assert_eq!(env.ok(&["images", "-q", "nothing"]), "");
    // docker's --filter: reference globs (on the repository, or on
    // REPOSITORY:TAG), dangling, the image's labels, before and since.
    let sorted = |args: &[&str]| {
        let mut l: Vec<String> = only(args).lines().map(String::from).collect();
        l.sort();
        l
    };
    assert_eq!(
        sorted(&["--filter", "reference=de*"]),
        ["demo:latest", "demo:v2"]
    );
    assert_eq!(only(&["--filter", "reference=*:v2"]), "demo:v2\n");
    assert_eq!(
        sorted(&["-f", "reference=*:v2", "-f", "reference=localhost:5000/*"]),
        ["demo:v2", "localhost:5000/other:latest"]
    );
    assert_eq!(only(&["--filter", "dangling=true"]), "");
    assert_eq!(
        sorted(&[
            "--filter",
            "label=org.opencontainers.image.title=capsa demo (busybox)",
            "--filter",
            "dangling=false"
        ]),
        ["demo:latest", "demo:v2", "localhost:5000/other:latest"]
    );
    assert_eq!(only(&["--filter", "label=nope"]), "");
    env.ok(&["commit", "fmt", "newer"]);
    assert_eq!(only(&["--filter", "since=demo"]), "newer:latest\n");
    assert_eq!(only(&["--filter", "before=newer", "demo:v2"]), "demo:v2\n");
    env.ok(&["rmi", "newer"]);
    for bad in ["color=red", "dangling=maybe", "since=nosuch", "reference"] {
        let out = env.run(&["images", "--filter", bad]);
        assert_eq!(code(&out), 125, "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("invalid filter"), "{}", stderr(&out));
    }
    // An image a container uses stays, -f or not (its root is built from
    // the layers); its other names can go.
    let image_id = env.ok(&["images", "-q", "demo"]);
    let out = env.run(&["rmi", "-f", image_id.trim()]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("is used by container(s) fmt"));
    env.ok(&["rmi", "demo:v2", "localhost:5000/other"]);
    assert_eq!(only(&[]), "demo:latest\n");
    assert_eq!(
        env.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.Name}} {{json .State.Running}} {{.Nope}}",
            "fmt"
        ]),
        "running /fmt true <no value>\n"
    );
    env.ok(&["stop", "-t", "1", "fmt"]);
    assert_eq!(env.ok(&["ps", "-a", "--format", "{{.State}}"]), "exited\n");
    let out = env.run(&["ps", "-a", "--format", "{{.Bogus}}"]);
    assert_eq!(code(&out), 125);
    env.ok(&["rm", "fmt"]);
    env.assert_no_leaks(&[id]);
}

/// docker's `update` (#13): new memory, CPU and PIDs limits reach the
/// running container's cgroup and its spec (inspect, stats); bad input
/// and a stopped container are one line, 125, and change nothing.
#[test]
fn update_changes_a_running_containers_limits() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "run", "-d", "--name", "up", "-m", "64m", "demo", "sleep", "300",
    ]);
    let id = id.trim().to_string();
    assert_eq!(
        env.ok(&[
            "update",
            "-m",
            "128m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "50",
            "up"
        ]),
        "up\n"
    );
    let memory =
        cgroup_file(&id, "memory.limit_in_bytes").or_else(|| cgroup_file(&id, "memory.max"));
    assert_eq!(memory.unwrap().trim(), (128u64 << 20).to_string());
    let cpu = cgroup_file(&id, "cpu.cfs_quota_us").or_else(|| cgroup_file(&id, "cpu.max"));
    assert!(cpu.unwrap().starts_with("50000"));
    assert_eq!(cgroup_file(&id, "pids.max").unwrap().trim(), "50");
    assert_eq!(
        env.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
            "up"
        ]),
        format!("{} 500000000 50\n", 128u64 << 20)
    );
    assert!(env
        .ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "up"])
        .ends_with("/ 128MiB\n"));
    // Lower than what it uses, the kernel reclaims; one field alone keeps the others.
    env.ok(&["update", "--pids-limit", "40", "up"]);
    assert_eq!(
        env.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            "up"
        ]),
        format!("{} 40\n", 128u64 << 20)
    );
    env.ok(&["run", "--name", "down", "demo", "true"]);
    assert_refused(
        &env,
        &[
            (
                vec!["update", "up"],
                "give --memory, --cpus or --pids-limit",
            ),
            (vec!["update", "-m", "1k", "up"], "too small"),
            (vec!["update", "--pids-limit", "0", "up"], "positive"),
            (vec!["update", "-m", "100m", "down"], "is not running"),
            (vec!["update", "-m", "100m", "nosuch"], "nosuch"),
        ],
    );
    assert_eq!(cgroup_file(&id, "pids.max").unwrap().trim(), "40");
    env.ok(&["rm", "-f", "up", "down"]);
    env.assert_no_leaks(&[id]);
}

/// Each command fails with exit 125 and one line on stderr that says
/// `says`.
fn assert_refused(env: &Env, cases: &[(Vec<&str>, &str)]) {
    for (args, says) in cases {
        let out = env.run(args);
        assert_eq!(code(&out), 125, "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

/// docker's `cp` (#13) both ways with a running container: files and
/// directories, into a directory or as a new name, the archive on stdout;
/// what comes out is untrusted: a container whose tar emits an entry
/// through a symlink out of the destination writes nothing outside it.
#[test]
fn cp_copies_both_ways_and_keeps_the_host_safe() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "--name", "box", "demo", "sleep", "300"]);
    let id = id.trim().to_string();
    let host = env.path().join("host");
    std::fs::create_dir_all(host.join("dir/sub")).unwrap();
    std::fs::write(host.join("file.txt"), "from the host\n").unwrap();
    std::fs::write(host.join("dir/sub/deep"), "deep\n").unwrap();
    let h = |p: &str| host.join(p).to_str().unwrap().to_string();

    // In: into an existing directory, and as a new name.
    env.ok(&["cp", &h("file.txt"), "box:/tmp"]);
    env.ok(&["cp", &h("dir"), "box:/tmp/renamed"]);
    assert_eq!(
        env.ok(&[
            "exec",
            "box",
            "cat",
            "/tmp/file.txt",
            "/tmp/renamed/sub/deep"
        ]),
        "from the host\ndeep\n"
    );
    assert_eq!(
        env.ok(&["exec", "box", "stat", "-c", "%u", "/tmp/file.txt"]),
        "0\n"
    );
    // Out: a file into a directory, a directory as a new name, to stdout.
    env.ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "mkdir -p /out/a && echo made > /out/a/f && chmod 750 /out/a",
    ]);
    let back = env.path().join("back");
    std::fs::create_dir(&back).unwrap();
    env.ok(&["cp", "box:/etc/hostname", back.to_str().unwrap()]);
    assert!(back.join("hostname").is_file());
    env.ok(&["cp", "box:/out/a", back.join("copy").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("copy/f")).unwrap(),
        "made\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(back.join("copy"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    let out = env.run(&["cp", "box:/out/a/f", "-"]);
    assert_eq!(code(&out), 0);
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["f"]);

    // -a keeps owners (in) and setuid bits (out); without it root owns
    // what comes in, and a container's setuid file reaches the host
    // without its bit. -L copies what a link points to, both ways.
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(host.join("file.txt"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::symlink("file.txt", host.join("link")).unwrap();
    env.ok(&["cp", "-a", &h("file.txt"), "box:/tmp/owned"]);
    env.ok(&["cp", &h("link"), "box:/tmp/link"]);
    env.ok(&["cp", "-L", &h("link"), "box:/tmp/followed"]);
    assert_eq!(
        env.ok(&[
            "exec",
            "box",
            "sh",
            "-c",
            "stat -c %u:%g /tmp/owned; readlink /tmp/link; cat /tmp/followed"
        ]),
        "1234:1234\nfile.txt\nfrom the host\n"
    );
    env.ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "echo s > /out/suid && chown 1000:1000 /out/suid && chmod 4755 /out/suid && ln -s suid /out/sl",
    ]);
    let to = |name: &str| back.join(name).to_str().unwrap().to_string();
    env.ok(&["cp", "box:/out/suid", &to("plain")]);
    env.ok(&["cp", "-a", "box:/out/suid", &to("kept")]);
    env.ok(&["cp", "box:/out/sl", &to("asis")]);
    env.ok(&["cp", "-L", "box:/out/sl", &to("deref")]);
    let plain = std::fs::metadata(back.join("plain")).unwrap();
    assert_eq!((plain.mode() & 0o7777, plain.uid()), (0o755, 0));
    let kept = std::fs::metadata(back.join("kept")).unwrap();
    assert_eq!((kept.mode() & 0o7777, kept.uid()), (0o4755, 1000));
    assert!(std::fs::symlink_metadata(back.join("asis"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(back.join("deref")).unwrap(), "s\n");

    // `cp - C:DIR`: a tar archive on stdin, extracted into DIR, running
    // (here) or stopped (below); DEST must be a directory.
    check_cp_from_stdin(&env, "box");
    // The container's tar says what is missing (not the empty archive's
    // unpacking after it).
    let missing = env.run(&["cp", "box:/nosuch", &h("never")]);
    assert_eq!(code(&missing), 125);
    let said = stderr(&missing);
    assert!(
        said.contains("copying box:/nosuch: tar: ") && said.contains("No such file"),
        "{said}"
    );
    assert!(!host.join("never").exists());

    // A hostile container: its "tar" prints an archive whose second entry
    // goes through a symlink the first one made, towards the host's files.
    let victim = env.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_mode(0o777);
    b.append_link(&mut link, "x/escape", &victim).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_size(6);
    file.set_mode(0o644);
    file.set_cksum();
    b.append_data(&mut file, "x/escape/pwned", &b"owned\n"[..])
        .unwrap();
    std::fs::write(host.join("evil.tar"), b.into_inner().unwrap()).unwrap();
    env.ok(&["cp", &h("evil.tar"), "box:/evil.tar"]);
    env.ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "rm /bin/tar && printf '#!/bin/sh\\ncat /evil.tar\\n' > /bin/tar && chmod 755 /bin/tar",
    ]);
    let land = env.path().join("land");
    std::fs::create_dir(&land).unwrap();
    let out = env.run(&["cp", "box:/x", land.to_str().unwrap()]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outside of destination"),
        "{}",
        stderr(&out)
    );
    assert!(
        !victim.join("pwned").exists(),
        "nothing written through the symlink"
    );

    // A stopped container: its own files, both ways, with its paths
    // resolved inside its root (a symlink up and out lands in its /etc,
    // never the host's), and its root unmounted again after each copy.
    // Its volumes are reached as when it runs (docker's rule, and VM
    // mode's): a read-write one both ways, a read-only one only out.
    let (rw, ro) = (env.path().join("rw-vol"), env.path().join("ro-vol"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("given"), "read-only volume\n").unwrap();
    let (rw_flag, ro_flag) = (
        format!("{}:/data", rw.display()),
        format!("{}:/given:ro", ro.display()),
    );
    env.ok(&[
        "run",
        "--name",
        "gone",
        "-v",
        &rw_flag,
        "-v",
        &ro_flag,
        "demo",
        "sh",
        "-c",
        "echo inside > /etc/capsa-cp-marker; ln -s ../../../../../../etc /up; \
         mkdir /clash && head -c 1000000 /dev/zero > /clash/big; echo kept > /data/made",
    ]);
    env.ok(&["cp", &h("file.txt"), "gone:/data/in.txt"]);
    assert_eq!(
        std::fs::read_to_string(rw.join("in.txt")).unwrap(),
        "from the host\n",
        "the copy went into the volume, not under it"
    );
    let from_volumes = env.run(&["cp", "gone:/given/given", "-"]);
    assert!(
        stdout(&from_volumes).contains("read-only volume"),
        "{}",
        stderr(&from_volumes)
    );
    assert_eq!(
        env.ok(&["cp", "gone:/data/made", &to("made")]),
        "",
        "out of the read-write volume"
    );
    assert_eq!(
        std::fs::read_to_string(back.join("made")).unwrap(),
        "kept\n"
    );
    let refused = env.run(&["cp", &h("file.txt"), "gone:/given/"]);
    assert_eq!(code(&refused), 125, "{}", stderr(&refused));
    assert!(!ro.join("file.txt").exists(), "written into a :ro volume");
    let marker = back.join("marker");
    env.ok(&["cp", "gone:/up/capsa-cp-marker", marker.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "inside\n");
    env.ok(&["cp", &h("file.txt"), "gone:/up/"]);
    assert!(
        !std::path::Path::new("/etc/file.txt").exists(),
        "written on the host"
    );
    let gone = env.ok(&["inspect", "-f", "{{.Id}}", "gone"]);
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(gone.trim()))
            .count()
    };
    assert_eq!(mounted(), 0, "a stopped container's root stays mounted");
    let out = env.run(&["cp", "gone:/nope", back.to_str().unwrap()]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("/nope"), "{}", stderr(&out));
    env.ok(&["cp", "gone:/up", back.join("up").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_link(back.join("up")).unwrap(),
        std::path::Path::new("../../../../../../etc"),
        "a symlink comes out as a link"
    );
    // A copy the host side gives up on (a file where the directory would
    // go) fails at once, and does not wait on a writer stuck on a full pipe.
    std::fs::write(back.join("clash"), "a file").unwrap();
    let mut cp = env
        .cmd(&["cp", "gone:/clash", back.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while cp.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(60) {
            let _ = cp.kill();
            panic!("cp of a refused copy hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = cp.wait_with_output().unwrap();
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("clash"), "{}", stderr(&out));
    let seen = env.run(&["cp", "gone:/etc/file.txt", "-"]);
    assert!(stdout(&seen).contains("from the host"), "{}", stderr(&seen));
    // The owners as with a running one; -L follows the link up and out
    // inside the container's root.
    env.ok(&["cp", "-a", &h("file.txt"), "gone:/etc/kept.txt"]);
    let uid_of = |path: &str| {
        let out = env.run(&["cp", path, "-"]);
        let mut ar = tar::Archive::new(&out.stdout[..]);
        let e = ar.entries().unwrap().next().unwrap().unwrap();
        e.header().uid().unwrap()
    };
    assert_eq!(uid_of("gone:/etc/file.txt"), 0);
    assert_eq!(uid_of("gone:/etc/kept.txt"), 1234);
    env.ok(&["cp", "-L", "gone:/up", &to("up-followed")]);
    assert!(back.join("up-followed/capsa-cp-marker").is_file());
    // `cp - C:DIR` into the stopped one too (see above).
    check_cp_from_stdin(&env, "gone");
    assert_eq!(mounted(), 0);
    assert_refused(
        &env,
        &[
            (
                vec!["cp", &h("file.txt"), back.to_str().unwrap()],
                "CONTAINER:PATH",
            ),
            (vec!["cp", &h("nosuch"), "box:/tmp"], "nosuch"),
            (
                vec!["cp", "nosuchbox:/etc", back.to_str().unwrap()],
                "nosuchbox",
            ),
        ],
    );
    env.ok(&["rm", "-f", "box", "gone"]);
    env.assert_no_leaks(&[id]);
}

/// `cp - C:/tmp` of a small archive, read back; `cp - C:FILE` refused.
fn check_cp_from_stdin(env: &Env, c: &str) {
    let mut b = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_cksum();
    b.append_data(&mut header, "piped/x", &b"piped\n"[..])
        .unwrap();
    let archive = b.into_inner().unwrap();
    let put = env.run_stdin(&["cp", "-", &format!("{c}:/tmp")], &archive);
    assert_eq!(code(&put), 0, "{c}: {}", stderr(&put));
    let back = env.run(&["cp", &format!("{c}:/tmp/piped/x"), "-"]);
    assert!(stdout(&back).contains("piped\n"), "{c}");
    let refused = env.run_stdin(&["cp", "-", &format!("{c}:/tmp/piped/x")], &archive);
    assert_eq!(code(&refused), 125, "{c}");
    assert!(
        stderr(&refused).contains("no such directory in the container"),
        "{c}: {}",
        stderr(&refused)
    );
}

#[test]
fn cap_add_and_cap_drop_change_the_set_and_the_filter_with_it() {
    let env = Env::with_demo();
    let capeff = |flags: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["demo", "sh", "-c", "grep CapEff /proc/self/status"]);
        env.ok(&args)
            .trim()
            .trim_start_matches("CapEff:")
            .trim()
            .to_string()
    };
    assert_eq!(capeff(&[]), "00000000800405fb");
    assert_eq!(capeff(&["--cap-add", "NET_RAW"]), "00000000800425fb");
    assert_eq!(capeff(&["--cap-drop", "ALL"]), "0000000000000000");
    assert_eq!(
        capeff(&["--cap-drop", "ALL", "--cap-add", "CAP_KILL"]),
        "0000000000000020"
    );
    // SYS_ADMIN opens mount in the filter too (docker's rule); without it
    // the same mount is refused.
    let mount = "mkdir -p /m && mount -t tmpfs t /m && echo mounted";
    let out = env.run(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "demo",
        "sh",
        "-c",
        mount,
    ]);
    assert_eq!(stdout(&out), "mounted\n", "{}", stderr(&out));
    let out = env.run(&["run", "--rm", "demo", "sh", "-c", mount]);
    assert_ne!(code(&out), 0);
    let out = env.run(&["run", "--rm", "--cap-add", "BOGUS", "demo", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("--cap-add BOGUS: no such capability"),
        "{}",
        stderr(&out)
    );
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

#[test]
fn syscalls_podman_blocks_are_refused_and_a_capability_opens_its_own() {
    let env = Env::with_demo();
    let helpers = capsa_tests::helpers_dir();
    let probe = |flags: &[&str]| {
        let mount = format!("{}:/h:ro", helpers.path().display());
        let mut args = vec!["run", "--rm", "-v", &mount];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["demo", "/h/sysprobe"]);
        env.ok(&args)
    };
    // On the host the kernel answers each (EBADF, EINVAL): the calls are real.
    let host = std::process::Command::new(helpers.path().join("sysprobe"))
        .output()
        .unwrap();
    assert!(
        !stdout(&host).lines().any(|l| l.ends_with(" 1")),
        "{}",
        stdout(&host)
    );
    // name → errno, for the probes whose answer a profile decides
    let answers = |out: String| -> BTreeMap<String, String> {
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let expect = |got: &BTreeMap<String, String>, want: &[(&str, &str)]| {
        for (name, errno) in want {
            assert_eq!(got[*name], *errno, "{name}: {got:?}");
        }
    };
    let host = answers(stdout(&host));
    assert_eq!(host.len(), 11);
    assert!(host.values().all(|e| e != "1" && e != "38"), "{host:?}");
    // The default profile: podman's refusals (EPERM), the allow list's
    // default for a syscall newer than its table and a persona docker does
    // not allow (ENOSYS), a netlink audit socket (EINVAL, as podman).
    let inside = answers(probe(&[]));
    let refused = [
        ("quotactl_fd", "1"),
        ("migrate_pages", "1"),
        ("process_madvise", "1"),
        ("futex_waitv", "1"),
        ("set_mempolicy_home_node", "1"),
        ("cachestat", "1"),
        ("vmsplice", "1"),
        ("futex_wake", "38"),
        ("netlink_audit", "22"),
        ("personality_no_randomize", "1"),
        ("personality_bsd", "38"),
    ];
    expect(&inside, &refused);
    // SYS_NICE opens migrate_pages and set_mempolicy_home_node, SYS_PTRACE
    // process_madvise, AUDIT_WRITE the audit socket (docker's rules); the
    // rest stay refused.
    let opened = answers(probe(&[
        "--cap-add",
        "SYS_NICE",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-add",
        "AUDIT_WRITE",
    ]));
    for name in [
        "migrate_pages",
        "process_madvise",
        "set_mempolicy_home_node",
        "netlink_audit",
    ] {
        assert_eq!(opened[name], host[name], "{name}: {opened:?}");
    }
    expect(
        &opened,
        &[
            ("quotactl_fd", "1"),
            ("futex_waitv", "1"),
            ("cachestat", "1"),
        ],
    );
    // No filter: the kernel answers every call, as on the host.
    for flags in [
        &["--security-opt", "seccomp=unconfined"][..],
        &["--privileged"][..],
    ] {
        assert_eq!(answers(probe(flags)), host, "{flags:?}");
    }
    // podman's own profile file (docker's JSON format) gives podman's
    // answers: its EPERM list, its default ENOSYS, its audit rule.
    let podman = answers(probe(&[
        "--security-opt",
        "seccomp=/usr/share/containers/seccomp.json",
    ]));
    expect(
        &podman,
        &[
            ("vmsplice", "1"),
            ("migrate_pages", "1"),
            ("quotactl_fd", "38"),
            ("futex_wake", "38"),
            ("netlink_audit", "22"),
        ],
    );
    // A bad profile or option is refused before anything is made.
    let bad = helpers.path().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    for (opt, want) in [
        (
            format!("seccomp={}", bad.display()),
            "the profile is not valid",
        ),
        ("seccomp=/no/such/profile.json".to_string(), "No such file"),
        ("apparmor=my-profile".to_string(), "not supported"),
        ("no-new-privileges=false".to_string(), "sets no_new_privs"),
    ] {
        let out = env.run(&["run", "--rm", "--security-opt", &opt, "demo", "true"]);
        assert_eq!(code(&out), 125, "{opt}");
        assert!(stderr(&out).contains(want), "{opt}: {}", stderr(&out));
    }
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// A chatty container's log stays within `--log-opt max-size × max-file`:
/// the oldest output is dropped, `logs` reads the rotated files in order
/// (following one across rotations too), and bad options are refused
/// before anything is made.
#[test]
fn the_log_is_rotated_and_bounded() {
    let env = Env::with_demo();
    // 3000 lines in bursts of 150 (each file holds about 450 lines), so
    // the follower's 50 ms polls see every rotation.
    let script = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); \
                  [ $((i % 150)) = 0 ] && sleep 0.1; done";
    let id = env.ok(&[
        "run",
        "-d",
        "--log-opt",
        "max-size=8k",
        "--log-opt",
        "max-file=3",
        "demo",
        "sh",
        "-c",
        &format!("sleep 0.5; {script}"),
    ]);
    let id = id.trim();
    // Followed from the start, across every rotation, to the exit.
    let followed = env.ok(&["logs", "-f", id]);
    let dir = env.path().join("containers").join(id);
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["container.log", "container.log.1", "container.log.2"]
    );
    assert!(files.iter().all(|(_, len)| *len <= 8192), "{files:?}");
    let kept = env.ok(&["logs", id]);
    let lines: Vec<&str> = kept.lines().collect();
    assert_eq!(lines.last(), Some(&"line 2999"));
    assert!(
        !kept.contains("line 0\n") && lines.len() < 3000,
        "{}",
        lines.len()
    );
    // The kept lines are the newest ones, in order, none missing.
    let first: usize = lines[0].strip_prefix("line ").unwrap().parse().unwrap();
    let want: Vec<String> = (first..3000).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want);
    // `logs -f` saw every line as it was written.
    let all: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(followed, all);
    let inspect = env.ok(&["inspect", "-f", "{{json .HostConfig.LogConfig}}", id]);
    assert!(inspect.contains(r#""max-size":"8192""#), "{inspect}");
    env.ok(&["rm", id]);
    for (opt, want) in [
        ("max-size=1", "at least 4k"),
        ("max-file=0", "1 or more"),
        ("mode=non-blocking", "not supported"),
    ] {
        let out = env.run(&["run", "--rm", "--log-opt", opt, "demo", "true"]);
        assert_eq!(code(&out), 125, "{opt}");
        assert!(stderr(&out).contains(want), "{opt}: {}", stderr(&out));
    }
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[]);
}

/// `system df` counts what each kind holds and what is unused; `system
/// prune` removes the stopped containers, dangling images and build cache
/// (asking first), `-a --volumes` every unused image and volume, and what
/// it freed is gone from the disk.
#[test]
fn system_df_and_prune() {
    let env = Env::with_demo();
    let df = || -> BTreeMap<String, serde_json::Value> {
        env.ok(&["system", "df", "--format", "json"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["Type"].as_str().unwrap().to_string(), v)
            })
            .collect()
    };
    // A stopped container whose changes become an unnamed image, a running
    // one, an unused named volume.
    env.ok(&[
        "run",
        "--name",
        "done",
        "demo",
        "sh",
        "-c",
        "head -c 3000000 /dev/urandom > /blob",
    ]);
    let dangling = env.ok(&["commit", "done"]);
    let dangling = dangling.trim();
    env.ok(&["run", "-d", "--name", "live", "demo", "sleep", "300"]);
    env.ok(&["volume", "create", "unused"]);
    let d = df();
    let count = |k: &str, f: &str| d[k][f].as_str().unwrap().to_string();
    assert_eq!(count("Images", "TotalCount"), "2", "{d:?}");
    assert_eq!(count("Images", "Active"), "1");
    assert_eq!(count("Containers", "TotalCount"), "2");
    assert_eq!(count("Containers", "Active"), "1");
    assert_eq!(count("Local Volumes", "TotalCount"), "1");
    assert_eq!(count("Local Volumes", "Active"), "0");
    // the unnamed image's 3 MB layer is reclaimable, the stopped
    // container's 3 MB writable layer too
    assert!(count("Images", "Reclaimable").contains("MB ("), "{d:?}");
    assert!(count("Containers", "Reclaimable").contains("MB"), "{d:?}");

    // Not confirmed: nothing goes.
    let out = env.run_stdin(&["system", "prune"], b"n\n");
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("WARNING! This will remove"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.container_ids().len(), 2);

    let before = capsa_tests::files_under(env.path()).len();
    let out = env.ok(&["system", "prune", "-f"]);
    assert!(
        out.contains("Deleted Containers:") && out.contains("Deleted Images:"),
        "{out}"
    );
    assert!(out.contains(&dangling["sha256:".len()..]), "{out}");
    assert!(out.contains("Total reclaimed space: "), "{out}");
    assert!(!out.contains("Total reclaimed space: 0B"), "{out}");
    assert!(capsa_tests::files_under(env.path()).len() < before);
    assert_eq!(env.container_ids().len(), 1);
    let images = env.ok(&["images", "-q"]);
    assert_eq!(images.lines().count(), 1, "demo stays: live uses it");
    assert!(env.ok(&["volume", "ls", "-q"]).contains("unused"));

    env.ok(&["rm", "-f", "live"]);
    let out = env.ok(&["system", "prune", "-a", "--volumes", "-f"]);
    assert!(out.contains("Deleted Volumes:\nunused"), "{out}");
    assert!(env.ok(&["images", "-q"]).trim().is_empty());
    assert!(env.ok(&["volume", "ls", "-q"]).trim().is_empty());
    let d = df();
    for k in ["Images", "Containers", "Local Volumes", "Build Cache"] {
        assert_eq!(d[k]["TotalCount"], "0", "{k}: {d:?}");
        assert_eq!(d[k]["Size"], "0B", "{k}: {d:?}");
    }
    env.assert_no_leaks(&[]);
}

/// docker's restart policies: on-failure:N runs a failing container N more
/// times, always restarts one that exits 0 until it is stopped by hand (and
/// a stop calls off a pending restart), a clean exit is not a failure, and
/// `--restart` with `--rm` is refused.
#[test]
fn restart_policies_start_the_container_again() {
    let env = Env::with_demo();
    let field = |id: &str, f: &str| env.ok(&["inspect", "-f", f, id]).trim().to_string();
    let settle = |id: &str, want: &dyn Fn(&str, &str) -> bool| {
        let start = std::time::Instant::now();
        loop {
            let (count, status) = (
                field(id, "{{.RestartCount}}"),
                field(id, "{{.State.Status}}"),
            );
            if want(&count, &status) {
                return count;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "{id}: RestartCount {count}, status {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let failing = env.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "demo",
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    let failing = failing.trim();
    settle(failing, &|c, s| c == "2" && s == "exited");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(field(failing, "{{.RestartCount}}"), "2", "a third restart");
    assert_eq!(env.ok(&["logs", failing]), "run\nrun\nrun\n");
    assert_eq!(field(failing, "{{.State.ExitCode}}"), "3");
    assert_eq!(
        field(failing, "{{json .HostConfig.RestartPolicy}}"),
        r#"{"MaximumRetryCount":2,"Name":"on-failure"}"#
    );

    let clean = env.ok(&["run", "-d", "--restart", "on-failure", "demo", "true"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(field(clean.trim(), "{{.RestartCount}}"), "0");

    let always = env.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "demo",
        "sh",
        "-c",
        "echo up; sleep 0.3",
    ]);
    let always = always.trim();
    // Between runs (the back-off doubles) it is docker's "Restarting".
    settle(always, &|c, s| {
        c.parse::<u32>().unwrap() >= 2 && s == "restarting"
    });
    let start = std::time::Instant::now();
    loop {
        let ps = env.ok(&["ps", "-a", "--format", "{{.ID}} {{.Status}} {{.State}}"]);
        let ps = ps
            .lines()
            .find_map(|l| l.strip_prefix(&always[..12]))
            .unwrap_or_default()
            .to_string();
        let state = field(always, "{{.State.Status}} {{.State.Restarting}}");
        if ps.starts_with(" Restarting (0) ")
            && ps.ends_with(" restarting")
            && state == "restarting true"
        {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 30,
            "ps never showed it restarting: {ps}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    env.ok(&["stop", always]);
    let count = field(always, "{{.RestartCount}}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        field(always, "{{.RestartCount}}"),
        count,
        "restarted after stop"
    );
    assert_eq!(field(always, "{{.State.Status}}"), "exited");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let filter = format!("container={always}");
    let events = env.ok(&[
        "events", "--since", "1m", "--until", &now, "--filter", &filter,
    ]);
    assert!(events.contains("restart"), "{events}");

    let out = env.run(&["run", "--rm", "--restart", "always", "demo", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("cannot be used with --rm"),
        "{}",
        stderr(&out)
    );
    for id in [failing, clean.trim(), always] {
        env.ok(&["rm", "-f", id]);
    }
    env.assert_no_leaks(&[]);
}

/// `--storage-opt size` (#15): the writable layer is a disk of that size,
/// loop-mounted while the root is: a write past it fails, what fits is kept
/// across stop/start and in a commit of the stopped container, and no loop
/// device or mount outlives the running container or `rm`.
#[test]
fn storage_opt_size_bounds_the_writable_layer() {
    let env = Env::with_demo();
    let full = env.ok(&[
        "run",
        "--rm",
        "--storage-opt",
        "size=32m",
        "demo",
        "sh",
        "-c",
        "head -c 50000000 /dev/zero > /big 2>/dev/null; echo rc=$?; test $(wc -c < /big) -lt 33554432 && echo bounded",
    ]);
    assert_eq!(full, "rc=1\nbounded\n");

    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "q",
        "--storage-opt",
        "size=32m",
        "demo",
        "sh",
        "-c",
        "echo kept > /kept; touch /ready; sleep 300",
    ]);
    let id = id.trim().to_string();
    env.wait_for_file("q", "/ready");
    let backing = || {
        capsa_tests::loop_devices()
            .into_iter()
            .filter(|(_, f)| f.contains(&id))
            .count()
    };
    assert_eq!(backing(), 1, "one loop device while it runs");
    assert_eq!(
        env.ok(&["inspect", "-f", "{{.HostConfig.StorageOpt.size}}", "q"]),
        "33554432\n"
    );
    env.ok(&["stop", "-t", "1", "q"]);
    assert_eq!(backing(), 0, "the loop device goes with the stop");
    env.ok(&["commit", "q", "sized:v1"]);
    assert_eq!(backing(), 0, "commit mounts the disk only while it reads");
    assert_eq!(
        env.ok(&["run", "--rm", "sized:v1", "cat", "/kept"]),
        "kept\n"
    );
    env.ok(&["start", "q"]);
    assert_eq!(env.ok(&["exec", "q", "cat", "/kept"]), "kept\n");
    env.ok(&["rm", "-f", "q"]);
    env.ok(&["rmi", "sized:v1"]);
    assert_refused(
        &env,
        &[
            (
                vec!["run", "--storage-opt", "size=1m", "demo", "true"],
                "--storage-opt size=1m: give at least 16m",
            ),
            (
                vec!["run", "--storage-opt", "dm.basesize=1g", "demo", "true"],
                "not supported (give size=SIZE)",
            ),
        ],
    );
    assert!(env.container_ids().is_empty());
    env.assert_no_leaks(&[id]);
}

/// Healthchecks as docker's daemon runs them (#14): the image's
/// HEALTHCHECK or `--health-*`, exec'd in the container every interval;
/// `ps` and `inspect` show the status and the last probes, a test past its
/// timeout is killed, the checker ends with the container, and a bad flag
/// is refused before anything is made.
#[test]
fn healthchecks_run_while_the_container_runs() {
    use std::time::{Duration, Instant};
    let env = Env::with_demo();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM demo\nHEALTHCHECK --interval=200ms --retries=2 CMD test -f /tmp/ok && echo fine\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "checked", ctx.path().to_str().unwrap()]);
    let health = |name: &str| env.ok(&["inspect", "-f", "{{.State.Health.Status}}", name]);
    let wait_health = |name: &str, want: &str| {
        let t0 = Instant::now();
        while health(name).trim() != want {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name} never {want}: {}",
                env.ok(&["inspect", "-f", "{{json .State.Health}}", name])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    env.ok(&[
        "run",
        "-d",
        "--name",
        "hc",
        "--network",
        "none",
        "checked",
        "sleep",
        "300",
    ]);
    let id = env
        .ok(&["inspect", "-f", "{{.Id}}", "hc"])
        .trim()
        .to_string();
    assert_eq!(
        env.ok(&["inspect", "-f", "{{json .Config.Healthcheck.Test}}", "hc"]),
        "[\"CMD-SHELL\",\"test -f /tmp/ok && echo fine\"]\n"
    );
    wait_health("hc", "unhealthy");
    assert!(env
        .ok(&["ps", "--format", "{{.Status}}", "--filter", "name=hc"])
        .contains("(unhealthy)"));
    assert_eq!(
        env.ok(&["ps", "-q", "--filter", "health=unhealthy"]).len(),
        13
    );
    env.ok(&["exec", "hc", "touch", "/tmp/ok"]);
    wait_health("hc", "healthy");
    assert!(env
        .ok(&["ps", "--format", "{{.Status}}", "--filter", "name=hc"])
        .contains("(healthy)"));
    let state: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "-f", "{{json .State.Health}}", "hc"])).unwrap();
    assert_eq!(state["FailingStreak"], 0, "{state}");
    let last = state["Log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["ExitCode"].as_i64(), last["Output"].as_str()),
        (Some(0), Some("fine\n")),
        "{state}"
    );
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let events = env.ok(&[
        "events",
        "--since",
        "5m",
        "--until",
        &until,
        "--filter",
        "container=hc",
    ]);
    assert!(
        events.contains("health_status: unhealthy") && events.contains("health_status: healthy"),
        "{events}"
    );
    // The checker ends with the container.
    env.ok(&["stop", "-t", "1", "hc"]);
    let t0 = Instant::now();
    while !capsa_tests::monitor_processes(&id).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?}",
            capsa_tests::monitor_processes(&id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // --health-* over the image's; a test past its timeout is killed.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--network",
        "none",
        "--health-cmd",
        "sleep 47",
        "--health-timeout",
        "200ms",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "demo",
        "sleep",
        "300",
    ]);
    wait_health("slow", "unhealthy");
    std::thread::sleep(Duration::from_secs(1));
    let log = env.ok(&["inspect", "-f", "{{json .State.Health.Log}}", "slow"]);
    assert!(
        log.contains("Health check exceeded timeout (200ms)"),
        "{log}"
    );
    let sleeping = env.ok(&[
        "exec",
        "slow",
        "sh",
        "-c",
        "ps | grep -c '[s]leep 47' || true",
    ]);
    assert!(
        sleeping.trim().parse::<u32>().unwrap() <= 1,
        "probes left running: {sleeping}"
    );

    // --no-healthcheck: none, whatever the image says.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "quiet",
        "--network",
        "none",
        "--no-healthcheck",
        "checked",
        "sleep",
        "300",
    ]);
    assert_eq!(health("quiet"), "<no value>\n");
    assert!(!env.ok(&["ps", "--filter", "name=quiet"]).contains("health"));

    // Bad flags: one line, nothing made.
    refused_in_one_line(
        &env,
        &[
            vec!["--health-interval", "soon", "--health-cmd", "true"],
            vec!["--health-retries", "2"],
            vec!["--no-healthcheck", "--health-cmd", "true"],
        ],
    );

    env.ok(&["rm", "-f", "hc", "slow", "quiet"]);
    env.assert_no_leaks(&[]);
}

/// docker's `--mount` long form (bind, volume, tmpfs) and `--shm-size`
/// (#13): the same mounts as -v and --tmpfs give; a bad one is one line
/// and makes nothing.
#[test]
fn mount_and_shm_size_as_docker_takes_them() {
    let env = Env::with_demo();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "hi\n").unwrap();
    let src = host.path().to_str().unwrap();
    let bind = format!("type=bind,src={src},dst=/data,readonly");
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        &bind,
        "demo",
        "sh",
        "-c",
        "cat /data/f; touch /data/x 2>/dev/null || echo read-only",
    ]);
    assert_eq!(out, "hi\nread-only\n");
    env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        "type=volume,source=mvol,target=/v",
        "demo",
        "sh",
        "-c",
        "echo kept > /v/f",
    ]);
    // type defaults to volume, as docker's.
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        "src=mvol,dst=/v,ro",
        "demo",
        "cat",
        "/v/f",
    ]);
    assert_eq!(out, "kept\n");
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        "type=tmpfs,destination=/t,tmpfs-size=1m,tmpfs-mode=700",
        "--shm-size",
        "256m",
        "demo",
        "sh",
        "-c",
        "grep -E ' /(t|dev/shm) ' /proc/mounts | cut -d' ' -f2,4 | sort",
    ]);
    assert_eq!(
        out,
        "/dev/shm rw,nosuid,nodev,noexec,relatime,size=262144k\n/t rw,nosuid,nodev,noexec,relatime,size=1024k,mode=700\n"
    );
    refused_in_one_line(
        &env,
        &[
            vec!["--mount", "type=bind,dst=/x"],
            vec!["--mount", "type=bind,src=/nonexistent-capsa,dst=/x"],
            vec!["--mount", "type=bind,src=relative,dst=/x"],
            vec!["--mount", "type=nfs,dst=/x"],
            vec!["--mount", "type=bind,src=/tmp,dst=/x,bogus=1"],
            vec!["--mount", "type=tmpfs,dst=/t,tmpfs-mode=9z"],
            vec!["--shm-size", "lots"],
            vec!["--shm-size", "1g", "--tmpfs", "/dev/shm"],
        ],
    );
    env.ok(&["volume", "rm", "mvol"]);
    env.assert_no_leaks(&[]);
}

/// `-v`'s options as docker and podman take them: mount flags, `U`
/// (podman: the source becomes the container user's, without following a
/// symlink out of it), `nocopy` (docker: a new named volume stays empty),
/// `z`/`Z` accepted on a host without SELinux; a mount under /etc is the
/// user's in inspect; a bad option is one line and makes nothing.
#[test]
fn volume_options_as_docker_and_podman_take_them() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::with_demo();
    let host = tempfile::tempdir().unwrap();
    let dir = host.path();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), "x\n").unwrap();
    let outside = host.path().join("outside");
    std::fs::write(&outside, "not the container's\n").unwrap();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/f"), "x\n").unwrap();
    std::fs::copy("/bin/true", data.join("t")).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
    let v = format!("{}:/data:U,noexec,nosuid,Z", data.display());
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "1000:1000",
        "-v",
        &v,
        "demo",
        "sh",
        "-c",
        "stat -c '%u:%g' /data/sub/f; echo w > /data/w && echo wrote; /data/t 2>/dev/null || echo no-exec; grep ' /data ' /proc/self/mounts | grep -o 'noexec\\|nosuid' | sort | tr '\\n' ' '",
    ]);
    assert_eq!(out, "1000:1000\nwrote\nno-exec\nnoexec nosuid ");
    for f in ["", "sub", "sub/f", "t", "w", "link"] {
        let m = std::fs::symlink_metadata(data.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{f}");
    }
    let m = std::fs::metadata(&outside).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0), "U followed a symlink out");

    // ro with z; a mount under /etc listed in inspect.
    let v = format!("{}:/etc/app:ro,z", dir.join("sub").display());
    env.ok(&[
        "create",
        "--name",
        "etc-app",
        "--network",
        "none",
        "-v",
        &v,
        "demo",
        "cat",
        "/etc/app/f",
    ]);
    let mounts = env.ok(&["inspect", "-f", "{{json .Mounts}}", "etc-app"]);
    assert!(
        mounts.contains(r#""Destination":"/etc/app","Mode":"ro","RW":false"#),
        "{mounts}"
    );
    env.ok(&["rm", "etc-app"]);

    // nocopy: the image's /home holds user/; a new volume gets it unless
    // nocopy (-v's option, --mount's volume-nocopy).
    let ls = |flag: &str, value: &str| {
        env.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            flag,
            value,
            "demo",
            "ls",
            "-A",
            "/home",
        ])
    };
    assert_eq!(ls("-v", "copied:/home"), "user\n");
    assert_eq!(ls("-v", "empty:/home:nocopy"), "");
    assert_eq!(ls("--mount", "src=empty2,dst=/home,volume-nocopy"), "");
    env.ok(&["volume", "rm", "copied", "empty", "empty2"]);

    let d = dir.display();
    let bad: Vec<String> = vec![
        format!("{d}:/x:shared"),
        format!("{d}:/x:ro,rw"),
        format!("{d}:/x:exec,noexec"),
        format!("{d}:/x:O"),
        format!("{d}:/x:nocopy"),
        "/usr:/x:U".into(),
        "/:/x:U".into(),
        "/usr/share/../bin:/x:U".into(),
    ];
    let bad: Vec<Vec<&str>> = bad.iter().map(|v| vec!["-v", v.as_str()]).collect();
    refused_in_one_line(&env, &bad);
    env.assert_no_leaks(&[]);
}

/// docker's `--ulimit`, `--stop-signal` and `--stop-timeout` (#13): the
/// limits the container's process has, the signal `stop` sends first and
/// how long it waits before SIGKILL; bad values are one line.
#[test]
fn ulimits_and_the_stop_signal_and_timeout() {
    use std::time::{Duration, Instant};
    let env = Env::with_demo();
    let limits = "awk '/^Max open files/ {print $4, $5} /^Max core file size/ {print $5, $6}' /proc/self/limits";
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=2048:4096",
        "--ulimit",
        "core=-1",
        "demo",
        "sh",
        "-c",
        limits,
    ]);
    assert_eq!(out, "unlimited unlimited\n2048 4096\n");
    // Without --ulimit nofile, capsa's default.
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "demo",
        "sh",
        "-c",
        limits,
    ]);
    assert!(out.ends_with("1024 1024\n"), "{out}");

    env.ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--network",
        "none",
        "--stop-signal",
        "USR1",
        "--ulimit",
        "nproc=500",
        "demo",
        "sh",
        "-c",
        "trap 'echo got-usr1; exit 3' USR1; while :; do sleep 0.1; done",
    ]);
    assert_eq!(
        env.ok(&["inspect", "-f", "{{.Config.StopSignal}} {{json .HostConfig.Ulimits}}", "usr1"]),
        "SIGUSR1 [{\"Hard\":1024,\"Name\":\"nofile\",\"Soft\":1024},{\"Hard\":500,\"Name\":\"nproc\",\"Soft\":500}]\n"
    );
    std::thread::sleep(Duration::from_millis(300));
    env.ok(&["stop", "usr1"]);
    assert_eq!(
        env.ok(&["inspect", "-f", "{{.State.ExitCode}}", "usr1"]),
        "3\n"
    );
    assert!(env.ok(&["logs", "usr1"]).contains("got-usr1"));

    // A process that ignores the stop signal is killed after the
    // container's own timeout (docker's default is 10 s).
    env.ok(&[
        "run",
        "-d",
        "--name",
        "deaf",
        "--network",
        "none",
        "--stop-timeout",
        "1",
        "demo",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.1; done",
    ]);
    assert_eq!(
        env.ok(&["inspect", "-f", "{{.Config.StopTimeout}}", "deaf"]),
        "1\n"
    );
    let t0 = Instant::now();
    env.ok(&["stop", "deaf"]);
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "stop waited {:?}",
        t0.elapsed()
    );
    assert_eq!(
        env.ok(&["inspect", "-f", "{{.State.ExitCode}}", "deaf"]),
        "137\n"
    );

    refused_in_one_line(
        &env,
        &[
            vec!["--ulimit", "bogus=1"],
            vec!["--ulimit", "nofile=10:5"],
            vec!["--ulimit", "nofile"],
            vec!["--stop-signal", "NOPE"],
        ],
    );
    env.ok(&["rm", "usr1", "deaf"]);
    env.assert_no_leaks(&[]);
}

/// `run [--rm] --network none FLAGS… demo true` with each of `bad` is
/// refused with exit 125 and one line, and makes no container.
fn refused_in_one_line(env: &Env, bad: &[Vec<&str>]) {
    let before = env.container_ids().len();
    for flags in bad {
        let out = env.run(
            &[
                &["run", "--rm", "--network", "none"],
                &flags[..],
                &["demo", "true"],
            ]
            .concat(),
        );
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "{flags:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(env.container_ids().len(), before);
}

/// podman's `--uidmap` (#15): the container's root is the first host id
/// of the given range, its files there; a range another container holds,
/// and what capsa cannot map (another start, differing group range), are
/// one line and make nothing.
#[test]
fn uidmap_gives_the_container_the_range_asked_for() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::with_demo();
    let host = tempfile::tempdir().unwrap();
    let dir = host.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let v = format!("{}:/d", dir.display());
    let out = env.ok(&[
        "run",
        "-d",
        "--name",
        "mapped",
        "--network",
        "none",
        "--uidmap",
        "0:700000:65536",
        "-v",
        &v,
        "demo",
        "sh",
        "-c",
        "id -u; awk '{print $1, $2, $3}' /proc/self/uid_map; echo x > /d/f; sleep 300",
    ]);
    let id = out.trim().to_string();
    let mut n = 0;
    while !dir.join("f").exists() && n < 100 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        n += 1;
    }
    assert_eq!(env.ok(&["logs", "mapped"]), "0\n0 700000 65536\n");
    let m = std::fs::metadata(dir.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (700000, 700000));
    assert_eq!(
        env.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.UsernsMode}}|{{json .HostConfig.IdMappings}}",
            "mapped"
        ])
        .trim(),
        r#"|{"GidMap":["0:700000:65536"],"UidMap":["0:700000:65536"]}"#
    );
    refused_in_one_line(
        &env,
        &[
            vec!["--uidmap", "0:765535:10"],
            vec!["--uidmap", "1:800000:10"],
            vec!["--uidmap", "0:800000:10", "--gidmap", "0:900000:10"],
            vec!["--gidmap", "0:800000:10"],
            vec!["--userns", "auto", "--uidmap", "0:800000:10"],
            vec!["--uidmap", "0:800000"],
        ],
    );
    env.ok(&["rm", "-f", "mapped"]);
    env.assert_no_leaks(&[id]);
}

/// `--userns=auto`: root in the container is an unprivileged host uid of
/// the container's own (from capsa's range in /etc/subuid), which owns the
/// image's files through idmapped layers; what it writes to a host
/// directory belongs to that uid; exec'd processes join its namespace.
#[test]
fn userns_auto_makes_root_an_unprivileged_host_uid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::with_demo();
    let vol = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(vol.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--userns=auto",
        "-v",
        &format!("{}:/data", vol.path().display()),
        "demo",
        "sh",
        "-c",
        "id -u; awk '{print $1, $3}' /proc/self/uid_map; stat -c %u:%g /etc/passwd; \
         echo x >> /etc/passwd && echo copied-up; echo hi > /data/f",
    ]);
    assert_eq!(out, "0\n0 65536\n0:0\ncopied-up\n");
    let f = std::fs::metadata(vol.path().join("f")).unwrap();
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap();
    let (start, count) = subuid
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == "capsa")
                .then(|| (f[1].parse::<u32>().unwrap(), f[2].parse::<u32>().unwrap()))
        })
        .expect("capsa's line in /etc/subuid");
    assert!(
        f.uid() >= start && f.uid() < start + count && f.gid() == f.uid(),
        "the file's owner {}:{} is not in capsa's range {start}:{count}",
        f.uid(),
        f.gid()
    );

    // Two containers on the default network (one it joins, made before
    // the user namespace) get disjoint ranges.
    let host_uid = |name: &str| -> u32 {
        let pid = env.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    for n in ["ua", "ub"] {
        env.ok(&[
            "run",
            "-d",
            "--name",
            n,
            "--userns=auto",
            "demo",
            "sleep",
            "300",
        ]);
    }
    let (ua, ub) = (host_uid("ua"), host_uid("ub"));
    assert!(ua.abs_diff(ub) >= 65536, "ranges overlap: {ua} and {ub}");
    assert_eq!(
        env.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.UsernsMode}} {{json .HostConfig.IdMappings.UidMap}}",
            "ua"
        ]),
        format!("auto [\"0:{ua}:65536\"]\n")
    );
    // An exec'd process is in the namespace, confined as the container's
    // first process, and in its network namespace.
    let pid = env.ok(&["inspect", "-f", "{{.State.Pid}}", "ua"]);
    let confinement = |status: &str| -> String {
        status
            .lines()
            .filter(|l| {
                l.starts_with("CapEff:")
                    || l.starts_with("NoNewPrivs:")
                    || l.starts_with("Seccomp:")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let init = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let out = env.ok(&[
        "exec",
        "ua",
        "sh",
        "-c",
        "id -u; awk '{print $1, $2}' /proc/self/uid_map; readlink /proc/self/ns/net; \
         grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    let netns = std::fs::read_link(format!("/proc/{}/ns/net", pid.trim())).unwrap();
    assert_eq!(
        out,
        format!("0\n0 {ua}\n{}\n{}\n", netns.display(), confinement(&init)),
        "exec'd process"
    );
    let out = env.ok(&[
        "exec",
        "-u",
        "1000",
        "ua",
        "sh",
        "-c",
        "id -u; grep CapEff /proc/self/status",
    ]);
    assert_eq!(out, "1000\nCapEff:\t0000000000000000\n");
    // Its host uid: the container's root, not the host's.
    env.ok(&["exec", "-d", "ua", "sleep", "271"]);
    let mut exec_uid = None;
    for _ in 0..100 {
        exec_uid = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (cmd == b"sleep\x00271\0").then(|| std::fs::metadata(e.path()).ok().map(|m| m.uid()))?
        });
        if exec_uid.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(exec_uid, Some(ua), "the exec'd process's host uid");

    // Stopped and started again: the same range, its files still its own,
    // and what `cp` brings in (running or stopped) is its root's.
    let src = vol.path().join("src");
    std::fs::write(&src, "copied").unwrap();
    let src = src.display().to_string();
    env.ok(&["exec", "ua", "sh", "-c", "echo kept > /root/mine"]);
    env.ok(&["cp", &src, "ua:/root/live"]);
    env.ok(&["stop", "-t", "1", "ua"]);
    env.ok(&["cp", &src, "ua:/root/stopped"]);
    env.ok(&["start", "ua"]);
    assert_eq!(host_uid("ua"), ua);
    assert_eq!(
        env.ok(&[
            "exec",
            "ua",
            "sh",
            "-c",
            "stat -c '%u:%g %n' /root/mine /root/live /root/stopped; cat /root/mine"
        ]),
        "0:0 /root/mine\n0:0 /root/live\n0:0 /root/stopped\nkept\n"
    );
    // commit writes the layer with the container's owners, not the host's.
    env.ok(&[
        "exec",
        "ua",
        "sh",
        "-c",
        "touch /root/u; chown 1000:1000 /root/u",
    ]);
    env.ok(&["commit", "ua", "uns-committed"]);
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "uns-committed",
            "stat",
            "-c",
            "%u:%g",
            "/root/mine",
            "/root/u"
        ]),
        "0:0\n1000:1000\n"
    );

    refused_in_one_line(
        &env,
        &[
            vec!["--userns", "keep-id"],
            vec!["--userns", "auto:size=0"],
            vec!["--userns", "auto:size=x"],
            // The image's user 1000 is outside 100 ids.
            vec!["--userns", "auto:size=100", "-u", "1000"],
        ],
    );
    let ids = env.container_ids();
    env.ok(&["rm", "-f", "ua", "ub"]);
    env.assert_no_leaks(&ids);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(".idmapped"),
        "an idmapped layer was left mounted"
    );
}
