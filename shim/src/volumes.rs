//! Named volumes (`capsa volume …`, `-v NAME:/path`), docker's "local"
//! driver: a directory per volume under `<lib>/volumes/NAME/_data`, with
//! its metadata in `volume.json` beside it. Both isolation modes mount the
//! directory like any other host directory (VM mode through virtio-fs).
//!
//! A volume is made whole or not at all (built under a temporary name and
//! renamed into place). Which containers use one is in their records
//! (`Record::volumes`), written under the containers lock that `rm` also
//! takes, so a volume in use cannot be removed. A new, empty volume is
//! filled from the image's files at the mount point on first use, as
//! docker does.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::{CodedError, Roots, EXIT_CAPSA_ERROR};

/// What `volume inspect` shows (docker's field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: PathBuf,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub scope: String,
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(CodedError::new(EXIT_CAPSA_ERROR, msg).into())
}

fn root(roots: &Roots) -> PathBuf {
    roots.lib.join("volumes")
}

/// docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && name.len() <= 255
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn check_name(name: &str) -> Result<()> {
    if !valid_name(name) {
        return refuse(format!(
            "invalid volume name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit (at least 2 characters)"
        ));
    }
    Ok(())
}

/// The volume called `name`.
pub fn get(roots: &Roots, name: &str) -> Result<Volume> {
    check_name(name)?;
    let meta = root(roots).join(name).join("volume.json");
    let text = match fs::read_to_string(&meta) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse(format!("no such volume: {name}"))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", meta.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("reading {}", meta.display()))
}

