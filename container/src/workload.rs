//! How the container's process is executed, and how failures to execute map
//! to docker's exit codes (127: not found, 126: not executable).

use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};

use crate::{CodedError, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};

// libcontainer sends validation errors back to the creating process as text;
// these markers let us recover the exit code from that text.
const NOT_FOUND: &str = "executable file not found in $PATH";
const NOT_EXECUTABLE: &str = "permission denied: not an executable file";

/// Runs the container's command. For a process joining a running
/// container (`exec`), `seccomp` is the container's own filter: libcontainer
/// 0.7 builds an exec'd process's spec without the container's seccomp
/// section, so without this the process would run unfiltered.
#[derive(Clone, Default)]
pub struct CapsaExecutor {
    pub seccomp: Option<LinuxSeccomp>,
    /// An open `cgroup.procs` of a sub-cgroup the process joins before it
    /// executes (runc's `exec --cgroup` on cgroup v2). Opened by the
    /// caller, whose credentials and cgroup namespace the kernel checks.
    pub join_cgroup: Option<RawFd>,
    /// The container's own user namespace, for a process joining it.
    pub userns: Option<UsernsEntry>,
}

/// A process joining a container that has a user namespace of its own
/// joins that namespace here, last: libcontainer 0.7's exec joins every
/// namespace but that one, which would leave the process host root in
/// the container. libcontainer runs it as uid 0 (the namespace's owner,
/// whom the kernel lets in); here it enters the namespace (which hands it
/// every capability there) and takes the `user` and the capabilities its
/// spec asks for, as libcontainer does for any process.
#[derive(Clone)]
pub struct UsernsEntry {
    /// An open /proc/PID/ns/user of the container's process, kept open by
    /// the caller until this process has executed.
    pub fd: RawFd,
    pub user: oci_spec::runtime::User,
}

fn enter_userns(entry: &UsernsEntry, spec: &Spec) -> Result<(), ExecutorError> {
    use libcontainer::capabilities;
    use nix::unistd::{Gid, Uid};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ExecutorError::Other(format!("{what} for the exec'd process: {e}"))
    };
    let syscall = libcontainer::syscall::syscall::create_syscall();
    syscall
        .set_ns(entry.fd, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| fail("entering the container's user namespace", &e))?;
    let groups: Vec<Gid> = (entry.user.additional_gids().iter().flatten())
        .map(|g| Gid::from_raw(*g))
        .collect();
    syscall
        .set_groups(&groups)
        .map_err(|e| fail("setting the groups", &e))?;
    syscall
        .set_id(
            Uid::from_raw(entry.user.uid()),
            Gid::from_raw(entry.user.gid()),
        )
        .map_err(|e| fail("setting the user", &e))?;
    capabilities::reset_effective(syscall.as_ref())
        .map_err(|e| fail("resetting the capabilities", &e))?;
    // No capability sets in the spec: none at all, not the namespace's all
    // (oci-spec's default would be a set of its own).
    let none = || {
        let empty = oci_spec::runtime::Capabilities::new();
        oci_spec::runtime::LinuxCapabilitiesBuilder::default()
            .bounding(empty.clone())
            .effective(empty.clone())
            .permitted(empty.clone())
            .inheritable(empty.clone())
            .ambient(empty)
            .build()
            .map_err(|e| fail("an empty capability set", &e))
    };
    let caps = match spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
    {
        Some(c) => c,
        None => none()?,
    };
    capabilities::drop_privileges(&caps, syscall.as_ref())
        .map_err(|e| fail("dropping the capabilities", &e))
}

/// Gives the process every signal's default action and an empty signal
/// mask, as a container's process starts under docker. Dispositions and
/// the mask survive fork and exec: without this, a `capsa` started from a
/// script's background job (where SIGINT and SIGQUIT are ignored) would
/// start containers that cannot be stopped with them, since a shell
/// cannot even trap a signal ignored at its start.
fn default_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: installing SIG_DFL runs no code of ours in a handler.
        let _ = unsafe { sigaction(sig, &default) };
    }
    let _ = SigSet::empty().thread_set_mask();
}

