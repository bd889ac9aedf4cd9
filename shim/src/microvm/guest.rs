//! What a microVM boots: the guest kernel, and an initramfs holding only
//! the static `capsa-agent` as /init. Both are found or built once and
//! cached.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::paths::Roots;

/// The guest kernel: `--kernel` if given, else capsa's own (built on first
/// use and cached by capsa-kernel).
pub fn kernel(user_kernel: Option<&Path>) -> Result<PathBuf> {
    match user_kernel {
        Some(k) if k.exists() => Ok(k.to_path_buf()),
        Some(k) => bail!("--kernel {} does not exist", k.display()),
        None => capsa_kernel::kernel_path(capsa_kernel::Kind::Guest)
            .context("building capsa's guest kernel (see docs/guest-kernel.md)"),
    }
}

/// Finds a helper binary shipped with capsa: `$ENV`, next to the running
/// executable, or in cargo's static-target directory beside it.
pub fn sibling_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let profile = dir.file_name().unwrap_or_default();
    // The static build (scripts/build-static.sh) first: a plain `cargo build`
    // also leaves a dynamically linked copy next to capsa. But not when that
    // copy is newer: the static one would run stale code (for the agent,
    // the dynamic copy is then refused with a message saying to rebuild).
    let static_build = dir
        .join("..")
        .join("x86_64-unknown-linux-gnu")
        .join(profile)
        .join(name);
    let beside = dir.join(name);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&static_build), modified(&beside)) {
        (Some(s), Some(b)) if b > s => return Ok(beside),
        (Some(_), _) => return Ok(static_build),
        (None, Some(_)) => return Ok(beside),
        (None, None) => {}
    }
    bail!(
        "{name} was not found next to {} (set {env}, or build it: scripts/build-static.sh)",
        exe.display()
    )
}

/// The initramfs with the agent as /init, cached under the run root by the
/// agent binary's hash.
pub fn initramfs(roots: &Roots) -> Result<PathBuf> {
    let agent = sibling_binary("capsa-agent", "CAPSA_AGENT")?;
    // Keyed by the binary's identity (path, size, mtime) so the common case
    // reads nothing: hashing a 10 MB binary on every start is measurable.
    let meta = std::fs::metadata(&agent).with_context(|| format!("reading {}", agent.display()))?;
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
    let dir = roots.run.join("initramfs");
    let out = dir.join(format!("agent-{key}.cpio"));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir)?;
    let bytes = std::fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    check_static_elf(&bytes, &agent)?;
    // Written to a temp name and renamed, so a concurrent start never sees a
    // half-written file.
    let tmp = dir.join(format!(".agent-{key}.{}", std::process::id()));
    std::fs::write(&tmp, initramfs_archive(&bytes))?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// The guest's initramfs for agent binary `agent`: the agent as `/init`
/// and `/dev/console`, so the kernel can give PID 1 its standard streams.
/// The agent mounts everything else itself.
pub fn initramfs_archive(agent: &[u8]) -> Vec<u8> {
    let mut img = capsa_kernel::initramfs::Initramfs::new();
    img.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .file("init", 0o755, agent.to_vec());
    img.to_bytes()
}

/// The initramfs has no dynamic loader and no libraries: refuse anything
/// but a static ELF executable.
pub fn check_static_elf(data: &[u8], what: &Path) -> Result<()> {
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
