//! Runtime spec generation: an OCI runtime [`Spec`] (config.json) from an
//! image's config plus the user's `capsa run` flags ([`RunConfig`]), with
//! runc/docker-like secure defaults:
//!
//! - docker's default capability set in the bounding set (and, for root, in
//!   effective/permitted; never inheritable or ambient), `noNewPrivileges`;
//! - docker's masked and read-only `/proc`, `/sys` paths;
//! - a default seccomp profile ([`default_seccomp`]);
//! - runc's standard mounts (`/proc`, `/dev` tmpfs, `/dev/pts`, `/dev/shm`,
//!   `/dev/mqueue`, read-only `/sys` and cgroup) and cgroup device rules
//!   allowing only runc's default devices;
//! - new pid, mount, ipc, uts, cgroup and (unless `--network host`)
//!   network namespaces;
//! - `RLIMIT_NOFILE` 1024:1024.
//!
//! The user is resolved like docker: `uid[:gid]` or `name[:group]` looked
//! up in the image's `/etc/passwd` and `/etc/group` (in `rootfs`, which must
//! be the prepared root filesystem), with supplementary groups from
//! `/etc/group`. Command: docker's ENTRYPOINT + CMD rules.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Image;

/// Default PATH when neither the image nor the user sets one (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths masked (over-mounted) inside the container, as docker does.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only inside the container, as docker does.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The open-files limit given to containers (soft and hard). Safe on hosts
/// whose own hard limit is low and where capsa has no CAP_SYS_RESOURCE.
pub const NOFILE_LIMIT: u64 = 1024;

/// Syscalls the default seccomp profile refuses with EPERM.
///
/// Why a denylist and not docker's allowlist: docker's profile is a 400-line
/// allowlist tuned per kernel version and capability; transcribing it by hand
/// would be long and error-prone, and an allowlist that misses a new,
/// harmless syscall breaks programs. This list holds the syscalls docker
/// blocks for a container with the default capabilities because they reach
/// kernel attack surface or host-wide state: kernel modules and kexec, bpf,
/// perf, the keyring, mounts and namespaces, time, swap, accounting, reboot,
/// the kernel log, NUMA memory policy,
/// I/O ports, handle-based opens, userfaultfd, io_uring, and tracing other
/// processes (ptrace, process_vm_*, kcmp — stricter than docker, which
/// allows ptrace on new kernels). `clone`/`clone3`/`personality` get
/// argument filters (see [`default_seccomp`]).
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
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
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// `clone` flags that create namespaces; `clone` with any of them is refused.
const CLONE_NS_FLAGS: &[u64] = &[
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
const PERSONALITY_DENIED: &[u64] = &[
    0x0040000, // ADDR_NO_RANDOMIZE (turns ASLR off)
    0x0400000, // READ_IMPLIES_EXEC
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The network of the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A new, empty network namespace (loopback only).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// A bind mount (`-v HOST:CTR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub src: PathBuf,
    pub dst: String,
    pub readonly: bool,
}

/// What the user asked for on `capsa run`, on top of the image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    /// Container id; the default hostname is its first 12 characters.
    pub container_id: String,
    /// Replaces the image's CMD (`capsa run IMAGE CMD…`).
    pub args: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT (`--entrypoint`); an empty vector
    /// clears it. Setting it also drops the image's CMD (as docker).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE`, overriding the image's variables of the same name.
    pub env: Vec<String>,
    /// Working directory (absolute); default: the image's, else `/`.
    pub workdir: Option<String>,
    /// `uid[:gid]` or `name[:group]`; default: the image's USER, else root.
    pub user: Option<String>,
    pub mounts: Vec<BindMount>,
    /// `/path[:opts]`, opts as for `mount -t tmpfs` (comma separated).
    pub tmpfs: Vec<String>,
    /// Memory limit in bytes (swap limited to the same: no swap).
    pub memory_bytes: Option<i64>,
    /// CPU quota in CPUs (`--cpus 1.5`).
    pub cpus: Option<f64>,
    /// Maximum number of processes; `<= 0` means unlimited.
    pub pids_limit: Option<i64>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    pub network: Network,
    /// Default: first 12 characters of `container_id` (the host's name with `Network::Host`).
    pub hostname: Option<String>,
    /// Allocate a terminal (`-t`); also sets `TERM=xterm` unless given.
    pub tty: bool,
    pub annotations: HashMap<String, String>,
}

