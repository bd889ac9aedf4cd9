//! docker's `cp` for a running container, the same in both modes: the
//! container's own `tar`, started like `exec` (as root, with the
//! container's confinement; in VM mode through the agent), reads or writes
//! the files inside, and capsa streams the archive to or from the host.
//! So paths in the container resolve in the container's own view (its
//! mounts, its symlinks), never on the host. What comes out is untrusted:
//! it is unpacked with tar-rs's checks (no entry lands outside the
//! destination, through `..` or through a symlink an earlier entry made)
//! and only files, directories and links are made.
//!
//! A stopped container-mode container has no process to exec: its root is
//! mounted again for the copy (the containers lock held, so no `start`
//! races it), and a child of capsa chrooted into that root reads or writes
//! the files with capsa's own tar code, so the container's paths still
//! resolve inside its root and no program from the image runs. Its volumes
//! and other bind mounts are mounted on that root in the child's own mount
//! namespace, so the copy reaches them as docker's does (and as the VM-mode
//! copy does), and they vanish with the child. A
//! stopped VM-mode container's files are on disks only its guest reads
//! (the host never mounts a filesystem a guest wrote): its VM is booted
//! again with the container in it idle (its command does not run), tar
//! runs in it as in a running one, and the VM is powered off, its disks
//! synced, before the copy reports success.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capsa_image::Store;

use crate::backend::{ExecRequest, ProcessHandle, ProcessIo};
use crate::lifecycle::{backend_for, check_running, remount_root, StoppedVm};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Isolation, Record, Status};
use crate::{CodedError, EXIT_CAPSA_ERROR};

/// docker's `cp` flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyOptions {
    /// `-a`: keep the source's owners (and, copying out, its setuid,
    /// setgid and sticky bits, which are otherwise dropped: a container
    /// must not hand the host a setuid file).
    pub archive: bool,
    /// `-L`: copy what SRC links to, not the link (copying out, the
    /// container's `tar -h` follows links inside a copied directory too).
    pub follow_link: bool,
}

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
pub fn copy_out(
    roots: &Roots,
    store: &Store,
    key: &str,
    src: &str,
    dest: Destination,
    opts: CopyOptions,
) -> Result<()> {
    let target = target(roots, store, key)?;
    let (rec, stopped) = (&target.rec, &target.root);
    let (parent, base) = split(src);
    let out = crate::stdio::pipe()?;
    let err = crate::stdio::pipe()?;
    let create = if opts.follow_link { "-chf" } else { "-cf" };
    let handle = match stopped {
        None => run_tar(
            roots,
            rec,
            vec![create.into(), "-".into(), "-C".into(), parent, base.clone()],
            None,
            out.write,
            err.write,
        )?,
        Some(root) => {
            let (out_w, name) = (out.write, base.clone());
            root.run(
                err.write,
                &[out.read.as_fd(), err.read.as_fd()],
                move || {
                    let path = Path::new(&parent).join(&name);
                    let meta = source_metadata(&path, opts.follow_link)
                        .with_context(|| format!("{}", path.display()))?;
                    send(out_w, &path, &meta, &name)
                },
            )?
        }
    };
    let errors = read_all(err.read);
    let copied = match dest {
        Destination::Stdout => std::io::copy(&mut fs::File::from(out.read), &mut std::io::stdout())
            .map(|_| ())
            .context("writing the archive"),
        Destination::Path(dest) => unpack(
            fs::File::from(out.read),
            &dest,
            &base,
            Keep::all_or_safe(opts),
        )
        .map_err(|e| {
            user(format!(
                "copying {}:{src} to {}: {e:#}",
                rec.name,
                dest.display()
            ))
        }),
    };
    let finished = finish(rec, handle, errors, &format!("{}:{src}", rec.name));
    let copied = match (copied, finished) {
        // A refused archive is the cause; tar then dies writing to the
        // closed pipe (SIGPIPE, or EPIPE for capsa's own writer), which is
        // only its consequence.
        (Err(c), Err(f)) if is_broken_pipe(&f) => Err(c),
        // Otherwise the reader's failure (no such path) explains the
        // empty archive.
        (_, Err(f)) => Err(f),
        (copied, Ok(())) => copied,
    };
    let powered_off = target.finish();
    copied.and(powered_off)
}

