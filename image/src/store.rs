//! The content-addressed store: index, lock, blobs, unpacked layers and the
//! staging area every import goes through.
//!
//! On-disk layout under `<root>/images/`:
//!
//! ```text
//! index.json              image records (names, manifest, layers), replaced atomically
//! lock                    flock(2) held around every index update
//! blobs/sha256/<hex>      manifests, configs and layer blobs, verified before commit
//! layers/<hex of diff_id> unpacked layers, ready as overlayfs lower dirs
//! tmp/<random>/           staging of one import (with its own flock'd .lock)
//! ```
//!
//! An import stages everything (blobs, unpacked layers) in one `tmp/`
//! directory, verifying every digest, and only then, under the lock, renames
//! the new blobs and layers into place and rewrites `index.json`. A failed
//! import drops its staging directory; an interrupted one (killed process) is
//! reaped by the next [`Store::open`], because its `.lock` is no longer held.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::{self, hex_of, HashingReader, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::reference;

/// One layer of an image, lowest first in [`Image::layers`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (possibly compressed).
    pub digest: String,
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (from the image config).
    pub diff_id: String,
    /// Size of the uncompressed tar in bytes.
    pub unpacked_size: u64,
}

/// What the store's index keeps of an image: everything but its config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, `sha256:<hex>` (what `docker images --no-trunc` shows as ID).
    pub id: String,
    /// Normalized names, e.g. `demo:latest`, `localhost:5000/x:t`.
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// RFC 3339 creation time from the image config, if any.
    pub created: Option<String>,
    /// Sum of the uncompressed layer sizes.
    pub size: u64,
    pub architecture: String,
    pub os: String,
    pub layers: Vec<Layer>,
}

impl ImageRecord {
    /// The name `rmi name_or_id` would only remove, the image keeping its
    /// other names (docker's untag); `None` when it would delete the image
    /// (its id, or its last name).
    pub fn untag_only(&self, name_or_id: &str) -> Option<String> {
        reference::normalize(name_or_id)
            .ok()
            .map(|n| reference::canonical(&n).to_string())
            .filter(|n| self.names.len() > 1 && self.names.contains(n))
    }
}

/// An image in the store: its record and its parsed config. Serializable
/// for `capsa inspect` (the record's fields, then `config`).
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    #[serde(flatten)]
    pub record: ImageRecord,
    pub config: ImageConfiguration,
}

impl Image {
    /// An image known only by its configuration, kept in no store (its ID
    /// is the configuration's digest): enough to generate a runtime spec,
    /// which is what tests across capsa's crates need.
    pub fn from_config(config: ImageConfiguration) -> Image {
        // Serializing a configuration cannot fail (string-keyed maps only).
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        Image {
            record: ImageRecord {
                id: digest::sha256_bytes(&bytes),
                names: vec![],
                manifest_digest: String::new(),
                manifest_media_type: String::new(),
                created: None,
                size: 0,
                architecture: config.architecture().to_string(),
                os: config.os().to_string(),
                layers: vec![],
            },
            config,
        }
    }
}

impl std::ops::Deref for Image {
    type Target = ImageRecord;
    fn deref(&self) -> &ImageRecord {
        &self.record
    }
}

impl ImageRecord {
    /// The OCI chain IDs of the layers (lowest first); the last one
    /// identifies the whole root filesystem.
    pub fn chain_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let next = match out.last() {
                None => l.diff_id.clone(),
                Some(prev) => digest::sha256_bytes(format!("{prev} {}", l.diff_id).as_bytes()),
            };
            out.push(next);
        }
        out
    }

    /// The name (hex) of the image's vm-mode rootfs: the chain ID of its
    /// top layer, or with no layers its config digest.
    pub(crate) fn rootfs_key(&self) -> Result<String> {
        let top = self.chain_ids().pop().unwrap_or_else(|| self.id.clone());
        Ok(hex_of(&top)?.to_string())
    }

    /// The short id (12 hex characters) as `docker images` shows it.
    pub fn short_id(&self) -> &str {
        short_id(&self.id)
    }

    fn summary(&self) -> ImageSummary {
        ImageSummary {
            id: self.id.clone(),
            names: self.names.clone(),
            size: self.size,
            created: self.created.clone(),
        }
    }
}

