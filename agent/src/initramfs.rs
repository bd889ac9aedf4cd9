//! The guest's initramfs: the static agent binary as `/init`, plus
//! `/dev/console` so the kernel can give PID 1 its standard streams. Built
//! with capsa-kernel's cpio writer and cached by the agent binary's hash.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Bump when the layout of the archive changes (it is part of the key).
const LAYOUT_VERSION: &str = "capsa-agent-initramfs-v1";

/// The cache directory: `$CAPSA_AGENT_CACHE`, else `/var/cache/capsa/agent`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("CAPSA_AGENT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/capsa/agent"))
}

pub use capsa_shim::microvm::guest::{check_static_elf, initramfs_archive as archive};

/// Returns the path of the initramfs for the agent binary at `agent`, in
/// `cache_dir`, building it if it is not cached. The file name carries the
/// hash of the agent binary; it is written to a temporary file and renamed,
/// so concurrent callers and interrupted builds never see a partial archive.
pub fn build(agent: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let data = fs::read(agent).with_context(|| {
        format!(
            "reading the agent binary {} (build it with scripts/build-static.sh)",
            agent.display()
        )
    })?;
    check_static_elf(&data, agent)?;
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    h.update(&data);
    let key = hex::encode(h.finalize());
    let path = cache_dir.join(format!("initramfs-{}.cpio", &key[..16]));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating the cache directory {}", cache_dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache_dir)
        .with_context(|| format!("creating a temporary file in {}", cache_dir.display()))?;
    tmp.write_all(&archive(&data))?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_elf_and_dynamic_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        let e = build(&p, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("not an ELF"), "{e:#}");
        // /bin/true on Debian is dynamically linked.
        let e = build(Path::new("/bin/true"), dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("dynamically linked"), "{e:#}");
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
        let a = build(busybox, dir.path()).unwrap();
        let b = build(busybox, dir.path()).unwrap();
        assert_eq!(a, b);
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
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
        let size = fs::metadata(busybox).unwrap().len();
        assert!(fs::metadata(&a).unwrap().len() > size);
    }
}