/// What `copy_in` copies.
pub enum Source<'a> {
    /// A host file or directory, which capsa packs.
    Path(&'a Path),
    /// A tar archive on our stdin, extracted as it is into a directory
    /// (docker's `cp - C:DIR`).
    Stdin,
}

/// A [`Source`] ready to send: what a path is, checked before anything
/// else is done.
enum Packed {
    Path {
        src: PathBuf,
        meta: Box<fs::Metadata>,
        name: String,
    },
    Stdin,
}

impl Packed {
    fn new(src: &Source, follow_link: bool) -> Result<Packed> {
        Ok(match src {
            Source::Stdin => Packed::Stdin,
            Source::Path(p) => Packed::Path {
                src: p.to_path_buf(),
                meta: Box::new(
                    source_metadata(p, follow_link)
                        .map_err(|e| user(format!("{}: {e}", p.display())))?,
                ),
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| ".".into()),
            },
        })
    }

    /// The archive's top entry, as the destination names it ("." for an
    /// archive given as it is).
    fn name(&self) -> String {
        match self {
            Packed::Path { name, .. } => name.clone(),
            Packed::Stdin => ".".into(),
        }
    }

    /// Writes the archive to `to`, a path's top entry named `name`.
    fn send(&self, to: OwnedFd, name: &str) -> Result<()> {
        match self {
            Packed::Path { src, meta, .. } => {
                send(to, src, meta, name).with_context(|| format!("sending {}", src.display()))
            }
            Packed::Stdin => std::io::copy(&mut std::io::stdin().lock(), &mut fs::File::from(to))
                .map(|_| ())
                .context("sending the archive from stdin"),
        }
    }
}

/// `cp SRC C:DEST`: SRC (a host file or directory, symlinks copied as
/// links) into DEST in the container if that is a directory there, else
/// as DEST (its parent must exist); an archive on stdin is extracted into
/// DEST, which must be a directory. Files are owned by the container's
/// root, as docker makes them, unless `-a`.
pub fn copy_in(
    roots: &Roots,
    store: &Store,
    key: &str,
    src: Source,
    dest: &str,
    opts: CopyOptions,
) -> Result<()> {
    let packed = Packed::new(&src, opts.follow_link)?;
    let whole_archive = matches!(packed, Packed::Stdin);
    let not_a_dir = || {
        user(format!(
            "{dest}: no such directory in the container (an archive on stdin is extracted into one)"
        ))
    };
    let mut target = target(roots, store, key)?;
    let rec = target.rec.clone();
    if let Some(root) = target.root.take() {
        let stdin = crate::stdio::pipe()?;
        let err = crate::stdio::pipe()?;
        let (into, top) = (dest.to_string(), packed.name());
        let parent_ends = [stdin.write.as_fd(), err.read.as_fd()];
        let keep = Keep {
            modes: true,
            owners: opts.archive,
        };
        let handle = root.run(err.write, &parent_ends, move || {
            if whole_archive && !Path::new(&into).is_dir() {
                bail!(not_a_dir());
            }
            unpack(fs::File::from(stdin.read), Path::new(&into), &top, keep)
        })?;
        let errors = read_all(err.read);
        let written = packed.send(stdin.write, &packed.name());
        finish(&rec, handle, errors, &format!("{}:{dest}", rec.name))?;
        return written;
    }
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
    // Into DEST, or as DEST (its last part names the copy).
    let (workdir, name) = if probe {
        (dest.to_string(), packed.name())
    } else if whole_archive {
        bail!(not_a_dir());
    } else {
        split(dest)
    };
    let stdin = crate::stdio::pipe()?;
    let out = crate::stdio::pipe()?;
    let err = crate::stdio::pipe()?;
    // -o: owned by whoever extracts (root), not by the host's uid; -a
    // keeps the archive's owners (tar's default for root).
    let extract = if opts.archive { "-xf" } else { "-xof" };
    let handle = run_tar(
        roots,
        &rec,
        vec![extract.into(), "-".into(), "-C".into(), workdir],
        Some(stdin.read),
        out.write,
        err.write,
    )?;
    drop(out.read);
    let errors = read_all(err.read);
    let writer = std::thread::spawn(move || packed.send(stdin.write, &name));
    let written = writer
        .join()
        .unwrap_or_else(|_| bail!("the archive writer panicked"));
    finish(&rec, handle, errors, &format!("{}:{dest}", rec.name))?;
    written?;
    target.finish()
}