/// What `capsa images` lists.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    pub created: Option<String>,
}

/// The first 12 hex characters of a `sha256:` digest.
pub fn short_id(id: &str) -> &str {
    let h = id.strip_prefix("sha256:").unwrap_or(id);
    &h[..h.len().min(12)]
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    images: Vec<ImageRecord>,
}

/// The image store. Cheap to open; all methods are synchronous.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// An exclusive flock on a file, released on drop.
pub(crate) struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn acquire(path: &Path, block: bool) -> Result<Option<FileLock>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .at("open lock file", path)?;
        let flags = libc::LOCK_EX | if block { 0 } else { libc::LOCK_NB };
        loop {
            // SAFETY: flock on a valid, owned file descriptor.
            let r = unsafe { libc::flock(f.as_raw_fd(), flags) };
            if r == 0 {
                return Ok(Some(FileLock(f)));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !block => return Ok(None),
                _ => return Err(Error::io(format!("lock {}", path.display()), e)),
            }
        }
    }
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o666)
}

/// [`write_atomic`] of a file created with `mode` (less the umask): a
/// reader never sees half of it, nor a secret with a wider mode.
pub(crate) fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let res = (|| -> io::Result<()> {
        // A leftover would keep its own mode: start from none.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.at("write", path)
}

impl Store {
    /// Opens (creating if needed) the store under `<root>/images` and reaps
    /// the staging directories of interrupted imports.
    pub fn open(root: &Path) -> Result<Store> {
        let dir = root.join("images");
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).at("create store directory", &p)?;
        }
        // Unpacked layers hold the images' setuid binaries and device nodes
        // with their real owners: keep other host users out of them.
        for sub in ["layers", "tmp"] {
            let p = dir.join(sub);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).at("chmod", &p)?;
        }
        let store = Store { dir };
        store.reap_tmp()?;
        Ok(store)
    }

    /// The store's directory (`<root>/images`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a committed blob (it may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join("layers").join(hex_of(diff_id)?))
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub(crate) fn lock(&self) -> Result<FileLock> {
        Ok(FileLock::acquire(&self.dir.join("lock"), true)?.expect("blocking lock"))
    }

    fn reap_tmp(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).at("read", &tmp)? {
            let entry = entry.at("read", &tmp)?;
            let path = entry.path();
            let lock_path = path.join(".lock");
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let stale = if lock_path.exists() {
                // Unlocked: its owner is gone. (The age check covers the
                // instant between an owner creating .lock and locking it.)
                age >= 2 && FileLock::acquire(&lock_path, false)?.is_some()
            } else {
                // Created but not yet locked by its owner, or a stray file:
                // only reap it once it is clearly old.
                age > 600
            };
            if stale {
                tracing::info!(path = %path.display(), "removing leftovers of an interrupted import");
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
        Ok(())
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.dir.join("index.json");
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| {
                Error::BadConfig(format!(
                    "the store index {} is corrupt ({e}); move it away to start with an empty store",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
                version: 1,
                images: Vec::new(),
            }),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let data = serde_json::to_vec_pretty(index).expect("index serializes");
        write_atomic(&self.dir.join("index.json"), &data)
    }

    /// All images, in the order they were added.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        Ok(self
            .read_index()?
            .images
            .iter()
            .map(ImageRecord::summary)
            .collect())
    }

    /// The files and directories image `r` has in the store: its blobs,
    /// unpacked layers and VM root filesystem images (named
    /// `<chain id hex>.<format>`). Shared ones (a layer of two images) are
    /// named by both; a digest that is not valid names nothing.
    pub fn paths_of(&self, r: &ImageRecord) -> Vec<PathBuf> {
        let blobs = [&r.id, &r.manifest_digest]
            .into_iter()
            .chain(r.layers.iter().map(|l| &l.digest))
            .filter_map(|d| self.blob_path(d).ok());
        let layers = r
            .layers
            .iter()
            .filter_map(|l| self.layer_path(&l.diff_id).ok());
        let mut out: Vec<PathBuf> = blobs.chain(layers).collect();
        if let (Ok(key), Ok(rd)) = (r.rootfs_key(), fs::read_dir(self.dir.join("rootfs"))) {
            let mine = |n: &str| n.split('.').next() == Some(key.as_str());
            out.extend(
                rd.flatten()
                    .filter(|e| mine(&e.file_name().to_string_lossy()))
                    .map(|e| e.path()),
            );
        }
        out
    }

    fn find(index: &Index, name_or_id: &str) -> Result<usize> {
        let wanted = name_or_id.trim();
        let hex = wanted.strip_prefix("sha256:").unwrap_or(wanted);
        let hex_like =
            !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        match reference::normalize(wanted) {
            Ok(n) => {
                let n = reference::canonical(&n);
                if let Some(i) = index
                    .images
                    .iter()
                    .position(|r| r.names.iter().any(|x| x == n))
                {
                    return Ok(i);
                }
            }
            Err(e) if !hex_like => return Err(e),
            Err(_) => {}
        }
        if hex_like {
            let hex = hex.to_ascii_lowercase();
            let hits: Vec<usize> = index
                .images
                .iter()
                .enumerate()
                .filter(|(_, r)| r.id["sha256:".len()..].starts_with(&hex))
                .map(|(i, _)| i)
                .collect();
            match hits.len() {
                0 => {}
                1 => return Ok(hits[0]),
                _ => return Err(Error::Ambiguous(wanted.to_string())),
            }
        }
        Err(Error::NotFound(wanted.to_string()))
    }

    /// Reads and verifies a committed blob.
    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let data = fs::read(&path).map_err(|e| {
            Error::io(
                format!("read blob {digest} ({}): the store is damaged; remove the image and load it again", path.display()),
                e,
            )
        })?;
        digest::verify(
            &format!("stored blob {}", path.display()),
            digest,
            &digest::sha256_bytes(&data),
        )?;
        Ok(data)
    }

    /// The image of record `r`, with its config read from the store and
    /// verified. A config blob that is missing, does not match its digest
    /// or does not parse is [`Error::Damaged`], named as the user asked
    /// for it (`asked`), so they learn which image to load again or remove.
    fn image_of(&self, asked: &str, r: &ImageRecord) -> Result<Image> {
        let damaged = |reason: String| Error::Damaged {
            image: asked.trim().to_string(),
            reason,
        };
        let path = self.blob_path(&r.id)?;
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(damaged(format!("its config blob {} is missing", r.id)))
            }
            Err(e) => {
                return Err(Error::io(
                    format!("read the config blob {} of image {asked}", path.display()),
                    e,
                ))
            }
        };
        if digest::sha256_bytes(&data) != r.id {
            return Err(damaged(format!(
                "its config blob {} does not match its digest",
                r.id
            )));
        }
        let config = parse_config(&r.id, &data).map_err(|e| damaged(e.to_string()))?;
        Ok(Image {
            record: r.clone(),
            config,
        })
    }

    /// Looks an image up by name (`demo`, `demo:latest`,
    /// `localhost:5000/x:tag`) or by a full or short id prefix.
    /// [`Error::Damaged`] if its config in the store is damaged.
    pub fn get(&self, name_or_id: &str) -> Result<Image> {
        let index = self.read_index()?;
        let i = Self::find(&index, name_or_id)?;
        self.image_of(name_or_id, &index.images[i])
    }

    /// The index record of an image (as [`Store::get`] finds it), without
    /// reading its config: works for a damaged image too, e.g. to remove it.
    pub fn record(&self, name_or_id: &str) -> Result<ImageRecord> {
        let mut index = self.read_index()?;
        let i = Self::find(&index, name_or_id)?;
        Ok(index.images.swap_remove(i))
    }

    /// Adds the name `new_name` to the image `src`; a previous holder of
    /// that name loses it (as with `docker tag`).
    pub fn tag(&self, src: &str, new_name: &str) -> Result<()> {
        let name = reference::canonical(&reference::normalize(new_name)?).to_string();
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let i = Self::find(&index, src)?;
        for r in index.images.iter_mut() {
            r.names.retain(|n| *n != name);
        }
        index.images[i].names.push(name);
        self.write_index(&index)
    }

    /// `docker rmi`: given a name of an image with other names, only that
    /// name is removed; given its last name or its id, the image goes, with
    /// every blob and unpacked layer no other image uses. Returns lines
    /// like docker's (`Untagged: …`, `Deleted: …`). The caller checks that
    /// no container uses the image.
    pub fn remove(&self, name_or_id: &str) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let i = Self::find(&index, name_or_id)?;
        let mut out = Vec::new();
        if let Some(name) = index.images[i].untag_only(name_or_id) {
            index.images[i].names.retain(|n| *n != name);
            self.write_index(&index)?;
            return Ok(vec![format!("Untagged: {name}")]);
        }
        let rec = index.images.remove(i);
        for n in &rec.names {
            out.push(format!("Untagged: {n}"));
        }
        self.write_index(&index)?;
        out.push(format!("Deleted: {}", rec.id));
        self.gc(&index);
        Ok(out)
    }

    /// Deletes the blobs, layer dirs and VM root filesystem images no
    /// image in `index` has ([`Store::paths_of`]).
    fn gc(&self, index: &Index) {
        let keep: BTreeSet<PathBuf> = index.images.iter().flat_map(|r| self.paths_of(r)).collect();
        for (dir, is_dir) in [("blobs/sha256", false), ("layers", true), ("rootfs", false)] {
            let Ok(rd) = fs::read_dir(self.dir.join(dir)) else {
                continue;
            };
            for p in rd.flatten().map(|e| e.path()) {
                if keep.contains(&p) {
                    continue;
                }
                let res = if is_dir {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(err) = res {
                    tracing::warn!(path = %p.display(), error = %err, "cannot remove unused image data");
                }
            }
        }
    }

    /// The unpacked layer directories of `image`, lowest first, ready to be
    /// overlayfs lower dirs (overlayfs wants them highest first in
    /// `lowerdir=`: reverse this list). Layers are unpacked at import; a
    /// missing one is unpacked again here from its blob, once.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            let path = self.layer_path(&l.diff_id)?;
            if !path.is_dir() {
                let mut st = Staging::new(self)?;
                st.ensure_layer(l)?;
                st.commit()?;
            }
            out.push(path);
        }
        Ok(out)
    }

    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.read_index()?.images)
    }
}

