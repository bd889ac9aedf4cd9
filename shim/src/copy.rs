//! docker's `cp` for a running container, the same in both modes: the
//! container's own `tar`, started like `exec` (as root, with the
//! container's confinement; in VM mode through the agent), reads or writes
//! the files inside, and capsa streams the archive to or from the host.
//! So paths in the container resolve in the container's own view (its
//! mounts, its symlinks), never on the host. What comes out is untrusted:
//! it is unpacked with tar-rs's checks (no entry lands outside the
//! destination, through `..` or through a symlink an earlier entry made)
//! and only files, directories and links are made.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::backend::{ExecRequest, ProcessHandle, ProcessIo};
use crate::lifecycle::{backend_for, find_running};
use crate::paths::Roots;
use crate::record::Record;
use crate::{CodedError, EXIT_CAPSA_ERROR};

/// Where `copy_out` puts what it copied.
pub enum Destination {
    /// A host path, as docker's `cp C:SRC DEST` treats it.
    Path(PathBuf),
    /// The tar archive itself, on our stdout (`cp C:SRC -`).
    Stdout,
}

/// `cp C:SRC DEST`: SRC (a file or directory in the container) to DEST on
/// the host: into DEST if it is a directory, else as DEST (its parent must
/// exist).
pub fn copy_out(roots: &Roots, key: &str, src: &str, dest: Destination) -> Result<()> {
    let rec = find_running(roots, key)?;
    let (parent, base) = split(src);
    let out = crate::stdio::pipe()?;
    let err = crate::stdio::pipe()?;
    let handle = run_tar(
        roots,
        &rec,
        vec!["-cf".into(), "-".into(), "-C".into(), parent, base.clone()],
        None,
        out.write,
        err.write,
    )?;
    let errors = read_all(err.read);
    let copied = match dest {
        Destination::Stdout => std::io::copy(&mut fs::File::from(out.read), &mut std::io::stdout())
            .map(|_| ())
            .context("writing the archive"),
        Destination::Path(dest) => unpack(fs::File::from(out.read), &dest, &base).map_err(|e| {
            user(format!(
                "copying {}:{src} to {}: {e:#}",
                rec.name,
                dest.display()
            ))
        }),
    };
    let finished = finish(&rec, handle, errors, &format!("{}:{src}", rec.name));
    // A refused archive is the cause; tar then dies writing to the closed
    // pipe (SIGPIPE), which is only its consequence.
    copied?;
    finished
}

/// `cp SRC C:DEST`: SRC (a host file or directory, symlinks copied as
/// links) into DEST in the container if that is a directory there, else
/// as DEST (its parent must exist). Files are owned by the container's
/// root, as docker makes them.
pub fn copy_in(roots: &Roots, key: &str, src: &Path, dest: &str) -> Result<()> {
    let rec = find_running(roots, key)?;
    let meta = fs::symlink_metadata(src).map_err(|e| user(format!("{}: {e}", src.display())))?;
    // Is DEST a directory in the container? tar's -C says, by failing.
    let probe = {
        let out = crate::stdio::pipe()?;
        let err = crate::stdio::pipe()?;
        let h = run_tar(
            roots,
            &rec,
            vec![
                "-cf".into(),
                "/dev/null".into(),
                "--no-recursion".into(),
                "-C".into(),
                dest.into(),
                ".".into(),
            ],
            None,
            out.write,
            err.write,
        )?;
        drop(out.read);
        // Drained, so that tar's warnings never meet a closed pipe.
        let said = read_all(err.read);
        let is_dir = h.wait()? == 0;
        let _ = said.join();
        is_dir
    };
    let (workdir, name) = if probe {
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".into());
        (dest.to_string(), name)
    } else {
        split(dest)
    };
    let stdin = crate::stdio::pipe()?;
    let out = crate::stdio::pipe()?;
    let err = crate::stdio::pipe()?;
    // -o: owned by whoever extracts (root), not by the host's uid.
    let handle = run_tar(
        roots,
        &rec,
        vec!["-xof".into(), "-".into(), "-C".into(), workdir],
        Some(stdin.read),
        out.write,
        err.write,
    )?;
    drop(out.read);
    let errors = read_all(err.read);
    let shown = src.display().to_string();
    let src = src.to_path_buf();
    let writer = std::thread::spawn(move || -> Result<()> {
        let mut b = tar::Builder::new(fs::File::from(stdin.write));
        b.follow_symlinks(false);
        if meta.is_dir() {
            b.append_dir_all(&name, &src)?;
        } else {
            b.append_path_with_name(&src, &name)?;
        }
        b.into_inner()?.flush()?;
        Ok(())
    });
    let written = writer
        .join()
        .unwrap_or_else(|_| bail!("the archive writer panicked"));
    finish(&rec, handle, errors, &format!("{}:{dest}", rec.name))?;
    written.with_context(|| format!("sending {shown}"))
}

