//! `Store::load`: OCI image layouts (directory or tar) and `docker save`
//! archives (auto-detected), all through one staging area.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::digest::hex_of;
use crate::error::{Error, IoContext, Result};
use crate::store::{clean_names, parse_config, stage_image, ImageSummary, Staging, Store};
use crate::unpack::{sniff, Compression};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A content descriptor, tolerant of both OCI and docker media types.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Desc {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// A manifest or an index (whichever fields are present).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestDoc {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Desc>,
    #[serde(default)]
    pub layers: Option<Vec<Desc>>,
    #[serde(default)]
    pub manifests: Option<Vec<Desc>>,
}

impl ManifestDoc {
    pub(crate) fn parse(what: &str, data: &[u8]) -> Result<ManifestDoc> {
        serde_json::from_slice(data)
            .map_err(|e| Error::BadConfig(format!("{what} is not valid JSON: {e}")))
    }
    pub(crate) fn is_index(&self) -> bool {
        self.manifests.is_some()
            || matches!(
                self.media_type.as_deref(),
                Some(OCI_INDEX) | Some(DOCKER_LIST)
            )
    }
}

/// Picks the linux/amd64 entry of an index (or its only entry without platform).
pub(crate) fn pick_platform(manifests: &[Desc]) -> Option<&Desc> {
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| {
            if manifests.len() == 1 && manifests[0].platform.is_none() {
                manifests.first()
            } else {
                None
            }
        })
}

/// Media type of a layer blob from its first bytes.
pub(crate) fn layer_media_type(path: &Path) -> Result<&'static str> {
    Ok(match sniff(path)? {
        Compression::None => OCI_LAYER,
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
    })
}

/// The largest manifest, index or image config capsa reads: they are small
/// JSON documents, and each is read into memory whole.
pub(crate) const MAX_JSON: u64 = 32 << 20;

/// How many symbolic links one path inside an archive may go through (the
/// kernel's own limit).
const MAX_SYMLINKS: u32 = 40;

/// The top directory of an image archive: a tar extracted into the staging
/// area, or an OCI layout directory the user gave. An archive is untrusted
/// input, so every path its manifests name is opened beneath this directory
/// one component at a time (`openat(2)` with `O_NOFOLLOW`), and must end at
/// a regular file inside the archive: absolute paths, `..`, devices, FIFOs
/// and symbolic links that lead out of the archive are refused. (Relative
/// links that stay inside are followed: `docker save` before Docker 25
/// writes a layer two images share as `<id>/layer.tar -> ../<id2>/layer.tar`.)
pub(crate) struct ArchiveDir {
    dir: File,
}

/// One way a path inside an archive can fail to name a regular file in it.
enum Refusal {
    Missing,
    Outside(String),
    NotAFile(&'static str),
    Io(io::Error),
}

fn cstring(name: &OsStr) -> Result<CString, Refusal> {
    CString::new(name.as_bytes()).map_err(|_| Refusal::Missing)
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn lstat_at(dir: RawFd, name: &CString) -> Result<libc::stat, Refusal> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstatat on a valid dirfd, a NUL-terminated name and a
    // buffer of the right size; it does not follow a final symlink.
    let r = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        let e = last_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) => Refusal::Missing,
            _ => Refusal::Io(e),
        });
    }
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(unsafe { st.assume_init() })
}

fn open_at(dir: RawFd, name: &CString, flags: libc::c_int) -> Result<OwnedFd, Refusal> {
    // SAFETY: openat on a valid dirfd and a NUL-terminated name; the
    // returned descriptor is owned by the OwnedFd.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = last_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Refusal::Missing,
            // The entry was swapped for a symlink since we looked at it.
            Some(libc::ELOOP) => Refusal::NotAFile("symbolic link"),
            _ => Refusal::Io(e),
        });
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_link_at(dir: RawFd, name: &CString) -> Result<OsString, Refusal> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat into a buffer of the given length.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(Refusal::Io(last_error()));
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        _ => "special file",
    }
}

