//! Unit tests of the store: unpacking, imports, failures and cleanup.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::{canonical_json, sha256_bytes};
use crate::{Error, Store};

// ---------- helpers: building layers and archives ----------

pub(crate) struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    pub(crate) fn new() -> Self {
        TarBuilder(tar::Builder::new(Vec::new()))
    }
    fn hdr(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_size(size);
        h
    }
    pub(crate) fn dir(mut self, p: &str) -> Self {
        let mut h = Self::hdr(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }
    pub(crate) fn file(mut self, p: &str, data: &str) -> Self {
        let mut h = Self::hdr(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, p, data.as_bytes()).unwrap();
        self
    }
    pub(crate) fn file_owned(mut self, p: &str, data: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::hdr(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, p, data.as_bytes()).unwrap();
        self
    }
    pub(crate) fn symlink(mut self, p: &str, target: &str) -> Self {
        let mut h = Self::hdr(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, p, target).unwrap();
        self
    }
    pub(crate) fn hardlink(mut self, p: &str, target: &str) -> Self {
        let mut h = Self::hdr(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, p, target).unwrap();
        self
    }
    /// Writes a raw name into the header (bypassing the tar crate's `..` check).
    pub(crate) fn raw_file(mut self, name: &str, data: &str) -> Self {
        let mut h = Self::hdr(tar::EntryType::Regular, 0o644, data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        self.0.append(&h, data.as_bytes()).unwrap();
        self
    }
    pub(crate) fn raw_hardlink(mut self, name: &str, target: &str) -> Self {
        let mut h = Self::hdr(tar::EntryType::Link, 0o644, 0);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    pub(crate) fn file_with_xattrs(mut self, p: &str, data: &str, xattrs: &[(&str, &str)]) -> Self {
        let pax: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_bytes()))
            .collect();
        self.0
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(p, data)
    }
    pub(crate) fn char_dev(mut self, p: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::hdr(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }
    pub(crate) fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(crate) fn config_for(diff_ids: &[String]) -> Vec<u8> {
    canonical_json(&json!({
        "architecture": "amd64", "os": "linux",
        "created": "2024-05-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
}

/// An OCI layout under construction.
pub(crate) struct Layout {
    pub dir: PathBuf,
    pub manifests: Vec<serde_json::Value>,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            manifests: vec![],
        }
    }
    pub(crate) fn blob(&self, data: &[u8]) -> (String, u64) {
        let d = sha256_bytes(data);
        fs::write(self.dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        (d, data.len() as u64)
    }
    /// Adds an image with the given uncompressed layer tars (stored gzipped).
    pub(crate) fn image(&mut self, name: Option<&str>, layers: &[Vec<u8>]) -> String {
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256_bytes(l)).collect();
        let (cd, cs) = self.blob(&config_for(&diff_ids));
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let (d, s) = self.blob(&gzip(l));
                json!({"mediaType": crate::import::OCI_LAYER_GZIP, "digest": d, "size": s})
            })
            .collect();
        let m = canonical_json(&json!({
            "schemaVersion": 2, "mediaType": crate::import::OCI_MANIFEST,
            "config": {"mediaType": crate::import::OCI_CONFIG, "digest": cd, "size": cs},
            "layers": layer_descs
        }));
        let (md, ms) = self.blob(&m);
        let mut desc = json!({"mediaType": crate::import::OCI_MANIFEST, "digest": md, "size": ms});
        if let Some(n) = name {
            desc["annotations"] = json!({"org.opencontainers.image.ref.name": n});
        }
        self.manifests.push(desc);
        self.write_index();
        cd
    }
    pub(crate) fn write_index(&self) {
        let idx = json!({"schemaVersion": 2, "manifests": self.manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).unwrap(),
        )
        .unwrap();
    }
}

pub(crate) fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

fn store() -> (tempfile::TempDir, Store) {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    (root, s)
}

/// Everything under the store except the index and lock: blobs, layers, tmp.
fn contents(s: &Store) -> Vec<String> {
    let mut out: Vec<String> = walkdir::WalkDir::new(s.dir())
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(s.dir())
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|p| p != "lock")
        .collect();
    out.sort();
    out
}

fn assert_empty_store(s: &Store) {
    assert_eq!(
        contents(s),
        vec!["blobs", "blobs/sha256", "layers", "tmp"],
        "the store must be left as it was"
    );
    assert!(s.list().unwrap().is_empty());
}

