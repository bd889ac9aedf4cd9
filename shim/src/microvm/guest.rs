//! What a microVM boots: the guest kernel, and an initramfs holding only
//! the static `capsa-agent` as /init. Both are found or built once and
//! cached.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::paths::Roots;
use crate::{CodedError, EXIT_CAPSA_ERROR};

/// The guest kernel: `--kernel` if given, else capsa's own (built on first
/// use and cached by capsa-kernel).
pub fn kernel(user_kernel: Option<&Path>) -> Result<PathBuf> {
    match user_kernel {
        Some(k) => {
            check_kernel_file(k)?;
            Ok(k.to_path_buf())
        }
        None => capsa_kernel::kernel_path(capsa_kernel::Kind::Guest)
            .context("building capsa's guest kernel (see docs/guest-kernel.md)"),
    }
}

/// What capsa-vmm boots: an uncompressed x86-64 ELF vmlinux with a PVH
/// entry point.
const KERNEL_WANTED: &str = "give an uncompressed x86-64 ELF vmlinux built with CONFIG_PVH=y \
     (the vmlinux at the top of the kernel build tree)";

/// Refuses a `--kernel` file that cannot be a guest kernel, in one line
/// naming it, before any VM is started: what is not there, not a file, not
/// readable, a bzImage, or not an x86-64 ELF executable. (Whether it has a
/// PVH entry point capsa-vmm finds out when it loads it.)
pub fn check_kernel_file(k: &Path) -> Result<()> {
    use std::io::Read;
    let refuse = |why: String| -> anyhow::Error {
        CodedError::new(EXIT_CAPSA_ERROR, format!("--kernel {}: {why}", k.display())).into()
    };
    let meta = std::fs::metadata(k).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => refuse("no such file".into()),
        _ => refuse(format!("cannot be read ({e})")),
    })?;
    if !meta.is_file() {
        return Err(refuse(format!("is not a regular file: {KERNEL_WANTED}")));
    }
    // The ELF header, or a bzImage's setup header ("HdrS" at 0x202).
    let mut head = Vec::with_capacity(0x206);
    std::fs::File::open(k)
        .and_then(|f| f.take(0x206).read_to_end(&mut head))
        .map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return Err(refuse(format!(
            "is a compressed bzImage, which capsa-vmm does not boot: {KERNEL_WANTED}"
        )));
    }
    if !head.starts_with(b"\x7fELF") {
        return Err(refuse(format!("is not a kernel image: {KERNEL_WANTED}")));
    }
    // e_ident[EI_CLASS] 2: 64-bit; [EI_DATA] 1: little-endian;
    // e_type 2: executable; e_machine 62: x86-64.
    let le16 = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    if head.get(4) != Some(&2)
        || head.get(5) != Some(&1)
        || le16(16) != Some(2)
        || le16(18) != Some(62)
    {
        return Err(refuse(format!(
            "is an ELF file but not an x86-64 kernel executable: {KERNEL_WANTED}"
        )));
    }
    Ok(())
}

/// Finds a helper binary shipped with capsa: `$ENV`, else the static copy
/// in `static/` beside the running executable (scripts/build-static.sh),
/// else the one beside it.
///
/// The static copy wins even when cargo's own copy beside capsa is newer:
/// every plain `cargo build` or `cargo test` relinks that one dynamically
/// (the static link is the same cargo unit with one more flag), and a
/// dynamically linked agent cannot be the guest's PID 1. So after changing
/// the agent or capsa-vmm, run scripts/build-static.sh (scripts/test.sh and
/// scripts/demo.sh do).
pub fn sibling_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = capsa_container::self_exe::path()?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join("static").join(name), dir.join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} was not found next to {} (set {env}, or build it: scripts/build-static.sh)",
        exe.display()
    )
}

/// The initramfs with the agent as /init, cached under the run root by the
/// agent binary's identity.
pub fn initramfs(roots: &Roots) -> Result<PathBuf> {
    let agent = sibling_binary("capsa-agent", "CAPSA_AGENT")?;
    initramfs_in(&agent, &roots.run.join("initramfs"))
}

/// The initramfs for the agent binary at `agent`, in directory `dir`,
/// built unless a file for the same binary is there. It is written to a
/// temporary name and renamed, so concurrent starts and interrupted builds
/// never see a partial archive.
pub fn initramfs_in(agent: &Path, dir: &Path) -> Result<PathBuf> {
    // Keyed by the binary's identity (path, size, mtime) so the common case
    // reads nothing: hashing a 10 MB binary on every start is measurable.
    let meta = std::fs::metadata(agent).with_context(|| {
        format!(
            "reading the agent binary {} (build it with scripts/build-static.sh)",
            agent.display()
        )
    })?;
    let mut h = Sha256::new();
    h.update(b"layout-v2");
    h.update(agent.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(
        meta.modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    let key = hex::encode(&h.finalize()[..8]);
    let out = dir.join(format!("agent-{key}.cpio"));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = std::fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    check_static_elf(&bytes, agent)?;
    let tmp = dir.join(format!(".agent-{key}.{}", std::process::id()));
    std::fs::write(&tmp, initramfs_archive(&bytes))?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// The guest's initramfs for agent binary `agent`: the agent as `/init`
/// and `/dev/console`, so the kernel can give PID 1 its standard streams.
/// The agent mounts everything else itself.
fn initramfs_archive(agent: &[u8]) -> Vec<u8> {
    let mut img = capsa_kernel::initramfs::Initramfs::new();
    img.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .file("init", 0o755, agent.to_vec());
    img.to_bytes()
}

/// The initramfs has no dynamic loader and no libraries: refuse anything
/// but a static ELF executable.
fn check_static_elf(data: &[u8], what: &Path) -> Result<()> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        bail!("{} is not an ELF executable", what.display());
    }
    if data.windows(15).any(|w| w == b"/lib64/ld-linux") {
        bail!(
            "{} is dynamically linked and cannot be the guest's PID 1: build it with scripts/build-static.sh",
            what.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_elf_and_dynamic_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        let e = initramfs_in(&p, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("not an ELF"), "{e:#}");
        // /bin/true on Debian is dynamically linked.
        let e = initramfs_in(Path::new("/bin/true"), dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("dynamically linked"), "{e:#}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no archive written for a refused binary");
    }

    /// Built from a static binary, listed by the real cpio tool, cached.
    #[test]
    fn builds_lists_and_caches() {
        let busybox = Path::new(capsa_kernel::initramfs::BUSYBOX);
        assert!(
            busybox.is_file(),
            "{} is required: install busybox-static (scripts/setup.sh)",
            busybox.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let a = initramfs_in(busybox, dir.path()).unwrap();
        let b = initramfs_in(busybox, dir.path()).unwrap();
        assert_eq!(a, b);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "one archive, no temporary files left");
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&a)
            .output()
            .expect("cpio is required: run scripts/setup.sh");
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = list
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(names, ["dev", "dev/console", "init"]);
        let size = std::fs::metadata(busybox).unwrap().len();
        assert!(std::fs::metadata(&a).unwrap().len() > size);
    }
}