/// What SRC is: itself, or with `-L` what it links to.
fn source_metadata(src: &Path, follow_link: bool) -> std::io::Result<fs::Metadata> {
    if follow_link {
        fs::metadata(src)
    } else {
        fs::symlink_metadata(src)
    }
}

/// Writes host path `src` as a tar archive whose top entry is `name`:
/// what `meta` says `src` is (a link's target with `-L`), links inside a
/// directory as links.
fn send(to: OwnedFd, src: &Path, meta: &fs::Metadata, name: &str) -> Result<()> {
    let mut b = tar::Builder::new(fs::File::from(to));
    b.follow_symlinks(false);
    if meta.is_dir() {
        b.append_dir_all(name, src)?;
    } else if meta.is_file() {
        // Opened, so a followed link gives its target's content and mode.
        b.append_file(name, &mut fs::File::open(src)?)?;
    } else {
        b.append_path_with_name(src, name)?;
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// The container `key` names, and how a copy reaches it when it is
/// stopped: its root mounted (container mode), or its VM booted with the
/// container idle in it (VM mode: tar runs in it as in a running one).
fn target(roots: &Roots, store: &Store, key: &str) -> Result<Target> {
    let crate::lifecycle::Held { rec, busy, all } = crate::lifecycle::hold(roots, key)?;
    let stopped = match rec.status() {
        Status::Stopped => true,
        Status::Created => rec.waiting_for_start,
        _ => false,
    };
    if !stopped {
        return Ok(Target {
            rec: check_running(rec)?,
            root: None,
            vm: None,
        });
    }
    // Others' containers need not wait for this one's copy.
    drop(all);
    if rec.isolation == Isolation::Vm {
        let vm = crate::lifecycle::boot_stopped_vm(roots, store, &rec, busy)?;
        return Ok(Target {
            rec,
            root: None,
            vm: Some(vm),
        });
    }
    if !crate::monitor::keeper::can_fork() {
        bail!("copying with a stopped container needs a single-threaded capsa");
    }
    let paths = remount_root(roots, store, &rec, false)?;
    let root = StoppedRoot {
        roots: roots.clone(),
        paths,
        userns: rec.userns,
        _busy: busy,
    };
    Ok(Target {
        rec,
        root: Some(root),
        vm: None,
    })
}

/// What a copy works on (see [`target`]).
struct Target {
    rec: Record,
    root: Option<StoppedRoot>,
    /// A stopped VM-mode container's VM.
    vm: Option<StoppedVm>,
}

impl Target {
    /// Powers off a stopped container's VM, if one was booted.
    fn finish(self) -> Result<()> {
        self.vm.map_or(Ok(()), StoppedVm::finish)
    }
}

/// A stopped container's root, mounted while the copy runs.
struct StoppedRoot {
    roots: Roots,
    paths: ContainerPaths,
    /// The container's user namespace mapping: the copy runs as its root.
    userns: Option<oci_spec::runtime::LinuxIdMapping>,
    // The container's own lock (see crate::record::lock_container).
    _busy: nix::fcntl::Flock<fs::File>,
}

impl StoppedRoot {
    /// Runs `work` in a child chrooted into the root (no_new_privs, its
    /// stderr on `stderr`): paths resolve inside the root, `..` and
    /// absolute symlinks included; for a container with a user namespace
    /// of its own, as the root of one with the same mapping (what it
    /// writes is the container's root's, as with a running container's
    /// copy). Exits 1 with the error on stderr.
    /// `parent_ends` are the parent's ends of the pipes `work` uses: the
    /// child closes its copies, so that each side sees the other go (EOF,
    /// EPIPE) instead of waiting on itself.
    fn run(
        &self,
        stderr: OwnedFd,
        parent_ends: &[BorrowedFd],
        work: impl FnOnce() -> Result<()>,
    ) -> Result<ProcessHandle> {
        use nix::unistd::{chdir, chroot, dup2, fork, ForkResult};
        let root = self.paths.rootfs();
        let spec = oci_spec::runtime::Spec::load(self.paths.config())?;
        // SAFETY: the caller is single-threaded (checked in `target`); the
        // child runs only this work and exits.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => Ok(ProcessHandle::Pid(child.as_raw())),
            ForkResult::Child => {
                for fd in parent_ends {
                    // SAFETY: the child's copies; the parent keeps its own.
                    unsafe { libc::close(fd.as_raw_fd()) };
                }
                let done = (|| -> Result<()> {
                    dup2(stderr.as_raw_fd(), 2)?;
                    capsa_container::rootfs::mount_binds_privately(&root, &spec)?;
                    if let Some(map) = &self.userns {
                        // Before chroot: a chrooted process cannot enter one.
                        capsa_container::idmap::become_root_of(map)?;
                    }
                    chroot(&root)?;
                    chdir("/")?;
                    nix::sys::prctl::set_no_new_privs()?;
                    work()
                })();
                let code = match done {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("{e:#}");
                        1
                    }
                };
                // SAFETY: ends the forked child without running the
                // parent's exit handlers.
                unsafe { libc::_exit(code) }
            }
        }
    }
}