/// The resolved identity of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRunConfig(msg.into())
}

/// Reads `/etc/<name>` of the image whose unpacked layers are `layers`
/// (lowest first, as the store lists them), as the overlay of them would
/// show it, without mounting it: the topmost layer that has the file wins;
/// an overlayfs whiteout deletes it, an opaque /etc hides the layers below.
/// A symlink is never followed (it could point out of the image).
fn read_etc(layers: &[PathBuf], name: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let whiteout = |m: &fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        m.file_type().is_char_device() && m.rdev() == 0
    };
    let refuse = |p: &Path| {
        tracing::warn!(path = %p.display(), "not following a symlink in the image's /etc");
        None
    };
    for layer in layers.iter().rev() {
        let etc = layer.join("etc");
        let m = match fs::symlink_metadata(&etc) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if m.file_type().is_symlink() {
            return refuse(&etc);
        }
        if !m.is_dir() || whiteout(&m) {
            return None;
        }
        let file = etc.join(name);
        match fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_symlink() => return refuse(&file),
            Ok(m) if m.is_file() => return fs::read_to_string(&file).ok(),
            Ok(_) => return None,
            Err(_) if is_opaque(&etc) => return None,
            Err(_) => {}
        }
    }
    None
}

/// Whether an unpacked layer's directory hides the layers below it.
fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 1];
    matches!(rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut buf), Ok(1) if buf[0] == b'y')
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `uid[:gid]` / `name[:group]` against the passwd and group files
/// of the image whose unpacked layers are `layers` (see [`read_etc`]).
pub fn resolve_user(layers: &[PathBuf], user: &str) -> Result<ResolvedUser> {
    let user = user.trim();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let passwd = read_etc(layers, "passwd")
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_etc(layers, "group")
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(passwd.iter().find(|e| e.name == u).ok_or_else(|| {
            bad(format!(
                "unable to find user {u}: no matching entry in the image's /etc/passwd (use a numeric uid)"
            ))
        })?),
    };
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or(0),
    };
    let gid = match g {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    bad(format!(
                        "unable to find group {g}: no matching entry in the image's /etc/group (use a numeric gid)"
                    ))
                })?,
        },
        _ => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut additional = Vec::new();
    if let Some(e) = entry {
        for grp in &groups {
            if grp.members.contains(&e.name) && grp.gid != gid && !additional.contains(&grp.gid) {
                additional.push(grp.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home: entry
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into()),
    })
}

/// docker's ENTRYPOINT + CMD rules.
pub fn command(image: &Image, rc: &RunConfig) -> Result<Vec<String>> {
    let cfg = image.config.config().as_ref();
    let image_ep = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let image_cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let entrypoint = rc.entrypoint.clone().unwrap_or(image_ep);
    let cmd = match (&rc.args, &rc.entrypoint) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image_cmd,
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(bad(
            "no command specified: the image has no CMD or ENTRYPOINT; give one after the image name",
        ));
    }
    Ok(args)
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

fn set_env(env: &mut Vec<String>, kv: String) {
    let key = env_key(&kv).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = kv,
        None => env.push(kv),
    }
}

/// The process environment: image env, then the user's, plus PATH,
/// HOSTNAME, HOME and (with a tty) TERM defaults.
pub fn environment(
    image: &Image,
    rc: &RunConfig,
    hostname: &str,
    home: &str,
) -> Result<Vec<String>> {
    let mut env: Vec<String> = Vec::new();
    let image_env = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    for kv in image_env {
        if kv.contains('=') {
            set_env(&mut env, kv);
        }
    }
    for kv in &rc.env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() => set_env(&mut env, kv.clone()),
            _ => {
                return Err(bad(format!(
                    "environment variable {kv:?} must be KEY=VALUE"
                )))
            }
        }
    }
    let has = |env: &Vec<String>, k: &str| env.iter().any(|e| env_key(e) == k);
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if rc.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    Ok(env)
}

