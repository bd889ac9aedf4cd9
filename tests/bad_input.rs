//! Bad input gets one clear message, exit code 125, and leaves the store
//! and the host as they were.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capsa_tests::{stderr, Env};
use sha2::{Digest, Sha256};

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            // The store's empty skeleton directories don't count; any file
            // (a blob, a layer's content, a temp file, a record) does.
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.insert(p);
            }
        }
    }
    out
}

fn assert_failed_cleanly(
    env: &Env,
    out: &std::process::Output,
    before: &BTreeSet<PathBuf>,
    what: &str,
) {
    assert_eq!(out.status.code(), Some(125), "{what}: {}", stderr(out));
    let err = stderr(out);
    assert!(
        err.lines().filter(|l| !l.trim().is_empty()).count() <= 2 && err.starts_with("capsa: "),
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
        let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
        b.append_dir_all(".", self.dir.path()).unwrap();
        b.finish().unwrap();
    }
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

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
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
