//! Layer unpacking: one OCI layer tar (plain, gzip or zstd) into a directory
//! that can be stacked as an overlayfs lower dir.
//!
//! - The uncompressed stream is hashed while it is read and must match the
//!   layer's `diff_id`.
//! - OCI whiteouts `.wh.NAME` become overlayfs whiteouts (a 0:0 character
//!   device named NAME); `.wh..wh..opq` marks its directory opaque with the
//!   `trusted.overlay.opaque=y` xattr.
//! - Paths are confined to the layer dir: `..` components, absolute hardlink
//!   targets outside it and writing through a symlink are refused.
//! - As root, ownership, modes (incl. setuid), symlinks, hardlinks, device
//!   nodes, fifos, xattrs (except `trusted.overlay.*`, which an image must not
//!   be able to forge) and mtimes are preserved.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::digest::HashingReader;
use crate::error::{Error, IoContext, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Layer compression, sniffed from the blob's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn sniff(path: &Path) -> Result<Compression> {
    let mut f = File::open(path).at("open layer blob", path)?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let r = f.read(&mut magic[n..]).at("read layer blob", path)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Compression::Gzip
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// Opens a layer blob and returns a reader of its uncompressed tar stream.
pub(crate) fn open_uncompressed(path: &Path) -> Result<Box<dyn Read>> {
    open_uncompressed_with(path, &indicatif::ProgressBar::hidden())
}

/// [`open_uncompressed`], advancing `bar` by the compressed bytes read.
pub(crate) fn open_uncompressed_with(
    path: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<Box<dyn Read>> {
    let comp = sniff(path)?;
    let f = BufReader::new(bar.wrap_read(File::open(path).at("open layer blob", path)?));
    Ok(match comp {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(f).at("open zstd layer", path)?)
        }
    })
}

/// Confines a tar path to the layer: strips leading `/` and `.`, refuses `..`.
fn clean(layer: &str, p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::corrupt(
                    layer,
                    format!("refusing path {:?} that escapes the layer directory", p),
                ))
            }
        }
    }
    Ok(out)
}

/// Makes sure every ancestor of `rel` inside `root` is a real directory
/// (creating missing ones), so that nothing is written through a symlink.
fn ensure_parents(layer: &str, root: &Path, rel: &Path) -> Result<()> {
    let mut cur = root.to_path_buf();
    let parent = match rel.parent() {
        Some(p) => p,
        None => return Ok(()),
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::corrupt(
                    layer,
                    format!(
                        "refusing to write {:?} through the symlink {:?}",
                        rel,
                        cur.strip_prefix(root).unwrap_or(&cur)
                    ),
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::corrupt(
                    layer,
                    format!("{:?} needs a directory where the layer has a file", rel),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).at("create directory", &cur)?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).at("chmod", &cur)?;
            }
            Err(e) => return Err(Error::io(format!("stat {}", cur.display()), e)),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (not following symlinks) unless it is a
/// directory and `keep_dir` is set. Returns true if a directory was kept.
fn clear(path: &Path, keep_dir: bool) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path).at("remove", path)?;
        }
        Ok(_) => fs::remove_file(path).at("remove", path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
    }
    Ok(false)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and value is a valid slice.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_mtime(path: &Path, secs: u64) -> Result<()> {
    let t = TimeSpec::new(secs as i64, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::io(format!("set mtime of {}", path.display()), e.into()))
}

fn make_node(path: &Path, kind: SFlag, mode: u32, major: u32, minor: u32) -> Result<()> {
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::makedev(major as u64, minor as u64),
    )
    .map_err(|e| {
        Error::io(
            format!("create device node {} (needs root)", path.display()),
            e.into(),
        )
    })
}

/// Unpacks the layer blob at `blob` into `dest` (created, must not exist) and
/// checks the uncompressed stream against `diff_id`. Returns the
/// uncompressed size. On error `dest` may hold a partial tree: the caller
/// unpacks into a temporary directory it removes on failure.
#[cfg(test)]
pub(crate) fn unpack_layer(blob: &Path, diff_id: &str, dest: &Path) -> Result<u64> {
    unpack_layer_with(blob, diff_id, dest, &indicatif::ProgressBar::hidden())
}

