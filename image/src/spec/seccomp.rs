//! The default seccomp profile ([`default_seccomp`]): the denied syscalls,
//! the `clone` and `personality` argument filters, and the rule helpers.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::{internal, strings};
use crate::error::Result;

/// Syscalls the default seccomp profile refuses with EPERM.
///
/// Why a denylist and not docker's allowlist: docker's profile is a 400-line
/// allowlist tuned per kernel version and capability; transcribing it by hand
/// would be long and error-prone, and an allowlist that misses a new,
/// harmless syscall breaks programs. This list holds the syscalls docker
/// blocks for a container with the default capabilities because they reach
/// kernel attack surface or host-wide state: kernel modules and kexec, bpf,
/// perf, the keyring, mounts and namespaces, time, swap, accounting, reboot,
/// the kernel log, NUMA memory policy and page migration,
/// I/O ports, handle-based opens, userfaultfd, io_uring, and tracing other
/// processes (ptrace, process_vm_*, process_madvise, kcmp — stricter than
/// docker, which allows ptrace on new kernels). Also what podman 4.3's
/// allow-list profile blocks because it predates them: quotactl_fd,
/// futex_waitv, cachestat, set_mempolicy_home_node, and the i386 stime. `clone`/`clone3`/`personality` get
/// argument filters (see [`default_seccomp`]).
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "cachestat",
    "clock_adjtime",
    "clock_settime",
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
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

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

