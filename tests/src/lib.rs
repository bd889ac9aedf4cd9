//! Shared helpers for capsa's integration tests: run the real `capsa`
//! binary against a private state root, and check that nothing leaked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `capsa` binary under test: `$CAPSA_BIN`, or the one cargo built next
/// to this test executable (target/<profile>/capsa).
pub fn capsa_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAPSA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("capsa");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (cargo build --release --workspace --bins)",
        bin.display()
    );
    bin
}

/// Fails the test clearly unless we are root: these tests create real
/// namespaces, cgroups and mounts.
pub fn require_root() {
    assert!(
        nix_is_root(),
        "these integration tests start real containers and must run as root"
    );
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A private capsa state root for one test, removed (with a leak check) at
/// the end.
pub struct Env {
    pub root: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        require_root();
        let root = tempfile::Builder::new()
            .prefix("capsa-test-")
            .tempdir_in("/var/tmp")
            .expect("temp root");
        Env { root }
    }

    /// A new env with the demo image loaded.
    pub fn with_demo() -> Env {
        let env = Env::new();
        env.ok(&["load", "--demo"]);
        env
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(capsa_bin());
        c.arg("--root").arg(self.root.path()).args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn capsa")
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn capsa");
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait capsa");
        writer.join().unwrap();
        out
    }

    /// Runs capsa and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "capsa {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Waits (up to 10 s) until `path` exists in running container `name`.
    pub fn wait_for_file(&self, name: &str, path: &str) {
        for _ in 0..200 {
            if code(&self.run(&["exec", name, "test", "-e", path])) == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{path} never appeared in container {name}");
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Container IDs known to this root.
    pub fn container_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.path().join("containers"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // Dot names are the store's lock and staging dirs.
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts that no mount, cgroup or process of this root is left.
    pub fn assert_no_leaks(&self, ids: &[String]) {
        let leaks = leaks_of(self.path(), ids);
        assert!(leaks.is_empty(), "leaked host resources: {leaks:#?}");
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: remove whatever a failed test left running.
        for id in self.container_ids() {
            let _ = self.run(&["rm", "-f", &id]);
        }
    }
}

/// Host resources that still refer to `root` or the given container IDs:
/// mounts, loop devices, cgroup directories, processes.
pub fn leaks_of(root: &Path, ids: &[String]) -> Vec<String> {
    let mut leaks = Vec::new();
    let root_s = root.display().to_string();
    for (dev, file) in loop_devices() {
        if file.starts_with(&root_s) {
            leaks.push(format!("loop device {dev}: {file}"));
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for l in mounts.lines() {
            if l.contains(&root_s) {
                leaks.push(format!("mount: {l}"));
            }
        }
    }
    for id in ids {
        for hier in cgroup_hierarchies() {
            // capsa's own, and runc's default for a bundle that names no
            // cgroupsPath (and libcontainer's, which capsa overrides).
            for p in [
                hier.join("capsa").join(id),
                hier.join(id),
                hier.join(format!(":youki:{id}")),
            ] {
                if p.exists() {
                    leaks.push(format!("cgroup: {}", p.display()));
                }
            }
        }
    }
    for (pid, cmd) in monitor_processes(&root_s) {
        leaks.push(format!("process {pid}: {cmd}"));
    }
    leaks
}

/// The `capsa __monitor` processes whose command line holds `with` (a
/// state root, a container ID): (pid, command line).
pub fn monitor_processes(with: &str) -> Vec<(String, String)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_string_lossy().into_owned();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let cmd = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(with) && cmd.contains("__monitor")).then_some((pid, cmd))
        })
        .collect()
}

/// The loop devices in use and the file behind each.
pub fn loop_devices() -> Vec<(String, String)> {
    let Ok(blocks) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    blocks
        .flatten()
        .filter_map(|b| {
            let file = std::fs::read_to_string(b.path().join("loop/backing_file")).ok()?;
            Some((
                b.file_name().to_string_lossy().into_owned(),
                file.trim().to_string(),
            ))
        })
        .collect()
}

/// Every mounted cgroup hierarchy (v1 controllers and the v2 tree).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for l in mounts.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
                out.push(PathBuf::from(f[1]));
            }
        }
    }
    out
}

/// Every file under `dir` (not directories: the store's empty skeleton
/// doesn't count; a blob, a layer's content, a temp file or a record does).
/// The containers lock, made once per root, is not counted.
pub fn files_under(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if e.file_name() != ".lock" {
                out.insert(p);
            }
        }
    }
    out
}

