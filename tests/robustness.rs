//! Races, killed processes and a damaged store: what happens when capsa is
//! used concurrently or interrupted must never lose a container, its exit
//! status or an image under it.

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use capsa_tests::{stderr, stdout, Env};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn capsa")
}

/// Polls `f` until it is true or `secs` pass.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn kill9(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

fn inspect_field(env: &Env, name: &str, field: &str) -> serde_json::Value {
    let out = env.ok(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    let v = if v.is_array() { v[0].clone() } else { v };
    v[field].clone()
}

/// Three `run -d --name same` at once: exactly one wins, the others get
/// docker's "already in use" and leave nothing behind.
#[test]
fn concurrent_runs_with_one_name_make_one_container() {
    let env = Env::with_demo();
    for round in 0..5 {
        let children: Vec<Child> = (0..3)
            .map(|_| {
                spawn(
                    &env,
                    &["run", "-d", "--name", "same", "demo", "sleep", "30"],
                )
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {won} runs took the name");
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert_eq!(code(o), 125, "{}", stderr(o));
            assert!(stderr(o).contains("already in use"), "{}", stderr(o));
        }
        assert_eq!(env.ok(&["ps", "-aq"]).lines().count(), 1, "round {round}");
        env.ok(&["rm", "-f", "same"]);
    }
    assert!(env.container_ids().is_empty(), "{:?}", env.container_ids());
    env.assert_no_leaks(&[]);
}

/// `rmi` racing a container's creation: either the container is made and
/// the image stays (rmi refuses), or the image goes first and run says the
/// image is unknown; never a container whose image vanished under it.
#[test]
fn rmi_and_run_exclude_each_other() {
    let env = Env::with_demo();
    for round in 0..10 {
        let run = spawn(&env, &["run", "--name", "r", "demo", "true"]);
        std::thread::sleep(Duration::from_millis(round * 3));
        let rmi = env.run(&["rmi", "demo"]);
        let run = run.wait_with_output().unwrap();
        if rmi.status.success() {
            assert_eq!(
                code(&run),
                125,
                "round {round}: run after rmi: {}",
                stderr(&run)
            );
            assert!(stderr(&run).contains("load it"), "{}", stderr(&run));
            env.ok(&["load", "--demo"]);
        } else {
            assert_eq!(code(&run), 0, "round {round}: {}", stderr(&run));
            assert!(stderr(&rmi).contains("used by"), "{}", stderr(&rmi));
            env.ok(&["rm", "r"]);
        }
    }
    env.assert_no_leaks(&[]);
}

/// A record.json that is garbage or empty: the container is listed as
/// damaged, still counts as a user of its image, and `rm -f` removes it with
/// its writable layer and mount.
#[test]
fn damaged_record_is_listed_protects_its_image_and_is_removable() {
    let env = Env::with_demo();
    for garbage in [&b""[..], b"{not json"] {
        let id = env.ok(&["run", "-d", "demo", "sleep", "300"]);
        let id = id.trim().to_string();
        env.ok(&["stop", "-t", "0", &id]);
        let dir = env.path().join("containers").join(&id);
        std::fs::write(dir.join("record.json"), garbage).unwrap();

        let ps = env.ok(&["ps", "-a"]);
        assert!(ps.contains(&id[..12]) && ps.contains("Damaged"), "{ps}");
        let rmi = env.run(&["rmi", "demo"]);
        assert_eq!(
            code(&rmi),
            1,
            "rmi removed an image a damaged container uses"
        );
        assert!(stderr(&rmi).contains(&id[..12]), "{}", stderr(&rmi));
        let rm = env.run(&["rm", &id]);
        assert_eq!(code(&rm), 125);
        assert!(stderr(&rm).contains("rm -f"), "{}", stderr(&rm));
        env.ok(&["rm", "-f", &id]);
        assert!(!dir.exists(), "rm -f left {}", dir.display());
        assert!(!env.ok(&["ps", "-a"]).contains(&id[..12]));
        env.assert_no_leaks(&[id]);
    }
}

/// The pid of the monitor of container `name`, and of its keeper.
fn supervisors(env: &Env, name: &str) -> (i32, i32) {
    let m = inspect_field(env, name, "monitor_pid")
        .as_i64()
        .expect("monitor_pid");
    let k = inspect_field(env, name, "keeper_pid")
        .as_i64()
        .expect("keeper_pid");
    (m as i32, k as i32)
}

/// A detached container whose monitor is killed: its own exit status is
/// still recorded, and its mount, cgroups and state are released.
#[test]
fn killed_monitor_loses_no_exit_status() {
    let env = Env::with_demo();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "job",
        "demo",
        "sh",
        "-c",
        "sleep 2; echo after; exit 7",
    ]);
    let id = id.trim().to_string();
    let (monitor, keeper) = supervisors(&env, "job");
    assert_ne!(monitor, keeper);
    kill9(monitor);
    assert_eq!(env.ok(&["wait", "job"]).trim(), "7");
    assert_eq!(inspect_field(&env, "job", "exit_code"), 7);
    // Output written after the monitor died still reaches the log.
    assert_eq!(stdout(&env.run(&["logs", "job"])), "after\n");
    let released = || capsa_tests::leaks_of(env.path(), std::slice::from_ref(&id)).is_empty();
    assert!(eventually(10, released), "host resources not released");
    env.ok(&["rm", "job"]);
    env.assert_no_leaks(&[id]);
}

/// A foreground `run --rm` killed with SIGKILL: the container finishes
/// under its monitor and is removed, as podman's conmon does.
#[test]
fn killed_foreground_run_still_removes_its_container() {
    let env = Env::with_demo();
    let mut run = spawn(&env, &["run", "--rm", "--name", "fg", "demo", "sleep", "2"]);
    assert!(
        eventually(10, || env.ok(&["ps"]).contains("fg")),
        "never started"
    );
    kill9(run.id() as i32);
    let _ = run.wait();
    assert!(
        eventually(15, || env.container_ids().is_empty()),
        "the container was never removed: {}",
        env.ok(&["ps", "-a"])
    );
    env.assert_no_leaks(&[]);
}

/// Monitor and keeper both killed: nothing can collect the exit, and `ps`
/// says the container is unsupervised instead of pretending.
#[test]
fn container_without_monitor_and_keeper_is_shown_unsupervised() {
    let env = Env::with_demo();
    let id = env.ok(&["run", "-d", "--name", "orphan", "demo", "sleep", "300"]);
    let (monitor, keeper) = supervisors(&env, "orphan");
    kill9(keeper);
    kill9(monitor);
    assert!(
        eventually(5, || env.ok(&["ps"]).contains("unsupervised")),
        "{}",
        env.ok(&["ps"])
    );
    env.ok(&["rm", "-f", "orphan"]);
    env.assert_no_leaks(&[id.trim().to_string()]);
}