/// `personality` bits that weaken the address space; refused like docker
/// refuses every persona but the plain ones.
pub(super) const PERSONALITY_DENIED: &[u64] = &[
    0x0040000, // ADDR_NO_RANDOMIZE (turns ASLR off)
    0x0400000, // READ_IMPLIES_EXEC
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// A rule refusing `names` with `errno`, whatever their arguments.
fn errno_rule(names: &[&str], errno: u32) -> Result<LinuxSyscall> {
    LinuxSyscallBuilder::default()
        .names(strings(names))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
        .map_err(internal)
}

/// A rule matching `(arg[index] & mask) == mask`. `value` and `valueTwo`
/// are both the mask on purpose: runc reads `value` as the mask and
/// `valueTwo` as the datum, youki's libcontainer the other way round, and
/// with equal values both mean the same.
fn arg_rule(names: &[&str], errno: u32, index: usize, mask: u64) -> Result<LinuxSyscall> {
    let arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(mask)
        .value_two(mask)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .map_err(internal)?;
    LinuxSyscallBuilder::default()
        .names(strings(names))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .args(vec![arg])
        .build()
        .map_err(internal)
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
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
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
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
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

/// The profile for a container holding `caps`: [`DENIED_SYSCALLS`] less
/// what those capabilities open (as docker's profile does); with
/// CAP_SYS_ADMIN, `clone` may make namespaces too.
pub(super) fn seccomp_profile(caps: &[String]) -> Result<LinuxSeccomp> {
    let opened: Vec<&str> = OPENED_BY
        .iter()
        .filter(|(cap, _)| caps.iter().any(|c| c == cap))
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let denied: Vec<&str> = DENIED_SYSCALLS
        .iter()
        .copied()
        .filter(|n| !opened.contains(n))
        .collect();
    let mut rules = vec![
        errno_rule(&denied, EPERM)?,
        // clone3 passes its flags in a struct seccomp cannot look into:
        // ENOSYS makes libc fall back to clone, which is filtered below.
        errno_rule(&["clone3"], ENOSYS)?,
    ];
    // One rule per flag: rules are OR-ed, so clone with any namespace flag fails.
    if !caps.iter().any(|c| c == "CAP_SYS_ADMIN") {
        for f in CLONE_NS_FLAGS {
            rules.push(arg_rule(&["clone"], EPERM, 0, *f)?);
        }
    }
    for f in PERSONALITY_DENIED {
        rules.push(arg_rule(&["personality"], EPERM, 0, *f)?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()
        .map_err(internal)
}

/// The default seccomp profile: allow by default, refuse [`DENIED_SYSCALLS`]
/// with EPERM, `clone` with namespace flags with EPERM, `clone3` with
/// ENOSYS (so libc falls back to the filtered `clone`), and `personality`
/// calls that turn off ASLR or make data executable.
pub fn default_seccomp() -> LinuxSeccomp {
    let caps: Vec<String> = super::DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    seccomp_profile(&caps).expect("the built-in seccomp profile is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{gen, image, rc};
    use serde_json::json;

    #[test]
    fn seccomp_profile() {
        let s = gen(&image(json!({"Cmd": ["true"]})), &rc());
        let sc = s.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rules = sc.syscalls().as_ref().unwrap();
        let denied = |name: &str| {
            rules.iter().any(|r| {
                r.names().contains(&name.to_string())
                    && r.action() == LinuxSeccompAction::ScmpActErrno
                    && r.args().is_none()
            })
        };
        for name in [
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "pivot_root",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "ptrace",
            "open_by_handle_at",
            "userfaultfd",
            "unshare",
            "setns",
        ] {
            assert!(denied(name), "{name} is not denied");
        }
        assert!(!denied("read") && !denied("clone") && !denied("execve"));
        let clone_rules: Vec<_> = rules
            .iter()
            .filter(|r| r.names() == &vec!["clone".to_string()])
            .collect();
        assert_eq!(clone_rules.len(), CLONE_NS_FLAGS.len());
        let newuser = clone_rules
            .iter()
            .flat_map(|r| r.args().clone().unwrap())
            .find(|a| a.value() == 0x1000_0000)
            .expect("CLONE_NEWUSER filtered");
        assert_eq!(newuser.value_two(), Some(0x1000_0000));
        let c3 = rules
            .iter()
            .find(|r| r.names() == &vec!["clone3".to_string()])
            .unwrap();
        assert_eq!(c3.errno_ret(), Some(38));
        assert!(rules
            .iter()
            .any(|r| r.names() == &vec!["personality".to_string()]));
        // The JSON form is what runtimes read.
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(j["process"]["noNewPrivileges"], true);
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;
    use crate::spec::{capability_set, RunConfig};

    fn rc(add: &[&str], drop: &[&str]) -> RunConfig {
        RunConfig {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..RunConfig::default()
        }
    }

    #[test]
    fn capabilities_combine_as_docker_and_open_their_syscalls() {
        let set = |a: &[&str], d: &[&str]| capability_set(&rc(a, d)).unwrap();
        assert_eq!(set(&[], &[]).len(), 11);
        assert!(set(&["net_raw"], &[]).contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(set(&[], &["ALL"]), Vec::<String>::new());
        assert_eq!(set(&["CAP_KILL"], &["all"]), ["CAP_KILL"]);
        assert!(!set(&[], &["chown"]).contains(&"CAP_CHOWN".to_string()));
        assert_eq!(set(&["ALL"], &[]).len(), crate::spec::ALL_CAPS.len());
        assert!(capability_set(&rc(&["BOGUS"], &[])).is_err());

        let denied = |caps: Vec<String>, name: &str| {
            let p = seccomp_profile(&caps).unwrap();
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .any(|r| r.names().contains(&name.to_string()) && r.args().is_none())
        };
        assert!(denied(set(&[], &[]), "mount"));
        assert!(!denied(set(&["SYS_ADMIN"], &[]), "mount"));
        assert!(denied(set(&["SYS_ADMIN"], &[]), "reboot"));
        assert!(!denied(set(&["SYS_PTRACE"], &[]), "ptrace"));
        let clone_filtered = |caps: Vec<String>| {
            let p = seccomp_profile(&caps).unwrap();
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .any(|r| r.names() == &vec!["clone".to_string()])
        };
        assert!(clone_filtered(set(&[], &[])));
        assert!(!clone_filtered(set(&["SYS_ADMIN"], &[])));
    }
}