impl ArchiveDir {
    /// Opens the archive's top directory (`path` itself is the user's
    /// choice, so symbolic links in it are followed).
    pub(crate) fn open(path: &Path) -> Result<ArchiveDir> {
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .at("open", path)?;
        Ok(ArchiveDir { dir })
    }

    /// True if the archive has an entry `name` at its top, of any type.
    pub(crate) fn has(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        lstat_at(self.dir.as_raw_fd(), &c).is_ok()
    }

    /// Opens `rel`, a path the archive names, for reading: it must be a
    /// regular file inside the archive. Returns the file and its size.
    /// `what` says what the archive meant it to be ("layer …").
    pub(crate) fn open_file(&self, rel: &str, what: &str) -> Result<(File, u64)> {
        self.resolve(rel).map_err(|r| match r {
            Refusal::Missing => Error::BadConfig(format!(
                "{what} is missing ({rel} does not exist in the archive)"
            )),
            Refusal::Outside(why) => Error::BadConfig(format!(
                "{what}: {rel:?} {why}; capsa reads only regular files inside the archive"
            )),
            Refusal::NotAFile(kind) => Error::BadConfig(format!(
                "{what}: {rel} in the archive is a {kind}, not a regular file; capsa reads only regular files inside the archive"
            )),
            Refusal::Io(e) => Error::io(format!("read {rel} in the image archive"), e),
        })
    }

    fn resolve(&self, rel: &str) -> Result<(File, u64), Refusal> {
        let path = Path::new(rel);
        if rel.is_empty() || path.has_root() {
            return Err(Refusal::Outside("is an absolute path".into()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(Refusal::Outside("goes up with `..`".into()));
        }
        let mut pending: VecDeque<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        // The directories entered below the top, innermost last.
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut links = 0;
        // The last symbolic link followed, for messages.
        let mut link = String::new();
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                // Only a symbolic link's target gets here.
                if stack.pop().is_none() {
                    return Err(Refusal::Outside(format!(
                        "leads out of the archive through the symbolic link {link}"
                    )));
                }
                continue;
            }
            if name.is_empty() || name == "." {
                continue;
            }
            let cur = stack.last().map_or(self.dir.as_raw_fd(), |d| d.as_raw_fd());
            let c = cstring(&name)?;
            let st = lstat_at(cur, &c)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Refusal::Outside(
                            "goes through too many symbolic links".into(),
                        ));
                    }
                    let target = read_link_at(cur, &c)?;
                    let t = Path::new(&target);
                    link = format!("{} -> {}", name.to_string_lossy(), t.display());
                    if target.is_empty() || t.has_root() {
                        return Err(Refusal::Outside(format!(
                            "leads out of the archive through the symbolic link {link}"
                        )));
                    }
                    for comp in t.components().rev() {
                        match comp {
                            Component::Normal(n) => pending.push_front(n.to_os_string()),
                            Component::ParentDir => pending.push_front("..".into()),
                            _ => {}
                        }
                    }
                }
                libc::S_IFDIR if !pending.is_empty() => {
                    stack.push(open_at(cur, &c, libc::O_RDONLY | libc::O_DIRECTORY)?);
                }
                libc::S_IFREG if pending.is_empty() => {
                    // O_NONBLOCK and O_NOCTTY: should the entry be swapped
                    // for a FIFO or a terminal after the check, opening it
                    // must neither hang nor take a controlling terminal.
                    let fd = open_at(cur, &c, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)?;
                    let f = File::from(fd);
                    let meta = f.metadata().map_err(Refusal::Io)?;
                    use std::os::unix::fs::MetadataExt;
                    if !meta.is_file() || meta.ino() != st.st_ino || meta.dev() != st.st_dev {
                        return Err(Refusal::NotAFile("file that changed while it was opened"));
                    }
                    return Ok((f, meta.len()));
                }
                libc::S_IFREG => return Err(Refusal::Missing),
                mode => return Err(Refusal::NotAFile(kind_of(mode))),
            }
        }
        Err(Refusal::NotAFile("directory"))
    }

    /// Reads a small JSON document the archive names (an index, a manifest,
    /// a config), refusing one larger than [`MAX_JSON`].
    pub(crate) fn read_json(&self, rel: &str, what: &str) -> Result<Vec<u8>> {
        let (f, size) = self.open_file(rel, what)?;
        check_json_size(what, size)?;
        let mut data = Vec::with_capacity(size as usize);
        f.take(size)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(format!("read {rel} in the image archive"), e))?;
        Ok(data)
    }
}