/// The container's tar with `args`, as root, its output on the given pipes.
fn run_tar(
    roots: &Roots,
    rec: &Record,
    args: Vec<String>,
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<ProcessHandle> {
    let req = ExecRequest {
        args: std::iter::once("tar".to_string()).chain(args).collect(),
        user: Some((0, 0)),
        ..Default::default()
    };
    let io = ProcessIo {
        stdin,
        stdout: Some(stdout),
        stderr: Some(stderr),
        ..Default::default()
    };
    backend_for(roots, rec.isolation)?
        .exec(rec, &req, io)
        .map_err(capsa_container::classify_start_error)
}

/// Waits for tar and turns its failure into one line naming `what`.
fn finish(
    rec: &Record,
    handle: ProcessHandle,
    errors: std::thread::JoinHandle<String>,
    what: &str,
) -> Result<()> {
    let code = handle.wait()?;
    let said = errors.join().unwrap_or_default();
    let said = said
        .lines()
        .filter(|l| !l.contains("removing leading"))
        .collect::<Vec<_>>()
        .join("; ");
    match code {
        0 => Ok(()),
        126 | 127 => Err(user(format!(
            "capsa cp uses the container's tar, and {} has none: {said}",
            rec.name
        ))),
        _ => Err(user(format!("copying {what}: {}", said.trim()))),
    }
}

fn read_all(fd: OwnedFd) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = fs::File::from(fd).read_to_string(&mut s);
        s
    })
}

/// A container path as tar's `-C PARENT NAME`.
fn split(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return ("/".into(), ".".into());
    }
    match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((parent, name)) => (parent.into(), name.into()),
        None => ("/".into(), trimmed.into()),
    }
}

/// Unpacks the archive (whose top entry is `base`) into `dest` if that is
/// a directory, else as `dest`.
fn unpack(archive: impl Read, dest: &Path, base: &str) -> Result<()> {
    let (into, rename) = if dest.is_dir() {
        (dest.to_path_buf(), None)
    } else {
        let parent = match dest.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => bail!(user(format!("{}: no such directory", dest.display()))),
        };
        if !parent.is_dir() {
            bail!(user(format!("{}: no such directory", parent.display())));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".capsa-cp-")
            .tempdir_in(parent)?;
        (tmp.keep(), Some(dest.to_path_buf()))
    };
    let result = unpack_entries(archive, &into);
    if let Some(dest) = rename {
        let done = result.and_then(|()| {
            let top = if base == "." {
                into.clone()
            } else {
                into.join(base)
            };
            fs::rename(&top, &dest).with_context(|| format!("creating {}", dest.display()))
        });
        let _ = fs::remove_dir_all(&into);
        return done;
    }
    result
}

fn unpack_entries(archive: impl Read, into: &Path) -> Result<()> {
    use tar::EntryType as T;
    let mut ar = tar::Archive::new(archive);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    for entry in ar.entries()? {
        let mut e = entry?;
        let kind = e.header().entry_type();
        if !matches!(
            kind,
            T::Regular | T::Directory | T::Symlink | T::Link | T::Continuous
        ) {
            continue;
        }
        let path = e.path()?.into_owned();
        if !e.unpack_in(into)? {
            bail!(user(format!(
                "the container's archive names {} outside the destination: nothing more copied",
                path.display()
            )));
        }
    }
    Ok(())
}

fn user(msg: String) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, msg).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_split_for_tar() {
        assert_eq!(split("/etc/hostname"), ("/etc".into(), "hostname".into()));
        assert_eq!(split("/tmp/dir/"), ("/tmp".into(), "dir".into()));
        assert_eq!(split("/x"), ("/".into(), "x".into()));
        assert_eq!(split("/"), ("/".into(), ".".into()));
        assert_eq!(split("rel"), ("/".into(), "rel".into()));
    }
}