/// Creates a volume; one that exists is returned as it is (docker's
/// `volume create` of an existing name succeeds). The bool says whether it
/// is new.
pub fn create(
    roots: &Roots,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<(Volume, bool)> {
    check_name(name)?;
    let dir = root(roots);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join(name).exists() {
        return Ok((get(roots, name)?, false));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&dir)
        .with_context(|| format!("creating a directory in {}", dir.display()))?;
    let vol = Volume {
        name: name.to_string(),
        driver: "local".into(),
        mountpoint: dir.join(name).join("_data"),
        created_at: Utc::now(),
        labels,
        scope: "local".into(),
    };
    fs::create_dir(tmp.path().join("_data"))?;
    fs::write(
        tmp.path().join("volume.json"),
        serde_json::to_vec_pretty(&vol)?,
    )?;
    match fs::rename(tmp.path(), dir.join(name)) {
        Ok(()) => {
            // Renamed away: nothing for the TempDir to delete.
            let _ = tmp.keep();
            Ok((vol, true))
        }
        // Someone made it meanwhile: theirs stands.
        Err(_) if dir.join(name).join("volume.json").exists() => Ok((get(roots, name)?, false)),
        Err(e) => Err(e).with_context(|| format!("creating volume {name}")),
    }
}

/// Every volume, by name.
pub fn list(roots: &Roots) -> Result<Vec<Volume>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(root(roots)) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if valid_name(&name) {
            if let Ok(v) = get(roots, &name) {
                out.push(v);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Names of the containers that use the volume (call under the containers
/// lock for an answer that stays true).
pub fn users(roots: &Roots, name: &str) -> Result<Vec<String>> {
    Ok(Record::list(roots)?
        .into_iter()
        .filter(|r| r.volumes.iter().any(|v| v == name))
        .map(|r| r.name)
        .collect())
}

/// Removes a volume that no container uses (with `force`, docker's `-f`,
/// a missing volume is no error).
pub fn remove(roots: &Roots, name: &str, force: bool) -> Result<()> {
    let _lock = crate::record::lock_containers(roots)?;
    if let Err(e) = get(roots, name) {
        return if force { Ok(()) } else { Err(e) };
    }
    let using = users(roots, name)?;
    if !using.is_empty() {
        return refuse(format!(
            "volume {name} is in use by container {}: remove {} first",
            using.join(", "),
            if using.len() == 1 { "it" } else { "them" }
        ));
    }
    // Renamed out of the way first, so a half-deleted volume is never
    // found under its name.
    let dir = root(roots);
    let doomed = dir.join(format!(".rm-{name}"));
    fs::rename(dir.join(name), &doomed).with_context(|| format!("removing volume {name}"))?;
    fs::remove_dir_all(&doomed).with_context(|| format!("removing {}", doomed.display()))
}

/// Removes every volume no container uses; returns their names.
pub fn prune(roots: &Roots) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for v in list(roots)? {
        // In use: refused, and kept.
        if remove(roots, &v.name, false).is_ok() {
            gone.push(v.name);
        }
    }
    Ok(gone)
}

/// Fills an empty volume from the image's files at `dst` (docker copies
/// them on first use): a throwaway overlay of the image's layers is
/// mounted, and what lies at `dst` is copied with owners, modes, links and
/// xattrs. A path in the image that is not a plain directory all the way
/// down (a symlink, which would resolve outside the image here, or a file)
/// gives nothing to copy.
///
/// `userns`: the filling container's user namespace mapping; the volume is
/// its root's, and the image's files are copied with their owners mapped.
/// With `copy` false (`nocopy`) a new volume stays empty.
pub fn fill_from_image(
    vol: &Volume,
    layers: &[PathBuf],
    dst: &str,
    userns: Option<&oci_spec::runtime::LinuxIdMapping>,
    copy: bool,
) -> Result<()> {
    let data = &vol.mountpoint;
    // One filler at a time: two containers starting on one new volume.
    let meta = fs::File::open(data.with_file_name("volume.json"))?;
    let _lock = nix::fcntl::Flock::lock(meta, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the volume")?;
    if fs::read_dir(data)?.next().is_some() {
        return Ok(());
    }
    if let Some(map) = userns {
        capsa_container::idmap::chown_to_root(data, map)?;
    }
    if !copy {
        return Ok(());
    }
    let scratch = tempfile::Builder::new()
        .prefix(".fill-")
        .tempdir_in(data.parent().unwrap_or(data))?;
    let (upper, work, merged) = (
        scratch.path().join("upper"),
        scratch.path().join("work"),
        scratch.path().join("merged"),
    );
    capsa_container::rootfs::mount_overlay(layers, &upper, &work, &merged, true, userns)?;
    let result = copy_dir_at(&merged, dst, data);
    let unmounted = capsa_container::rootfs::unmount(&merged);
    result.and(unmounted)
}

fn copy_dir_at(root: &Path, dst: &str, to: &Path) -> Result<()> {
    let mut at = root.to_path_buf();
    for part in Path::new(dst).components().skip(1) {
        let std::path::Component::Normal(part) = part else {
            return Ok(());
        };
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
    }
    let out = Command::new("cp")
        .arg("-a")
        .arg(at.join("."))
        .arg(to)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        bail!(
            "filling the volume from the image's {dst}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// podman's `U`: everything under `dir`, itself included, becomes
/// `uid`:`gid`'s. Symbolic links are not followed and other file systems
/// mounted below are left alone. The walk goes by descriptor (each
/// directory opened with O_NOFOLLOW relative to its parent), so a
/// directory swapped for a symbolic link while it runs (a container
/// sharing the directory may do that) cannot lead it anywhere else.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let top = nix::dir::Dir::open(dir, DIR_FLAGS, nix::sys::stat::Mode::empty())
        .with_context(|| format!("opening {}", dir.display()))?;
    let dev = nix::sys::stat::fstat(top.as_raw_fd())?.st_dev;
    nix::unistd::fchown(top.as_raw_fd(), Some(uid.into()), Some(gid.into()))
        .with_context(|| format!("changing the owner of {}", dir.display()))?;
    chown_below(top, dev, uid, gid)
        .with_context(|| format!("changing the owner of files under {}", dir.display()))
}

const DIR_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_RDONLY
    .union(nix::fcntl::OFlag::O_DIRECTORY)
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_CLOEXEC);

fn chown_below(mut dir: nix::dir::Dir, dev: u64, uid: u32, gid: u32) -> Result<()> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fstatat, SFlag};
    let fd = dir.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_owned();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let st = fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if st.st_dev != dev {
            continue;
        }
        nix::unistd::fchownat(
            Some(fd),
            name.as_c_str(),
            Some(uid.into()),
            Some(gid.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            subdirs.push(name);
        }
    }
    for name in subdirs {
        let sub = nix::dir::Dir::openat(
            Some(fd),
            name.as_c_str(),
            DIR_FLAGS,
            nix::sys::stat::Mode::empty(),
        )?;
        chown_below(sub, dev, uid, gid)?;
    }
    Ok(())
}