fn check_json_size(what: &str, size: u64) -> Result<()> {
    if size > MAX_JSON {
        return Err(Error::BadConfig(format!(
            "{what} is {size} bytes, more than the {MAX_JSON} bytes capsa accepts for a manifest, index or config"
        )));
    }
    Ok(())
}

/// Stages the blob the archive has at `rel`, reading no more than the
/// file holds. `declared` is the size the descriptor naming it gives
/// (OCI layouts); it must be the file's size, so a descriptor claiming
/// 10^18 bytes is refused before anything is read. With `json`, a file
/// larger than [`MAX_JSON`] is refused. A blob already in the store and
/// intact (see [`Staging::has_blob`]) is not read again.
fn stage_from_archive(
    st: &mut Staging<'_>,
    ar: &ArchiveDir,
    what: &str,
    rel: &str,
    declared: Option<u64>,
    json: bool,
    expected: Option<&str>,
) -> Result<(String, u64)> {
    let mismatch = |declared: u64, actual: u64| {
        Error::BadConfig(format!(
            "{what}: its descriptor declares {declared} bytes but {rel} in the archive holds {actual} bytes; the archive is damaged or was modified"
        ))
    };
    if let Some(e) = expected {
        hex_of(e)?;
        if st.has_blob(e) {
            let have = st.blob_path(e)?;
            let size = fs::metadata(&have).at("stat", &have)?.len();
            match declared {
                Some(d) if d != size => return Err(mismatch(d, size)),
                _ => return Ok((e.to_string(), size)),
            }
        }
    }
    let (f, size) = ar.open_file(rel, what)?;
    if let Some(d) = declared {
        if d != size {
            return Err(mismatch(d, size));
        }
    }
    if json {
        check_json_size(what, size)?;
    }
    let mut r = BufReader::new(f).take(size);
    let (digest, got) = st.add_blob_reader(what, &mut r, expected)?;
    if got != size {
        return Err(Error::BadConfig(format!(
            "{what}: {rel} in the archive changed while it was read ({got} of {size} bytes)"
        )));
    }
    Ok((digest, got))
}

impl Store {
    /// Imports every image in an OCI image layout (directory or tar, also
    /// gzip/zstd-compressed) or a `docker save` archive. Names come from the
    /// `io.containerd.image.name` / `org.opencontainers.image.ref.name`
    /// annotations or from `RepoTags`. Nothing is left in the store if any
    /// part fails. Every file the archive's index or manifests name is read
    /// as [`ArchiveDir`] describes: only regular files inside the archive.
    pub fn load(&self, path: &Path) -> Result<Vec<ImageSummary>> {
        let meta = fs::metadata(path)
            .map_err(|e| Error::io(format!("cannot read image archive {}", path.display()), e))?;
        let mut st = Staging::new(self)?;
        let src = if meta.is_dir() {
            path.to_path_buf()
        } else {
            let dest = st.work_dir().join("archive");
            extract_archive(path, &dest)?;
            dest
        };
        let ar = ArchiveDir::open(&src)?;
        let out = if ar.has("oci-layout") || ar.has("index.json") {
            load_oci_layout(&mut st, &ar)?
        } else if ar.has("manifest.json") {
            load_docker_save(&mut st, &ar)?
        } else {
            return Err(Error::Unsupported(format!(
                "{} is neither an OCI image layout (oci-layout, index.json) nor a `docker save` archive (manifest.json)",
                path.display()
            )));
        };
        if out.is_empty() {
            return Err(Error::BadConfig(format!(
                "{} contains no image",
                path.display()
            )));
        }
        st.commit()?;
        Ok(out)
    }
}

