//! How much of the disk files take: blocks allocated (a sparse VM disk
//! counts what it holds, not its length), each inode once.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Sums the disk use of what it is given, counting a file reached twice
/// (hard links, or the same path given twice) once.
#[derive(Default)]
struct Usage {
    seen: HashSet<(u64, u64)>,
    bytes: u64,
}

impl Usage {
    /// Adds `path` and, for a directory, everything under it (symlinks are
    /// counted, not followed) on the same file system, as `du -x`: a
    /// running container's root overlay and its mounted writable disk are
    /// views of files counted where they are stored. A path that is gone
    /// adds nothing.
    fn add(&mut self, path: &Path) {
        let Ok(top) = std::fs::symlink_metadata(path) else {
            return;
        };
        let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != top.dev() || !self.seen.insert((m.dev(), m.ino())) {
                continue;
            }
            self.bytes += m.blocks() * 512;
            if m.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            }
        }
    }
}

/// The disk use of `paths` together.
pub fn usage(paths: impl IntoIterator<Item = impl AsRef<Path>>) -> u64 {
    let mut u = Usage::default();
    for p in paths {
        u.add(p.as_ref());
    }
    u.bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_each_inode_once() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(&f, d.path().join("link")).unwrap();
        // Sparse: a 1 GB length holding nothing.
        let sparse = std::fs::File::create(d.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let one = usage([&f]);
        assert!((100_000..200_000).contains(&one), "{one}");
        let all = usage([d.path(), f.as_path()]);
        assert!(all < one + 64 * 1024, "{all} vs {one}");
        assert_eq!(usage([d.path().join("gone")]), 0);
    }
}