pub(crate) fn parse_config(digest: &str, data: &[u8]) -> Result<ImageConfiguration> {
    serde_json::from_slice(data).map_err(|e| {
        Error::BadConfig(format!(
            "image config {digest} is not a valid OCI image config: {e}"
        ))
    })
}

/// Progress bars go to stderr only when it is a terminal.
pub(crate) fn progress_target() -> indicatif::ProgressDrawTarget {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    }
}

/// The style of a per-blob bar (pull, push, unpacking): digest, state,
/// bar, bytes.
pub(crate) fn blob_bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{prefix:.bold} {msg:>12} [{bar:30}] {bytes}/{total_bytes}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// A blob being written into the staging area (see [`Staging::blob_writer`]).
pub(crate) struct BlobWriter(HashingWriter<io::BufWriter<tempfile::NamedTempFile>>);

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One import in progress: blobs and unpacked layers in a private
/// directory under `tmp/`, committed together or not at all.
pub(crate) struct Staging<'a> {
    pub(crate) store: &'a Store,
    dir: tempfile::TempDir,
    _lock: FileLock,
    blobs: BTreeSet<String>,
    /// Committed blobs this import has hashed: digest -> intact.
    checked: RefCell<BTreeMap<String, bool>>,
    layers: BTreeMap<String, u64>,
    records: Vec<ImageRecord>,
    progress: indicatif::MultiProgress,
}

