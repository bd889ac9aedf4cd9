//! Root filesystem images for vm mode: the image's layers flattened (OCI
//! whiteouts and opaque directories applied) into one read-only ext4 or
//! erofs image, cached per chain ID under `<root>/images/rootfs/`.
//!
//! The flattened tree is built from hardlinks to the unpacked layer files
//! (no data is copied; ownership, modes and file xattrs come along with the
//! inode), then `mkfs.ext4 -d` or `mkfs.erofs` turns it into an image. Like
//! every import, it is built in the staging area and renamed into place.
//! A first VM-mode run of a large image waits on mkfs for seconds to
//! minutes, so a bar shows how much of the image it has written.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{lchown, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use crate::error::{Error, IoContext, Result};
use crate::store::{Image, Staging, Store};

/// Filesystem of a vm-mode root filesystem image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsFormat {
    /// ext4 via `mkfs.ext4 -d` (e2fsprogs).
    Ext4,
    /// erofs via `mkfs.erofs` (erofs-utils); smaller, read-only by design.
    Erofs,
}

impl RootfsFormat {
    pub fn extension(self) -> &'static str {
        match self {
            RootfsFormat::Ext4 => "ext4",
            RootfsFormat::Erofs => "erofs",
        }
    }
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Whether an unpacked layer's directory hides the layers below it (the
/// xattr unpacking gives an OCI opaque directory).
pub(crate) fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut buf), Ok(1) if buf[0] == b'y')
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).at("remove", path),
        Ok(_) => fs::remove_file(path).at("remove", path),
        Err(_) => Ok(()),
    }
}

/// Applies the layer dirs (lowest first) onto `merged`, like overlayfs would
/// show them. Returns (bytes of regular files, number of inodes).
pub(crate) fn flatten(layers: &[PathBuf], merged: &Path) -> Result<(u64, u64)> {
    fs::create_dir_all(merged).at("create", merged)?;
    let mut dir_meta: HashMap<PathBuf, fs::Metadata> = HashMap::new();
    for layer in layers {
        let walker = walkdir::WalkDir::new(layer)
            .min_depth(1)
            .follow_links(false);
        for entry in walker {
            let entry = entry
                .map_err(|e| Error::io(format!("walk layer {}", layer.display()), e.into()))?;
            let rel = entry.path().strip_prefix(layer).expect("inside layer");
            let dst = merged.join(rel);
            let meta = entry.path().symlink_metadata().at("stat", entry.path())?;
            if is_whiteout(&meta) {
                remove_any(&dst)?;
                continue;
            }
            if meta.is_dir() {
                let exists_as_dir = fs::symlink_metadata(&dst)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if exists_as_dir && is_opaque(entry.path()) {
                    fs::remove_dir_all(&dst).at("remove", &dst)?;
                    fs::create_dir(&dst).at("create", &dst)?;
                } else if !exists_as_dir {
                    remove_any(&dst)?;
                    fs::create_dir(&dst).at("create", &dst)?;
                }
                dir_meta.insert(dst, meta);
                continue;
            }
            remove_any(&dst)?;
            fs::hard_link(entry.path(), &dst).at("link", &dst)?;
        }
    }
    // Directory owners and modes: the uppermost layer's, as overlayfs shows.
    let mut dirs: Vec<_> = dir_meta.into_iter().filter(|(p, _)| p.exists()).collect();
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (p, m) in dirs {
        lchown(&p, Some(m.uid()), Some(m.gid())).at("chown", &p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(m.mode() & 0o7777)).at("chmod", &p)?;
    }
    measure(merged)
}

/// (bytes of regular files, number of inodes) under `tree`.
fn measure(tree: &Path) -> Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    for e in walkdir::WalkDir::new(tree).follow_links(false) {
        let e = e.map_err(|e| Error::io("walk rootfs", e.into()))?;
        let m = e.path().symlink_metadata().at("stat", e.path())?;
        inodes += 1;
        if m.is_file() {
            bytes += m.len();
        }
    }
    Ok((bytes, inodes))
}

