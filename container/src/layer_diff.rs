//! A container's writable layer (an overlayfs upper directory) as an OCI
//! layer tar, for `commit`: overlayfs' whiteouts (a 0:0 character device)
//! and opaque directories (the `trusted.overlay.opaque` xattr) become OCI's
//! `.wh.NAME` and `.wh..wh..opq` entries. Run on the host (container mode)
//! and by the guest's agent (VM mode), on a layer no process is writing
//! (the container is stopped or paused): symlinks are written as links,
//! never followed, and entries are in name order, so the same directory
//! gives the same bytes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `upper` as a layer tar to `out`. `userns`: the container's user
/// namespace mapping (`--userns=auto`); its files' owners are written as
/// the container saw them, not as the host stores them.
pub fn write(
    upper: &Path,
    userns: Option<&oci_spec::runtime::LinuxIdMapping>,
    out: impl Write,
) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut seen = HashMap::new();
    let ids = Ids(userns.copied());
    walk(upper, Path::new(""), &ids, &mut b, &mut seen)?;
    b.into_inner().context("finishing the layer")?.flush()?;
    Ok(())
}

/// Host ids to the container's.
struct Ids(Option<oci_spec::runtime::LinuxIdMapping>);

impl Ids {
    /// An id outside the mapping is what the kernel shows the container
    /// for it: the overflow id, nobody.
    fn inside(&self, id: u64) -> u64 {
        let Some(m) = &self.0 else { return id };
        let (host, size) = (m.host_id() as u64, m.size() as u64);
        match id.checked_sub(host) {
            Some(off) if off < size => m.container_id() as u64 + off,
            _ => 65534,
        }
    }
}

fn walk<W: Write>(
    root: &Path,
    rel: &Path,
    ids: &Ids,
    b: &mut tar::Builder<W>,
    seen: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let entry = rel.join(&name);
        let m = fs::symlink_metadata(&path)?;
        let ft = m.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        h.set_uid(ids.inside(m.uid() as u64));
        h.set_gid(ids.inside(m.gid() as u64));
        if ft.is_char_device() && m.rdev() == 0 {
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            empty_file(b, &rel.join(wh))?;
        } else if ft.is_dir() {
            b.append_data(&mut h, &entry, std::io::empty())?;
            if is_opaque(&path) {
                empty_file(b, &entry.join(".wh..wh..opq"))?;
            }
            walk(root, &entry, ids, b, seen)?;
        } else if ft.is_symlink() {
            b.append_link(&mut h, &entry, fs::read_link(&path)?)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = seen.get(&(m.dev(), m.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &entry, first)?;
                    continue;
                }
                seen.insert((m.dev(), m.ino()), entry.clone());
            }
            let f: File = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            b.append_data(&mut h, &entry, f)?;
        } else {
            // Device nodes and FIFOs: the header says it all.
            b.append_data(&mut h, &entry, std::io::empty())?;
        }
    }
    Ok(())
}

fn empty_file<W: Write>(b: &mut tar::Builder<W>, path: &Path) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    let mut v = [0u8; 2];
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut v)
        .is_ok_and(|n| n == 1 && v[0] == b'y')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_links_and_order_become_an_oci_layer() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        fs::create_dir_all(up.join("etc/app")).unwrap();
        fs::write(up.join("etc/app/b"), "bee").unwrap();
        fs::write(up.join("etc/app/a"), "ay").unwrap();
        fs::hard_link(up.join("etc/app/a"), up.join("etc/a2")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", up.join("etc/link")).unwrap();
        nix::sys::stat::mknod(
            &up.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let mut bytes = Vec::new();
        write(up, None, &mut bytes).unwrap();
        let mut again = Vec::new();
        write(up, None, &mut again).unwrap();
        assert_eq!(bytes, again, "the same directory gives the same tar");

        let mut ar = tar::Archive::new(bytes.as_slice());
        let got: Vec<(String, tar::EntryType, String)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    link,
                )
            })
            .collect();
        use tar::EntryType::*;
        let want = [
            ("etc", Directory, ""),
            ("etc/a2", Regular, ""),
            ("etc/app", Directory, ""),
            ("etc/app/a", Link, "etc/a2"),
            ("etc/app/b", Regular, ""),
            ("etc/.wh.gone", Regular, ""),
            ("etc/link", Symlink, "/etc/passwd"),
        ]
        .map(|(p, t, l)| (p.to_string(), t, l.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn a_user_namespaced_layer_has_the_containers_owners() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        for (name, id) in [("root", 200_000), ("user", 201_000), ("host", 0)] {
            fs::write(up.join(name), name).unwrap();
            std::os::unix::fs::lchown(up.join(name), Some(id), Some(id)).unwrap();
        }
        let map = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(200_000u32)
            .size(65536u32)
            .build()
            .unwrap();
        let mut bytes = Vec::new();
        write(up, Some(&map), &mut bytes).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let owners: Vec<(String, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let path = e.path().unwrap().display().to_string();
                (path, h.uid().unwrap(), h.gid().unwrap())
            })
            .collect();
        // The host's root, unmapped, was nobody to the container.
        let want = [("host", 65534, 65534), ("root", 0, 0), ("user", 1000, 1000)];
        assert_eq!(owners, want.map(|(p, u, g)| (p.to_string(), u, g)));
    }
}
