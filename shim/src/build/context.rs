//! The build context: the files COPY and ADD may read (the context
//! directory less what `.dockerignore` excludes), their digest for the
//! layer cache, and the layer tar a COPY or ADD makes of them.
//!
//! The context is untrusted input: sources are matched against a list made
//! by walking the directory without following symlinks, so a source never
//! names a file outside it; symlinks are copied as links.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use glob::{MatchOptions, Pattern};
use sha2::{Digest, Sha256};

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A directory tree COPY reads from: the build context, or another
/// stage's root filesystem.
pub struct Tree {
    pub root: PathBuf,
    /// Every path in it (relative, sorted), less the ignored ones.
    paths: BTreeSet<PathBuf>,
}

impl Tree {
    /// The context directory, with `.dockerignore` applied.
    pub fn context(root: &Path) -> Result<Tree> {
        let ignore = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(text) => Ignore::parse(&text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
            Err(e) => return Err(e).context("reading .dockerignore"),
        };
        Tree::walk(root, &ignore)
    }

    /// A whole directory tree (another stage's root).
    pub fn all(root: &Path) -> Result<Tree> {
        Tree::walk(root, &Ignore::default())
    }

    fn walk(root: &Path, ignore: &Ignore) -> Result<Tree> {
        let mut paths = BTreeSet::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let dir = root.join(&rel);
            let entries =
                fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for e in entries {
                let e = e?;
                let path = rel.join(e.file_name());
                if ignore.excludes(&path) {
                    // An excluded directory may still hold `!`-included
                    // files: walk it unless no exception could match.
                    if e.file_type()?.is_dir() && ignore.has_exceptions() {
                        todo.push(path);
                    }
                    continue;
                }
                if e.file_type()?.is_dir() {
                    todo.push(path.clone());
                }
                paths.insert(path);
            }
        }
        Ok(Tree {
            root: root.to_path_buf(),
            paths,
        })
    }

    /// The paths a COPY source names: one path, or a glob. Refused when
    /// it leaves the tree or matches nothing.
    pub fn sources(&self, src: &str) -> Result<Vec<PathBuf>> {
        let clean = clean(src).with_context(|| format!("{src}: outside the build context"))?;
        if clean.as_os_str().is_empty() {
            return Ok(vec![PathBuf::new()]);
        }
        let text = clean.to_string_lossy();
        let found: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
            let p = Pattern::new(&text).with_context(|| format!("bad pattern {src}"))?;
            self.paths
                .iter()
                .filter(|x| p.matches_path_with(x, MATCH))
                .cloned()
                .collect()
        } else {
            self.paths
                .iter()
                .filter(|x| **x == clean)
                .cloned()
                .collect()
        };
        if found.is_empty() {
            bail!("{src}: no such file or directory in the build context (or excluded by .dockerignore)");
        }
        Ok(found)
    }

    /// `path` and, if it is a directory, everything in the tree under it.
    fn subtree<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
        self.paths
            .range(path.to_path_buf()..)
            .take_while(move |p| p.starts_with(path))
            .filter(move |p| path.as_os_str().is_empty() || p.starts_with(path))
    }

    fn is_dir(&self, rel: &Path) -> bool {
        fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir())
    }
}

