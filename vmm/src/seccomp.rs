//! Per-thread seccomp filters (seccompiler), installed once setup is done:
//! the vCPU threads may only run KVM_RUN and talk to their devices (and
//! set a tap's offloads when a virtio-net driver activates it); the
//! event-loop thread may only do the socket, file and epoll work of the
//! devices it serves. Anything else kills the process (SIGSYS), so a
//! compromised VMM thread cannot open files or start programs.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// `KVM_RUN` = _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;
/// A virtio-net device tells its tap which offloads the guest took when
/// the driver activates it, on the vCPU thread that wrote the status.
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// With `vhost_user`, the VM has a vhost-user device (virtio-fs), whose
    /// activation on the vCPU thread sends its daemon the memory table and
    /// ring eventfds over the unix socket.
    Vcpu {
        vhost_user: bool,
    },
    EventLoop,
}

/// System calls every thread makes: memory allocation, locks, signals,
/// time, logging, thread and process exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The event loop's device work: epoll, virtio-blk file I/O, vsock unix
/// sockets, kicking vCPU threads.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // virtio-blk discard: punching holes in a writable disk's file.
    libc::SYS_fallocate,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_tgkill,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // /proc/self/smaps for --report-first-run.
    libc::SYS_openat,
];

fn ioctl_rule(request: u64) -> Result<SeccompRule> {
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
        .map_err(|e| Error::Seccomp(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| Error::Seccomp(e.to_string()))
}

/// Builds the BPF program for `thread`.
pub fn filter(thread: Thread) -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON {
        rules.insert(nr, vec![]);
    }
    match thread {
        Thread::Vcpu { vhost_user } => {
            rules.insert(
                libc::SYS_ioctl,
                vec![ioctl_rule(KVM_RUN)?, ioctl_rule(TUNSETOFFLOAD)?],
            );
            if vhost_user {
                for nr in [libc::SYS_sendmsg, libc::SYS_recvmsg] {
                    rules.insert(nr, vec![]);
                }
            }
        }
        Thread::EventLoop => {
            for &nr in EVENT_LOOP {
                rules.insert(nr, vec![]);
            }
            rules.insert(libc::SYS_ioctl, vec![ioctl_rule(FIONBIO)?]);
        }
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Seccomp(e.to_string()))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))
}

/// Installs the filter for `thread` on the calling thread.
pub fn apply(thread: Thread) -> Result<()> {
    let prog = filter(thread)?;
    seccompiler::apply_filter(&prog).map_err(|e| Error::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(!filter(Thread::Vcpu { vhost_user: false })
            .unwrap()
            .is_empty());
        assert!(!filter(Thread::Vcpu { vhost_user: true })
            .unwrap()
            .is_empty());
        assert!(!filter(Thread::EventLoop).unwrap().is_empty());
    }

    #[test]
    fn vcpu_filter_blocks_open_and_allows_kvm_run_only() {
        // In a child process, so the filter does not stay on a test thread.
        // SAFETY: fork in a test; the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let prog = filter(Thread::Vcpu { vhost_user: true }).unwrap();
            if seccompiler::apply_filter(&prog).is_err() {
                // SAFETY: _exit ends the forked child without running the
                // parent's atexit handlers or destructors.
                unsafe { libc::_exit(10) };
            }
            // Allowed: getpid. Not allowed: openat -> the process is killed.
            // SAFETY: raw syscalls with valid arguments (a NUL-terminated
            // path), then _exit, in the forked child.
            unsafe {
                libc::syscall(libc::SYS_getpid);
                libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
