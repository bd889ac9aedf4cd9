//! The generated runtime spec, run by a reference runtime: Debian's runc
//! runs the demo image with `spec::generate`'s config.json, and the
//! container sees the secure defaults and the requested limits.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use capsa_image::spec::{self, BindMount, RunConfig};
use capsa_image::Store;

const RUNC: &str = "/usr/sbin/runc";

struct Cleanup {
    rootfs: PathBuf,
    id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(RUNC).args(["delete", "-f", &self.id]).output();
        let _ = nix::mount::umount2(&self.rootfs, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn runc_path() -> &'static str {
    if Path::new(RUNC).exists() {
        RUNC
    } else {
        assert!(
            Path::new("/usr/bin/runc").exists(),
            "runc is missing: install Debian's runc package (scripts/setup.sh does)"
        );
        "/usr/bin/runc"
    }
}

/// Runs `script` in the demo image under runc with `rc`; returns (exit code, stdout).
fn run(rc: RunConfig, script: &str) -> (i32, String) {
    let runc = runc_path();
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("state")).unwrap();
    store.load_demo().unwrap();
    let img = store.get("demo").unwrap();
    let lower: Vec<String> = store
        .layer_dirs(&img)
        .unwrap()
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let bundle = d.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for p in [&rootfs, &bundle.join("upper"), &bundle.join("work")] {
        fs::create_dir_all(p).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        bundle.join("upper").display(),
        bundle.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    let id = format!("capsa-spec-test-{}-{}", std::process::id(), rand_id());
    let _cleanup = Cleanup {
        rootfs: rootfs.clone(),
        id: id.clone(),
    };
    let rc = RunConfig {
        container_id: id.clone(),
        args: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        ..rc
    };
    let s = spec::generate(&img, &rootfs, &store.layer_dirs(&img).unwrap(), &rc).unwrap();
    s.save(bundle.join("config.json")).unwrap();
    let out = Command::new(runc)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
        .trim()
}

#[test]
fn secure_defaults_inside_a_runc_container() {
    let script = r#"
echo "id=$(id -u):$(id -g)"
echo "host=$(hostname)"
echo "path=$PATH"
grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t' | sed 's/:/=/'
unshare -U true 2>/dev/null; echo "unshare=$?"
mount -t tmpfs none /mnt 2>/dev/null; echo "mount=$?"
dmesg >/dev/null 2>&1; echo "syslog=$?"
echo "kcore=$(wc -c < /proc/kcore 2>/dev/null || echo none)"
echo x > /proc/sysrq-trigger 2>/dev/null; echo "sysrq=$?"
touch /sys/x 2>/dev/null; echo "sys=$?"
echo "nofile=$(ulimit -n)"
echo "cwd=$(pwd)"
exit 3
"#;
    let (code, out) = run(RunConfig::default(), script);
    assert_eq!(code, 3, "the container's exit code comes back");
    assert_eq!(line(&out, "id="), "0:0");
    assert_eq!(line(&out, "host="), &"capsa-spec-test"[..12]);
    assert_eq!(line(&out, "path="), spec::DEFAULT_PATH);
    // podman's default capability set is 0x800405fb (docker's, 0xa80425fb,
    // less MKNOD, NET_RAW and AUDIT_WRITE).
    assert_eq!(line(&out, "CapEff="), "00000000800405fb");
    assert_eq!(line(&out, "CapBnd="), "00000000800405fb");
    assert_eq!(line(&out, "CapAmb="), "0000000000000000");
    assert_eq!(line(&out, "NoNewPrivs="), "1");
    assert_eq!(line(&out, "Seccomp="), "2");
    assert_ne!(line(&out, "unshare="), "0");
    assert_ne!(line(&out, "mount="), "0");
    assert_ne!(line(&out, "syslog="), "0");
    assert!(
        matches!(line(&out, "kcore="), "0" | "none"),
        "kcore readable"
    );
    assert_ne!(line(&out, "sysrq="), "0");
    assert_ne!(line(&out, "sys="), "0");
    assert_eq!(line(&out, "nofile="), "1024");
    assert_eq!(line(&out, "cwd="), "/");
}

#[test]
fn user_env_workdir_mounts_and_read_only_root() {
    let host = tempfile::tempdir().unwrap();
    fs::write(host.path().join("hello"), "from host").unwrap();
    let rc = RunConfig {
        user: Some("user".into()),
        env: vec!["GREETING=hi there".into()],
        workdir: Some("/tmp".into()),
        read_only: true,
        tmpfs: vec!["/scratch".into()],
        mounts: vec![BindMount {
            src: host.path().to_path_buf(),
            dst: "/data".into(),
            readonly: true,
            volume: None,
            ..Default::default()
        }],
        hostname: Some("box".into()),
        pids_limit: Some(30),
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let script = r#"
echo "id=$(id -u):$(id -g)"
echo "home=$HOME"
echo "greeting=$GREETING"
echo "cwd=$(pwd)"
echo "host=$(hostname)"
echo "data=$(cat /data/hello)"
touch /data/x 2>/dev/null; echo "data_rw=$?"
touch /etc/x 2>/dev/null; echo "root_rw=$?"
touch /scratch/x; echo "scratch_rw=$?"
grep -E '^CapEff:' /proc/self/status | tr -d '\t' | sed 's/:/=/'
echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
"#;
    let (code, out) = run(rc, script);
    assert_eq!(code, 0);
    assert_eq!(line(&out, "id="), "1000:1000");
    assert_eq!(line(&out, "home="), "/home/user");
    assert_eq!(line(&out, "greeting="), "hi there");
    assert_eq!(line(&out, "cwd="), "/tmp");
    assert_eq!(line(&out, "host="), "box");
    assert_eq!(line(&out, "data="), "from host");
    assert_ne!(line(&out, "data_rw="), "0");
    assert_ne!(line(&out, "root_rw="), "0");
    assert_eq!(line(&out, "scratch_rw="), "0");
    assert_eq!(line(&out, "CapEff="), "0000000000000000");
    assert_eq!(line(&out, "mem="), (64u64 << 20).to_string());
    assert_eq!(line(&out, "pids="), "30");
}

#[test]
fn network_none_and_host() {
    let script = r#"echo "ifaces=$(ls /sys/class/net | tr '\n' ' ')"; echo "host=$(hostname)""#;
    let (code, out) = run(RunConfig::default(), script);
    assert_eq!(code, 0);
    assert_eq!(
        line(&out, "ifaces="),
        "lo",
        "a new network namespace has only loopback"
    );
    let (code, out) = run(
        RunConfig {
            network: spec::Network::Host,
            ..Default::default()
        },
        script,
    );
    assert_eq!(code, 0);
    let host_ifaces: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for i in &host_ifaces {
        assert!(
            line(&out, "ifaces=").split(' ').any(|x| x == i),
            "{i} missing: {out}"
        );
    }
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(line(&out, "host="), host);
}