impl Executor for CapsaExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = args_of(spec).ok_or(ExecutorError::InvalidArg)?;
        if let Some(fd) = self.join_cgroup {
            // "0": the writing process itself.
            nix::unistd::write(inherited(fd), b"0")
                .map_err(|e| ExecutorError::Other(format!("joining the sub-cgroup: {e}")))?;
        }
        if let Some(entry) = &self.userns {
            enter_userns(entry, spec)?;
        }
        default_signals();
        if let Some(seccomp) = &self.seccomp {
            load_seccomp(seccomp)?;
        }
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
        Err(ExecutorError::Other(format!("exec {}: {err}", args[0])))
    }

    /// Runs in the container (after pivot_root) before it waits for start,
    /// so a bad command fails `create` with a clear message.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        // Runs in the container's process, before it waits for `start`:
        // a created container shows as capsa's (runc's reads
        // `runc:[2:INIT]`), not under the library's name.
        name_process(c"capsa:[2:INIT]");
        let args = args_of(spec).ok_or_else(|| {
            ExecutorValidationError::ArgValidationError("no command given".into())
        })?;
        let path_var = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().as_ref())
            .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        let Some(path) = lookup(&args[0], &path_var) else {
            return Err(ExecutorValidationError::ArgValidationError(format!(
                "{}: {NOT_FOUND}",
                args[0]
            )));
        };
        let executable = path
            .metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(ExecutorValidationError::ArgValidationError(format!(
                "{}: {NOT_EXECUTABLE}",
                path.display()
            )));
        }
        Ok(())
    }
}

/// Sets this process's name (its `comm`, what `ps` shows) until it
/// executes.
fn name_process(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Installs `seccomp` on this process, last before execve as libcontainer
/// does for a container's first process. Installing a filter needs
/// no_new_privileges or CAP_SYS_ADMIN; a process that has neither (a bundle
/// with `noNewPrivileges: false` and dropped capabilities) gets
/// no_new_privileges, which is stricter than failing open.
fn load_seccomp(seccomp: &LinuxSeccomp) -> Result<(), ExecutorError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ExecutorError::Other(format!("{what} for the exec'd process: {e}"))
    };
    use nix::sys::prctl::{get_no_new_privs, set_no_new_privs};
    let nnp = get_no_new_privs().map_err(|e| fail("reading no_new_privileges", &e))?;
    let admin = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .map_err(|e| fail("reading the capabilities", &e))?;
    if !nnp && !admin {
        set_no_new_privs().map_err(|e| fail("setting no_new_privileges", &e))?;
    }
    match libcontainer::seccomp::initialize_seccomp(seccomp) {
        // A notify action's listener fd: capsa runs no seccomp agent, and
        // closing it makes those system calls fail (ENOSYS), never pass.
        Ok(Some(fd)) => {
            let _ = nix::unistd::close(fd);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(fail("installing the container's seccomp filter", &e)),
    }
}

/// `fd`, which the caller keeps open until this process has executed.
fn inherited(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the descriptor stays open in this process (it was inherited
    // from the caller, marked close-on-exec at most) until it executes.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn args_of(spec: &Spec) -> Option<&Vec<String>> {
    spec.process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .filter(|a| !a.is_empty())
}

fn lookup(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    path_var
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

/// Turns a failed `create` into the error the user sees, with docker's exit
/// code when the cause is the command itself.
pub fn classify_start_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    for (marker, code) in [
        (NOT_FOUND, EXIT_NOT_FOUND),
        (NOT_EXECUTABLE, EXIT_NOT_EXECUTABLE),
    ] {
        if let Some(pos) = text.find(marker) {
            // Keep "CMD: reason", dropping libcontainer's wrapping.
            let start = text[..pos]
                .rfind(": ")
                .map_or(0, |p| text[..p].rfind(['\'', ' ']).map_or(0, |q| q + 1));
            let msg = text[start..pos + marker.len()]
                .trim_matches('\'')
                .to_string();
            return CodedError::new(code, format!("failed to start the container: {msg}")).into();
        }
    }
    err.context("failed to start the container")
}

#[cfg(test)]
mod signal_tests {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    /// In a child process, so the test's own dispositions stay as they are.
    #[test]
    fn ignored_and_blocked_signals_are_reset() {
        // SAFETY: the child only makes syscalls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
                // SAFETY: SIG_IGN runs no handler.
                unsafe { sigaction(Signal::SIGINT, &ignore) }.unwrap();
                SigSet::from(Signal::SIGTERM).thread_block().unwrap();
                super::default_signals();
                // SAFETY: as above; read back the disposition.
                let old = unsafe { sigaction(Signal::SIGINT, &ignore) }.unwrap();
                let mask = SigSet::thread_get_mask().unwrap();
                let ok = old.handler() == SigHandler::SigDfl && !mask.contains(Signal::SIGTERM);
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
