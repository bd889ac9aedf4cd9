//! The default seccomp profile ([`seccomp_profile`]): an allow list drawn
//! from the kernel's syscall table, the refused syscalls, the argument
//! filters of `clone`, `personality` and `socket`, and the rule helpers.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::{internal, strings};
use crate::error::Result;

/// Syscalls the default profile refuses with EPERM (an explicit rule, so
/// programs see "Operation not permitted", as under docker and podman).
///
/// Everything else that is not allowed gets the filter's default action,
/// ENOSYS: a syscall a later kernel adds is refused until it is listed, and
/// libc falls back from a missing new call (clone3) to the old one.
///
/// This list holds what docker and podman refuse for a container with the
/// default capabilities because it reaches kernel attack surface or
/// host-wide state: kernel modules and kexec, bpf, perf, the keyring,
/// mounts and namespaces, time, swap, accounting, reboot, the host and
/// domain name, the kernel log, NUMA memory policy and page migration, I/O
/// ports, handle-based opens, userfaultfd, io_uring, and tracing other
/// processes (ptrace, process_vm_*, process_madvise, kcmp — stricter than
/// docker, which allows ptrace on new kernels); also what podman 4.3's
/// profile refuses because it predates it (quotactl_fd, futex_waitv,
/// cachestat, set_mempolicy_home_node, the i386 stime) or refuses by name
/// (vmsplice, io_pgetevents, the old i386 stat, uname and vm86 calls).
/// [`OPENED_BY`] opens some of them with a capability.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bdflush",
    "bpf",
    "cachestat",
    "chroot",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_settime",
    "clock_settime64",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "futex_waitv",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "migrate_pages",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "nfsservctl",
    "nice",
    "oldfstat",
    "oldlstat",
    "oldolduname",
    "oldstat",
    "olduname",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "sgetmask",
    "ssetmask",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
    "vmsplice",
];

/// Every syscall name of Linux 6.1's x86 tables (64-bit, x32, i386): the
/// names the allow list is drawn from.
fn kernel_syscalls() -> impl Iterator<Item = &'static str> {
    include_str!("syscalls-linux-6.1.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace)
}

/// Names in the table that no kernel implements (reserved or removed
/// slots): left out of the allow list, as podman's profile leaves them.
const UNIMPLEMENTED: &[&str] = &[
    "afs_syscall",
    "break",
    "ftime",
    "getpmsg",
    "gtty",
    "idle",
    "lock",
    "mpx",
    "prof",
    "profil",
    "putpmsg",
    "security",
    "stty",
    "tuxcall",
    "ulimit",
    "vserver",
];

/// Names allowed only with some arguments (rules of their own below).
const ARG_FILTERED: &[&str] = &["clone", "clone3", "personality", "socket"];

