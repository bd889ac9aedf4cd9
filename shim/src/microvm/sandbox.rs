//! Pods in VM mode: the containers of one sandbox share the sandbox's VM.
//!
//! containerd's CRI plugin marks the pod's first container (the "pause"
//! container) `io.kubernetes.cri.container-type=sandbox` and the others
//! `container`, with `io.kubernetes.cri.sandbox-id` naming the sandbox.
//! The sandbox's VM boots with a few spare disks ("slots"): sparse files
//! the guest sees as empty block devices. A container that joins the pod
//! claims a free slot, its root filesystem image is written into the
//! slot's file, and the agent (which drops the guest's cached blocks of
//! the device first) mounts it like any root disk. The slot is released
//! when the container is deleted. No VMM support for hot-plugging is
//! needed; the price is a fixed number of containers per pod.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Memory of a sandbox VM in MiB (default [`SANDBOX_MEM_MIB`]): the pod's
/// containers share it.
pub const VM_MEMORY_ANNOTATION: &str = "io.capsa.vm-memory-mib";
pub const SANDBOX_MEM_MIB: u64 = 1024;

/// Containers a pod can have besides its sandbox container.
pub const SLOTS: usize = 4;
/// The size the guest sees for each slot; sparse on the host, so only
/// what is written costs space. Bounds a joined container's root image.
const SLOT_BYTES: u64 = 16 << 30;
/// In a joined container's directory: the guest device of its slot.
pub const DEVICE_FILE: &str = "rootfs.device";

/// The value of annotation `key` of the spec, if set.
pub(crate) fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The bundle is a pod's sandbox container.
pub fn is_sandbox(spec: &Spec) -> bool {
    annotation(spec, CONTAINER_TYPE) == Some("sandbox")
}

/// The sandbox a pod's (non-sandbox) container belongs to.
pub fn sandbox_of(spec: &Spec) -> Option<String> {
    match annotation(spec, CONTAINER_TYPE) {
        Some("container") => annotation(spec, SANDBOX_ID).map(str::to_string),
        _ => None,
    }
}

/// Memory of a sandbox VM.
pub fn memory_mib(spec: &Spec) -> Result<u64> {
    match annotation(spec, VM_MEMORY_ANNOTATION) {
        None => Ok(SANDBOX_MEM_MIB),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 128 => Ok(n),
            _ => bail!("annotation {VM_MEMORY_ANNOTATION}={v}: give a number of MiB, at least 128"),
        },
    }
}

fn slot_file(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("slot-{n}.img"))
}

fn devices_file(dir: &Path) -> PathBuf {
    dir.join("slots")
}

fn owner_file(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("slot-{n}.owner"))
}

/// Makes the sandbox's slot files in its directory `dir`; the first is the
/// guest's `/dev/vd<first>`. Returns their paths, in device order.
pub fn make_slots(dir: &Path, first: char) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut devices = String::new();
    for n in 0..SLOTS {
        let path = slot_file(dir, n);
        let f = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.set_len(SLOT_BYTES)?;
        devices.push_str(&format!("/dev/vd{}\n", (first as u8 + n as u8) as char));
        out.push(path);
    }
    fs::write(devices_file(dir), devices)?;
    Ok(out)
}

/// Claims a free slot of the sandbox whose directory is `dir` for
/// container `id` and writes the ext4 image `image` into it. Returns the
/// guest device.
pub fn claim(dir: &Path, id: &str, image: &Path) -> Result<String> {
    let devices = fs::read_to_string(devices_file(dir))
        .context("the sandbox's VM has no spare disks (was it created as a pod sandbox?)")?;
    let size = fs::metadata(image)?.len();
    if size > SLOT_BYTES {
        bail!(
            "the root filesystem image ({} MiB) is larger than a sandbox slot ({} MiB)",
            size >> 20,
            SLOT_BYTES >> 20
        );
    }
    for (n, device) in devices.lines().enumerate() {
        let owner = owner_file(dir, n);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&owner)
        {
            Ok(mut f) => {
                f.write_all(id.as_bytes())?;
                if let Err(e) = write_into(image, &slot_file(dir, n)) {
                    let _ = fs::remove_file(&owner);
                    return Err(e);
                }
                return Ok(device.to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("claiming {}", owner.display())),
        }
    }
    bail!("the pod's VM has no free slot: a VM-mode pod holds at most {SLOTS} containers besides its sandbox")
}

/// Frees the slot container `id` holds in the sandbox directory `dir`.
pub fn release(dir: &Path, id: &str) {
    for n in 0..SLOTS {
        let owner = owner_file(dir, n);
        if fs::read_to_string(&owner).is_ok_and(|o| o == id) {
            let _ = fs::remove_file(&owner);
        }
    }
}

/// Copies `image` to the start of `slot` without changing the slot's size
/// (the guest read its size at boot). Unused space stays sparse.
fn write_into(image: &Path, slot: &Path) -> Result<()> {
    let mut src = fs::File::open(image)?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .open(slot)
        .with_context(|| format!("opening {}", slot.display()))?;
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_data()?;
    Ok(())
}
