//! `-v HOST:CTR[:ro]` in VM mode. The guest cannot see the host's files:
//! the bind mounts of directories are gathered in one virtio-fs share
//! (read-write or read-only each, live both ways; see super::shares), and
//! the single files bound in share one small read-only ext4 disk of copies
//! (`mkfs.ext4 -d`, a snapshot taken at start). The agent mounts them in
//! the guest and the spec's bind sources are rewritten to those places.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use capsa_proto::Volume;
use oci_spec::runtime::Spec;

use crate::{CodedError, EXIT_CAPSA_ERROR};

use super::shares::{Bind, ShareSpec};

/// The virtio-fs tag of the share that holds a VM's volumes.
pub const VOLUMES_TAG: &str = "capsa-volumes";
/// Where the agent mounts it; volume N is `GUEST_VOLUMES/N`.
const GUEST_VOLUMES: &str = "/run/capsa/volumes";

/// A disk the VM gets for a volume.
pub struct VolumeDisk {
    pub image: PathBuf,
    pub volume: Volume,
}

/// How the VM gets the spec's bind mounts.
#[derive(Default)]
pub struct Volumes {
    /// Disks (the one of copied files), after the root disk.
    pub disks: Vec<VolumeDisk>,
    /// The share of the directories, with what the agent mounts for it.
    pub share: Option<(ShareSpec, Volume)>,
}

impl Volumes {
    /// Everything the agent mounts, in order.
    pub fn guest_volumes(&self) -> Vec<Volume> {
        self.disks
            .iter()
            .map(|d| d.volume.clone())
            .chain(self.share.iter().map(|(_, v)| v.clone()))
            .collect()
    }
}

/// /proc and /sys are the kernel's own: in the guest a bind of them is of
/// the guest kernel's procfs or sysfs (the agent binds the guest's path),
/// never a share or a copy of the host's.
pub fn of_the_kernel(src: &Path) -> bool {
    src.starts_with("/proc") || src.starts_with("/sys")
}

/// Turns the user's bind mounts in `spec` into shares and disks under `dir`. Bind
/// mounts of files capsa itself made under `dir` (/etc/hosts…) are left to
/// the agent. `first_device` is the letter of the first free /dev/vdX.
/// Read-only bind mounts of single files — and with `copy_files` (an
/// engine's bundle: its /etc/hosts, /etc/resolv.conf, /run/.containerenv)
/// writable ones too — are copied onto one more disk, a snapshot the
/// container reads but whose changes stay in the guest.
pub fn plan(spec: &mut Spec, dir: &Path, first_device: char, copy_files: bool) -> Result<Volumes> {
    let mut out = Volumes::default();
    let files_dir = dir.join("files");
    let mut files = 0usize;
    let mut binds = Vec::new();
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(out);
    };
    for m in mounts.iter_mut() {
        let opts = m.options().clone().unwrap_or_default();
        let Some(src) = m.source().clone() else {
            continue;
        };
        if !capsa_container::is_bind_mount(m) || src.starts_with(dir) {
            continue;
        }
        if of_the_kernel(&src) {
            continue;
        }
        if copy_files && m.destination() == Path::new("/dev/shm") {
            // An engine's shared-memory directory (podman binds one): in
            // the guest, the container's own tmpfs does the same job.
            shm_as_tmpfs(m);
            continue;
        }
        let readonly = opts.iter().any(|o| o == "ro");
        if src.is_file() && (copy_files || readonly) {
            std::fs::create_dir_all(&files_dir)?;
            let name = files.to_string();
            std::fs::copy(&src, files_dir.join(&name))
                .with_context(|| format!("copying {} for the VM", src.display()))?;
            m.set_source(Some(PathBuf::from(FILES_GUEST_PATH).join(name)));
            files += 1;
            continue;
        }
        if src.is_file() {
            bail!(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "VM mode shares single files read-only (a copy): use -v {}:{}:ro, or share the directory that holds it",
                    src.display(),
                    m.destination().display()
                )
            ));
        }
        if !src.is_dir() {
            bail!(CodedError::new(
                EXIT_CAPSA_ERROR,
                format!(
                    "VM mode can share directories and files, not {}",
                    src.display()
                )
            ));
        }
        m.set_source(Some(Path::new(GUEST_VOLUMES).join(binds.len().to_string())));
        binds.push(Bind {
            source: src.clone(),
            readonly,
        });
    }
    if !binds.is_empty() {
        out.share = Some((
            ShareSpec {
                source: dir.join("volumes"),
                readonly: false,
                tag: VOLUMES_TAG.into(),
                binds,
                userns: capsa_container::idmap::own_mapping(spec),
            },
            Volume {
                device: VOLUMES_TAG.into(),
                fstype: capsa_proto::VIRTIOFS.into(),
                guest_path: GUEST_VOLUMES.into(),
                readonly: false,
            },
        ));
    }
    if files > 0 {
        let n = out.disks.len();
        let image = dir.join("files.ext4");
        make_image(&files_dir, &image)?;
        out.disks.push(VolumeDisk {
            image,
            volume: Volume {
                device: format!("/dev/vd{}", (first_device as u8 + n as u8) as char),
                fstype: "ext4".into(),
                guest_path: FILES_GUEST_PATH.into(),
                readonly: true,
            },
        });
    }
    spec.set_mounts(Some(mounts));
    Ok(out)
}

/// Where the agent mounts the disk of copied files.
const FILES_GUEST_PATH: &str = "/run/capsa/files";

/// An ext4 image holding a copy of `src`, sized to fit it.
fn make_image(src: &Path, image: &Path) -> Result<()> {
    let used = dir_size(src);
    // Room for metadata and the journal-less filesystem's overhead.
    let size_kib = (used / 1024) * 13 / 10 + 16 * 1024;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-d"])
        .arg(src)
        .arg(image)
        .arg(format!("{size_kib}k"))
        .output()
        .context("running mkfs.ext4 (e2fsprogs) for a VM volume")?;
    if !out.status.success() {
        bail!(
            "making a disk of {} for the VM failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => {
                    total += 4096;
                    stack.push(e.path());
                }
                Ok(m) => total += m.len().div_ceil(4096) * 4096,
                Err(_) => {}
            }
        }
    }
    total
}

/// Turns an engine's /dev/shm bind mount into the container's own tmpfs.
pub fn shm_as_tmpfs(m: &mut oci_spec::runtime::Mount) {
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some(PathBuf::from("shm")));
    m.set_options(Some(
        ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"]
            .map(String::from)
            .to_vec(),
    ));
}