/// `clone` flags that create namespaces; `clone` with any of them is refused.
pub(super) const CLONE_NS_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The `personality` values docker allows: PER_LINUX, PER_LINUX32,
/// UNAME26 with each, and the query (0xffffffff).
const PERSONALITY_ALLOWED: &[u64] = &[0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `personality` bits that weaken the address space; refused with EPERM
/// (any other value outside [`PERSONALITY_ALLOWED`] gets ENOSYS).
pub(super) const PERSONALITY_DENIED: &[u64] = &[
    0x0040000, // ADDR_NO_RANDOMIZE (turns ASLR off)
    0x0400000, // READ_IMPLIES_EXEC
];

const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSYS: u32 = 38;
const AF_NETLINK: u64 = 16;
const NETLINK_AUDIT: u64 = 9;

/// A rule giving `names` `action` whatever their arguments.
fn rule(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>) -> Result<LinuxSyscall> {
    let mut b = LinuxSyscallBuilder::default()
        .names(strings(names))
        .action(action);
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    b.build().map_err(internal)
}

/// A rule giving `name` `action` when every comparison holds.
fn rule_if(
    name: &str,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: &[(usize, LinuxSeccompOperator, u64, u64)],
) -> Result<LinuxSyscall> {
    let args = args
        .iter()
        .map(|&(index, op, value, value_two)| {
            LinuxSeccompArgBuilder::default()
                .index(index)
                .value(value)
                .value_two(value_two)
                .op(op)
                .build()
                .map_err(internal)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut r = rule(&[name], action, errno)?;
    r.set_args(Some(args));
    Ok(r)
}

/// `(arg[index] & mask) == mask` refused with EPERM. `value` and
/// `valueTwo` are both the mask on purpose: runc reads `value` as the mask
/// and `valueTwo` as the datum, youki's libcontainer the other way round,
/// and with equal values both mean the same.
fn refuse_if_bits(name: &str, index: usize, mask: u64) -> Result<LinuxSyscall> {
    use LinuxSeccompOperator::ScmpCmpMaskedEq;
    rule_if(
        name,
        LinuxSeccompAction::ScmpActErrno,
        Some(EPERM),
        &[(index, ScmpCmpMaskedEq, mask, mask)],
    )
}

/// The syscalls docker's profile lets a container have once it holds a
/// capability (`--cap-add`): the capability is what guards them then.
const OPENED_BY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "migrate_pages",
            "move_pages",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// The profile for a container holding `caps`: default action ENOSYS; the
/// kernel's syscalls allowed but for [`DENIED_SYSCALLS`] (EPERM) less what
/// those capabilities open, as docker's profile does; `clone` without
/// namespace flags unless CAP_SYS_ADMIN is held (`clone3` passes its flags
/// in a struct seccomp cannot look into, so it is left to the default and
/// libc falls back to `clone`); `personality` with docker's values;
/// netlink audit sockets only with CAP_AUDIT_WRITE (EINVAL otherwise, as
/// podman).
pub(super) fn seccomp_profile(caps: &[String]) -> Result<LinuxSeccomp> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpMaskedEq as MaskedEq, ScmpCmpNe as Ne};
    let holds = |cap: &str| caps.iter().any(|c| c == cap);
    let opened: Vec<&str> = OPENED_BY
        .iter()
        .filter(|(cap, _)| holds(cap))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let denied: Vec<&str> = DENIED_SYSCALLS
        .iter()
        .copied()
        .filter(|n| !opened.contains(n))
        .collect();
    let allowed: Vec<&str> = kernel_syscalls()
        .filter(|n| !denied.contains(n) && !UNIMPLEMENTED.contains(n) && !ARG_FILTERED.contains(n))
        .collect();
    let mut rules = vec![
        rule(&allowed, Allow, None)?,
        rule(&denied, Errno, Some(EPERM))?,
    ];
    if holds("CAP_SYS_ADMIN") {
        rules.push(rule(&["clone", "clone3"], Allow, None)?);
    } else {
        // (flags & all namespace flags) == 0. Here `valueTwo` is the mask
        // and `value` the datum, as youki's libcontainer (which runs every
        // capsa container, in both modes) reads them; runc reads them the
        // other way round, so this profile is capsa's own, not for runc.
        let all = CLONE_NS_FLAGS.iter().fold(0, |m, f| m | f);
        rules.push(rule_if("clone", Allow, None, &[(0, MaskedEq, 0, all)])?);
        // One EPERM rule per flag (rules are OR-ed): a clone making any
        // namespace is refused as not permitted rather than unknown.
        for f in CLONE_NS_FLAGS {
            rules.push(refuse_if_bits("clone", 0, *f)?);
        }
    }
    for v in PERSONALITY_ALLOWED {
        rules.push(rule_if("personality", Allow, None, &[(0, Eq, *v, 0)])?);
    }
    for f in PERSONALITY_DENIED {
        rules.push(refuse_if_bits("personality", 0, *f)?);
    }
    if holds("CAP_AUDIT_WRITE") {
        rules.push(rule(&["socket"], Allow, None)?);
    } else {
        rules.push(rule_if("socket", Allow, None, &[(0, Ne, AF_NETLINK, 0)])?);
        rules.push(rule_if(
            "socket",
            Allow,
            None,
            &[(2, Ne, NETLINK_AUDIT, 0)],
        )?);
        rules.push(rule_if(
            "socket",
            Errno,
            Some(EINVAL),
            &[(0, Eq, AF_NETLINK, 0), (2, Eq, NETLINK_AUDIT, 0)],
        )?);
    }
    LinuxSeccompBuilder::default()
        .default_action(Errno)
        .default_errno_ret(ENOSYS)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()
        .map_err(internal)
}

/// The profile of a container with the default capabilities.
pub fn default_seccomp() -> LinuxSeccomp {
    let caps: Vec<String> = super::DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    seccomp_profile(&caps).expect("the built-in seccomp profile is valid")
}

/// How many syscalls `profile` allows whatever their arguments.
pub fn allowed_syscalls(profile: &LinuxSeccomp) -> usize {
    let rules = profile.syscalls().iter().flatten();
    rules
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
        .map(|r| r.names().len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{capability_set, RunConfig};
    use std::collections::BTreeSet;

    /// The names a profile allows whatever the arguments, and the ones it
    /// refuses with EPERM whatever the arguments.
    fn verdicts(p: &LinuxSeccomp) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
        for r in p.syscalls().as_ref().unwrap() {
            if r.args().is_some() {
                continue;
            }
            let set = match r.action() {
                LinuxSeccompAction::ScmpActAllow => &mut allowed,
                _ => &mut denied,
            };
            set.extend(r.names().iter().cloned());
        }
        (allowed, denied)
    }

    fn caps(add: &[&str], drop: &[&str]) -> Vec<String> {
        capability_set(&RunConfig {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..RunConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn the_default_profile_is_an_allow_list() {
        let p = default_seccomp();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(ENOSYS));
        let (allowed, denied) = verdicts(&p);
        // One rule per name: libseccomp lets an unconditional allow win
        // over any other rule for the same syscall.
        assert!(allowed.is_disjoint(&denied));
        for n in [
            "read", "write", "openat", "execve", "mmap", "futex", "rseq", "statx",
        ] {
            assert!(allowed.contains(n), "{n} is not allowed");
        }
        for n in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "ptrace",
            "sethostname",
            "vmsplice",
        ] {
            assert!(denied.contains(n), "{n} is not refused");
        }
        // Left to the default (ENOSYS): clone3, a syscall no kernel has,
        // and ones newer than the table (6.1).
        for n in [
            "clone3",
            "tuxcall",
            "map_shadow_stack",
            "mseal",
            "listmount",
        ] {
            assert!(!allowed.contains(n) && !denied.contains(n), "{n}");
        }
        // Every listed name is one the kernel table has, but cachestat
        // (Linux 6.5), refused by name for kernels that have it.
        let table: BTreeSet<&str> = kernel_syscalls().collect();
        assert!(table.len() > 400);
        let unknown: Vec<_> = DENIED_SYSCALLS
            .iter()
            .chain(UNIMPLEMENTED)
            .chain(ARG_FILTERED)
            .filter(|n| !table.contains(*n))
            .collect();
        assert_eq!(unknown, [&"cachestat"]);
        for (_, names) in OPENED_BY {
            assert!(
                names.iter().all(|n| DENIED_SYSCALLS.contains(n)),
                "{names:?}"
            );
        }
    }

    #[test]
    fn capabilities_combine_as_docker_and_open_their_syscalls() {
        assert_eq!(caps(&[], &[]).len(), 11);
        assert!(caps(&["net_raw"], &[]).contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(caps(&[], &["ALL"]), Vec::<String>::new());
        assert_eq!(caps(&["CAP_KILL"], &["all"]), ["CAP_KILL"]);
        assert!(!caps(&[], &["chown"]).contains(&"CAP_CHOWN".to_string()));
        // ALL: every capability capsa holds itself
        let held = super::super::process::bounding_set() & ((1 << crate::spec::ALL_CAPS.len()) - 1);
        assert_eq!(caps(&["ALL"], &[]).len(), held.count_ones() as usize);
        assert!(capability_set(&RunConfig {
            cap_add: vec!["BOGUS".into()],
            ..RunConfig::default()
        })
        .is_err());

        let allows = |c: Vec<String>, name: &str| {
            let (allowed, denied) = verdicts(&seccomp_profile(&c).unwrap());
            assert!(allowed.is_disjoint(&denied));
            allowed.contains(name)
        };
        assert!(!allows(caps(&[], &[]), "mount"));
        assert!(allows(caps(&["SYS_ADMIN"], &[]), "mount"));
        assert!(!allows(caps(&["SYS_ADMIN"], &[]), "reboot"));
        assert!(allows(caps(&["SYS_PTRACE"], &[]), "ptrace"));
        assert!(allows(caps(&[], &[]), "chroot"));
        assert!(!allows(caps(&[], &["SYS_CHROOT"]), "chroot"));
        // clone: unconditional only with CAP_SYS_ADMIN
        assert!(!allows(caps(&[], &[]), "clone"));
        assert!(allows(caps(&["SYS_ADMIN"], &[]), "clone"));
        assert!(allows(caps(&["SYS_ADMIN"], &[]), "clone3"));
        // netlink audit sockets: only with CAP_AUDIT_WRITE
        assert!(!allows(caps(&[], &[]), "socket"));
        assert!(allows(caps(&["AUDIT_WRITE"], &[]), "socket"));
    }

    /// The effect compared with podman's own profile (Debian's podman 4.3,
    /// /usr/share/containers/seccomp.json, installed by scripts/setup.sh):
    /// every syscall of the table that podman refuses a container with its
    /// default capabilities, whatever the arguments, capsa refuses too.
    #[test]
    fn refuses_all_that_podman_refuses() {
        let path = "/usr/share/containers/seccomp.json";
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("{path}: {e}: install podman (scripts/setup.sh) to compare with its profile")
        });
        let podman: serde_json::Value = serde_json::from_str(&text).unwrap();
        let default_caps: Vec<String> = super::super::DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .collect();
        let applies = |r: &serde_json::Value| {
            let list = |k: &str, f: &str| -> Vec<String> {
                r[k][f]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            let inc = list("includes", "caps");
            let exc = list("excludes", "caps");
            let arches = list("includes", "arches");
            inc.iter().all(|c| default_caps.contains(c))
                && !exc.iter().any(|c| default_caps.contains(c))
                && (arches.is_empty()
                    || arches
                        .iter()
                        .any(|a| ["amd64", "x86", "x32"].contains(&a.as_str())))
        };
        let (mut p_allowed, mut p_denied) = (BTreeSet::new(), BTreeSet::new());
        for r in podman["syscalls"].as_array().unwrap() {
            if !applies(r) {
                continue;
            }
            let names = r["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string());
            let conditional = r["args"].as_array().is_some_and(|a| !a.is_empty());
            match (r["action"].as_str().unwrap(), conditional) {
                ("SCMP_ACT_ALLOW", _) => p_allowed.extend(names),
                (_, false) => p_denied.extend(names),
                _ => {}
            }
        }
        let (allowed, _) = verdicts(&default_seccomp());
        let refused_by_podman: Vec<&str> = kernel_syscalls()
            .filter(|n| !p_allowed.contains(*n) || p_denied.contains(*n))
            .collect();
        assert!(refused_by_podman.len() > 20, "{refused_by_podman:?}");
        let let_through: Vec<&&str> = refused_by_podman
            .iter()
            .filter(|n| allowed.contains(**n))
            .collect();
        assert!(
            let_through.is_empty(),
            "podman refuses, capsa allows: {let_through:?}"
        );
    }
}