impl<'a> Staging<'a> {
    pub(crate) fn new(store: &'a Store) -> Result<Staging<'a>> {
        let tmp = store.tmp_dir();
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .at("create staging directory in", &tmp)?;
        let lock = FileLock::acquire(&dir.path().join(".lock"), true)?.expect("blocking lock");
        for sub in ["blobs", "layers", "work"] {
            fs::create_dir(dir.path().join(sub)).at("create", dir.path())?;
        }
        Ok(Staging {
            store,
            dir,
            _lock: lock,
            blobs: BTreeSet::new(),
            checked: RefCell::new(BTreeMap::new()),
            layers: BTreeMap::new(),
            records: Vec::new(),
            progress: indicatif::MultiProgress::with_draw_target(progress_target()),
        })
    }

    /// A scratch directory inside the staging area (same filesystem).
    pub(crate) fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn staged_blob(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.path().join("blobs").join(hex_of(digest)?))
    }

    /// Where the verified blob `digest` is: staged or already committed.
    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        if self.blobs.contains(digest) {
            self.staged_blob(digest)
        } else {
            self.store.blob_path(digest)
        }
    }

    /// True if the blob is already staged, or committed and intact (no
    /// need to fetch it). A committed blob is hashed (once per import)
    /// before it is trusted: one that no longer matches its digest (a
    /// truncated or modified file) counts as absent, so the import stages
    /// a good copy and [`Staging::commit`] puts it in its place.
    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        if self.blobs.contains(digest) {
            return true;
        }
        if let Some(ok) = self.checked.borrow().get(digest) {
            return *ok;
        }
        let Ok(path) = self.store.blob_path(digest) else {
            return false;
        };
        let intact = match File::open(&path) {
            Ok(f) => match HashingReader::new(io::BufReader::new(f)).finish() {
                Ok((actual, _)) if actual == digest => true,
                Ok((actual, _)) => {
                    tracing::warn!(
                        "blob {digest} in the store is damaged (its content is {actual}); replacing it"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!("cannot read blob {}: {e}; replacing it", path.display());
                    false
                }
            },
            Err(_) => false,
        };
        self.checked.borrow_mut().insert(digest.to_string(), intact);
        intact
    }

    /// A temporary file in the staging area that hashes what is written.
    pub(crate) fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = tempfile::NamedTempFile::new_in(self.dir.path().join("blobs"))
            .at("create temp file in", self.dir.path())?;
        Ok(BlobWriter(HashingWriter::new(io::BufWriter::new(tmp))))
    }

    /// Verifies a written blob against `expected` and keeps it (or drops it
    /// on mismatch). Returns `(digest, size)`.
    pub(crate) fn finish_blob(
        &mut self,
        what: &str,
        w: BlobWriter,
        expected: Option<&str>,
    ) -> Result<(String, u64)> {
        let mut w = w.0;
        w.flush().at("write", self.dir.path())?;
        let digest = w.digest();
        let size = w.count;
        if let Some(e) = expected {
            digest::verify(what, e, &digest)?;
        }
        let tmp = w
            .inner
            .into_inner()
            .map_err(|e| Error::io("flush blob", e.into_error()))?;
        if !self.has_blob(&digest) {
            tmp.persist(self.staged_blob(&digest)?)
                .map_err(|e| Error::io("store blob", e.error))?;
            self.blobs.insert(digest.clone());
        }
        Ok((digest, size))
    }

    /// Streams `reader` into the staging area while hashing it; fails with
    /// DigestMismatch (leaving nothing) unless it matches `expected`.
    pub(crate) fn add_blob_reader(
        &mut self,
        what: &str,
        reader: &mut dyn Read,
        expected: Option<&str>,
    ) -> Result<(String, u64)> {
        if let Some(e) = expected {
            hex_of(e)?;
        }
        let mut w = self.blob_writer()?;
        io::copy(reader, &mut w.0).map_err(|e| Error::io(format!("read {what}"), e))?;
        self.finish_blob(what, w, expected)
    }

    pub(crate) fn add_blob_bytes(
        &mut self,
        what: &str,
        data: &[u8],
        expected: Option<&str>,
    ) -> Result<(String, u64)> {
        self.add_blob_reader(what, &mut &data[..], expected)
    }

    /// Unpacks `layer` (its blob must be staged or committed) unless it is
    /// already unpacked, verifying its diff_id. Returns the unpacked size.
    pub(crate) fn ensure_layer(&mut self, layer: &Layer) -> Result<u64> {
        if let Some(size) = self.layers.get(&layer.diff_id) {
            return Ok(*size);
        }
        let committed = self.store.layer_path(&layer.diff_id)?;
        if committed.is_dir() {
            if let Some(size) = self.known_unpacked_size(&layer.diff_id) {
                return Ok(size);
            }
            // Size unknown (no record): measure the blob instead of unpacking.
            let (actual, size) = crate::unpack::diff_id_of(&self.blob_path(&layer.digest)?)?;
            digest::verify("uncompressed layer (diff_id)", &layer.diff_id, &actual)?;
            return Ok(size);
        }
        let dest = self.dir.path().join("layers").join(hex_of(&layer.diff_id)?);
        let blob = self.blob_path(&layer.digest)?;
        let len = fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
        let bar = self.progress.add(indicatif::ProgressBar::new(len));
        bar.set_style(blob_bar_style());
        bar.set_prefix(short_id(&layer.diff_id).to_string());
        bar.set_message("unpacking");
        let res = crate::unpack::unpack_layer_with(&blob, &layer.diff_id, &dest, &bar);
        match &res {
            Ok(_) => bar.finish_with_message("unpacked"),
            Err(_) => bar.abandon_with_message("failed"),
        }
        let size = res?;
        self.layers.insert(layer.diff_id.clone(), size);
        Ok(size)
    }

    fn known_unpacked_size(&self, diff_id: &str) -> Option<u64> {
        let recs = self.store.records().ok()?;
        recs.iter()
            .chain(self.records.iter())
            .flat_map(|r| r.layers.iter())
            .find(|l| l.diff_id == diff_id && l.unpacked_size > 0)
            .map(|l| l.unpacked_size)
    }

    pub(crate) fn add_record(&mut self, r: ImageRecord) {
        self.records.push(r);
    }

    /// Moves the staged blobs and layers into the store and records the
    /// images, all under the store lock. On failure, undoes what it moved.
    pub(crate) fn commit(self) -> Result<Vec<ImageSummary>> {
        let store = self.store;
        let _lock = store.lock()?;
        let mut moved: Vec<(PathBuf, bool)> = Vec::new();
        let res = (|| -> Result<Vec<ImageSummary>> {
            // A staged blob either is new to the store or replaces a damaged
            // committed copy (see `has_blob`): rename it over whatever is
            // there (at worst an intact copy a concurrent import committed).
            for d in &self.blobs {
                let dst = store.blob_path(d)?;
                let existed = dst.exists();
                let src = self.staged_blob(d)?;
                fs::rename(&src, &dst).at("commit blob", &dst)?;
                if !existed {
                    moved.push((dst, false));
                }
            }
            for d in self.layers.keys() {
                let dst = store.layer_path(d)?;
                if !dst.exists() {
                    let src = self.dir.path().join("layers").join(hex_of(d)?);
                    fs::rename(&src, &dst).at("commit layer", &dst)?;
                    moved.push((dst, true));
                }
            }
            // Blobs and layers this import reused from the store must still
            // be there: a concurrent `remove` may have collected them.
            for rec in &self.records {
                let mut needed = vec![rec.id.clone(), rec.manifest_digest.clone()];
                needed.extend(rec.layers.iter().map(|l| l.digest.clone()));
                for d in needed {
                    if !store.blob_path(&d)?.is_file() {
                        return Err(Error::BadConfig(format!(
                            "blob {d} was removed by a concurrent `rmi` during this import; run it again"
                        )));
                    }
                }
                for l in &rec.layers {
                    if !store.layer_path(&l.diff_id)?.is_dir() {
                        return Err(Error::BadConfig(format!(
                            "layer {} was removed by a concurrent `rmi` during this import; run it again",
                            l.diff_id
                        )));
                    }
                }
            }
            let mut index = store.read_index()?;
            index.version = 1;
            let mut out = Vec::new();
            for rec in &self.records {
                for other in index.images.iter_mut() {
                    other.names.retain(|n| !rec.names.contains(n));
                }
                if let Some(existing) = index.images.iter_mut().find(|r| r.id == rec.id) {
                    for n in &rec.names {
                        if !existing.names.contains(n) {
                            existing.names.push(n.clone());
                        }
                    }
                    out.push(existing.summary());
                } else {
                    index.images.push(rec.clone());
                    out.push(rec.summary());
                }
            }
            if !self.records.is_empty() {
                store.write_index(&index)?;
            }
            Ok(out)
        })();
        if res.is_err() {
            for (p, is_dir) in moved.iter().rev() {
                let _ = if *is_dir {
                    fs::remove_dir_all(p)
                } else {
                    fs::remove_file(p)
                };
            }
        }
        res
    }
}

