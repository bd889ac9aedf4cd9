//! `Store::load_demo`: the built-in `demo:latest` image, made offline from
//! Debian's busybox-static. The layer tar, config and manifest are built
//! byte-for-byte deterministically (fixed mtimes, owners, order and gzip
//! header), so the same busybox binary always gives the same image ID.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use flate2::{Compression, GzBuilder};

use crate::error::{Error, IoContext, Result};
use crate::import::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::store::{stage_image, ImageSummary, Staging, Store};

/// Name of the built-in image.
pub const DEMO_NAME: &str = "demo:latest";
/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// Fixed timestamp of every file and of the config (2024-01-01T00:00:00Z).
const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
user:x:1000:1000:user:/home/user:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n";

struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl LayerBuilder {
    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(EPOCH);
        h.set_size(0);
        h
    }
    fn dir(&mut self, path: &str, mode: u32, owner: u64) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, owner, owner);
        self.tar
            .append_data(&mut h, format!("{path}/"), &[][..])
            .ctx(|| format!("build demo layer: {path}"))
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, 0, 0);
        h.set_size(data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .ctx(|| format!("build demo layer: {path}"))
    }
    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.tar
            .append_link(&mut h, path, target)
            .ctx(|| format!("build demo layer: {path}"))
    }
}

/// The applet paths busybox knows (`bin/ls`, `usr/bin/env`, …), sorted.
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .at("run `busybox --list-full` of", busybox)?;
    if !out.status.success() {
        return Err(Error::Unsupported(format!(
            "{} --list-full failed; install Debian's busybox-static",
            busybox.display()
        )));
    }
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| {
            (l.starts_with("bin/") || l.starts_with("sbin/") || l.starts_with("usr/"))
                && !l.contains("..")
                && *l != "bin/busybox"
        })
        .map(str::to_string)
        .collect();
    list.sort();
    list.dedup();
    Ok(list)
}

/// Builds the demo layer (gzip) from the busybox binary at `busybox`.
pub(crate) fn demo_layer(busybox: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let bin = fs::read(busybox).map_err(|e| {
        Error::io(
            format!(
                "read {} (install Debian's busybox-static: apt-get install busybox-static)",
                busybox.display()
            ),
            e,
        )
    })?;
    let mut b = LayerBuilder {
        tar: tar::Builder::new(Vec::new()),
    };
    for (d, mode, owner) in [
        ("bin", 0o755, 0),
        ("dev", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/user", 0o755, 1000),
        ("proc", 0o555, 0),
        ("root", 0o700, 0),
        ("sbin", 0o755, 0),
        ("sys", 0o555, 0),
        ("tmp", 0o1777, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("usr/sbin", 0o755, 0),
        ("var", 0o755, 0),
        ("var/tmp", 0o1777, 0),
    ] {
        b.dir(d, mode, owner)?;
    }
    b.file("bin/busybox", 0o755, &bin)?;
    for applet in applets(busybox)? {
        b.symlink(&applet, "/bin/busybox")?;
    }
    b.file("etc/passwd", 0o644, PASSWD.as_bytes())?;
    b.file("etc/group", 0o644, GROUP.as_bytes())?;
    b.file("etc/hostname", 0o644, b"demo\n")?;
    b.file(
        "etc/hosts",
        0o644,
        b"127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    )?;
    let tar = b.tar.into_inner().ctx(|| "finish demo layer".to_string())?;
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    gz.write_all(&tar)
        .ctx(|| "compress demo layer".to_string())?;
    let gz = gz.finish().ctx(|| "compress demo layer".to_string())?;
    Ok((tar, gz))
}

impl Store {
    /// Builds the image `demo:latest` offline from `/bin/busybox` (Debian's
    /// busybox-static): `/bin/sh` and the usual applets as symlinks, users
    /// root, user (1000) and nobody, `/tmp` 1777, `Cmd ["/bin/sh"]`.
    /// Deterministic: the same busybox gives the same image ID every time.
    pub fn load_demo(&self) -> Result<ImageSummary> {
        self.load_demo_from(Path::new(BUSYBOX))
    }

    /// [`Store::load_demo`] with another busybox binary.
    pub fn load_demo_from(&self, busybox: &Path) -> Result<ImageSummary> {
        let (tar, gz) = demo_layer(busybox)?;
        let diff_id = crate::digest::sha256_bytes(&tar);
        let config = serde_json::json!({
            "created": CREATED,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": [PATH_ENV],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
                "Labels": {"org.opencontainers.image.title": "capsa demo (busybox)"}
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": "capsa load --demo (busybox-static)"}]
        });
        let config_bytes = crate::digest::canonical_json(&config);
        let mut st = Staging::new(self)?;
        let (cfg_digest, cfg_size) = st.add_blob_bytes("demo config", &config_bytes, None)?;
        let (layer_digest, layer_size) = st.add_blob_bytes("demo layer", &gz, None)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}]
        });
        let mbytes = crate::digest::canonical_json(&manifest);
        let (mdigest, _) = st.add_blob_bytes("demo manifest", &mbytes, None)?;
        let parsed = crate::store::parse_config(&cfg_digest, &config_bytes)?;
        let s = stage_image(
            &mut st,
            vec![DEMO_NAME.to_string()],
            &mdigest,
            OCI_MANIFEST,
            &cfg_digest,
            &parsed,
            vec![(layer_digest, OCI_LAYER_GZIP.to_string(), layer_size)],
        )?;
        st.commit()?;
        Ok(s)
    }
}