/// The exit code of a command that must end by exiting (not by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited by signal")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes to `archive` an OCI image archive named `name`: the demo image
/// with one more layer on top holding `entries`, each a path and either
/// `Some(target)` for a symlink, `Some("dev:c:MAJOR:MINOR")` (or `dev:b:…`)
/// for a character (block) device node, or `None` for a directory. For
/// images that capsa must handle but cannot build itself (symlinked /etc
/// files, device nodes).
pub fn demo_with_layer(entries: &[(&str, Option<&str>)], name: &str, archive: &Path) {
    use sha2::{Digest, Sha256};
    let src = Env::with_demo();
    let saved = src.path().join("demo.tar");
    src.ok(&["save", "demo", "-o", saved.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(std::fs::File::open(&saved).unwrap())
        .unpack(dir.path())
        .unwrap();
    let blob = |d: &str| {
        dir.path()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |data: &[u8]| {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        std::fs::write(blob(&digest), data).unwrap();
        digest
    };
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blob(d)).unwrap()).unwrap()
    };

    let mut b = tar::Builder::new(Vec::new());
    for (path, link) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_704_067_200);
        h.set_size(0);
        let device = link.and_then(|l| l.strip_prefix("dev:"));
        match link {
            Some(_) if device.is_some() => {
                let spec: Vec<&str> = device.unwrap().split(':').collect();
                h.set_entry_type(match spec[0] {
                    "b" => tar::EntryType::Block,
                    _ => tar::EntryType::Char,
                });
                h.set_mode(0o666);
                h.set_device_major(spec[1].parse().unwrap()).unwrap();
                h.set_device_minor(spec[2].parse().unwrap()).unwrap();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b.append_data(&mut h, format!("{path}/"), &[][..]).unwrap();
            }
        }
    }
    let layer = b.into_inner().unwrap();
    let layer_digest = put(&layer);

    let index_path = dir.path().join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(layer_digest.clone().into());
    let config_data = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put(&config_data).into();
    manifest["config"]["size"] = config_data.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }));
    let manifest_data = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = put(&manifest_data).into();
    index["manifests"][0]["size"] = manifest_data.len().into();
    index["manifests"][0]["annotations"] = serde_json::json!({
        "org.opencontainers.image.ref.name": name,
        "io.containerd.image.name": format!("docker.io/library/{name}"),
    });
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let mut out = tar::Builder::new(std::fs::File::create(archive).unwrap());
    out.append_dir_all(".", dir.path()).unwrap();
    out.finish().unwrap();
}

/// The static helper programs of tests/helpers, built here with gcc:
/// `udp_echo` (UDP through published ports: the demo image's busybox has
/// no UDP server) and `xattr` (set and get extended attributes). Returns
/// the directory holding them (removed when dropped), under /var/tmp so
/// the KVM test host sees it too; mount it into a container read-only.
pub fn helpers_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("capsa-helpers-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    for name in ["udp_echo", "xattr", "sysprobe"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("helpers/{name}.c"));
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.path().join(name))
            .arg(&src)
            .output()
            .expect("gcc (build-essential, scripts/setup.sh) is needed to build the test helpers");
        assert!(
            out.status.success(),
            "building {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Debian's `docker-registry` on a free loopback port with its own
/// storage, killed when dropped.
pub struct Registry {
    child: std::process::Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        const BIN: &str = "/usr/bin/docker-registry";
        assert!(
            Path::new(BIN).exists(),
            "{BIN} is missing: apt-get install docker-registry (scripts/setup.sh does)"
        );
        let dir = tempfile::tempdir_in("/var/tmp").expect("registry dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&reg.addr).is_ok() {
                return reg;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not come up on {}", reg.addr);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI bundle with the demo image's root filesystem, unpacked from the
/// archive `capsa save` writes (what any runc user would do with an image).
pub fn demo_bundle(env: &Env, bundle: &Path) {
    let archive = env.path().join("demo.tar");
    env.ok(&["save", "demo", "-o", archive.to_str().unwrap()]);
    let oci = env.path().join("demo-oci");
    std::fs::create_dir_all(&oci).unwrap();
    untar(&archive, &oci, "");
    let blob = |digest: &str| {
        oci.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(oci.join("index.json")).unwrap(),
    )
    .unwrap();
    let manifest = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let b = blob(layer["digest"].as_str().unwrap());
        untar(&b, &rootfs, "z");
    }
}

fn untar(archive: &Path, into: &Path, flags: &str) {
    let st = Command::new("tar")
        .arg(format!("-x{flags}f"))
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("spawn tar");
    assert!(st.success(), "tar -x{flags}f {} failed", archive.display());
}