/// Builds the index record of an image whose blobs and layers are staged.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_image(
    st: &mut Staging<'_>,
    names: Vec<String>,
    manifest_digest: &str,
    manifest_media_type: &str,
    config_digest: &str,
    config: &ImageConfiguration,
    layer_descs: Vec<(String, String, u64)>,
) -> Result<ImageSummary> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layer_descs.len() {
        return Err(Error::BadConfig(format!(
            "image config {config_digest} lists {} layers (rootfs.diff_ids) but the manifest has {}",
            diff_ids.len(),
            layer_descs.len()
        )));
    }
    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    if os != "linux" || arch != "amd64" {
        return Err(Error::Unsupported(format!(
            "the image is for {os}/{arch}; capsa runs linux/amd64 images"
        )));
    }
    let mut layers = Vec::new();
    let mut total = 0;
    for ((digest, media_type, size), diff_id) in layer_descs.into_iter().zip(diff_ids) {
        hex_of(diff_id)?;
        let mut l = Layer {
            digest,
            media_type,
            size,
            diff_id: diff_id.clone(),
            unpacked_size: 0,
        };
        l.unpacked_size = st.ensure_layer(&l)?;
        total += l.unpacked_size;
        layers.push(l);
    }
    let mut seen = HashMap::new();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| seen.insert(n.clone(), ()).is_none())
        .collect();
    let rec = ImageRecord {
        id: config_digest.to_string(),
        names,
        manifest_digest: manifest_digest.to_string(),
        manifest_media_type: manifest_media_type.to_string(),
        created: config.created().clone(),
        size: total,
        architecture: arch,
        os,
        layers,
    };
    let s = rec.summary();
    st.add_record(rec);
    Ok(s)
}

/// Normalizes a list of names from an archive, dropping invalid ones with a warning.
pub(crate) fn clean_names(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        match reference::normalize(&n) {
            Ok(v) => {
                let v = reference::canonical(&v).to_string();
                if !out.contains(&v) {
                    out.push(v)
                }
            }
            Err(e) => tracing::warn!("ignoring image name: {e}"),
        }
    }
    out
}
