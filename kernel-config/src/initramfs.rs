//! A minimal writer for Linux initramfs archives (cpio "newc", uncompressed),
//! and the busybox-based init images the test host and the kernel tests use.
//!
//! Uncompressed on purpose: the archives are a couple of megabytes, and a
//! TCG-emulated kernel spends longer inflating gzip than reading the bytes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

struct Entry {
    path: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// An initramfs under construction. Parent directories must be added before
/// their children (the kernel does not create them).
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: Vec<u8>) -> &mut Self {
        self.entries.push(Entry {
            path: path.trim_start_matches('/').to_string(),
            mode,
            rdev,
            data,
        });
        self
    }

    /// A directory with permission bits `perm` (e.g. 0o755).
    pub fn dir(&mut self, path: &str, perm: u32) -> &mut Self {
        self.push(path, S_IFDIR | perm, (0, 0), Vec::new())
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.push(path, S_IFREG | perm, (0, 0), data.into())
    }

    /// A symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.push(path, S_IFLNK | 0o777, (0, 0), target.as_bytes().to_vec())
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.push(path, S_IFCHR | perm, (major, minor), Vec::new())
    }

    /// The archive bytes (cpio newc, with the trailer).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            write_entry(&mut out, i as u32 + 1, e);
        }
        write_entry(
            &mut out,
            0,
            &Entry {
                path: "TRAILER!!!".into(),
                mode: 0,
                rdev: (0, 0),
                data: Vec::new(),
            },
        );
        out
    }

    /// Writes the archive to `path`.
    pub fn write_to(&self, path: &Path) -> Result<()> {
        fs::write(path, self.to_bytes()).with_context(|| format!("writing {}", path.display()))
    }
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, ino: u32, e: &Entry) {
    let nlink = if e.mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        e.data.len() as u32,
        0, // dev major
        0, // dev minor
        e.rdev.0,
        e.rdev.1,
        e.path.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.path.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
}

/// The static busybox binary, or an error saying how to install it.
pub fn busybox() -> Result<Vec<u8>> {
    let data = fs::read(BUSYBOX).with_context(|| {
        format!(
            "{BUSYBOX} is missing: install the Debian package busybox-static (scripts/setup.sh)"
        )
    })?;
    // A dynamically linked busybox would need its libraries in the archive.
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        bail!("{BUSYBOX} is not an ELF binary");
    }
    if data
        .windows(b"/lib64/ld-linux".len())
        .any(|w| w == b"/lib64/ld-linux")
    {
        bail!("{BUSYBOX} is dynamically linked: install busybox-static");
    }
    Ok(data)
}

/// A busybox initramfs: `/bin/busybox`, `/bin/sh`, `/dev/console`, the usual
/// empty mount points, and `/init` = `init_script` (run by busybox sh).
pub fn busybox_init(init_script: &str) -> Result<Initramfs> {
    let mut img = Initramfs::new();
    img.dir("bin", 0o755)
        .file("bin/busybox", 0o755, busybox()?)
        .symlink("bin/sh", "busybox")
        .dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .dir("mnt", 0o755)
        .file("init", 0o755, init_script);
    Ok(img)
}

/// Writes a busybox initramfs with `init_script` as /init to `path`.
pub fn write_busybox_init(path: &Path, init_script: &str) -> Result<PathBuf> {
    busybox_init(init_script)?.write_to(path)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut img = Initramfs::new();
        img.file("/init", 0o755, "hi");
        let b = img.to_bytes();
        assert_eq!(&b[..6], b"070701");
        // header 110 bytes + "init\0" (5) padded to 116, then "hi" padded to 120.
        assert_eq!(&b[110..115], b"init\0");
        assert_eq!(&b[116..118], b"hi");
        assert_eq!(b.len() % 4, 0);
        let mode = u32::from_str_radix(std::str::from_utf8(&b[14..22]).unwrap(), 16).unwrap();
        assert_eq!(mode, 0o100755);
        let size = u32::from_str_radix(std::str::from_utf8(&b[54..62]).unwrap(), 16).unwrap();
        assert_eq!(size, 2);
        assert!(b.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    /// The archive must be readable by the real cpio tool.
    #[test]
    fn cpio_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = Initramfs::new();
        img.dir("bin", 0o755)
            .file("bin/x", 0o644, vec![1u8; 5])
            .symlink("bin/y", "x")
            .char_dev("console", 0o600, 5, 1);
        let p = dir.path().join("a.cpio");
        img.write_to(&p).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&p)
            .output()
            .expect("cpio is missing: run scripts/setup.sh");
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("bin/x"), "{list}");
        assert!(list.contains("bin/y -> x"), "{list}");
        assert!(list.contains("5,"), "{list}");
    }
}
