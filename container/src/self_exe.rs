//! The runtime's own binary, out of the reach of the containers it starts
//! (the CVE-2019-5736 class).
//!
//! A process that enters a container runs this binary until it executes
//! the container's command, and that command may be a script starting
//! `#!/proc/self/exe`: the kernel then runs the host's capsa inside the
//! container, where the container's other processes can open it through
//! `/proc/PID/exe` and, once no process runs it, write it, so that root
//! on the host runs their code next. So capsa re-executes itself, first
//! thing, from a private read-only bind mount of its binary: a detached
//! mount (`open_tree`), in no mount table and gone with the last process
//! using it. Any open of that file for writing then fails with EROFS.
//! Nothing is copied (runc's sealed memfd would copy capsa's 130 MB at
//! every start, and a container's monitor would hold the copy as long as
//! the container runs).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The binary's own path, for a re-executed capsa (its `/proc/self/exe`
/// names the detached mount, not a path anyone can run).
const PATH_ENV: &str = "CAPSA_SELF";
/// Set only across the one re-execution, so a failure cannot loop.
const AGAIN_ENV: &str = "CAPSA_SELF_AGAIN";

/// Re-executes this process from a read-only mount of its binary unless it
/// already runs from one (a binary installed on a read-only /usr, or this
/// process after its re-execution). Returns only when nothing is left to
/// do, or with why it could not be done. A process that is not root cannot
/// start containers, and is left as it is.
pub fn run_read_only() -> io::Result<()> {
    let again = std::env::var_os(AGAIN_ENV).is_some();
    if again {
        // Called first thing in main, before any other thread reads the
        // environment; children must not inherit the marker.
        std::env::remove_var(AGAIN_ENV);
    }
    if !nix::unistd::geteuid().is_root() || read_only()? {
        return Ok(());
    }
    if again {
        return Err(io::Error::other("still writable after re-executing"));
    }
    let path = std::env::current_exe()?;
    let mount = detached_read_only("/proc/self/exe")?;
    let argv: Vec<CString> = std::env::args_os()
        .map(cstring)
        .collect::<io::Result<_>>()?;
    let mut env: Vec<(OsString, OsString)> =
        std::env::vars_os().filter(|(k, _)| k != PATH_ENV).collect();
    env.push((PATH_ENV.into(), path.into_os_string()));
    env.push((AGAIN_ENV.into(), "1".into()));
    let envp: Vec<CString> = env
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect::<io::Result<_>>()?;
    let ptrs = |v: &[CString]| {
        let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    // SAFETY: NUL-terminated argument and environment arrays of strings
    // that outlive the call; it returns only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            mount.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(io::Error::last_os_error())
}

/// This program's path, as a command line names it: the original binary
/// even after [`run_read_only`]'s re-execution.
pub fn path() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(PATH_ENV).map(PathBuf::from) {
        // Inherited by another program (a hook that runs another capsa)
        // it names another file, and is not ours.
        let (named, ours) = (std::fs::metadata(&p), std::fs::metadata("/proc/self/exe"));
        if let (Ok(n), Ok(o)) = (named, ours) {
            if (n.dev(), n.ino()) == (o.dev(), o.ino()) {
                return Ok(p);
            }
        }
    }
    std::env::current_exe()
}

/// Whether this process's binary is on a read-only mount.
fn read_only() -> io::Result<bool> {
    let st = nix::sys::statvfs::statvfs("/proc/self/exe").map_err(io::Error::from)?;
    Ok(st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// A read-only (and nosuid, nodev) bind mount of `file`, attached nowhere.
fn detached_read_only(file: &str) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero mount_attr is valid (no change); we set fields.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    detached_with(&cstring(file.into())?, &attr)
}

/// A copy of the mount at `path` (open_tree), attached nowhere, with
/// `attr` set on it (mount_setattr).
pub(crate) fn detached_with(path: &std::ffi::CStr, attr: &libc::mount_attr) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path; a new descriptor is returned or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned this descriptor, which nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the mount's descriptor, an empty path with AT_EMPTY_PATH and
    // a mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn cstring(s: OsString) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::other("a NUL byte in an argument"))
}
