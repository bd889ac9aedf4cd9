//! The VMM's jail (`--jail`): once the VM is built, every file, socket and
//! descriptor it needs is open, so capsa-vmm gives up everything else
//! before the guest runs a single instruction:
//!
//! - mount, network, IPC and UTS namespaces of its own; its root becomes an
//!   empty read-only tmpfs (pivot_root), so no host path names anything;
//! - a uid and gid of its own, [`UID_BASE`] + its host PID: no two live
//!   VMMs share one, so none can signal or trace another, and no host file
//!   belongs to it;
//! - no capabilities (bounding and ambient sets cleared too), no_new_privs,
//!   not dumpable;
//! - then, as without the jail, the per-thread seccomp filters ([`crate::seccomp`]).
//!
//! Its PID namespace is made by whoever spawns it (capsa makes capsa-vmm
//! the first process of a new one): a process cannot move itself into one.
//! Nothing of the jail exists outside the process: a VMM killed at any
//! point leaves no directory or mount behind.
//!
//! What it can no longer do: open a path. The hybrid vsock's guest-initiated
//! connections (to `<uds>_PORT`) are refused, which capsa does not use.

use std::ffi::CString;
use std::io;

use crate::error::{Error, Result};

/// First uid (and gid) of the range jailed VMMs run as: `UID_BASE + host
/// PID`, below 2^31 for any pid_max (at most 2^22).
pub const UID_BASE: u32 = 0x6000_0000;

fn check(what: &str, rc: libc::c_int) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Jail(format!(
            "{what}: {}",
            io::Error::last_os_error()
        )))
    }
}

/// This process's PID in the host's (procfs's) PID namespace: the first
/// `NSpid` entry of /proc/self/status, read before the jail hides /proc.
fn host_pid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::Jail(format!("reading /proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::Jail("no NSpid line in /proc/self/status".into()))
}

/// The uid (and gid) a jailed VMM with host PID `pid` runs as.
pub fn uid_for(pid: u32) -> u32 {
    UID_BASE + pid
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).map_err(|e| Error::Jail(e.to_string()));
    let (src, target_c, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    check(&format!("mounting {target}"), rc)
}

/// Private namespaces and an empty read-only root.
fn enter_empty_root() -> Result<()> {
    // SAFETY: unshare(2) with namespace flags only; no other thread runs yet.
    check("unshare", unsafe {
        libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
        )
    })?;
    // Nothing done below propagates back to the host's mounts.
    mount("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    // /proc exists wherever capsa runs; the tmpfs only covers it in this
    // namespace, and becomes the whole root below.
    let new_root = "/proc";
    mount(
        "capsa-vmm-jail",
        new_root,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "size=4k,mode=0555",
    )?;
    std::env::set_current_dir(new_root).map_err(|e| Error::Jail(format!("chdir: {e}")))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one,
    // and detaching it leaves the tmpfs alone.
    let dot = c".";
    // SAFETY: pivot_root(2) with a NUL-terminated path.
    check("pivot_root", unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
    })?;
    // SAFETY: umount2(2) with a NUL-terminated path.
    check("detaching the host's root", unsafe {
        libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
    })?;
    std::env::set_current_dir("/").map_err(|e| Error::Jail(format!("chdir /: {e}")))?;
    mount(
        "none",
        "/",
        "",
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        "",
    )
}

/// Gives up root: the uid and gid of its own, no capabilities left in
/// any set, no way to regain them.
fn drop_privileges(id: u32, last_cap: libc::c_ulong) -> Result<()> {
    // The parent-death signal (capsa's monitor sets SIGKILL) is cleared by
    // a change of credentials: set it again after.
    let mut pdeathsig: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer.
    check("PR_GET_PDEATHSIG", unsafe {
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig as *mut libc::c_int)
    })?;
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        check(&format!("dropping capability {cap}"), unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0)
        })?;
    }
    // SAFETY: prctl with integer arguments.
    check("clearing ambient capabilities", unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: set*id(2) with plain integers; glibc applies them to every thread.
    unsafe {
        check("setgroups", libc::setgroups(0, std::ptr::null()))?;
        check("setresgid", libc::setresgid(id, id, id))?;
        // From uid 0 to another without PR_SET_KEEPCAPS: the permitted and
        // effective sets are emptied.
        check("setresuid", libc::setresuid(id, id, id))?;
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        check(
            "no_new_privs",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        check(
            "not dumpable",
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )?;
        if pdeathsig != 0 {
            check(
                "PR_SET_PDEATHSIG",
                libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig),
            )?;
        }
    }
    Ok(())
}

/// The highest capability number this kernel knows (read while /proc is
/// still there).
fn last_cap() -> Result<libc::c_ulong> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .map_err(|e| Error::Jail(format!("reading cap_last_cap: {e}")))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Jail(format!("cap_last_cap {text:?}: {e}")))
}

/// Enters the jail. Call once the VM is built and before any vCPU thread
/// starts; returns the uid it now runs as.
pub fn enter() -> Result<u32> {
    let id = uid_for(host_pid()?);
    let last = last_cap()?;
    enter_empty_root()?;
    drop_privileges(id, last)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "CAPSA_JAIL_TEST_CHILD";

    /// Runs in a child process of the test (the jail cannot be left): once
    /// jailed, nothing of the host can be named, and root's powers are gone.
    #[test]
    #[ignore = "run in a child process by a_jailed_process_reaches_nothing_of_the_host"]
    fn jailed_child() {
        assert!(std::env::var_os(CHILD).is_some(), "the jail cannot be left");
        let pid = host_pid().unwrap();
        let uid = enter().unwrap();
        assert_eq!(uid, UID_BASE + pid);
        // SAFETY: plain getters.
        unsafe {
            assert_eq!((libc::getuid(), libc::geteuid()), (uid, uid));
            assert_eq!((libc::getgid(), libc::getegid()), (uid, uid));
            assert_eq!(libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 1);
            assert_eq!(libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
            // CAP_SYS_ADMIN is 21.
            assert_eq!(libc::prctl(libc::PR_CAPBSET_READ, 21, 0, 0, 0), 0);
        }
        assert_eq!(std::fs::read_dir("/").unwrap().count(), 0);
        for path in ["/etc/passwd", "/proc/self/status", "/dev/kvm"] {
            assert!(std::fs::metadata(path).is_err(), "{path} is reachable");
        }
        assert!(std::fs::write("/x", b"").is_err(), "the root is writable");
        let again = mount("none", "/", "tmpfs", 0, "");
        assert!(again.is_err(), "mounting still works");
        println!("jailed as {uid}");
    }

    #[test]
    fn a_jailed_process_reaches_nothing_of_the_host() {
        assert!(
            // SAFETY: a getter.
            unsafe { libc::geteuid() } == 0,
            "this test needs root (run the suite as root)"
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "jail::tests::jailed_child",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("jailed as "), "{text}");
        // Nothing of the jail is left on the host.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("capsa-vmm-jail"), "{mounts}");
    }
}