/// [`unpack_layer`] with a progress bar (compressed bytes).
pub(crate) fn unpack_layer_with(
    blob: &Path,
    diff_id: &str,
    dest: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<u64> {
    let layer = diff_id;
    fs::create_dir(dest).at("create layer directory", dest)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).at("chmod", dest)?;
    let is_root = nix::unistd::geteuid().is_root();
    let reader = HashingReader::new(open_uncompressed_with(blob, bar)?);
    let mut archive = tar::Archive::new(reader);
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let bad = |e: io::Error| Error::corrupt(layer, format!("cannot read the layer tar: {e}"));

    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let etype = entry.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let raw_path = entry.path().map_err(bad)?.into_owned();
        let rel = clean(layer, &raw_path)?;
        if rel.as_os_str().is_empty() {
            continue; // the layer root itself
        }
        ensure_parents(layer, dest, &rel)?;
        let target = dest.join(&rel);
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        // Whiteouts.
        if file_name == OPAQUE_MARKER {
            let dir = target.parent().unwrap_or(dest);
            set_xattr(dir, "trusted.overlay.opaque", b"y").at(
                "mark directory opaque (trusted.overlay.opaque, needs root)",
                dir,
            )?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(".wh.") {
                continue; // aufs bookkeeping (.wh..wh.plnk etc.)
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(Error::corrupt(
                    layer,
                    format!("bad whiteout {:?}", raw_path),
                ));
            }
            let w = target.with_file_name(hidden);
            clear(&w, false)?;
            make_node(&w, SFlag::S_IFCHR, 0o000, 0, 0)?;
            continue;
        }

        let header = entry.header().clone();
        let mode = header.mode().map_err(bad)? & 0o7777;
        // Like Go's archive/tar (which wrote most image layers), an empty
        // numeric field reads as 0.
        let mut uid = header.uid().unwrap_or(0) as u32;
        let mut gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(bad)? {
            for ext in exts {
                let ext = ext.map_err(bad)?;
                if let Ok(key) = ext.key() {
                    let num = || ext.value().ok().and_then(|v| v.trim().parse::<u32>().ok());
                    match key {
                        "uid" => uid = num().unwrap_or(uid),
                        "gid" => gid = num().unwrap_or(gid),
                        _ => {}
                    }
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        if !name.starts_with("trusted.overlay.") {
                            xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }

        match etype {
            EntryType::Directory => {
                if !clear(&target, true)? {
                    fs::create_dir(&target).at("create directory", &target)?;
                }
                dir_times.push((target.clone(), mtime));
            }
            // The tar crate fills in the holes of GNU sparse files.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                clear(&target, false)?;
                let mut f = File::create(&target).at("create file", &target)?;
                copy_entry(&mut entry, &mut f, &target).map_err(|e| match e {
                    CopyError::Read(e) => bad(e),
                    CopyError::Write(e) => e,
                })?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| {
                        Error::corrupt(layer, format!("symlink {:?} has no target", raw_path))
                    })?
                    .into_owned();
                clear(&target, false)?;
                std::os::unix::fs::symlink(&link, &target).at("create symlink", &target)?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| {
                        Error::corrupt(layer, format!("hardlink {:?} has no target", raw_path))
                    })?
                    .into_owned();
                let src_rel = clean(layer, &link)?;
                ensure_parents(layer, dest, &src_rel)?;
                let src = dest.join(&src_rel);
                if fs::symlink_metadata(&src).is_err() {
                    return Err(Error::corrupt(
                        layer,
                        format!(
                            "hardlink {:?} points to {:?}, which is not in this layer",
                            raw_path, link
                        ),
                    ));
                }
                clear(&target, false)?;
                fs::hard_link(&src, &target).at("create hardlink", &target)?;
                continue; // a hardlink shares the target's metadata
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                clear(&target, false)?;
                let (kind, major, minor) = match etype {
                    EntryType::Char => (
                        SFlag::S_IFCHR,
                        dev(header.device_major()),
                        dev(header.device_minor()),
                    ),
                    EntryType::Block => (
                        SFlag::S_IFBLK,
                        dev(header.device_major()),
                        dev(header.device_minor()),
                    ),
                    _ => (SFlag::S_IFIFO, 0, 0),
                };
                make_node(&target, kind, mode, major, minor)?;
            }
            other => {
                tracing::warn!(layer, path = ?raw_path, ?other, "skipping unsupported tar entry type");
                continue;
            }
        }

        if is_root {
            lchown(&target, Some(uid), Some(gid)).at("chown", &target)?;
        }
        if etype != EntryType::Symlink {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).at("chmod", &target)?;
        }
        for (name, value) in &xattrs {
            if let Err(e) = set_xattr(&target, name, value) {
                tracing::debug!(path = %target.display(), name, error = %e, "cannot set xattr");
            }
        }
        if etype != EntryType::Directory {
            set_mtime(&target, mtime)?;
        }
    }
    for (dir, t) in dir_times.iter().rev() {
        set_mtime(dir, *t)?;
    }
    let (actual, size) = archive.into_inner().finish().map_err(bad)?;
    crate::digest::verify(
        &format!("uncompressed layer (diff_id) {diff_id}"),
        diff_id,
        &actual,
    )?;
    Ok(size)
}

enum CopyError {
    /// The layer could not be read: its fault.
    Read(io::Error),
    /// The file could not be written (a full disk): named by its path.
    Write(Error),
}

/// Copies a tar entry's content into `f` (the new file `target`), telling
/// a damaged layer from a host that cannot take the file.
fn copy_entry(entry: &mut impl Read, f: &mut File, target: &Path) -> Result<(), CopyError> {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        f.write_all(&buf[..n])
            .at("write", target)
            .map_err(CopyError::Write)?;
    }
}

fn dev(v: io::Result<Option<u32>>) -> u32 {
    v.ok().flatten().unwrap_or(0)
}

/// Computes the diff_id (sha256 of the uncompressed tar) of a layer blob.
pub(crate) fn diff_id_of(blob: &Path) -> Result<(String, u64)> {
    let mut r = HashingReader::new(open_uncompressed(blob)?);
    io::copy(&mut r, &mut io::sink()).map_err(|e| {
        Error::corrupt(
            blob.display().to_string(),
            format!("cannot decompress: {e}"),
        )
    })?;
    r.finish().at("read layer", blob)
}