fn internal(e: impl std::fmt::Display) -> Error {
    bad(format!("internal error building the runtime spec: {e}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `CAP_CHOWN` -> [`Capability::Chown`].
fn capability(name: &str) -> Result<Capability> {
    name.strip_prefix("CAP_")
        .unwrap_or(name)
        .parse()
        .map_err(|e| internal(format!("capability {name}: {e}")))
}

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

fn seccomp_profile() -> Result<LinuxSeccomp> {
    let mut rules = vec![
        errno_rule(DENIED_SYSCALLS, EPERM)?,
        // clone3 passes its flags in a struct seccomp cannot look into:
        // ENOSYS makes libc fall back to clone, which is filtered below.
        errno_rule(&["clone3"], ENOSYS)?,
    ];
    // One rule per flag: rules are OR-ed, so clone with any namespace flag fails.
    for f in CLONE_NS_FLAGS {
        rules.push(arg_rule(&["clone"], EPERM, 0, *f)?);
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
    seccomp_profile().expect("the built-in seccomp profile is valid")
}

fn mount(
    dst: impl Into<PathBuf>,
    typ: &str,
    src: impl Into<PathBuf>,
    options: Vec<String>,
) -> Result<Mount> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(options)
        .build()
        .map_err(internal)
}

fn default_mounts() -> Result<Vec<Mount>> {
    #[rustfmt::skip]
    const MOUNTS: &[(&str, &str, &str, &[&str])] = &[
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        ("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        ("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        ("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        ("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ];
    MOUNTS
        .iter()
        .map(|(dst, typ, src, opts)| mount(*dst, typ, *src, strings(opts)))
        .collect()
}

fn check_dest(dst: &str, what: &str) -> Result<()> {
    if !dst.starts_with('/') {
        return Err(bad(format!(
            "{what} destination {dst:?} must be an absolute path"
        )));
    }
    if Path::new(dst)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad(format!(
            "{what} destination {dst:?} must not contain '..'"
        )));
    }
    if dst.trim_end_matches('/').is_empty() {
        return Err(bad(format!("{what} cannot be mounted over /")));
    }
    Ok(())
}

fn user_mounts(rc: &RunConfig) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in &rc.mounts {
        check_dest(&m.dst, "bind mount")?;
        if !m.src.is_absolute() {
            return Err(bad(format!(
                "bind mount source {} must be an absolute path",
                m.src.display()
            )));
        }
        if !m.src.exists() {
            return Err(bad(format!(
                "bind mount source {} does not exist; create it first",
                m.src.display()
            )));
        }
        let mode = if m.readonly { "ro" } else { "rw" };
        out.push(mount(
            &m.dst,
            "bind",
            &m.src,
            strings(&["rbind", "rprivate", mode]),
        )?);
    }
    for t in &rc.tmpfs {
        let (dst, opts) = match t.split_once(':') {
            Some((d, o)) => (d, o),
            None => (t.as_str(), ""),
        };
        check_dest(dst, "tmpfs")?;
        let user_opts: Vec<&str> = opts
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into()];
        if !user_opts.contains(&"exec") {
            options.push("noexec".into());
        }
        if !user_opts.iter().any(|o| o.starts_with("mode=")) {
            options.push("mode=1777".into());
        }
        options.extend(
            user_opts
                .iter()
                .filter(|o| **o != "exec")
                .map(|o| o.to_string()),
        );
        out.push(mount(dst, "tmpfs", "tmpfs", options)?);
    }
    Ok(out)
}

fn resources(rc: &RunConfig) -> Result<LinuxResources> {
    let allow_char = |major: i64, minor: Option<i64>| {
        let b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rwm");
        match minor {
            Some(minor) => b.minor(minor),
            None => b,
        }
        .build()
        .map_err(internal)
    };
    // Deny all, then allow runc's default devices: null, zero, full, random,
    // urandom, tty, console, ptmx and the pty slaves (136:*).
    let mut devices = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(internal)?];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        devices.push(allow_char(major, Some(minor))?);
    }
    devices.push(allow_char(136, None)?);
    let mut r = LinuxResourcesBuilder::default().devices(devices);
    if let Some(m) = rc.memory_bytes {
        if m < 6 * 1024 * 1024 {
            return Err(bad(format!(
                "memory limit {m} bytes is too small: the minimum is 6 MiB"
            )));
        }
        let memory = LinuxMemoryBuilder::default()
            .limit(m)
            .swap(m)
            .build()
            .map_err(internal)?;
        r = r.memory(memory);
    }
    if let Some(c) = rc.cpus {
        let period: u64 = 100_000;
        let quota = (c * period as f64).round() as i64;
        if !c.is_finite() || quota < 1000 {
            return Err(bad(format!(
                "--cpus {c} is out of range: give at least 0.01"
            )));
        }
        let cpu = LinuxCpuBuilder::default()
            .quota(quota)
            .period(period)
            .build()
            .map_err(internal)?;
        r = r.cpu(cpu);
    }
    if let Some(p) = rc.pids_limit {
        if p > 0 {
            r = r.pids(
                LinuxPidsBuilder::default()
                    .limit(p)
                    .build()
                    .map_err(internal)?,
            );
        }
    }
    r.build().map_err(internal)
}