/// A filesystem image at `out` holding a copy of the directory `tree`
/// (an OCI bundle's root filesystem that did not come from capsa's store).
pub fn filesystem_image_of(tree: &Path, out: &Path, format: RootfsFormat) -> Result<()> {
    let (bytes, inodes) = measure(tree)?;
    mkfs(format, tree, out, bytes, inodes, &ProgressBar::hidden())
}

/// Runs mkfs; while it runs, `bar` follows the bytes it has put in the
/// image file, and appears (on a terminal) once it has taken a second.
fn run(
    cmd: &mut Command,
    what: &str,
    package: &str,
    (image, bar): (&Path, &ProgressBar),
) -> Result<()> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::io(
                format!("run {what} (install Debian's {package} package)"),
                e,
            )
        })?;
    let mut stderr = child.stderr.take().expect("piped");
    let said = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut shown = false;
    let status = loop {
        if let Some(status) = child.try_wait().at("wait for", Path::new(what))? {
            break status;
        }
        // Small images are done in milliseconds: look often at first.
        let slow = started.elapsed() > Duration::from_secs(1);
        if slow && !shown {
            bar.set_draw_target(crate::store::progress_target());
            shown = true;
        }
        if let Ok(m) = fs::metadata(image) {
            bar.set_position(m.blocks() * 512);
        }
        std::thread::sleep(Duration::from_millis(if slow { 100 } else { 5 }));
    };
    let said = said.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::io(
            format!("{what} failed: {}", said.trim()),
            std::io::Error::other("non-zero exit status"),
        ));
    }
    Ok(())
}

fn mkfs(
    format: RootfsFormat,
    tree: &Path,
    out: &Path,
    bytes: u64,
    inodes: u64,
    bar: &ProgressBar,
) -> Result<()> {
    match format {
        RootfsFormat::Ext4 => {
            // Room for metadata and block rounding: 25% + 32 MiB, 4 KiB blocks.
            let size = (bytes + bytes / 4 + (32 << 20)).div_ceil(4096) * 4096;
            let f = fs::File::create(out).at("create", out)?;
            f.set_len(size).at("size", out)?;
            drop(f);
            run(
                Command::new("mkfs.ext4")
                    .args([
                        "-q",
                        "-F",
                        "-b",
                        "4096",
                        "-m",
                        "0",
                        "-O",
                        "^has_journal",
                        "-L",
                        "capsa-rootfs",
                    ])
                    .arg("-N")
                    .arg((inodes + inodes / 4 + 1024).to_string())
                    .arg("-d")
                    .arg(tree)
                    .arg(out),
                "mkfs.ext4",
                "e2fsprogs",
                (out, bar),
            )
        }
        RootfsFormat::Erofs => run(
            Command::new("mkfs.erofs").arg("-T0").arg(out).arg(tree),
            "mkfs.erofs",
            "erofs-utils",
            (out, bar),
        ),
    }
}

impl Store {
    /// The read-only root filesystem image of `image` for vm mode, built on
    /// first use and cached by the chain ID of its top layer.
    pub fn rootfs_image(&self, image: &Image, format: RootfsFormat) -> Result<PathBuf> {
        let key = image.rootfs_key()?;
        let dir = self.dir().join("rootfs");
        fs::create_dir_all(&dir).at("create", &dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).at("chmod", &dir)?;
        let path = dir.join(format!("{key}.{}", format.extension()));
        if path.is_file() {
            return Ok(path);
        }
        let layers = self.layer_dirs(image)?;
        let st = Staging::new(self)?;
        let tree = st.work_dir().join("tree");
        let (bytes, inodes) = flatten(&layers, &tree)?;
        let tmp_img = st.work_dir().join(format!("rootfs.{}", format.extension()));
        let bar =
            ProgressBar::with_draw_target(Some(bytes), indicatif::ProgressDrawTarget::hidden())
                .with_style(crate::store::blob_bar_style())
                .with_prefix(key.chars().take(12).collect::<String>())
                .with_message("VM disk");
        let made = mkfs(format, &tree, &tmp_img, bytes, inodes, &bar);
        bar.finish_and_clear();
        made?;
        let _lock = self.lock()?;
        if !path.is_file() {
            fs::rename(&tmp_img, &path).at("store rootfs image", &path)?;
        }
        Ok(path)
    }
}