impl Drop for StoppedRoot {
    fn drop(&mut self) {
        if let Ok(b) = backend_for(&self.roots, Isolation::Container) {
            let _ = b.release_rootfs(&self.paths);
        }
    }
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
        SIGPIPE_EXIT => Err(user(format!("copying {what}: {BROKEN_PIPE}"))),
        126 | 127 => Err(user(format!(
            "capsa cp uses the container's tar, and {} has none: {said}",
            rec.name
        ))),
        _ => Err(user(format!("copying {what}: {}", said.trim()))),
    }
}

/// tar's exit when SIGPIPE killed it (128 + 13): the archive's reader
/// stopped first.
const SIGPIPE_EXIT: i32 = 141;
const BROKEN_PIPE: &str = "Broken pipe";

/// Whether a copy's writer failed only because its reader stopped.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains(BROKEN_PIPE)
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

/// What unpacking keeps of the archive's entries besides their content.
#[derive(Clone, Copy)]
struct Keep {
    /// Setuid, setgid and sticky bits (the permission bits always).
    modes: bool,
    /// Owners (else the unpacking process's: root).
    owners: bool,
}

impl Keep {
    /// Copying out: everything with `-a`; else no owner, no setuid.
    fn all_or_safe(opts: CopyOptions) -> Keep {
        Keep {
            modes: opts.archive,
            owners: opts.archive,
        }
    }
}

/// Unpacks the archive (whose top entry is `base`) into `dest` if that is
/// a directory, else as `dest`.
fn unpack(archive: impl Read, dest: &Path, base: &str, keep: Keep) -> Result<()> {
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
    let result = unpack_entries(archive, &into, keep);
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

fn unpack_entries(archive: impl Read, into: &Path, keep: Keep) -> Result<()> {
    use tar::EntryType as T;
    let mut ar = tar::Archive::new(archive);
    // tar-rs keeps the rwx bits either way; only `true` keeps setuid,
    // setgid and sticky.
    ar.set_preserve_permissions(keep.modes);
    ar.set_preserve_ownerships(keep.owners);
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