/// Builds the runtime spec for running `image` with root filesystem
/// `rootfs` (absolute path of where the root will be) and the user's
/// options `rc`; users and groups are looked up in the image's unpacked
/// `layers` (lowest first), so nothing needs to be mounted for it. The
/// caller adds what only it knows (cgroups path, /etc/hosts and
/// resolv.conf mounts, hooks).
pub fn generate(image: &Image, rootfs: &Path, layers: &[PathBuf], rc: &RunConfig) -> Result<Spec> {
    let args = command(image, rc)?;
    let cfg = image.config.config().as_ref();
    let user_str = rc
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| cfg.and_then(|c| c.user().clone()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0".into());
    let user = resolve_user(layers, &user_str)?;
    let hostname = match &rc.hostname {
        Some(h) if !h.is_empty() => h.clone(),
        _ if rc.network == Network::Host => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
        _ => rc.container_id.chars().take(12).collect(),
    };
    if hostname.is_empty() {
        return Err(bad("no hostname: give a container id or a hostname"));
    }
    let env = environment(image, rc, &hostname, &user.home)?;
    let cwd = rc
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| {
            cfg.and_then(|c| c.working_dir().clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(bad(format!(
            "working directory {cwd:?} must be an absolute path"
        )));
    }

    // Every field is set, even empty ones: oci-spec's builders fill an unset
    // field with oci-spec's own default (a `sh` process, more capabilities,
    // other namespaces), not with nothing.
    let caps: Capabilities = DEFAULT_CAPS
        .iter()
        .map(|c| capability(c))
        .collect::<Result<_>>()?;
    let active = if user.uid == 0 {
        caps.clone()
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(active.clone())
        .permitted(active)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(internal)?;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(NOFILE_LIMIT)
        .soft(NOFILE_LIMIT)
        .build()
        .map_err(internal)?;
    let process_user = UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .additional_gids(user.additional_gids)
        .umask(0o022u32)
        .build()
        .map_err(internal)?;
    let process = ProcessBuilder::default()
        .terminal(rc.tty)
        .user(process_user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(true)
        .build()
        .map_err(internal)?;

    // A user mount replaces the default one on the same destination,
    // compared as written (as strings: `Path`'s `==` ignores a trailing `/`).
    let extra = user_mounts(rc)?;
    let mut mounts: Vec<Mount> = default_mounts()?
        .into_iter()
        .filter(|d| {
            !extra
                .iter()
                .any(|e| e.destination().as_os_str() == d.destination().as_os_str())
        })
        .collect();
    mounts.extend(extra);

    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if rc.network == Network::None {
        ns_types.push(LinuxNamespaceType::Network);
    }
    let namespaces = ns_types
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(internal)?;

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(strings(MASKED_PATHS))
        .readonly_paths(strings(READONLY_PATHS))
        .resources(resources(rc)?)
        .seccomp(seccomp_profile()?)
        .build()
        .map_err(internal)?;
    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(rc.read_only)
        .build()
        .map_err(internal)?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .hostname(hostname)
        .annotations(rc.annotations.clone())
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn image(config: Value) -> Image {
        let full = json!({
            "architecture": "amd64", "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": []}
        });
        Image::from_config(serde_json::from_value(full).unwrap())
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nuser:x:1000:\nwww:x:33:\naudio:x:29:user,web\nvideo:x:44:user\nstaff:x:50:\n",
        )
        .unwrap();
        d
    }

    fn rc() -> RunConfig {
        RunConfig {
            container_id: "abcdef0123456789abcdef".into(),
            ..Default::default()
        }
    }

    fn gen(img: &Image, rc: &RunConfig) -> Spec {
        let r = rootfs();
        generate(img, r.path(), &[r.path().into()], rc).unwrap()
    }

    fn env_of(s: &Spec) -> Vec<String> {
        s.process().as_ref().unwrap().env().clone().unwrap()
    }

    #[test]
    fn secure_defaults() {
        let img = image(json!({"Cmd": ["/bin/sh"]}));
        let s = gen(&img, &rc());
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["/bin/sh".to_string()]);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!(p.user().uid(), 0);
        assert_eq!(p.user().gid(), 0);
        let caps = p.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPS.len());
        assert!(bounding.contains(&Capability::Chown));
        assert!(bounding.contains(&Capability::NetBindService));
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert!(!bounding.contains(&Capability::SysPtrace));
        assert!(!bounding.contains(&Capability::SysResource));
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert!(caps.ambient().as_ref().is_none_or(|a| a.is_empty()));
        assert!(caps.inheritable().as_ref().is_none_or(|a| a.is_empty()));
        let rl = p.rlimits().as_ref().unwrap();
        assert_eq!(rl.len(), 1);
        assert_eq!(rl[0].hard(), 1024);
        assert_eq!(rl[0].soft(), 1024);

        assert_eq!(s.hostname().as_deref(), Some("abcdef012345"));
        let linux = s.linux().as_ref().unwrap();
        let ns: Vec<LinuxNamespaceType> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Cgroup,
        ] {
            assert!(ns.contains(&t), "missing namespace {t:?}");
        }
        assert!(!ns.contains(&LinuxNamespaceType::User));
        let masked = linux.masked_paths().as_ref().unwrap();
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/proc/scsi",
            "/sys/devices/virtual/powercap",
        ] {
            assert!(masked.contains(&p.to_string()), "{p} not masked");
        }
        let ro = linux.readonly_paths().as_ref().unwrap();
        for p in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
        ] {
            assert!(ro.contains(&p.to_string()), "{p} not read-only");
        }
        let mounts = s.mounts().as_ref().unwrap();
        let dests: Vec<String> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(dests.contains(&d.to_string()), "missing mount {d}");
        }
        let sys = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
        let root = s.root().as_ref().unwrap();
        assert_eq!(root.readonly(), Some(false));
        let res = linux.resources().as_ref().unwrap();
        let devs = res.devices().as_ref().unwrap();
        assert!(!devs[0].allow(), "first device rule must deny all");
        assert!(res.memory().is_none() && res.cpu().is_none() && res.pids().is_none());
        let env = env_of(&s);
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(env.contains(&"HOSTNAME=abcdef012345".to_string()));
        assert!(env.contains(&"HOME=/root".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("TERM=")));
        assert_eq!(p.terminal(), Some(false));
    }

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

    #[test]
    fn entrypoint_and_cmd_like_docker() {
        let img = image(json!({"Entrypoint": ["/ep", "-x"], "Cmd": ["default"]}));
        let args = |rc: &RunConfig| command(&img, rc).unwrap();
        assert_eq!(args(&rc()), vec!["/ep", "-x", "default"]);
        let mut r = rc();
        r.args = Some(vec!["other".into()]);
        assert_eq!(args(&r), vec!["/ep", "-x", "other"]);
        let mut r = rc();
        r.entrypoint = Some(vec!["/bin/sh".into()]);
        assert_eq!(args(&r), vec!["/bin/sh"]);
        r.args = Some(vec!["-c".into(), "echo hi".into()]);
        assert_eq!(args(&r), vec!["/bin/sh", "-c", "echo hi"]);
        let mut r = rc();
        r.entrypoint = Some(vec![]);
        r.args = Some(vec!["ls".into()]);
        assert_eq!(args(&r), vec!["ls"]);
        let empty = image(json!({}));
        let err = command(&empty, &rc()).unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
        assert!(generate(&empty, Path::new("/nonexistent"), &[], &rc()).is_err());
    }

    #[test]
    fn env_merge() {
        let img = image(json!({"Cmd": ["x"], "Env": ["PATH=/img/bin", "A=1", "B=2"]}));
        let mut r = rc();
        r.env = vec!["B=3".into(), "C=4=5".into(), "EMPTY=".into()];
        r.tty = true;
        let env = env_of(&gen(&img, &r));
        assert_eq!(env[0], "PATH=/img/bin");
        assert!(env.contains(&"A=1".into()));
        assert!(env.contains(&"B=3".into()));
        assert!(!env.contains(&"B=2".into()));
        assert!(env.contains(&"C=4=5".into()));
        assert!(env.contains(&"EMPTY=".into()));
        assert!(env.contains(&"TERM=xterm".into()));
        let mut r = rc();
        r.env = vec!["PATH=/mine".into(), "TERM=vt100".into(), "HOME=/h".into()];
        r.tty = true;
        let env = env_of(&gen(&img, &r));
        assert!(env.contains(&"PATH=/mine".into()));
        assert!(env.contains(&"TERM=vt100".into()));
        assert!(!env.contains(&"TERM=xterm".into()));
        assert!(env.contains(&"HOME=/h".into()));
        let mut r = rc();
        r.env = vec!["NOVALUE".into()];
        assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err());
    }

    /// Users come from the layers as their overlay would show them: the
    /// topmost passwd wins, a whiteout deletes it, an opaque /etc hides the
    /// layers below. (Needs root: whiteouts are device nodes, opacity a
    /// trusted xattr.)
    #[test]
    fn users_are_read_from_the_layers_without_mounting_them() {
        use nix::sys::stat::{mknod, Mode, SFlag};
        let d = tempfile::tempdir().unwrap();
        let layer = |n: &str, passwd: Option<&str>| {
            let l = d.path().join(n);
            fs::create_dir_all(l.join("etc")).unwrap();
            if let Some(p) = passwd {
                fs::write(l.join("etc/passwd"), p).unwrap();
            }
            l
        };
        let base = layer("base", Some("app:x:1000:1000::/home/app:/bin/sh\n"));
        let upper = layer("upper", Some("app:x:2000:2000::/srv:/bin/sh\n"));
        let unrelated = layer("unrelated", None);
        let uid = |layers: &[PathBuf]| resolve_user(layers, "app").map(|u| u.uid);
        assert_eq!(uid(&[base.clone(), unrelated.clone()]).unwrap(), 1000);
        assert_eq!(uid(&[base.clone(), upper.clone()]).unwrap(), 2000);

        let deleted = layer("deleted", None);
        mknod(
            &deleted.join("etc/passwd"),
            SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .expect("mknod of a whiteout (needs root)");
        assert!(
            uid(&[base.clone(), deleted]).is_err(),
            "whiteout deletes it"
        );

        let opaque = layer("opaque", None);
        rustix::fs::lsetxattr(
            opaque.join("etc"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("setting trusted.overlay.opaque (needs root)");
        assert!(
            uid(&[base.clone(), opaque.clone()]).is_err(),
            "opaque /etc hides it"
        );
        assert_eq!(uid(&[opaque, upper]).unwrap(), 2000);
    }

    #[test]
    fn users_and_groups() {
        let r = rootfs();
        let u = |s: &str| resolve_user(&[r.path().into()], s);
        assert_eq!(
            u("0").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into()
            }
        );
        let user = u("user").unwrap();
        assert_eq!(
            (user.uid, user.gid, user.home.as_str()),
            (1000, 1000, "/home/user")
        );
        assert_eq!(user.additional_gids, vec![29, 44]);
        assert_eq!(u("1000").unwrap().additional_gids, vec![29, 44]);
        assert_eq!(u("web").unwrap().additional_gids, vec![29]);
        let x = u("1000:50").unwrap();
        assert_eq!((x.uid, x.gid), (1000, 50));
        let x = u("user:staff").unwrap();
        assert_eq!((x.uid, x.gid), (1000, 50));
        let x = u("4242").unwrap();
        assert_eq!((x.uid, x.gid, x.home.as_str()), (4242, 0, "/"));
        let x = u("4242:4243").unwrap();
        assert_eq!((x.uid, x.gid), (4242, 4243));
        let e = u("nosuchuser").unwrap_err().to_string();
        assert!(e.contains("unable to find user nosuchuser"), "{e}");
        assert!(u("user:nosuchgroup").is_err());

        // Through generate(): image USER, overridden by --user; non-root has no effective caps.
        let img = image(json!({"Cmd": ["id"], "User": "user"}));
        let s = generate(&img, r.path(), &[r.path().into()], &rc()).unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &vec![29, 44]);
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert!(caps.permitted().as_ref().unwrap().is_empty());
        assert_eq!(caps.bounding().as_ref().unwrap().len(), DEFAULT_CAPS.len());
        assert!(env_of(&s).contains(&"HOME=/home/user".into()));
        let mut rcu = rc();
        rcu.user = Some("nobody".into());
        let s = generate(&img, r.path(), &[r.path().into()], &rcu).unwrap();
        assert_eq!(s.process().as_ref().unwrap().user().uid(), 65534);

        // A symlinked /etc/passwd is not followed out of the rootfs.
        let evil = tempfile::tempdir().unwrap();
        fs::create_dir(evil.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", evil.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(&[evil.path().into()], "root").is_err());
    }

    #[test]
    fn workdir_hostname_network() {
        let img = image(json!({"Cmd": ["x"], "WorkingDir": "/srv"}));
        let s = gen(&img, &rc());
        assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/srv"));
        let mut r = rc();
        r.workdir = Some("/tmp".into());
        r.hostname = Some("box".into());
        r.network = Network::Host;
        let s = gen(&img, &r);
        assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/tmp"));
        assert_eq!(s.hostname().as_deref(), Some("box"));
        assert!(env_of(&s).contains(&"HOSTNAME=box".into()));
        let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
        let mut r = rc();
        r.workdir = Some("relative".into());
        assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err());
    }

    #[test]
    fn resources_and_read_only() {
        let img = image(json!({"Cmd": ["x"]}));
        let mut r = rc();
        r.memory_bytes = Some(64 << 20);
        r.cpus = Some(1.5);
        r.pids_limit = Some(50);
        r.read_only = true;
        r.annotations
            .insert("io.capsa.isolation".into(), "container".into());
        let s = gen(&img, &r);
        let res = s.linux().as_ref().unwrap().resources().clone().unwrap();
        let mem = res.memory().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(64 << 20));
        let cpu = res.cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(res.pids().unwrap().limit(), 50);
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            s.annotations()
                .as_ref()
                .unwrap()
                .get("io.capsa.isolation")
                .map(String::as_str),
            Some("container")
        );
        for bad_rc in [
            RunConfig {
                memory_bytes: Some(1000),
                ..rc()
            },
            RunConfig {
                cpus: Some(0.0),
                ..rc()
            },
            RunConfig {
                cpus: Some(-1.0),
                ..rc()
            },
        ] {
            assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &bad_rc).is_err());
        }
        let s = gen(
            &img,
            &RunConfig {
                pids_limit: Some(-1),
                ..rc()
            },
        );
        assert!(s
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .pids()
            .is_none());
    }

    #[test]
    fn bind_and_tmpfs_mounts() {
        let img = image(json!({"Cmd": ["x"]}));
        let host = tempfile::tempdir().unwrap();
        let mut r = rc();
        r.mounts = vec![
            BindMount {
                src: host.path().into(),
                dst: "/data".into(),
                readonly: true,
            },
            BindMount {
                src: host.path().into(),
                dst: "/rw".into(),
                readonly: false,
            },
        ];
        r.tmpfs = vec![
            "/scratch".into(),
            "/run:size=1m,exec".into(),
            "/dev/shm:size=128m".into(),
        ];
        let s = gen(&img, &r);
        let mounts = s.mounts().clone().unwrap();
        let find = |d: &str| {
            let v: Vec<_> = mounts
                .iter()
                .filter(|m| m.destination() == Path::new(d))
                .collect();
            assert_eq!(v.len(), 1, "{d} mounted {} times", v.len());
            v[0].clone()
        };
        let data = find("/data");
        assert_eq!(data.typ().as_deref(), Some("bind"));
        assert_eq!(data.source().as_deref(), Some(host.path()));
        let o = data.options().clone().unwrap();
        assert!(o.contains(&"rbind".into()) && o.contains(&"ro".into()));
        assert!(find("/rw")
            .options()
            .clone()
            .unwrap()
            .contains(&"rw".into()));
        let scratch = find("/scratch").options().clone().unwrap();
        assert!(scratch.contains(&"noexec".into()) && scratch.contains(&"mode=1777".into()));
        let run = find("/run").options().clone().unwrap();
        assert!(run.contains(&"size=1m".into()) && !run.contains(&"noexec".into()));
        let shm = find("/dev/shm").options().clone().unwrap();
        assert!(
            shm.contains(&"size=128m".into()),
            "user tmpfs replaces the default /dev/shm"
        );

        for m in [
            BindMount {
                src: "/nonexistent-capsa".into(),
                dst: "/x".into(),
                readonly: false,
            },
            BindMount {
                src: host.path().into(),
                dst: "relative".into(),
                readonly: false,
            },
            BindMount {
                src: host.path().into(),
                dst: "/".into(),
                readonly: false,
            },
            BindMount {
                src: "rel".into(),
                dst: "/x".into(),
                readonly: false,
            },
        ] {
            let r = RunConfig {
                mounts: vec![m.clone()],
                ..rc()
            };
            assert!(
                generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err(),
                "{m:?} accepted"
            );
        }
        let r = RunConfig {
            tmpfs: vec!["x:size=1m".into()],
            ..rc()
        };
        assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err());
    }

    /// The JSON runtimes read: argument filters, resource limits, and no
    /// field left to oci-spec's builder defaults.
    #[test]
    fn runtime_json_fields() {
        let mut r = rc();
        r.memory_bytes = Some(64 << 20);
        r.cpus = Some(0.25);
        r.pids_limit = Some(7);
        let j = serde_json::to_value(gen(&image(json!({"Cmd": ["x"]})), &r)).unwrap();

        let rules = j["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        let rules_for = |name: &str| -> Vec<&Value> {
            rules
                .iter()
                .filter(|r| r["names"] == json!([name]))
                .collect()
        };
        for (name, masks) in [
            ("clone", CLONE_NS_FLAGS),
            ("personality", PERSONALITY_DENIED),
        ] {
            let found = rules_for(name);
            assert_eq!(found.len(), masks.len(), "{name}");
            for (rule, mask) in found.iter().zip(masks) {
                assert_eq!(
                    **rule,
                    json!({
                        "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                        "args": [{"index": 0, "value": mask, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ"}]
                    })
                );
            }
        }
        assert_eq!(
            *rules_for("clone3")[0],
            json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );
        assert_eq!(
            rules[0]["names"].as_array().unwrap().len(),
            DENIED_SYSCALLS.len()
        );
        assert_eq!(
            j["linux"]["seccomp"]["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );

        let res = &j["linux"]["resources"];
        assert_eq!(res["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
        assert_eq!(res["cpu"], json!({"quota": 25_000, "period": 100_000}));
        assert_eq!(res["pids"], json!({"limit": 7}));
        let devices = res["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 10);
        assert_eq!(devices[0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(
            devices[1],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        );
        assert_eq!(
            devices[9],
            json!({"allow": true, "type": "c", "major": 136, "access": "rwm"})
        );

        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&j),
            [
                "annotations",
                "hostname",
                "linux",
                "mounts",
                "ociVersion",
                "process",
                "root"
            ]
        );
        assert_eq!(
            keys(&j["process"]),
            [
                "args",
                "capabilities",
                "cwd",
                "env",
                "noNewPrivileges",
                "rlimits",
                "terminal",
                "user"
            ]
        );
        assert_eq!(
            keys(&j["linux"]),
            [
                "maskedPaths",
                "namespaces",
                "readonlyPaths",
                "resources",
                "seccomp"
            ]
        );
        assert_eq!(keys(res), ["cpu", "devices", "memory", "pids"]);
        assert_eq!(j["ociVersion"], "1.0.2");
        assert_eq!(
            j["process"]["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [], "umask": 0o022})
        );
        let caps = &j["process"]["capabilities"];
        assert_eq!(caps["ambient"], json!([]));
        assert_eq!(caps["inheritable"], json!([]));
        assert_eq!(
            j["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(j["root"]["readonly"], false);
        assert_eq!(j["mounts"].as_array().unwrap().len(), 7);
    }
}
