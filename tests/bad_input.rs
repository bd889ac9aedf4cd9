//! Bad input gets one clear message, exit code 125, and leaves the store
//! and the host as they were.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capsa_tests::{files_under, stderr, Env};
use sha2::{Digest, Sha256};

fn assert_failed_cleanly(
    env: &Env,
    out: &std::process::Output,
    before: &BTreeSet<PathBuf>,
    what: &str,
) {
    assert_eq!(out.status.code(), Some(125), "{what}: {}", stderr(out));
    let err = stderr(out);
    assert!(
        err.lines().filter(|l| !l.trim().is_empty()).count() <= 2
            && err.starts_with("capsa: error: "),
        "{what}: not one clear message: {err}"
    );
    let after = files_under(env.path());
    let new: Vec<_> = after.difference(before).collect();
    assert!(new.is_empty(), "{what}: left behind {new:#?}");
    env.assert_no_leaks(&[]);
}

#[test]
fn unknown_image_flag_and_missing_command() {
    let env = Env::new();
    let before = files_under(env.path());
    let out = env.run(&["run", "--rm", "no-such-image", "true"]);
    assert_failed_cleanly(&env, &out, &before, "unknown image");
    assert!(stderr(&out).contains("no-such-image"));

    let out = env.run(&["run", "--no-such-flag", "demo", "true"]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "unknown flag: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--no-such-flag"));

    let out = env.run(&["run"]);
    assert_eq!(out.status.code(), Some(125), "missing image and command");
    let out = env.run(&["exec", "x"]);
    assert_eq!(out.status.code(), Some(125), "exec without command");
    let out = env.run(&["load", "-i", "/no/such/file.tar"]);
    assert_failed_cleanly(&env, &out, &before, "missing archive");
}

/// An OCI image layout we can take apart and put back together.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    /// The demo image as `capsa save` writes it, unpacked.
    fn demo() -> Layout {
        let src = Env::with_demo();
        let tar = src.path().join("demo.tar");
        src.ok(&["save", "demo", "-o", tar.to_str().unwrap()]);
        let dir = tempfile::tempdir().unwrap();
        tar::Archive::new(std::fs::File::open(&tar).unwrap())
            .unpack(dir.path())
            .unwrap();
        Layout { dir }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn json(&self, digest: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.blob(digest)).unwrap()).unwrap()
    }

    fn index(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("index.json")).unwrap()).unwrap()
    }

    fn manifest_digest(&self) -> String {
        self.index()["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn manifest(&self) -> serde_json::Value {
        self.json(&self.manifest_digest())
    }

    /// Stores `data` as a blob and returns its digest.
    fn put(&self, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        std::fs::write(self.blob(&digest), data).unwrap();
        digest
    }

    /// Replaces the manifest, keeping the index pointing at it.
    fn set_manifest(&self, m: &serde_json::Value) {
        let data = serde_json::to_vec(m).unwrap();
        let digest = self.put(&data);
        let mut index = self.index();
        index["manifests"][0]["digest"] = digest.into();
        index["manifests"][0]["size"] = data.len().into();
        std::fs::write(
            self.dir.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    fn tar(&self, out: &Path) {
        tar_dir(self.dir.path(), out);
    }
}

/// Tars `dir` as it is, symbolic links as links.
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

fn load_fails_cleanly(layout: &Layout, what: &str) -> String {
    let env = Env::new();
    let tar = tempfile::NamedTempFile::new().unwrap();
    layout.tar(tar.path());
    let before = files_under(env.path());
    let out = env.run(&["load", "-i", tar.path().to_str().unwrap()]);
    assert_failed_cleanly(&env, &out, &before, what);
    assert!(
        env.ok(&["images", "-q"]).trim().is_empty(),
        "{what}: image listed"
    );
    stderr(&out)
}

#[test]
fn corrupt_blob_is_refused() {
    let layout = Layout::demo();
    let layer = layout.manifest()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = layout.blob(&layer);
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let err = load_fails_cleanly(&layout, "corrupt blob");
    assert!(err.contains("digest mismatch"), "{err}");
}

#[test]
fn truncated_layer_is_refused() {
    let layout = Layout::demo();
    let mut m = layout.manifest();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let data = std::fs::read(layout.blob(&layer)).unwrap();
    let cut = &data[..data.len() / 2];
    let digest = layout.put(cut);
    m["layers"][0]["digest"] = digest.into();
    m["layers"][0]["size"] = cut.len().into();
    layout.set_manifest(&m);
    let err = load_fails_cleanly(&layout, "truncated layer");
    assert!(err.contains("layer"), "{err}");
}

#[test]
fn malformed_config_is_refused() {
    let layout = Layout::demo();
    let mut m = layout.manifest();
    let bad = b"{\"architecture\": \"amd64\", \"rootfs\": ";
    let digest = layout.put(bad);
    m["config"]["digest"] = digest.into();
    m["config"]["size"] = bad.len().into();
    layout.set_manifest(&m);
    let err = load_fails_cleanly(&layout, "malformed config");
    assert!(err.contains("config"), "{err}");
}

/// Runs capsa, killing it after `secs` seconds (a load that streams an
/// endless file must not fill the disk of the machine running the tests).
fn run_with_timeout(env: &Env, args: &[&str], secs: u64) -> std::process::Output {
    use std::process::Stdio;
    let mut child = env
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "capsa {args:?} still running after {secs}s: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A `docker save` archive whose manifest.json names `config` and `layers`,
/// with a symbolic link `h -> /` and the files `extra` in it.
fn docker_archive(config: &str, layers: &[&str], extra: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest =
        serde_json::json!([{"Config": config, "RepoTags": ["evil:1"], "Layers": layers}]);
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink("/", dir.path().join("h")).unwrap();
    for (name, data) in extra {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    dir
}

/// Issue 17, item 2: a path in an archive's manifest that leads through a
/// symbolic link out of the archive is refused, and nothing it points to
/// is read: not /etc/shadow (whose digest the error used to print), not
/// /dev/zero (which used to stream into the store until the disk was full).
#[test]
fn load_reads_nothing_outside_the_archive() {
    let env = Env::new();
    let before = files_under(env.path());
    let load = |dir: &Path, what: &str| {
        let tar = tempfile::NamedTempFile::new().unwrap();
        tar_dir(dir, tar.path());
        let out = run_with_timeout(&env, &["load", "-i", tar.path().to_str().unwrap()], 60);
        assert_failed_cleanly(&env, &out, &before, what);
        let err = stderr(&out);
        assert!(err.contains("out of the archive"), "{what}: {err}");
        err
    };

    let shadow = docker_archive("h/etc/shadow", &[], &[]);
    let err = load(shadow.path(), "config through h -> /");
    assert!(
        err.contains("h/etc/shadow") && err.contains("h -> /"),
        "{err}"
    );
    if let Ok(host) = std::fs::read("/etc/shadow") {
        assert!(
            !err.contains(&sha256_hex(&host)),
            "read the host file: {err}"
        );
    }

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(b""))]}
    }))
    .unwrap();
    let zero = docker_archive("c.json", &["h/dev/zero"], &[("c.json", &config)]);
    let err = load(zero.path(), "layer through h -> /");
    assert!(err.contains("h/dev/zero"), "{err}");

    // An OCI layout whose config blob is a link to a host file with the very
    // content (and so the digest) the manifest names.
    let layout = Layout::demo();
    let cfg = layout.manifest()["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let host = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(layout.blob(&cfg), host.path()).unwrap();
    std::fs::remove_file(layout.blob(&cfg)).unwrap();
    std::os::unix::fs::symlink(host.path(), layout.blob(&cfg)).unwrap();
    load(layout.dir.path(), "OCI config blob linked to a host file");
    // Given as a directory, too.
    let out = env.run(&["load", "-i", layout.dir.path().to_str().unwrap()]);
    assert_failed_cleanly(&env, &out, &before, "OCI layout directory");
    assert!(env.ok(&["images", "-q"]).trim().is_empty());
}