/// How a COPY or ADD writes what it copies.
#[derive(Default, Clone)]
pub struct Placement {
    /// Absolute destination; a directory if it ends with `/`.
    pub dest: String,
    pub owner: (u32, u32),
    pub mode: Option<u32>,
    /// ADD: unpack local tar archives instead of copying them.
    pub unpack_archives: bool,
    /// SOURCE_DATE_EPOCH: no timestamp later than this.
    pub clamp_mtime: Option<u64>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One file to write: where it comes from and where it goes.
struct Item {
    from: PathBuf,
    to: PathBuf,
}

/// Plans a COPY: each source's files and their destination in the layer.
fn plan(
    tree: &Tree,
    sources: &[PathBuf],
    place: &Placement,
) -> Result<(Vec<Item>, Option<PathBuf>)> {
    let dest = clean(&place.dest).context("the destination")?;
    let into_dir =
        place.dest.ends_with('/') || sources.len() > 1 || sources.iter().any(|s| tree.is_dir(s));
    let mut items = Vec::new();
    for s in sources {
        if tree.is_dir(s) {
            for p in tree.subtree(s) {
                if p == s {
                    continue;
                }
                let rel = p.strip_prefix(s).unwrap_or(p);
                items.push(Item {
                    from: p.clone(),
                    to: dest.join(rel),
                });
            }
        } else {
            let to = if into_dir {
                dest.join(s.file_name().unwrap_or_default())
            } else {
                dest.clone()
            };
            items.push(Item {
                from: s.clone(),
                to,
            });
        }
    }
    Ok((items, into_dir.then_some(dest)))
}

/// A digest of what a COPY would write: names, types, modes, link targets
/// and contents, for the layer cache.
pub fn digest(tree: &Tree, sources: &[PathBuf], place: &Placement) -> Result<String> {
    let (items, _) = plan(tree, sources, place)?;
    let mut h = Sha256::new();
    for it in &items {
        let path = tree.root.join(&it.from);
        let m = fs::symlink_metadata(&path)?;
        h.update(format!(
            "{}\0{}\0{:o}\0",
            it.from.display(),
            it.to.display(),
            m.mode()
        ));
        if m.file_type().is_symlink() {
            h.update(fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if m.is_file() {
            std::io::copy(&mut File::open(&path)?, &mut h)?;
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes the layer of a COPY or ADD as a tar to `out`.
pub fn write_layer(
    tree: &Tree,
    sources: &[PathBuf],
    place: &Placement,
    out: impl Write,
) -> Result<()> {
    let (items, dest_dir) = plan(tree, sources, place)?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let header = |m: &fs::Metadata| {
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(m, tar::HeaderMode::Complete);
        h.set_uid(place.owner.0.into());
        h.set_gid(place.owner.1.into());
        if let Some(mode) = place.mode {
            h.set_mode(mode);
        }
        if let Some(t) = place.clamp_mtime {
            h.set_mtime(h.mtime().unwrap_or(0).min(t));
        }
        h
    };
    if let Some(dir) = dest_dir.as_ref().filter(|d| !d.as_os_str().is_empty()) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_uid(place.owner.0.into());
        h.set_gid(place.owner.1.into());
        h.set_mtime(place.clamp_mtime.unwrap_or_else(now));
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    for it in items {
        let path = tree.root.join(&it.from);
        let m = fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", it.from.display()))?;
        let mut h = header(&m);
        let ft = m.file_type();
        if ft.is_symlink() {
            b.append_link(&mut h, &it.to, fs::read_link(&path)?)?;
        } else if ft.is_dir() {
            if place.mode.is_none() {
                h.set_mode(m.permissions().mode() & 0o7777);
            }
            b.append_data(&mut h, &it.to, std::io::empty())?;
        } else if ft.is_file() {
            let mut f = File::open(&path)?;
            if place.unpack_archives && is_archive(&mut f)? {
                unpack_into(
                    &mut b,
                    f,
                    &dest_for_archive(&it, dest_dir.as_deref()),
                    place,
                )
                .with_context(|| format!("unpacking {}", it.from.display()))?;
            } else {
                b.append_data(&mut h, &it.to, f)?;
            }
        } else {
            bail!(
                "{}: only files, directories and symlinks can be copied",
                it.from.display()
            );
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// ADD unpacks an archive into the destination directory.
fn dest_for_archive(it: &Item, dest_dir: Option<&Path>) -> PathBuf {
    match dest_dir {
        Some(d) => d.to_path_buf(),
        None => it.to.clone(),
    }
}

/// A tar, plain or gzip-compressed (what ADD unpacks).
fn is_archive(f: &mut File) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut head = [0u8; 512];
    let n = read_up_to(f, &mut head)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(head[..n].starts_with(&[0x1f, 0x8b]) || (n >= 262 && &head[257..262] == b"ustar"))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies an archive's entries under `dest`: its paths are confined to
/// it (an absolute or `..` path is refused), as a pulled layer's are.
fn unpack_into<W: Write>(
    b: &mut tar::Builder<W>,
    f: File,
    dest: &Path,
    place: &Placement,
) -> Result<()> {
    let mut head = [0u8; 2];
    let gz = {
        let mut probe = f.try_clone()?;
        read_up_to(&mut probe, &mut head)? == 2 && head == [0x1f, 0x8b]
    };
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::Start(0))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut ar = tar::Archive::new(reader);
    for e in ar.entries()? {
        let mut e = e?;
        let name = e.path()?.into_owned();
        let rel = clean(&name.to_string_lossy())
            .with_context(|| format!("{}: leaves the destination", name.display()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mut h = e.header().clone();
        if let Some(t) = place.clamp_mtime {
            h.set_mtime(h.mtime().unwrap_or(0).min(t));
        }
        let to = dest.join(&rel);
        match h.entry_type() {
            tar::EntryType::Symlink => {
                let target = e.link_name()?.unwrap_or_default().into_owned();
                b.append_link(&mut h, &to, target)?;
            }
            tar::EntryType::Link => {
                let target = e.link_name()?.unwrap_or_default().into_owned();
                let target = clean(&target.to_string_lossy()).with_context(|| {
                    format!("{}: a hard link out of the archive", name.display())
                })?;
                b.append_link(&mut h, &to, dest.join(target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Continuous => {
                b.append_data(&mut h, &to, &mut e)?;
            }
            other => bail!(
                "{}: ADD unpacks files, directories and links, not {other:?}",
                name.display()
            ),
        }
    }
    Ok(())
}

/// A path made relative and normalized; `None` if `..` would leave the
/// root. The empty path is the root itself.
pub fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

/// `.dockerignore`: patterns as docker matches them (Go's filepath.Match
/// plus `**`), later lines winning, `!` for exceptions. A path whose
/// parent directory is excluded is excluded too.
#[derive(Default)]
struct Ignore {
    rules: Vec<(Pattern, bool)>,
}

impl Ignore {
    fn parse(text: &str) -> Result<Ignore> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let Some(pat) = clean(pat) else { continue };
            let p = Pattern::new(&pat.to_string_lossy())
                .with_context(|| format!(".dockerignore: bad pattern {line:?}"))?;
            rules.push((p, exception));
        }
        Ok(Ignore { rules })
    }

    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, ex)| *ex)
    }

    fn excludes(&self, path: &Path) -> bool {
        let mut excluded = false;
        for (p, exception) in &self.rules {
            // The path or one of its parents matches.
            let hit = path
                .ancestors()
                .any(|a| !a.as_os_str().is_empty() && p.matches_path_with(a, MATCH));
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_matches_like_docker() {
        let ig = Ignore::parse("# c\n*.md\n!README.md\ndata/**\n**/*.pyc\n../x\n").unwrap();
        let ex = |p: &str| ig.excludes(Path::new(p));
        assert!(ex("notes.md") && !ex("README.md"));
        assert!(ex("data/a/b.csv") && ex("src/deep/m.pyc"));
        assert!(!ex("src/main.py") && !ex("docs/notes.md"));
    }

    #[test]
    fn clean_keeps_paths_inside() {
        assert_eq!(clean("/a/./b/../c"), Some(PathBuf::from("a/c")));
        assert_eq!(clean("a/../.."), None);
        assert_eq!(clean("."), Some(PathBuf::new()));
    }
}