/// Unpacks the archive at `path` into `dest`: regular files, directories,
/// and links that stay inside `dest` (the tar crate checks that). Device
/// nodes and FIFOs have no place in an image archive and are skipped;
/// sparse files are refused, since a few bytes of one can claim terabytes.
fn extract_archive(path: &Path, dest: &Path) -> Result<()> {
    let f = BufReader::new(File::open(path).at("open", path)?);
    let reader: Box<dyn Read> = match sniff(path)? {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(f).at("open zstd", path)?)
        }
    };
    fs::create_dir_all(dest).at("create", dest)?;
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::BadConfig(format!(
            "image archive {} is unreadable or truncated: {e}",
            path.display()
        ))
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(|e| unreadable(&e))? {
        let mut entry = entry.map_err(|e| unreadable(&e))?;
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Symlink | T::Link => {
                entry.unpack_in(dest).map_err(|e| unreadable(&e))?;
            }
            // Created as needed for the files in them.
            T::Directory => {}
            T::GNUSparse => {
                return Err(Error::BadConfig(format!(
                    "image archive {} holds a sparse file ({}), which no image archive needs; capsa refuses it",
                    path.display(),
                    String::from_utf8_lossy(&entry.path_bytes())
                )))
            }
            other => tracing::debug!(
                "skipping {} ({other:?}) in image archive {}",
                String::from_utf8_lossy(&entry.path_bytes()),
                path.display()
            ),
        }
    }
    Ok(())
}

fn load_oci_layout(st: &mut Staging<'_>, ar: &ArchiveDir) -> Result<Vec<ImageSummary>> {
    let data = ar.read_json("index.json", "the OCI layout's index.json")?;
    let index = ManifestDoc::parse("index.json of the OCI layout", &data)?;
    let entries = index.manifests.unwrap_or_default();
    let mut out = Vec::new();
    for entry in &entries {
        let mut names = Vec::new();
        if let Some(a) = &entry.annotations {
            if let Some(n) = a.get("io.containerd.image.name") {
                names.push(n.clone());
            } else if let Some(n) = a.get("org.opencontainers.image.ref.name") {
                // A bare tag ("latest", as `skopeo copy … oci:DIR:latest`
                // writes) names no repository: load the image unnamed.
                if n.contains(':') || n.contains('/') {
                    names.push(n.clone());
                } else {
                    tracing::warn!(
                        "image reference {n:?} in the OCI layout is only a tag; loading the image without a name (name it with `capsa tag`)"
                    );
                }
            }
        }
        let names = clean_names(names);
        out.push(load_oci_manifest(st, ar, entry, names, 0)?);
    }
    Ok(out)
}

/// Where an OCI layout keeps the blob `digest`.
fn blob_in(digest: &str) -> Result<String> {
    Ok(format!("blobs/sha256/{}", hex_of(digest)?))
}

/// Stages the JSON blob `desc` names and returns its digest and content.
fn stage_json_blob(
    st: &mut Staging<'_>,
    ar: &ArchiveDir,
    what: &str,
    desc: &Desc,
) -> Result<(String, Vec<u8>)> {
    check_json_size(what, desc.size)?;
    let (digest, _) = stage_from_archive(
        st,
        ar,
        what,
        &blob_in(&desc.digest)?,
        Some(desc.size),
        true,
        Some(&desc.digest),
    )?;
    let path = st.blob_path(&digest)?;
    let data = fs::read(&path).at("read", &path)?;
    Ok((digest, data))
}