/// Issue 17, item 2: a blob is read only up to its declared size, and a
/// declared size that is not the blob's is refused before it is read.
#[test]
fn load_refuses_a_declared_size_that_is_not_the_blobs() {
    let layout = Layout::demo();
    let mut m = layout.manifest();
    m["layers"][0]["size"] = 1_000_000_000_000_000_000u64.into();
    layout.set_manifest(&m);
    let err = load_fails_cleanly(&layout, "layer declared 10^18 bytes");
    assert!(err.contains("declares 1000000000000000000 bytes"), "{err}");
}

fn truncate(path: &Path) {
    let data = std::fs::read(path).unwrap();
    std::fs::write(path, &data[..data.len() / 2]).unwrap();
}

/// Issue 17, item 6: a truncated config blob in the store. `run` says which
/// image and blob are damaged and what to do; `load` of the image repairs
/// it; `rmi` removes a damaged image.
#[test]
fn damaged_config_blob_is_reported_repaired_and_removable() {
    let env = Env::with_demo();
    let saved = env.path().join("demo.tar");
    env.ok(&["save", "demo", "-o", saved.to_str().unwrap()]);
    let id = env.ok(&["images", "-q"]).trim().to_string();
    let full = std::fs::read_dir(env.path().join("images/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|h| h.starts_with(&id))
        .expect("config blob");
    let blob = env.path().join("images/blobs/sha256").join(&full);
    truncate(&blob);

    let before = files_under(env.path());
    let out = env.run(&["run", "--rm", "demo", "true"]);
    assert_failed_cleanly(&env, &out, &before, "run of a damaged image");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "image demo is damaged (its config blob sha256:{full} does not match its digest)"
        )),
        "{err}"
    );
    assert!(err.contains("capsa rmi demo"), "{err}");
    // inspect says the same, not "no such container or image".
    let out = env.run(&["inspect", "demo"]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("image demo is damaged") && !err.contains("no such"),
        "{err}"
    );

    // Loading the image again puts an intact blob in place.
    let out = env.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert!(out.contains("Loaded image: demo:latest"), "{out}");
    assert_eq!(sha256_hex(&std::fs::read(&blob).unwrap()), full);
    assert_eq!(env.ok(&["run", "--rm", "demo", "echo", "ok"]).trim(), "ok");

    // And a damaged image can be removed, with all its files.
    truncate(&blob);
    let out = env.ok(&["rmi", "demo"]);
    assert!(out.contains(&format!("Deleted: sha256:{full}")), "{out}");
    assert!(env.ok(&["images", "-q"]).trim().is_empty());
    let left = files_under(&env.path().join("images/blobs"));
    assert!(left.is_empty(), "left behind {left:#?}");
}