fn is_whiteout(p: &Path) -> bool {
    let m = fs::symlink_metadata(p).unwrap();
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call;
    // the kernel writes at most buf.len() bytes into buf.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

// ---------- unpacking ----------

fn unpack(tar: &[u8]) -> (tempfile::TempDir, crate::Result<u64>) {
    let d = tempfile::tempdir().unwrap();
    let blob = d.path().join("blob");
    fs::write(&blob, gzip(tar)).unwrap();
    let r = crate::unpack::unpack_layer(&blob, &sha256_bytes(tar), &d.path().join("out"));
    (d, r)
}

#[test]
fn unpack_whiteouts_opaque_hardlinks_and_owners() {
    let tar = TarBuilder::new()
        .dir("etc/")
        .file("etc/keep", "k")
        .file(".wh.removed", "")
        .file("etc/.wh.gone", "")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", "")
        .file("opaque/new", "n")
        .file_owned("bin/suid", "s", 0o4755, 1000, 1001)
        .hardlink("bin/link", "bin/suid")
        .symlink("bin/sh", "/bin/busybox")
        .char_dev("dev/null", 1, 3)
        .file_with_xattrs(
            "xattrs",
            "x",
            &[
                ("user.capsa", "1"),
                ("trusted.overlay.opaque", "y"),
                ("trusted.overlay.redirect", "/etc"),
            ],
        )
        .build();
    let (d, r) = unpack(&tar);
    assert_eq!(r.unwrap(), tar.len() as u64);
    let out = d.path().join("out");
    assert!(is_whiteout(&out.join("removed")));
    assert!(is_whiteout(&out.join("etc/gone")));
    assert!(!out.join(".wh.removed").exists());
    assert_eq!(fs::read_to_string(out.join("etc/keep")).unwrap(), "k");
    assert_eq!(
        xattr(&out.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!out.join("opaque/.wh..wh..opq").exists());
    assert!(out.join("opaque/new").exists());
    let suid = fs::metadata(out.join("bin/suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1000, 1001));
    let link = fs::metadata(out.join("bin/link")).unwrap();
    assert_eq!(link.ino(), suid.ino(), "hardlink shares the inode");
    assert_eq!(
        fs::read_link(out.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let null = fs::symlink_metadata(out.join("dev/null")).unwrap();
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(suid.mtime(), 1_000_000);
    // Ordinary xattrs are kept; overlayfs' own cannot be forged by an image.
    assert_eq!(
        xattr(&out.join("xattrs"), "user.capsa").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(xattr(&out.join("xattrs"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&out.join("xattrs"), "trusted.overlay.redirect"), None);
}

#[test]
fn unpack_refuses_escapes() {
    for tar in [
        TarBuilder::new().raw_file("../escape", "x").build(),
        TarBuilder::new().raw_file("a/../../escape", "x").build(),
        TarBuilder::new()
            .file("a", "x")
            .raw_hardlink("b", "../../etc/passwd")
            .build(),
        // A symlink to the outside, then a file "through" it.
        TarBuilder::new()
            .symlink("evil", "/tmp")
            .file("evil/capsa-escape-test", "x")
            .build(),
        TarBuilder::new()
            .symlink("evil", "..")
            .file("evil/capsa-escape-test", "x")
            .build(),
    ] {
        let (d, r) = unpack(&tar);
        let e = r.unwrap_err();
        assert!(matches!(e, Error::CorruptLayer { .. }), "{e}");
        assert!(!d.path().join("escape").exists());
        assert!(!Path::new("/tmp/capsa-escape-test").exists());
        assert!(!d.path().join("capsa-escape-test").exists());
    }
    // An absolute path is confined, not refused.
    let tar = TarBuilder::new().raw_file("/abs", "x").build();
    let (d, r) = unpack(&tar);
    r.unwrap();
    assert!(d.path().join("out/abs").exists());
}

#[test]
fn unpack_checks_diff_id_and_truncation() {
    let tar = TarBuilder::new().file("a", &"x".repeat(100_000)).build();
    let d = tempfile::tempdir().unwrap();
    let blob = d.path().join("blob");
    fs::write(&blob, gzip(&tar)).unwrap();
    let wrong = sha256_bytes(b"other");
    let e = crate::unpack::unpack_layer(&blob, &wrong, &d.path().join("o1")).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    let gz = gzip(&tar);
    fs::write(&blob, &gz[..gz.len() / 2]).unwrap();
    let e =
        crate::unpack::unpack_layer(&blob, &sha256_bytes(&tar), &d.path().join("o2")).unwrap_err();
    assert!(matches!(e, Error::CorruptLayer { .. }), "{e}");
    // Truncated plain tar.
    fs::write(&blob, &tar[..tar.len() / 2]).unwrap();
    let e =
        crate::unpack::unpack_layer(&blob, &sha256_bytes(&tar), &d.path().join("o3")).unwrap_err();
    assert!(
        matches!(e, Error::CorruptLayer { .. } | Error::DigestMismatch { .. }),
        "{e}"
    );
    // zstd layers work too.
    let z = zstd::encode_all(&tar[..], 3).unwrap();
    fs::write(&blob, z).unwrap();
    crate::unpack::unpack_layer(&blob, &sha256_bytes(&tar), &d.path().join("o4")).unwrap();
    assert_eq!(fs::read(d.path().join("o4/a")).unwrap().len(), 100_000);
}

// ---------- demo ----------

#[test]
fn demo_is_deterministic_and_usable() {
    let (_r1, s1) = store();
    let (_r2, s2) = store();
    let a = s1.load_demo().unwrap();
    let b = s2.load_demo().unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(a.names, vec!["demo:latest"]);
    let again = s1.load_demo().unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(s1.list().unwrap().len(), 1);
    let img = s1.get("demo").unwrap();
    assert_eq!(img.id, a.id);
    assert_eq!(s1.get("demo:latest").unwrap().id, a.id);
    assert_eq!(s1.get(&a.id).unwrap().id, a.id);
    assert_eq!(s1.get(&a.id[7..19]).unwrap().id, a.id);
    assert!(matches!(s1.get("nope"), Err(Error::NotFound(_))));
    assert!(matches!(s1.get("demo:other"), Err(Error::NotFound(_))));
    assert!(matches!(
        s1.get("Demo"),
        Err(Error::InvalidReference { .. })
    ));
    assert!(matches!(s1.get("ABCDEF"), Err(Error::NotFound(_))));
    let cfg = img.config.config().clone().unwrap();
    assert_eq!(cfg.cmd().clone().unwrap(), vec!["/bin/sh"]);
    assert!(cfg.env().clone().unwrap()[0].starts_with("PATH="));
    let dirs = s1.layer_dirs(&img).unwrap();
    assert_eq!(dirs.len(), 1);
    let root = &dirs[0];
    assert!(root.join("bin/busybox").is_file());
    for applet in ["bin/sh", "bin/ls", "bin/cat", "usr/bin/env"] {
        assert_eq!(
            fs::read_link(root.join(applet)).unwrap(),
            Path::new("/bin/busybox"),
            "{applet}"
        );
    }
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    for d in ["proc", "sys", "dev", "etc"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("root:x:0:0") && passwd.contains(":1000:") && passwd.contains("nobody")
    );
    // Usable by spec::generate with its own /etc/passwd.
    let rc = crate::spec::RunConfig {
        container_id: "c1".repeat(8),
        user: Some("user".into()),
        ..Default::default()
    };
    let spec = crate::spec::generate(&img, root, &[root.to_path_buf()], &rc).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().user().uid(), 1000);
    assert_eq!(img.chain_ids().len(), 1);
    assert_eq!(img.chain_ids()[0], img.layers[0].diff_id);
}

// ---------- load: OCI layout, docker save, failures ----------

fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let l1 = TarBuilder::new()
        .dir("bin/")
        .file("bin/tool", "v1")
        .dir("etc/")
        .file("etc/old", "old")
        .dir("data/")
        .file("data/a", "a")
        .build();
    let l2 = TarBuilder::new()
        .dir("bin/")
        .file("bin/tool", "v2")
        .dir("etc/")
        .file("etc/.wh.old", "")
        .dir("data/")
        .file("data/.wh..wh..opq", "")
        .file("data/b", "b")
        .build();
    (l1, l2)
}

#[test]
fn load_oci_layout_dir_and_tar() {
    let src = tempfile::tempdir().unwrap();
    let mut lay = Layout::new(&src.path().join("layout"));
    let (l1, l2) = two_layers();
    let id = lay.image(Some("example.com/app:1"), &[l1.clone(), l2.clone()]);
    let (_r, s) = store();
    let out = s.load(&lay.dir).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, id);
    assert_eq!(out[0].names, vec!["example.com/app:1"]);
    let img = s.get("example.com/app:1").unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.size, (l1.len() + l2.len()) as u64);
    assert_eq!(img.created.as_deref(), Some("2024-05-01T00:00:00Z"));
    let dirs = s.layer_dirs(&img).unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(fs::read_to_string(dirs[0].join("bin/tool")).unwrap(), "v1");
    assert_eq!(fs::read_to_string(dirs[1].join("bin/tool")).unwrap(), "v2");
    assert!(is_whiteout(&dirs[1].join("etc/old")));
    assert_eq!(
        xattr(&dirs[1].join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );

    // The same layout as a tar, loaded into another store, gives the same image.
    let tarball = src.path().join("layout.tar");
    tar_dir(&lay.dir, &tarball);
    let (_r2, s2) = store();
    let out2 = s2.load(&tarball).unwrap();
    assert_eq!(out2[0].id, id);
    assert_eq!(s2.get(&id).unwrap().manifest_digest, img.manifest_digest);
    assert_eq!(
        contents(&s2)
            .iter()
            .filter(|p| p.starts_with("tmp/"))
            .count(),
        0
    );

    // Loading again is idempotent; a second image sharing layer 1 reuses it.
    s.load(&lay.dir).unwrap();
    assert_eq!(s.list().unwrap().len(), 1);
    let l3 = TarBuilder::new().file("extra", "x").build();
    let mut lay2 = Layout::new(&src.path().join("layout2"));
    let id2 = lay2.image(Some("other:2"), &[l1.clone(), l3]);
    s.load(&lay2.dir).unwrap();
    assert_eq!(s.list().unwrap().len(), 2);
    let layers_on_disk = fs::read_dir(s.dir().join("layers")).unwrap().count();
    assert_eq!(layers_on_disk, 3);

    // tag / remove / gc
    s.tag("other:2", "alias").unwrap();
    assert_eq!(s.get("alias:latest").unwrap().id, id2);
    assert_eq!(s.remove("alias").unwrap(), vec!["Untagged: alias:latest"]);
    assert_eq!(s.get("other:2").unwrap().id, id2);
    let lines = s.remove("other:2").unwrap();
    assert_eq!(
        lines,
        vec!["Untagged: other:2".to_string(), format!("Deleted: {id2}")]
    );
    assert!(matches!(s.get(&id2), Err(Error::NotFound(_))));
    assert_eq!(
        fs::read_dir(s.dir().join("layers")).unwrap().count(),
        2,
        "shared layer kept"
    );
    s.remove(&id[7..15]).unwrap();
    assert_empty_store_after_rmi(&s);
    // The index survives reopening.
    s.load(&lay.dir).unwrap();
    let reopened = Store::open(_r.path()).unwrap();
    assert_eq!(reopened.get("example.com/app:1").unwrap().id, id);
}

fn assert_empty_store_after_rmi(s: &Store) {
    let c: Vec<String> = contents(s)
        .into_iter()
        .filter(|p| p != "index.json")
        .collect();
    assert_eq!(c, vec!["blobs", "blobs/sha256", "layers", "tmp"]);
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn bare_tag_ref_names_load_unnamed() {
    let src = tempfile::tempdir().unwrap();
    let mut lay = Layout::new(src.path());
    let id = lay.image(Some("latest"), &[TarBuilder::new().file("f", "1").build()]);
    let (_r, s) = store();
    let out = s.load(src.path()).unwrap();
    assert_eq!(out[0].id, id);
    assert!(out[0].names.is_empty());
    s.tag(&id, "named:1").unwrap();
    assert_eq!(s.get("named:1").unwrap().id, id);
}

#[test]
fn tag_moves_names_and_index_entries() {
    let src = tempfile::tempdir().unwrap();
    let mut lay = Layout::new(src.path());
    let a = lay.image(Some("a:1"), &[TarBuilder::new().file("f", "1").build()]);
    let b = lay.image(Some("b:1"), &[TarBuilder::new().file("f", "2").build()]);
    let (_r, s) = store();
    assert_eq!(s.load(src.path()).unwrap().len(), 2);
    s.tag("a:1", "b:1").unwrap();
    assert_eq!(s.get("b:1").unwrap().id, a);
    assert!(s.get(&b).unwrap().names.is_empty(), "b lost its only name");
    assert!(matches!(s.tag("nope", "x"), Err(Error::NotFound(_))));
    assert!(matches!(
        s.tag("a:1", "Bad Name"),
        Err(Error::InvalidReference { .. })
    ));
    assert!(matches!(s.remove("nope"), Err(Error::NotFound(_))));
}

/// Builds a `docker save` archive (legacy layout: <hex>.json, <id>/layer.tar).
fn docker_save(dir: &Path, layers: &[Vec<u8>], tags: &[&str]) -> (PathBuf, String) {
    let root = dir.join("docker");
    fs::create_dir_all(&root).unwrap();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_bytes(l)).collect();
    let cfg = config_for(&diff_ids);
    let cd = sha256_bytes(&cfg);
    fs::write(root.join(format!("{}.json", &cd[7..])), &cfg).unwrap();
    let mut paths = vec![];
    for (i, l) in layers.iter().enumerate() {
        let d = root.join(format!("layer{i}"));
        fs::create_dir(&d).unwrap();
        fs::write(d.join("layer.tar"), l).unwrap();
        paths.push(format!("layer{i}/layer.tar"));
    }
    let manifest =
        json!([{"Config": format!("{}.json", &cd[7..]), "RepoTags": tags, "Layers": paths}]);
    fs::write(
        root.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    fs::write(root.join("repositories"), "{}").unwrap();
    let out = dir.join("docker.tar");
    tar_dir(&root, &out);
    (out, cd)
}

#[test]
fn load_docker_save_archive() {
    let src = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let (tarball, cd) = docker_save(src.path(), &[l1, l2], &["myapp:v1", "myapp:latest"]);
    let (_r, s) = store();
    let out = s.load(&tarball).unwrap();
    assert_eq!(out[0].id, cd);
    assert_eq!(out[0].names, vec!["myapp:v1", "myapp:latest"]);
    let img = s.get("myapp").unwrap();
    assert_eq!(img.layers[0].media_type, crate::import::OCI_LAYER);
    let dirs = s.layer_dirs(&img).unwrap();
    assert!(is_whiteout(&dirs[1].join("etc/old")));
    // Also gzip-compressed as a whole (docker save | gzip).
    let gz = src.path().join("docker.tar.gz");
    fs::write(&gz, gzip(&fs::read(&tarball).unwrap())).unwrap();
    let (_r2, s2) = store();
    assert_eq!(s2.load(&gz).unwrap()[0].id, cd);
}

/// Each broken input fails with the right error and leaves the store empty.
#[test]
fn failed_loads_leave_nothing_behind() {
    let src = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let (_r, s) = store();
    let mk = |name: &str| {
        let mut lay = Layout::new(&src.path().join(name));
        lay.image(Some("x:1"), &[l1.clone(), l2.clone()]);
        lay
    };
    let layer_blob = |lay: &Layout, i: usize| -> PathBuf {
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(lay.dir.join("index.json")).unwrap()).unwrap();
        let md = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(lay.dir.join("blobs/sha256").join(&md[7..])).unwrap())
                .unwrap();
        let d = m["layers"][i]["digest"].as_str().unwrap().to_string();
        lay.dir.join("blobs/sha256").join(&d[7..])
    };

    // 1. Corrupt blob (digest mismatch) in the second layer: the first layer
    //    was already unpacked in staging and must go too.
    let lay = mk("corrupt");
    let p = layer_blob(&lay, 1);
    let mut data = fs::read(&p).unwrap();
    let n = data.len();
    data[n - 10] ^= 0xff;
    fs::write(&p, data).unwrap();
    let e = s.load(&lay.dir).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert_empty_store(&s);

    // 2. Truncated layer whose digest matches (a crafted archive).
    let lay = mk("truncated");
    let p = layer_blob(&lay, 1);
    let data = fs::read(&p).unwrap();
    let cut = data[..data.len() / 2].to_vec();
    let cut_d = sha256_bytes(&cut);
    fs::write(lay.dir.join("blobs/sha256").join(&cut_d[7..]), &cut).unwrap();
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(lay.dir.join("index.json")).unwrap()).unwrap();
    let md = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(lay.dir.join("blobs/sha256").join(&md[7..])).unwrap())
            .unwrap();
    m["layers"][1]["digest"] = json!(cut_d);
    m["layers"][1]["size"] = json!(cut.len());
    let mut lay = Layout {
        dir: lay.dir.clone(),
        manifests: vec![],
    };
    let mbytes = serde_json::to_vec(&m).unwrap();
    let (nd, ns) = lay.blob(&mbytes);
    lay.manifests
        .push(json!({"mediaType": crate::import::OCI_MANIFEST, "digest": nd, "size": ns}));
    lay.write_index();
    let e = s.load(&lay.dir).unwrap_err();
    assert!(matches!(e, Error::CorruptLayer { .. }), "{e}");
    assert!(e.to_string().contains("corrupt layer"), "{e}");
    assert_empty_store(&s);

    // 3. Malformed config JSON (with a matching digest).
    let mut lay = Layout::new(&src.path().join("badconfig"));
    let (cd, cs) = lay.blob(b"{\"architecture\": \"amd64\", \"os\": ");
    let (ld, ls) = lay.blob(&gzip(&l1));
    let (md, ms) = lay.blob(&serde_json::to_vec(&json!({
        "schemaVersion": 2, "config": {"mediaType": crate::import::OCI_CONFIG, "digest": cd, "size": cs},
        "layers": [{"mediaType": crate::import::OCI_LAYER_GZIP, "digest": ld, "size": ls}]
    })).unwrap());
    lay.manifests
        .push(json!({"mediaType": crate::import::OCI_MANIFEST, "digest": md, "size": ms}));
    lay.write_index();
    let e = s.load(&lay.dir).unwrap_err();
    assert!(matches!(e, Error::BadConfig(_)), "{e}");
    assert_empty_store(&s);

    // 4. Missing blob.
    let lay = mk("missing");
    fs::remove_file(layer_blob(&lay, 1)).unwrap();
    let e = s.load(&lay.dir).unwrap_err();
    assert!(matches!(e, Error::BadConfig(_)), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    assert_empty_store(&s);

    // 5. Wrong diff_id in the config (layer content does not match).
    let mut lay = Layout::new(&src.path().join("diffid"));
    let (cd, cs) = lay.blob(&config_for(&[sha256_bytes(b"not the layer")]));
    let (ld, ls) = lay.blob(&gzip(&l1));
    let (md, ms) = lay.blob(&serde_json::to_vec(&json!({
        "schemaVersion": 2, "config": {"mediaType": crate::import::OCI_CONFIG, "digest": cd, "size": cs},
        "layers": [{"mediaType": crate::import::OCI_LAYER_GZIP, "digest": ld, "size": ls}]
    })).unwrap());
    lay.manifests
        .push(json!({"mediaType": crate::import::OCI_MANIFEST, "digest": md, "size": ms}));
    lay.write_index();
    let e = s.load(&lay.dir).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert_empty_store(&s);

    // 6. Truncated archive file, a docker archive with a bad config digest,
    //    and something that is not an image at all.
    let good = mk("good");
    let tarball = src.path().join("good.tar");
    tar_dir(&good.dir, &tarball);
    let bytes = fs::read(&tarball).unwrap();
    let cut = src.path().join("cut.tar");
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert!(s.load(&cut).is_err());
    assert_empty_store(&s);
    let d = src.path().join("dsave");
    fs::create_dir(&d).unwrap();
    let (dtar, cd) = docker_save(&d, std::slice::from_ref(&l1), &["d:1"]);
    let ex = src.path().join("dx");
    fs::create_dir(&ex).unwrap();
    tar::Archive::new(fs::File::open(&dtar).unwrap())
        .unpack(&ex)
        .unwrap();
    fs::write(
        ex.join(format!("{}.json", &cd[7..])),
        config_for(&[sha256_bytes(b"zz")]),
    )
    .unwrap();
    let e = s.load(&ex).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert_empty_store(&s);
    let junk = src.path().join("junk");
    fs::write(&junk, b"hello").unwrap();
    assert!(s.load(&junk).is_err());
    assert!(matches!(
        s.load(&src.path().join("nonexistent")),
        Err(Error::Io { .. })
    ));
    assert_empty_store(&s);

    // Finally the intact layout loads into the same store.
    s.load(&good.dir).unwrap();
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn interrupted_import_is_reaped_on_open() {
    let (root, s) = store();
    // A staging dir whose owner died: its .lock exists but is not held.
    let dead = s.dir().join("tmp/import-dead");
    fs::create_dir_all(dead.join("layers/x")).unwrap();
    fs::write(dead.join(".lock"), "").unwrap();
    // Older than the grace period new staging dirs get.
    let old = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
    nix::sys::stat::utimensat(
        None,
        &dead,
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    // A live one (held lock) must survive.
    let live = crate::store::Staging::new(&s).unwrap();
    let _s2 = Store::open(root.path()).unwrap();
    assert!(!dead.exists());
    let tmp_entries = fs::read_dir(s.dir().join("tmp")).unwrap().count();
    assert_eq!(tmp_entries, 1, "the live staging dir is kept");
    drop(live);
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);
}

#[test]
fn missing_layer_dir_is_unpacked_again() {
    let (_r, s) = store();
    s.load_demo().unwrap();
    let img = s.get("demo").unwrap();
    let dirs = s.layer_dirs(&img).unwrap();
    fs::remove_dir_all(&dirs[0]).unwrap();
    let again = s.layer_dirs(&img).unwrap();
    assert_eq!(again, dirs);
    assert!(again[0].join("bin/busybox").is_file());
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);
}

#[test]
fn save_then_load_round_trip() {
    let (_r, s) = store();
    let demo = s.load_demo().unwrap();
    s.tag("demo", "localhost:5000/demo:t").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("demo.tar");
    s.save("demo", &out).unwrap();
    // Only the archive, no temp file, in the output dir.
    assert_eq!(fs::read_dir(out_dir.path()).unwrap().count(), 1);

    // Its structure: oci-layout, index.json with one entry named as saved, all blobs.
    let ex = out_dir.path().join("x");
    tar::Archive::new(fs::File::open(&out).unwrap())
        .unpack(&ex)
        .unwrap();
    assert!(ex.join("oci-layout").is_file());
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(ex.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 1, "podman and skopeo want a single image");
    assert_eq!(
        m[0]["annotations"]["org.opencontainers.image.ref.name"],
        "demo:latest"
    );
    assert_eq!(
        m[0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/demo:latest"
    );
    let img = s.get("demo").unwrap();
    for d in [&img.manifest_digest, &img.id, &img.layers[0].digest] {
        let data = fs::read(ex.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(&sha256_bytes(&data), d);
    }

    // Loading it elsewhere gives the same image and layers.
    let (_r2, s2) = store();
    let loaded = s2.load(&out).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, demo.id);
    assert_eq!(loaded[0].names, vec!["demo:latest"]);
    let img2 = s2.get("demo").unwrap();
    assert_eq!(img2.manifest_digest, img.manifest_digest);
    assert_eq!(img2.layers, img.layers);

    // Saved by its other name (or id), the archive carries that name.
    let out2 = out_dir.path().join("t.tar");
    s.save("localhost:5000/demo:t", &out2).unwrap();
    let (_r3, s3) = store();
    assert_eq!(
        s3.load(&out2).unwrap()[0].names,
        vec!["localhost:5000/demo:t"]
    );
    let out3 = out_dir.path().join("id.tar");
    s.save(&demo.id, &out3).unwrap();
    let (_r4, s4) = store();
    assert_eq!(s4.load(&out3).unwrap()[0].names, vec!["demo:latest"]);
    assert!(matches!(s.save("nope", &out), Err(Error::NotFound(_))));
}

#[test]
fn concurrent_loads_into_one_store() {
    let src = tempfile::tempdir().unwrap();
    let (_r, s) = store();
    let shared = TarBuilder::new().file("shared", "s").build();
    let layouts: Vec<PathBuf> = (0..4)
        .map(|i| {
            let mut lay = Layout::new(&src.path().join(format!("l{i}")));
            let own = TarBuilder::new().file("own", &format!("{i}")).build();
            lay.image(Some(&format!("img{i}:1")), &[shared.clone(), own]);
            lay.dir
        })
        .collect();
    std::thread::scope(|sc| {
        for l in &layouts {
            let s = s.clone();
            sc.spawn(move || s.load(l).unwrap());
        }
        let s2 = s.clone();
        sc.spawn(move || s2.load_demo().unwrap());
    });
    let mut names: Vec<String> = s
        .list()
        .unwrap()
        .into_iter()
        .flat_map(|i| i.names)
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["demo:latest", "img0:1", "img1:1", "img2:1", "img3:1"]
    );
    // The shared layer exists once; all layers are there; no staging left.
    assert_eq!(
        fs::read_dir(s.dir().join("layers")).unwrap().count(),
        1 + 4 + 1
    );
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);
    for i in 0..4 {
        let img = s.get(&format!("img{i}:1")).unwrap();
        let dirs = s.layer_dirs(&img).unwrap();
        assert_eq!(
            fs::read_to_string(dirs[1].join("own")).unwrap(),
            format!("{i}")
        );
    }
}

// ---------- vm-mode rootfs images ----------

#[test]
fn rootfs_images_flatten_layers() {
    let src = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let l1 = {
        // Add a hardlink pair and an owned file to the lower layer.
        let mut b = TarBuilder::new().file_owned("home/u/f", "owned", 0o640, 1000, 1000);
        b = b.hardlink("home/u/g", "home/u/f");
        let mut t = b.build();
        // Concatenate tars: strip the end-of-archive blocks of the first.
        let mut first = l1.clone();
        first.truncate(first.len() - 1024);
        first.append(&mut t);
        first
    };
    let mut lay = Layout::new(src.path());
    lay.image(Some("flat:1"), &[l1, l2]);
    let (_r, s) = store();
    s.load(src.path()).unwrap();
    let img = s.get("flat:1").unwrap();

    // The flattened tree shows what overlayfs would.
    let tree = src.path().join("tree");
    crate::rootfs::flatten(&s.layer_dirs(&img).unwrap(), &tree).unwrap();
    assert_eq!(fs::read_to_string(tree.join("bin/tool")).unwrap(), "v2");
    assert!(!tree.join("etc/old").exists(), "whiteout applied");
    assert!(tree.join("data/b").exists());
    assert!(
        !tree.join("data/a").exists(),
        "opaque dir hides the lower content"
    );
    let f = fs::metadata(tree.join("home/u/f")).unwrap();
    assert_eq!((f.uid(), f.mode() & 0o7777), (1000, 0o640));
    assert_eq!(f.ino(), fs::metadata(tree.join("home/u/g")).unwrap().ino());

    // ext4: read back with debugfs, without mounting.
    let ext4 = s.rootfs_image(&img, crate::RootfsFormat::Ext4).unwrap();
    let cat = |p: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat {p}")])
            .arg(&ext4)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(cat("/bin/tool"), "v2");
    assert_eq!(cat("/data/b"), "b");
    assert_eq!(cat("/data/a"), "");
    assert_eq!(cat("/etc/old"), "");
    let stat = std::process::Command::new("debugfs")
        .args(["-R", "stat /home/u/f"])
        .arg(&ext4)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.contains("User:  1000") && stat.contains("Links: 2"),
        "{stat}"
    );
    // Cached: the same file, and no staging left.
    assert_eq!(
        s.rootfs_image(&img, crate::RootfsFormat::Ext4).unwrap(),
        ext4
    );
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);

    // erofs: extract with fsck.erofs and compare.
    let erofs = s.rootfs_image(&img, crate::RootfsFormat::Erofs).unwrap();
    let out = src.path().join("erofs-out");
    let st = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", out.display()))
        .arg(&erofs)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read_to_string(out.join("bin/tool")).unwrap(), "v2");
    assert!(!out.join("etc/old").exists() && !out.join("data/a").exists());
    assert_eq!(fs::metadata(out.join("home/u/f")).unwrap().uid(), 1000);

    // rmi removes the cached images with the image.
    s.remove("flat:1").unwrap();
    assert_eq!(fs::read_dir(s.dir().join("rootfs")).unwrap().count(), 0);
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn layer_dirs_stack_as_overlay_lower_dirs() {
    let src = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let mut lay = Layout::new(&src.path().join("layout"));
    lay.image(Some("ovl:1"), &[l1, l2]);
    let (_r, s) = store();
    s.load(&lay.dir).unwrap();
    let img = s.get("ovl:1").unwrap();
    let dirs = s.layer_dirs(&img).unwrap();
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    let target = src.path().join("merged");
    fs::create_dir(&target).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .expect("mount overlayfs (tests run as root)");
    let _guard = MountGuard(target.clone());
    assert_eq!(fs::read_to_string(target.join("bin/tool")).unwrap(), "v2");
    assert!(
        !target.join("etc/old").exists(),
        "whiteout hides the lower file"
    );
    assert!(target.join("etc").is_dir());
    let data: Vec<String> = fs::read_dir(target.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(data, vec!["b"], "opaque dir hides the lower contents");
}

#[test]
fn demo_without_busybox_fails_clearly() {
    let (_r, s) = store();
    let e = s
        .load_demo_from(Path::new("/nonexistent/busybox"))
        .unwrap_err();
    assert!(e.to_string().contains("busybox-static"), "{e}");
    assert_empty_store(&s);
}

// ---------- untrusted archives: only regular files inside them are read ----------

/// Like [`tar_dir`], but keeps symbolic links as links.
fn tar_dir_keeping_links(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A `docker save` directory whose manifest.json names `config` and `layers`.
fn docker_dir(dir: &Path, config: &str, layers: &[&str]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let manifest = json!([{"Config": config, "RepoTags": ["evil:1"], "Layers": layers}]);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

fn assert_refused(s: &Store, e: &Error, wanted: &str) {
    assert!(matches!(e, Error::BadConfig(_)), "{e}");
    assert!(e.to_string().contains(wanted), "{wanted:?} not in: {e}");
    assert_empty_store(s);
}

#[test]
fn load_reads_nothing_outside_the_archive() {
    let src = tempfile::tempdir().unwrap();
    let (_r, s) = store();

    // A file outside the archive that would pass for a good image config:
    // loading it would put a host file into the store.
    let l1 = TarBuilder::new().file("f", "1").build();
    let host_cfg = src.path().join("host-config.json");
    fs::write(&host_cfg, config_for(&[sha256_bytes(&l1)])).unwrap();
    let host_digest = sha256_bytes(&fs::read(&host_cfg).unwrap());
    let host_hex = &host_digest[7..];

    // docker save, as a tar: `h -> /` and a config named through it.
    let d = docker_dir(
        &src.path().join("d1"),
        &format!("h{}", host_cfg.display()),
        &[],
    );
    std::os::unix::fs::symlink("/", d.join("h")).unwrap();
    let t = src.path().join("d1.tar");
    tar_dir_keeping_links(&d, &t);
    let e = s.load(&t).unwrap_err();
    assert_refused(&s, &e, "symbolic link h -> /");
    assert!(!e.to_string().contains(host_hex), "{e}");
    // The same as a directory.
    let e = s.load(&d).unwrap_err();
    assert_refused(&s, &e, "leads out of the archive");

    // A layer through the link to /dev/zero: refused at once, nothing read.
    let d = docker_dir(&src.path().join("d2"), "c.json", &["h/dev/zero"]);
    fs::copy(&host_cfg, d.join("c.json")).unwrap();
    std::os::unix::fs::symlink("/", d.join("h")).unwrap();
    let t = src.path().join("d2.tar");
    tar_dir_keeping_links(&d, &t);
    let e = s.load(&t).unwrap_err();
    assert_refused(&s, &e, "h/dev/zero");
    // Relative links that climb out, and the file named by `..` or an
    // absolute path, are refused as well.
    let d = docker_dir(&src.path().join("d3"), "up/x.json", &[]);
    std::os::unix::fs::symlink("../..", d.join("up")).unwrap();
    assert_refused(&s, &s.load(&d).unwrap_err(), "leads out of the archive");
    let d = docker_dir(&src.path().join("d4"), "../host-config.json", &[]);
    assert_refused(&s, &s.load(&d).unwrap_err(), "`..`");
    let d = docker_dir(&src.path().join("d5"), &host_cfg.display().to_string(), &[]);
    assert_refused(&s, &s.load(&d).unwrap_err(), "absolute path");

    // Devices and FIFOs in a layout directory are not read (a FIFO would
    // block the load forever, /dev/zero would fill the disk).
    let mut lay = Layout::new(&src.path().join("devs"));
    lay.image(Some("x:1"), std::slice::from_ref(&l1));
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(
            lay.dir
                .join("blobs/sha256")
                .join(&lay.manifests[0]["digest"].as_str().unwrap()[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = lay
        .dir
        .join("blobs/sha256")
        .join(&m["layers"][0]["digest"].as_str().unwrap()[7..]);
    fs::remove_file(&layer).unwrap();
    nix::unistd::mkfifo(&layer, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert_refused(&s, &s.load(&lay.dir).unwrap_err(), "is a FIFO");
    fs::remove_file(&layer).unwrap();
    nix::sys::stat::mknod(
        &layer,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    assert_refused(&s, &s.load(&lay.dir).unwrap_err(), "is a character device");

    // An OCI layout whose config blob is a link to the host file with the
    // very digest the manifest names.
    let mut lay = Layout::new(&src.path().join("oci"));
    lay.image(Some("x:1"), std::slice::from_ref(&l1));
    let cfg_blob = lay.dir.join("blobs/sha256").join(host_hex);
    assert!(
        cfg_blob.is_file(),
        "the layout's config is the host file's twin"
    );
    fs::remove_file(&cfg_blob).unwrap();
    std::os::unix::fs::symlink(&host_cfg, &cfg_blob).unwrap();
    assert_refused(
        &s,
        &s.load(&lay.dir).unwrap_err(),
        "leads out of the archive",
    );
    let t = src.path().join("oci.tar");
    tar_dir_keeping_links(&lay.dir, &t);
    assert_refused(&s, &s.load(&t).unwrap_err(), "leads out of the archive");
    // index.json itself through a link.
    let lay = Layout::new(&src.path().join("idx"));
    std::os::unix::fs::symlink(&host_cfg, lay.dir.join("index.json")).unwrap();
    assert_refused(&s, &s.load(&lay.dir).unwrap_err(), "index.json");
}

/// `docker save` before Docker 25 writes a layer two images share once and
/// links the second copy to it (`<id>/layer.tar -> ../<id2>/layer.tar`):
/// links that stay inside the archive are fine.
#[test]
fn docker_save_links_inside_the_archive_load() {
    let src = tempfile::tempdir().unwrap();
    let l1 = TarBuilder::new().file("f", "1").build();
    let cfg = config_for(&[sha256_bytes(&l1), sha256_bytes(&l1)]);
    let cd = sha256_bytes(&cfg);
    let d = docker_dir(
        &src.path().join("d"),
        &format!("{}.json", &cd[7..]),
        &["a/layer.tar", "b/layer.tar"],
    );
    fs::write(d.join(format!("{}.json", &cd[7..])), &cfg).unwrap();
    fs::create_dir(d.join("a")).unwrap();
    fs::create_dir(d.join("b")).unwrap();
    fs::write(d.join("a/layer.tar"), &l1).unwrap();
    std::os::unix::fs::symlink("../a/layer.tar", d.join("b/layer.tar")).unwrap();
    let t = src.path().join("d.tar");
    tar_dir_keeping_links(&d, &t);
    let (_r, s) = store();
    assert_eq!(s.load(&t).unwrap()[0].id, cd);
    assert_eq!(s.get("evil:1").unwrap().layers.len(), 2);
}

#[test]
fn load_reads_blobs_only_up_to_their_declared_size() {
    let src = tempfile::tempdir().unwrap();
    let (_r, s) = store();
    let l1 = TarBuilder::new().file("f", "1").build();
    for (i, declared) in [1_000_000_000_000_000_000u64, 3].into_iter().enumerate() {
        let mut lay = Layout::new(&src.path().join(format!("l{i}")));
        lay.image(Some("x:1"), std::slice::from_ref(&l1));
        let md = lay.manifests[0]["digest"].as_str().unwrap().to_string();
        let mut m: serde_json::Value =
            serde_json::from_slice(&fs::read(lay.dir.join("blobs/sha256").join(&md[7..])).unwrap())
                .unwrap();
        m["layers"][0]["size"] = json!(declared);
        let (nd, ns) = lay.blob(&serde_json::to_vec(&m).unwrap());
        lay.manifests[0]["digest"] = json!(nd);
        lay.manifests[0]["size"] = json!(ns);
        lay.write_index();
        let e = s.load(&lay.dir).unwrap_err();
        assert_refused(&s, &e, &format!("declares {declared} bytes"));
        // A manifest declared larger than any manifest may be.
        lay.manifests[0]["size"] = json!(crate::import::MAX_JSON + 1);
        lay.write_index();
        let e = s.load(&lay.dir).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        assert_empty_store(&s);
    }
}

// ---------- a damaged store: reported, removable, repaired by load ----------

#[test]
fn damaged_config_is_reported_and_the_image_removable() {
    let (_r, s) = store();
    let demo = s.load_demo().unwrap();
    let blob = s.blob_path(&demo.id).unwrap();
    let data = fs::read(&blob).unwrap();
    fs::write(&blob, &data[..data.len() / 2]).unwrap();
    let e = s.get("demo").unwrap_err();
    assert!(matches!(e, Error::Damaged { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("image demo is damaged"), "{msg}");
    assert!(
        msg.contains(&format!(
            "config blob {} does not match its digest",
            demo.id
        )),
        "{msg}"
    );
    assert!(msg.contains("capsa rmi demo"), "{msg}");
    assert_eq!(s.record("demo").unwrap().id, demo.id);
    fs::remove_file(&blob).unwrap();
    assert!(s
        .get("demo")
        .unwrap_err()
        .to_string()
        .contains("is missing"));
    s.remove("demo").unwrap();
    assert_empty_store_after_rmi(&s);
}

#[test]
fn load_replaces_damaged_blobs() {
    let src = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let mut lay = Layout::new(&src.path().join("lay"));
    let id = lay.image(Some("app:1"), &[l1, l2]);
    let (_r, s) = store();
    s.load(&lay.dir).unwrap();
    let img = s.get("app:1").unwrap();
    let cut = |d: &str| {
        let p = s.blob_path(d).unwrap();
        let data = fs::read(&p).unwrap();
        fs::write(&p, &data[..data.len() / 2]).unwrap();
    };
    cut(&id);
    cut(&img.layers[1].digest);
    cut(&img.manifest_digest);
    assert!(matches!(s.get("app:1"), Err(Error::Damaged { .. })));
    // Loading the image again repairs every damaged blob.
    s.load(&lay.dir).unwrap();
    for d in [&id, &img.layers[1].digest, &img.manifest_digest] {
        assert_eq!(
            &sha256_bytes(&fs::read(s.blob_path(d).unwrap()).unwrap()),
            d
        );
    }
    assert_eq!(s.get("app:1").unwrap().id, id);
    assert_eq!(s.list().unwrap().len(), 1);
    assert_eq!(fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0);
    // The demo (its blobs added from bytes) is repaired the same way.
    let demo = s.load_demo().unwrap();
    cut(&demo.id);
    s.load_demo().unwrap();
    assert_eq!(s.get("demo").unwrap().id, demo.id);
}