fn load_oci_manifest(
    st: &mut Staging<'_>,
    ar: &ArchiveDir,
    desc: &Desc,
    names: Vec<String>,
    depth: u32,
) -> Result<ImageSummary> {
    let what = format!("manifest {}", desc.digest);
    let (digest, data) = stage_json_blob(st, ar, &what, desc)?;
    let doc = ManifestDoc::parse(&what, &data)?;
    if doc.is_index() {
        if depth > 2 {
            return Err(Error::BadConfig("image indexes nested too deeply".into()));
        }
        let manifests = doc.manifests.unwrap_or_default();
        let pick = pick_platform(&manifests).ok_or_else(|| {
            Error::Unsupported(format!("index {} has no linux/amd64 image", desc.digest))
        })?;
        return load_oci_manifest(st, ar, &pick.clone(), names, depth + 1);
    }
    let media_type = doc
        .media_type
        .clone()
        .or_else(|| desc.media_type.clone())
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let cfg = doc
        .config
        .ok_or_else(|| Error::BadConfig(format!("{what} has no config")))?;
    let (cfg_digest, cfg_data) =
        stage_json_blob(st, ar, &format!("image config {}", cfg.digest), &cfg)?;
    let config = parse_config(&cfg_digest, &cfg_data)?;
    let mut layers = Vec::new();
    for l in doc.layers.unwrap_or_default() {
        let mt = l.media_type.unwrap_or_else(|| OCI_LAYER_GZIP.to_string());
        if mt.contains("nondistributable") || mt.contains("foreign") {
            return Err(Error::Unsupported(format!("layer media type {mt}")));
        }
        let (d, size) = stage_from_archive(
            st,
            ar,
            &format!("layer {}", l.digest),
            &blob_in(&l.digest)?,
            Some(l.size),
            false,
            Some(&l.digest),
        )?;
        layers.push((d, mt, size));
    }
    stage_image(
        st,
        names,
        &digest,
        &media_type,
        &cfg_digest,
        &config,
        layers,
    )
}

#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The digest a `docker save` file name implies, if any
/// (`<hex>.json`, `<hex>/layer.tar`, `blobs/sha256/<hex>`).
fn implied_digest(rel: &str) -> Option<String> {
    let candidates = [rel.strip_suffix(".json"), rel.strip_prefix("blobs/sha256/")];
    candidates
        .into_iter()
        .flatten()
        .map(|h| format!("sha256:{h}"))
        .find(|d| hex_of(d).is_ok())
}

fn load_docker_save(st: &mut Staging<'_>, ar: &ArchiveDir) -> Result<Vec<ImageSummary>> {
    let data = ar.read_json("manifest.json", "the docker archive's manifest.json")?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&data).map_err(|e| {
        Error::BadConfig(format!(
            "manifest.json of the docker archive is malformed: {e}"
        ))
    })?;
    let mut out = Vec::new();
    for e in entries {
        let what = format!("image config {}", e.config);
        let expected = implied_digest(&e.config);
        let (cfg_digest, cfg_size) =
            stage_from_archive(st, ar, &what, &e.config, None, true, expected.as_deref())?;
        let cfg_path = st.blob_path(&cfg_digest)?;
        let cfg_data = fs::read(&cfg_path).at("read", &cfg_path)?;
        let config = parse_config(&cfg_digest, &cfg_data)?;
        let mut layers = Vec::new();
        for rel in &e.layers {
            let expected = rel
                .strip_prefix("blobs/sha256/")
                .map(|h| format!("sha256:{h}"));
            let what = format!("layer {rel}");
            let (d, size) =
                stage_from_archive(st, ar, &what, rel, None, false, expected.as_deref())?;
            let mt = layer_media_type(&st.blob_path(&d)?)?;
            layers.push((d, mt.to_string(), size));
        }
        // docker save has no manifest of its own in the legacy format: make
        // an OCI manifest so the image can be saved and pushed again.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": layers.iter().map(|(d, mt, s)| serde_json::json!({
                "mediaType": mt, "digest": d, "size": s
            })).collect::<Vec<_>>(),
        });
        let mbytes = crate::digest::canonical_json(&manifest);
        let (mdigest, _) = st.add_blob_bytes("generated manifest", &mbytes, None)?;
        let names = clean_names(e.repo_tags.unwrap_or_default());
        out.push(stage_image(
            st,
            names,
            &mdigest,
            OCI_MANIFEST,
            &cfg_digest,
            &config,
            layers,
        )?);
    }
    Ok(out)
}
