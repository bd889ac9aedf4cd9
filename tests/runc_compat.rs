//! capsa's runc-compatible command line, driven the way runc is driven:
//!
//! - directly (`capsa spec`, `create`, `start`, `state`, `list`, `ps`,
//!   `exec`, `events --stats`, `pause`, `resume`, `kill`, `delete`), checking
//!   runc's output formats and exit codes; a bundle with a bad value is
//!   refused with one line naming the field, before anything is made;
//! - by containerd 1.6's stock runc shim (`ctr run --runc-binary capsa`), and
//!   by podman (`podman --runtime capsa`), each with a private daemon/root
//!   under a temp dir (tests/runc_compat.sh does the client steps);
//! - both clients again with `io.capsa.isolation=vm`, in one KVM test-host
//!   boot (this machine's /dev/kvm cannot run the microVM itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use capsa_kernel::test_host::{ExpectRan, TestHost};
use capsa_tests::{capsa_bin, demo_bundle, leaks_of, require_root, stderr, stdout, Env};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/runc_compat.sh");

/// Fails clearly when a client this test drives is not installed.
fn require_tools(tools: &[&str]) {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).exists()))
            .unwrap_or(false);
        assert!(
            found,
            "{t} is not installed: run scripts/setup.sh (it installs containerd and podman)"
        );
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn show(o: &Output) -> String {
    format!(
        "code {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// `capsa state ID` as JSON.
fn state(env: &Env, id: &str) -> Value {
    let out = env.ok(&["state", id]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("state is not JSON ({e}): {out}"))
}

fn wait_status(env: &Env, id: &str, want: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let s = state(env, id);
        if s["status"] == want {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{id} is still {} after 20 s, want {want}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes whose root directory is under `dir`: a container left behind.
fn processes_rooted_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(root) = std::fs::read_link(p.path().join("root")) {
            if root.starts_with(dir) {
                out.push(format!(
                    "process {:?} rooted in {}",
                    p.file_name(),
                    root.display()
                ));
            }
        }
    }
    out
}

/// Sets the bundle's process (args, no terminal) in its config.json.
fn set_process(bundle: &Path, args: &[&str]) {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = Value::Bool(false);
    spec["process"]["args"] = serde_json::json!(args);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

#[test]
fn runc_command_line_directly() {
    let env = Env::with_demo();
    let root = env.path().to_str().unwrap().to_string();
    let bundle = env.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    demo_bundle(&env, &bundle);
    let b = bundle.to_str().unwrap();

    // spec: a default config.json, and runc's refusal to overwrite it.
    env.ok(&["spec", "--bundle", b]);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    assert_eq!(spec["process"]["args"], serde_json::json!(["sh"]));
    assert_eq!(spec["process"]["terminal"], true);
    let again = env.run(&["spec", "--bundle", b]);
    assert_eq!(
        code(&again),
        1,
        "spec over an existing config.json: {}",
        show(&again)
    );

    // features: runc's shape.
    let f: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    assert!(f["ociVersionMax"].is_string() && f["linux"]["namespaces"].is_array());
    assert!(f["annotations"]["io.capsa.isolation"].is_string());

    set_process(
        &bundle,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 0.1; done",
        ],
    );
    // The container's stdio is create's own (runc's pass-through).
    let out_path = env.path().join("c1.out");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let pid_file = env.path().join("c1.pid");
    let created = env
        .cmd(&[
            "--log",
            &format!("{root}/runc.log"),
            "--log-format",
            "json",
            "create",
            "--bundle",
            b,
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdout(Stdio::from(out_file.try_clone().unwrap()))
        .stderr(Stdio::from(out_file))
        .status()
        .unwrap();
    assert!(
        created.success(),
        "create failed: {}",
        std::fs::read_to_string(&out_path).unwrap_or_default()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = state(&env, "c1");
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], "c1");
    assert_eq!(s["pid"], pid, "state pid vs --pid-file");
    assert_eq!(Path::new(s["bundle"].as_str().unwrap()), bundle);
    for k in ["ociVersion", "rootfs", "created", "owner"] {
        assert!(s.get(k).is_some(), "state lacks {k}: {s}");
    }
    assert_eq!(s["owner"], "root", "runc names the owner: {s}");
    // As runc's shows `runc:[2:INIT]` until it starts.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "capsa:[2:INIT]", "the created process's name");
    // The spec names no cgroupsPath: runc's default, `/<id>` in each
    // hierarchy, and nothing named after the library.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!cgroups.contains("youki"), "{cgroups}");
    let limited: Vec<&str> = cgroups
        .lines()
        // "0::/" is the unified hierarchy of a v1 host, which none uses.
        .filter(|l| *l != "0::/")
        .filter(|l| {
            let controllers = l.split(':').nth(1).unwrap_or("");
            controllers.is_empty() || controllers.contains("memory") || controllers == "pids"
        })
        .collect();
    assert!(!limited.is_empty(), "{cgroups}");
    for l in limited {
        assert!(l.ends_with(":/c1"), "not in /c1: {l}");
    }

    // list: runc's table, json and -q.
    let table = env.ok(&["list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["c1", &pid.to_string(), "created", b]);
    let listed: Value = serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["id"], "c1");
    assert_eq!(env.ok(&["list", "-q"]), "c1\n");

    env.ok(&["start", "c1"]);
    wait_status(&env, "c1", "running");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("started")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no output from the container"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = env.run(&["start", "c1"]);
    assert_eq!(
        code(&again),
        1,
        "start of a running container: {}",
        show(&again)
    );

    // ps: the pids as JSON, or ps(1)'s table filtered to the container.
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", "c1"])).unwrap();
    assert!(pids.contains(&pid), "ps {pids:?} lacks init {pid}");
    let table = env.ok(&["ps", "c1"]);
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert!(
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(&pid.to_string())),
        "ps table lacks {pid}:\n{table}"
    );

    // exec: waits and passes the exit code on; flags before the ID.
    let o = env.run(&[
        "exec",
        "--env",
        "X=42",
        "c1",
        "sh",
        "-c",
        "echo from-exec $X; exit 5",
    ]);
    assert_eq!(code(&o), 5, "{}", show(&o));
    assert_eq!(stdout(&o), "from-exec 42\n");
    // --process FILE, --pid-file, --detach (what go-runc and conmon send).
    let mut process = spec["process"].clone();
    process["terminal"] = Value::Bool(false);
    process["args"] = serde_json::json!(["sh", "-c", "echo detached > /dev/shm/d; sleep 1"]);
    let pfile = env.path().join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let epid = env.path().join("exec.pid");
    env.ok(&[
        "exec",
        "--process",
        pfile.to_str().unwrap(),
        "--detach",
        "--pid-file",
        epid.to_str().unwrap(),
        "c1",
    ]);
    assert!(std::fs::read_to_string(&epid)
        .unwrap()
        .trim()
        .parse::<i32>()
        .is_ok());
    let t0 = Instant::now();
    loop {
        let o = env.run(&["exec", "c1", "cat", "/dev/shm/d"]);
        if stdout(&o) == "detached\n" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "detached exec: {}",
            show(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = env.run(&["exec", "c1", "no-such-command"]);
    assert_ne!(code(&o), 0, "{}", show(&o));
    // runc exec confines the process as the container's first one (this
    // bundle is `capsa spec`'s, which like runc's has no seccomp section;
    // tests/container.rs checks the filter itself).
    let status = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/PID/status";
    let init = env.ok(&["exec", "c1", "sh", "-c", &status.replace("PID", "1")]);
    let exec = env.ok(&["exec", "c1", "sh", "-c", &status.replace("PID", "self")]);
    assert_eq!(exec, init, "runc exec differs from the container's process");
    let cg = "cat /proc/PID/cgroup";
    let init = env.ok(&["exec", "c1", "sh", "-c", &cg.replace("PID", "1")]);
    let exec = env.ok(&["exec", "c1", "sh", "-c", &cg.replace("PID", "self")]);
    assert_eq!(exec, init, "runc exec left the container's cgroup");

    // events --stats: one runc stats event.
    let ev: Value = serde_json::from_str(env.ok(&["events", "--stats", "c1"]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], "c1");
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert!(
        ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0,
        "{ev}"
    );

    env.ok(&["pause", "c1"]);
    assert_eq!(state(&env, "c1")["status"], "paused");
    env.ok(&["resume", "c1"]);
    assert_eq!(state(&env, "c1")["status"], "running");

    // delete refuses a running container.
    let o = env.run(&["delete", "c1"]);
    assert_eq!(code(&o), 1, "delete of a running container: {}", show(&o));

    // kill ID (SIGTERM by default, runc's), then the container stops.
    env.ok(&["kill", "c1"]);
    let s = wait_status(&env, "c1", "stopped");
    assert_eq!(s["pid"], 0, "{s}");
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("got-term"));
    let o = env.run(&["kill", "c1", "KILL"]);
    assert_eq!(code(&o), 1, "kill of a stopped container: {}", show(&o));

    // delete; then the container is gone in runc's words.
    env.ok(&["delete", "c1"]);
    let o = env.run(&["state", "c1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", show(&o));
    env.ok(&["delete", "--force", "c1"]); // runc: --force of a missing one succeeds
    for h in capsa_tests::cgroup_hierarchies() {
        assert!(!h.join("c1").exists(), "cgroup left: {}", h.display());
    }
    let left: Vec<_> = paths_under(env.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".bundles/"))
        .collect();
    assert!(left.is_empty(), "staged bundle left: {left:?}");
    let o = env.run(&[
        "--log",
        &format!("{root}/runc.log"),
        "--log-format",
        "json",
        "start",
        "c1",
    ]);
    assert_eq!(code(&o), 1);
    let log = std::fs::read_to_string(format!("{root}/runc.log")).unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error", "{log}");
    assert!(last["msg"].as_str().unwrap().contains("c1"), "{log}");

    // A created container deleted with --force; `kill --all ID 9` and flags
    // after the ID, on a running one.
    set_process(&bundle, &["sleep", "300"]);
    for id in ["c2", "c3"] {
        // Not output(): the container keeps create's stdio open.
        let st = env
            .cmd(&["create", "-b", b, id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "create {id} failed");
    }
    env.ok(&["delete", "c2", "--force"]);
    env.ok(&["start", "c3"]);
    env.ok(&["kill", "--all", "c3", "9"]);
    wait_status(&env, "c3", "stopped");
    env.ok(&["delete", "c3"]);
    assert_eq!(env.ok(&["list", "--format", "json"]).trim(), "null");

    // A signal number that is also a unique prefix of a `capsa run`
    // container's ID is runc's signal for the runc container, and leaves
    // the other one alone (docker's prefix match must not pick it).
    let mut prefixed = None;
    for _ in 0..40 {
        let id = env
            .ok(&["run", "-d", "demo", "sleep", "300"])
            .trim()
            .to_string();
        if id.starts_with(|c: char| ('1'..='9').contains(&c)) {
            prefixed = Some(id);
            break;
        }
        env.ok(&["rm", "-f", &id]);
    }
    let prefixed = prefixed.expect("no container ID starting with 1-9 in 40 tries");
    // The container's PID 1 ignores signals it has no handler for: trap
    // the ones the digit can name (9 is SIGKILL).
    set_process(
        &bundle,
        &[
            "sh",
            "-c",
            "trap 'exit 3' 1 2 3 4 5 6 7 8; while :; do sleep 0.1; done",
        ],
    );
    let st = env
        .cmd(&["create", "-b", b, "c4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "create c4 failed");
    env.ok(&["start", "c4"]);
    // Until the shell has set its trap, PID 1 ignores the signal: repeat.
    let t0 = Instant::now();
    while state(&env, "c4")["status"] != "stopped" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "kill c4 {} did not stop it",
            &prefixed[..1]
        );
        // (It may stop between the look and the kill: then kill fails.)
        let _ = env.run(&["kill", "c4", &prefixed[..1]]);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        env.ok(&["ps"]).contains(&prefixed[..12]),
        "kill c4 {} also killed the `capsa run` container {prefixed}",
        &prefixed[..1]
    );
    env.ok(&["delete", "c4"]);
    // And `delete --force` of a missing runc ID that is such a prefix
    // succeeds quietly (runc's), without touching that container.
    env.ok(&["delete", "--force", &prefixed[..1]]);
    assert!(env.ok(&["ps"]).contains(&prefixed[..12]));
    env.ok(&["rm", "-f", &prefixed]);

    // kill, exec, ps and delete keep docker's meaning for `capsa run`'s
    // containers, and runc's commands do not touch them.
    env.ok(&["run", "-d", "--name", "dock", "demo", "sleep", "300"]);
    assert!(env.ok(&["ps"]).contains("dock"), "docker-style ps");
    assert_eq!(env.ok(&["exec", "dock", "echo", "in-dock"]), "in-dock\n");
    let o = env.run(&["delete", "--force", "dock"]);
    assert_eq!(
        code(&o),
        1,
        "runc delete of a docker-style container: {}",
        show(&o)
    );
    assert_eq!(
        env.ok(&["list", "-q"]),
        "",
        "list shows only runc's containers"
    );
    assert_eq!(env.ok(&["kill", "dock"]), "dock\n"); // docker: SIGKILL, prints the name
    env.ok(&["wait", "dock"]);
    env.ok(&["rm", "dock"]);

    let mut leaks = leaks_of(env.path(), &[]);
    leaks.extend(processes_rooted_in(&bundle));
    assert!(leaks.is_empty(), "leaked: {leaks:#?}");
}

/// runc's `--preserve-fds` (create and exec), `exec --cgroup` and
/// `exec --ignore-paused`, and the spec's `disableOOMKiller` (cgroup v1),
/// each as runc does them; VM mode refuses `--preserve-fds` in one line
/// before it makes anything.
#[test]
fn runc_fds_sub_cgroups_paused_exec_and_oom_killer() {
    use serde_json::json;
    require_root();
    let env = Env::with_demo();
    let bundle = env.path().join("bundle");
    demo_bundle(&env, &bundle);
    let b = bundle.to_str().unwrap();
    env.ok(&["spec", "--bundle", b]);
    set_process(&bundle, &["sh", "-c", "echo from-init >&3; exec sleep 300"]);
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let cgroup = format!("/capsa-rt-fds-{}", std::process::id());
    set_at(&mut spec, "/linux/cgroupsPath", json!(cgroup));
    set_at(&mut spec, "/linux/resources/memory/limit", json!(64 << 20));
    set_at(
        &mut spec,
        "/linux/resources/memory/disableOOMKiller",
        json!(true),
    );
    std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    // capsa with descriptor 3 open on `fd3` (appending), as a caller of
    // runc hands one over.
    let fd3 = env.path().join("fd3.out");
    let with_fd3 = |args: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {} --root {} {args} 3>>{}",
                capsa_tests::capsa_bin().display(),
                env.path().display(),
                fd3.display()
            ))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let fd3_text = || std::fs::read_to_string(&fd3).unwrap_or_default();

    // create's stdio is the container's (runc's pass-through): a file,
    // so that waiting for create does not wait for the container.
    let log = env.path().join("create.log");
    let o = with_fd3(&format!(
        "create --bundle {b} --preserve-fds 1 pf >{} 2>&1",
        log.display()
    ));
    assert_eq!(
        code(&o),
        0,
        "create --preserve-fds: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    env.ok(&["start", "pf"]);
    let t0 = Instant::now();
    while !fd3_text().contains("from-init") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the container's process never wrote to the preserved fd 3: {:?}",
            fd3_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = with_fd3("exec --preserve-fds 1 pf sh -c 'echo from-exec >&3'");
    assert_eq!(code(&o), 0, "exec --preserve-fds: {}", show(&o));
    assert!(fd3_text().contains("from-exec"), "{:?}", fd3_text());
    // Without the flag, descriptor 3 is not passed on.
    let o = with_fd3("exec pf sh -c 'echo leaked >&3'");
    assert_ne!(code(&o), 0, "fd 3 reached the process: {}", show(&o));
    assert!(!fd3_text().contains("leaked"));

    // disableOOMKiller, in the container's memory cgroup.
    let oom_control = Path::new("/sys/fs/cgroup/memory")
        .join(cgroup.trim_start_matches('/'))
        .join("memory.oom_control");
    if let Ok(text) = std::fs::read_to_string(&oom_control) {
        assert!(text.contains("oom_kill_disable 1"), "{text}");
    } else {
        // cgroup v2 has no such switch; runc ignores the field there too.
        assert!(Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
    }

    // exec --cgroup: the process lands in a sub-cgroup of the container's.
    let out = env.ok(&["exec", "--cgroup", "sub", "pf", "cat", "/proc/self/cgroup"]);
    let pids_line = out
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "pids"))
                || l.starts_with("0::")
        })
        .unwrap_or_else(|| panic!("no pids cgroup in {out}"));
    assert!(pids_line.ends_with("/sub"), "{out}");
    for bad in [
        &["--cgroup", "../up"][..],
        &["--cgroup", "pids:a", "--cgroup", "memory:b"],
    ] {
        let o = env.run(&[&["exec"], bad, &["pf", "true"]].concat());
        assert_ne!(code(&o), 0, "{bad:?}: {}", show(&o));
        assert!(stderr(&o).contains("--cgroup"), "{bad:?}: {}", show(&o));
    }

    // --ignore-paused: the process joins the frozen container and runs
    // once it is resumed; without it, exec is refused.
    env.ok(&["pause", "pf"]);
    let o = env.run(&["exec", "pf", "true"]);
    assert_eq!(code(&o), 255, "exec into a paused container: {}", show(&o));
    assert!(stderr(&o).contains("paused"), "{}", show(&o));
    let mut late = env
        .cmd(&["exec", "--ignore-paused", "pf", "echo", "late"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        late.try_wait().unwrap().is_none(),
        "exec --ignore-paused ended while the container was frozen"
    );
    env.ok(&["resume", "pf"]);
    let t0 = Instant::now();
    while late.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "exec --ignore-paused hangs after resume"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = late.wait_with_output().unwrap();
    assert_eq!(code(&done), 0, "exec --ignore-paused: {}", show(&done));
    assert_eq!(stdout(&done), "late\n");

    env.ok(&["kill", "pf", "KILL"]);
    wait_status(&env, "pf", "stopped");
    env.ok(&["delete", "pf"]);
    assert!(
        cgroups_named(cgroup.trim_start_matches('/')).is_empty(),
        "{:?}",
        cgroups_named(&cgroup)
    );

    // VM mode cannot take a host descriptor: refused before anything.
    set_at(
        &mut spec,
        "/annotations",
        json!({"io.capsa.isolation": "vm"}),
    );
    std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let o = with_fd3(&format!("create --bundle {b} --preserve-fds 1 vmpf"));
    assert_eq!(code(&o), 1, "VM-mode create --preserve-fds: {}", show(&o));
    assert!(
        stderr(&o).contains("--preserve-fds is not available in VM mode"),
        "{}",
        show(&o)
    );
    assert_eq!(env.ok(&["list", "-q"]), "");
    assert!(leaks_of(env.path(), &["pf".into(), "vmpf".into()]).is_empty());
}

/// Sets the value at JSON pointer `pointer` (`/linux/resources/cpu/quota`),
/// making the objects on the way.
fn set_at(v: &mut Value, pointer: &str, new: Value) {
    let mut cur = v;
    for part in pointer.trim_start_matches('/').split('/') {
        cur = match part.parse::<usize>() {
            Ok(i) if cur.is_array() => &mut cur[i],
            _ => cur
                .as_object_mut()
                .unwrap_or_else(|| panic!("{pointer}: {part} is not in an object"))
                .entry(part)
                .or_insert(serde_json::json!({})),
        };
    }
    *cur = new;
}

/// Directories named after `id` in any cgroup hierarchy, four levels down.
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().contains(id) {
                out.push(e.path());
            }
            if depth > 1 {
                walk(&e.path(), id, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    for h in capsa_tests::cgroup_hierarchies() {
        walk(&h, id, 4, &mut out);
    }
    out
}

/// Every path under `dir`, directories too.
fn paths_under(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
            out.insert(e.path());
        }
    }
    out
}

/// A bundle with a bad value is refused before capsa does anything with
/// it: an id the kernel reads as "unchanged" (the process stayed root), a
/// cgroup path out of the cgroup filesystem (it made the directory), a
/// limit that means nothing, malformed JSON. runc's exit code 1, one line
/// naming the field, no directory where the cgroup path points or in any
/// cgroup hierarchy, no state in --root. VM mode takes the same check
/// before any VM (so this machine, which cannot run one, tests it too).
#[test]
fn bad_bundle_values_are_refused_before_anything_is_made() {
    use serde_json::json;
    let env = Env::with_demo();
    let bundle = env.path().join("bundle");
    demo_bundle(&env, &bundle);
    let b = bundle.to_str().unwrap();
    env.ok(&["spec", "--bundle", b]);
    set_process(&bundle, &["true"]);
    let config = bundle.join("config.json");
    let good: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    // Where a cgroup path with enough '..' lands, from any hierarchy.
    let outside = tempfile::tempdir_in("/tmp").unwrap();
    let escape = outside.path().join("x");
    let logs = tempfile::tempdir().unwrap();
    let up = format!("/../../../../../..{}", escape.display());
    let vm = ("/annotations", json!({"io.capsa.isolation": "vm"}));

    let cases: Vec<(&str, Vec<(&str, Value)>)> = vec![
        (
            "process.user.uid",
            vec![("/process/user/uid", json!(4294967295u32))],
        ),
        (
            "process.user.gid",
            vec![("/process/user/gid", json!(4294967295u32))],
        ),
        (
            "process.user.additionalGids[1]",
            vec![("/process/user/additionalGids", json!([5, 4294967295u32]))],
        ),
        (
            "linux.uidMappings[0].hostID",
            vec![(
                "/linux/uidMappings",
                json!([{"containerID": 0, "hostID": 4294967295u32, "size": 1}]),
            )],
        ),
        ("linux.cgroupsPath", vec![("/linux/cgroupsPath", json!(up))]),
        (
            "linux.cgroupsPath",
            vec![("/linux/cgroupsPath", json!(format!("capsa{up}")))],
        ),
        (
            "linux.resources.cpu.period: 0 is out of range (1000–1000000)",
            vec![
                ("/linux/resources/cpu/quota", json!(-7)),
                ("/linux/resources/cpu/period", json!(0)),
            ],
        ),
        (
            "linux.resources.cpu.quota",
            vec![
                ("/linux/resources/cpu/quota", json!(-7)),
                ("/linux/resources/cpu/period", json!(100000)),
            ],
        ),
        (
            "linux.resources.cpu.shares",
            vec![("/linux/resources/cpu/shares", json!(1))],
        ),
        (
            "linux.resources.memory.limit",
            vec![("/linux/resources/memory/limit", json!(-7))],
        ),
        (
            "linux.resources.pids.limit",
            vec![("/linux/resources/pids/limit", json!(-7))],
        ),
        (
            "linux.resources.unified[",
            vec![(
                "/linux/resources/unified",
                json!({ format!("..{up}"): "1" }),
            )],
        ),
        // Malformed: serde's type error, with the field it is in.
        ("process.user.uid", vec![("/process/user/uid", json!(-1))]),
        (
            "linux.resources.cpu.period",
            vec![vm.clone(), ("/linux/resources/cpu/period", json!(0))],
        ),
        (
            "process.user.uid",
            vec![vm.clone(), ("/process/user/uid", json!(4294967295u32))],
        ),
        (
            "linux.cgroupsPath",
            vec![vm.clone(), ("/linux/cgroupsPath", json!(up))],
        ),
    ];

    env.ok(&["list", "-q"]);
    let before = paths_under(env.path());
    let check = |n: usize, what: &str, text: String, field: &str| {
        let id = format!("bad-bundle-{}-{n}", std::process::id());
        std::fs::write(&config, text).unwrap();
        // Not output(): a container that does get created keeps create's
        // stdio open.
        let err_path = logs.path().join(format!("{id}.err"));
        let st = env
            .cmd(&["create", "--bundle", b, &id])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
            .status()
            .unwrap();
        if st.success() {
            let _ = env.run(&["delete", "--force", &id]);
        }
        let err = std::fs::read_to_string(&err_path).unwrap();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(st.code(), Some(1), "{what}: stderr: {err}");
        assert!(
            lines.len() == 1
                && lines[0].starts_with("capsa: error: invalid bundle config.json: ")
                && lines[0].contains(field),
            "{what}: want one line naming {field}: {err}"
        );
        assert!(!escape.exists(), "{what}: made {}", escape.display());
        let made = cgroups_named(&id);
        assert!(made.is_empty(), "{what}: made cgroups {made:?}");
        assert_eq!(env.ok(&["list", "-q"]), "", "{what}: a container is listed");
        let after = paths_under(env.path());
        let left: Vec<_> = after.difference(&before).collect();
        assert!(left.is_empty(), "{what}: left in --root: {left:#?}");
    };
    for (n, (field, edits)) in cases.iter().enumerate() {
        let mut spec = good.clone();
        for (pointer, value) in edits {
            set_at(&mut spec, pointer, value.clone());
        }
        let what = format!("{edits:?}");
        check(
            n,
            &what,
            serde_json::to_string_pretty(&spec).unwrap(),
            field,
        );
    }
    // Not JSON at all: the line and column.
    let text = serde_json::to_string_pretty(&good).unwrap();
    let cut = text[..text.len() / 2].to_string();
    check(cases.len(), "truncated config.json", cut, "(line ");
    env.assert_no_leaks(&[]);

    // Sound values pass: the limits reach the container's cgroup.
    let mut spec = good.clone();
    spec["process"]["args"] = json!(["sleep", "300"]);
    let id = format!("good-bundle-{}", std::process::id());
    for (pointer, value) in [
        ("/process/user/uid", json!(1000)),
        ("/process/user/additionalGids", json!([1000, 4294967294u32])),
        ("/linux/cgroupsPath", json!(format!("/capsa/{id}"))),
        ("/linux/resources/cpu/quota", json!(50000)),
        ("/linux/resources/cpu/period", json!(100000)),
        ("/linux/resources/memory/limit", json!(64 << 20)),
        ("/linux/resources/pids/limit", json!(64)),
    ] {
        set_at(&mut spec, pointer, value);
    }
    std::fs::write(&config, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    let st = env
        .cmd(&["create", "--bundle", b, &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "create of a sound bundle failed");
    assert_eq!(state(&env, &id)["status"], "created");
    let quota = capsa_tests::cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join("capsa").join(&id).join("cpu.cfs_quota_us"))
        .find(|p| p.exists());
    if let Some(q) = quota {
        assert_eq!(std::fs::read_to_string(q).unwrap().trim(), "50000");
    }
    // A process to exec gets the same check (runc's exit code 255).
    env.ok(&["start", &id]);
    wait_status(&env, &id, "running");
    let mut process = spec["process"].clone();
    process["args"] = json!(["id"]);
    process["user"]["uid"] = json!(4294967295u32);
    let pfile = env.path().join("bad-process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let o = env.run(&["exec", "--process", pfile.to_str().unwrap(), &id]);
    assert_eq!(code(&o), 255, "{}", show(&o));
    assert!(
        stderr(&o).contains("invalid process: user.uid: 4294967295"),
        "{}",
        show(&o)
    );
    let o = env.run(&["exec", "--user", "4294967295", &id, "id", "-u"]);
    assert_eq!(code(&o), 255, "{}", show(&o));
    assert!(stderr(&o).contains("user.uid"), "{}", show(&o));
    env.ok(&["delete", "--force", &id]);
    assert!(cgroups_named(&id).is_empty(), "{id}'s cgroups are left");
    env.assert_no_leaks(&[id]);
}

// ------------------------------------------------------------ real clients

type Steps = BTreeMap<String, (i32, String)>;

/// The "@@ NAME code=N out=…" lines of one runc_compat.sh run.
fn parse(section: &str) -> Steps {
    section
        .lines()
        .filter_map(|l| l.strip_prefix("@@ "))
        .map(|rest| {
            let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (code, out) = rest.split_once(" out=").unwrap_or((rest, ""));
            let code = code.trim_start_matches("code=").parse().unwrap_or(-1);
            (name.to_string(), (code, out.to_string()))
        })
        .collect()
}

struct Check<'a> {
    steps: Steps,
    ctx: &'a str,
}

impl Check<'_> {
    fn get(&self, name: &str) -> &(i32, String) {
        self.steps
            .get(name)
            .unwrap_or_else(|| panic!("step {name} did not run\n{}", self.ctx))
    }
    fn code(&self, name: &str, want: i32) -> &str {
        let (code, out) = self.get(name);
        assert_eq!(*code, want, "step {name}: output {out}\n{}", self.ctx);
        out
    }
    fn has(&self, name: &str, want: i32, parts: &[&str]) {
        let out = self.code(name, want);
        for p in parts {
            assert!(
                out.contains(p),
                "step {name}: {out:?} lacks {p:?}\n{}",
                self.ctx
            );
        }
    }
    fn empty(&self, name: &str) {
        let out = self.code(name, 0);
        assert!(
            out.is_empty(),
            "step {name}: {out:?}, want nothing\n{}",
            self.ctx
        );
    }
}

fn check_containerd(section: &str, mode: &str, ctx: &str) {
    let c = Check {
        steps: parse(section),
        ctx,
    };
    c.code("setup", 0);
    c.code("daemon-up", 0);
    c.code("import", 0);
    // ctr run --rm: output and the exit code through the runc shim.
    c.has("run-rm", 3, &["hi", "err"]);
    c.code("run-d", 0);
    c.has("task-ls", 0, &["t2", "RUNNING"]);
    c.has("state", 0, &["\"status\": \"running\"", "\"id\": \"t2\""]);
    if mode == "vm" {
        c.has("state", 0, &["io.capsa.isolation", "vm"]);
    }
    c.has("exec", 0, &["x", "y"]);
    c.code("exec-code", 4);
    if mode == "vm" {
        // The guest mounts cgroup2 only.
        c.has("exec-cgroup", 0, &["0::/", "/sub|"]);
    } else {
        c.has("exec-cgroup", 0, &[":pids:", "/sub|"]);
    }
    c.code("ps", 0);
    c.code("kill", 0);
    c.has("stopped", 0, &["t2", "STOPPED"]);
    c.code("task-delete", 0);
    c.code("container-delete", 0);
    check_pod(&c, mode);
    c.empty("runc-list");
    c.code("image-rm", 0);
    c.empty("leftovers");
}

/// A sandbox and its members: in VM mode one VM (one capsa-vmm, one
/// guest boot_id different from the host's); in container mode all of
/// them run on the host's kernel.
fn check_pod(c: &Check, mode: &str) {
    c.code("pod-sandbox", 0);
    c.code("pod-member", 0);
    let out = c.code("pod-kernels", 0);
    let lines: Vec<&str> = out.split('|').collect();
    assert!(lines.len() >= 6, "pod-kernels: {out}\n{}", c.ctx);
    let (b0, b1, host, vmms) = (lines[0], lines[1], lines[2], lines[3]);
    assert!(
        lines[4].starts_with("net:["),
        "pod-kernels: {out}\n{}",
        c.ctx
    );
    assert_eq!(
        lines[4], lines[5],
        "the member is not in the pod's network namespace\n{}",
        c.ctx
    );
    assert_eq!(
        b0, b1,
        "the pod's containers run on different kernels\n{}",
        c.ctx
    );
    if mode == "vm" {
        assert_ne!(
            b0, host,
            "a VM-mode pod runs on the host's kernel\n{}",
            c.ctx
        );
        assert_eq!(
            vmms, "1",
            "a VM-mode pod of two containers runs {vmms} VMs\n{}",
            c.ctx
        );
    } else {
        assert_eq!(b0, host, "{}", c.ctx);
    }
    c.has("pod-run-rm", 6, &["from-host"]);
    c.has("pod-volume", 0, &["from-pod2"]);
    c.has("pod-member-again", 0, &["from-pod3"]);
    c.code("pod-kill-member", 0);
    c.has("pod-sandbox-alive", 0, &["sandbox-alive"]);
    c.code("pod-kill-sandbox", 0);
    c.code("pod-delete", 0);
}

fn check_podman(section: &str, mode: &str, ctx: &str) {
    let c = Check {
        steps: parse(section),
        ctx,
    };
    c.code("setup", 0);
    c.code("load", 0);
    c.has("run-rm", 0, &["hi", "err"]);
    c.code("run-exit", 3);
    c.code("run-d", 0);
    c.has("state", 0, &["\"status\": \"running\""]);
    if mode == "vm" {
        c.has("state", 0, &["io.capsa.isolation", "vm"]);
    }
    c.has("exec", 0, &["x", "y"]);
    c.code("exec-code", 4);
    c.code("stop", 0);
    c.has("wait", 0, &["0"]);
    c.code("rm", 0);
    c.has("vol-rw", 0, &["from-the-container"]);
    c.has("vol-host", 0, &["from-the-container"]);
    c.has("root-diff", 0, &["A /written-in-root"]);
    c.code("rm-pv", 0);
    if mode == "vm" {
        // podman's default network and -p, served from inside the VM.
        c.code("run-p", 0);
        c.has("curl-p", 0, &["podman-vm"]);
        c.code("rm-p", 0);
        assert_eq!(c.code("links-p", 0), "0|", "{ctx}");
    }
    c.empty("ps");
    c.empty("runc-list");
    c.code("rmi", 0);
    c.empty("leftovers");
}

/// Runs runc_compat.sh for one client on this machine (container mode).
fn run_client(client: &str) -> (String, PathBuf, tempfile::TempDir) {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("capsa-runc-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let work = dir.path().join("w");
    let out = Command::new("sh")
        .arg(SCRIPT)
        .arg(capsa_bin())
        .arg(client)
        .arg("container")
        .arg(&work)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}\nstderr:\n{}", stdout(&out), stderr(&out));
    (text, work, dir)
}

#[test]
fn containerd_runc_shim_drives_capsa() {
    require_tools(&["containerd", "ctr", "containerd-shim-runc-v2"]);
    let (out, work, _dir) = run_client("containerd");
    check_containerd(&out, "container", &out);
    let leaks = leaks_of(&work, &[]);
    assert!(leaks.is_empty(), "leaked: {leaks:#?}");
}

#[test]
fn podman_drives_capsa() {
    require_tools(&["podman", "conmon"]);
    let (out, work, _dir) = run_client("podman");
    check_podman(&out, "container", &out);
    let leaks = leaks_of(&work, &[]);
    assert!(leaks.is_empty(), "leaked: {leaks:#?}");
}

/// VM isolation through both clients: one KVM test-host boot runs the
/// script for containerd and for podman (state under /run, the test host's
/// writable tmpfs).
#[test]
fn both_clients_drive_vm_isolation() {
    require_root();
    require_tools(&[
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "podman",
        "conmon",
    ]);
    let capsa = capsa_bin();
    let cmd = format!(
        "sh {SCRIPT} {c} containerd vm /run/rc-containerd; echo '#### podman'; \
         sh {SCRIPT} {c} podman vm /run/rc-podman",
        c = capsa.display()
    );
    let out = TestHost::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .timeout(Duration::from_secs(1200))
        .output()
        .expect_ran();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ctx = format!(
        "{text}\nstderr:\n{}\nconsole tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.console[out.console.len().saturating_sub(3000)..])
    );
    let (containerd, podman) = text
        .split_once("#### podman")
        .unwrap_or_else(|| panic!("the script did not finish:\n{ctx}"));
    check_containerd(containerd, "vm", &ctx);
    check_podman(podman, "vm", &ctx);
}
