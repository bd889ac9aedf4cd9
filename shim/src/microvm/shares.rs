//! Host directories shared into a VM with virtio-fs: one virtiofsd per
//! share (the Rust virtiofsd, scripts/build-virtiofsd.sh), listening on a
//! unix socket that capsa-vmm connects to as the vhost-user frontend.
//!
//! Each daemon runs in virtiofsd's own namespace sandbox (new mount, pid
//! and network namespaces, pivot_root into the shared directory) with its
//! seccomp filter on, so what the guest can name is the directory and what
//! lies below it. It starts in a user namespace capsa makes for it (see
//! [`user_namespace_of`]), so it holds no capability over the host, and in
//! its VM's cgroup, whose memory and task limits bound it with the VMM.
//!
//! A daemon serves one connection and exits when capsa-vmm
//! closes it, so it never outlives its VM; one whose VM never connected is
//! killed by whoever started it (and, unless a keeper adopts the VM, it
//! dies with the monitor).
//!
//! A VM has one share for all its `-v` directories, not one per volume (a
//! VM has few virtio-mmio slots, and each daemon costs a process): the
//! daemon is started in a mount namespace of its own where each volume is
//! bind-mounted at `DIR/0`, `DIR/1`, …, read-only ones recursively so, as
//! a pod's share gathers its containers' mounts. The guest sees each as a
//! mount of its own (`--announce-submounts`), and the host's mount table
//! never holds them, so nothing is left to unmount.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

/// One share as the VM configuration and the agent see it.
#[derive(Debug, Clone)]
pub struct ShareSpec {
    pub source: PathBuf,
    pub readonly: bool,
    /// The virtio-fs tag (the guest mounts it by this).
    pub tag: String,
    /// Host directories bound at `source/0`, `source/1`, … for the daemon
    /// only (see the module's comment).
    pub binds: Vec<Bind>,
    /// The container's user namespace mapping (`--userns=auto`, `--uidmap`): the
    /// daemon runs as its root, not the host's (see [`user_namespace_of`]).
    pub userns: Option<LinuxIdMapping>,
}

/// A host directory a share holds.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    pub readonly: bool,
}

/// A running virtiofsd.
pub struct Daemon {
    pub socket: PathBuf,
    pub tag: String,
    pub child: Child,
}

/// Where capsa finds virtiofsd: $CAPSA_VIRTIOFSD, else the one
/// scripts/build-virtiofsd.sh installs.
fn virtiofsd() -> Result<PathBuf> {
    let p = std::env::var_os("CAPSA_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/virtiofsd"));
    if !p.is_file() {
        bail!(
            "VM mode shares host directories with virtiofsd, which is not installed at {} (run scripts/build-virtiofsd.sh, or set CAPSA_VIRTIOFSD)",
            p.display()
        );
    }
    Ok(p)
}

/// Starts one daemon per share, in `cgroup` (the VM's), each on a socket
/// already listening. On error the ones already started are stopped. With
/// `die_with_caller`, each daemon is killed if the calling process dies
/// before its VM connects.
pub fn start(
    shares: &[ShareSpec],
    socket_of: impl Fn(usize) -> PathBuf,
    log: &Path,
    die_with_caller: bool,
    cgroup: &capsa_container::cgroup::LimitedCgroup,
) -> Result<Vec<Daemon>> {
    let mut out: Vec<Daemon> = Vec::new();
    for (n, s) in shares.iter().enumerate() {
        match start_one(s, &socket_of(n), log, die_with_caller, cgroup) {
            Ok(d) => out.push(d),
            Err(e) => {
                stop(&mut out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn start_one(
    s: &ShareSpec,
    socket: &Path,
    log: &Path,
    die_with_caller: bool,
    cgroup: &capsa_container::cgroup::LimitedCgroup,
) -> Result<Daemon> {
    let bin = virtiofsd()?;
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(&bin);
    // Joined first, as host root.
    super::join_on_exec(&mut cmd, cgroup);
    // In its user namespace the daemon cannot make its socket in capsa's
    // directory: it is handed one listening already.
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    cmd.arg("--fd")
        .arg(listener.as_raw_fd().to_string())
        .arg("--shared-dir")
        .arg(&s.source)
        .args(["--sandbox", "namespace", "--seccomp", "kill"])
        // Metadata and data cached for a second, as Kata does: a file the
        // host changes is seen by the guest within that time.
        .args(["--cache", "auto", "--xattr", "--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            File::options()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?,
        );
    if s.readonly {
        cmd.arg("--readonly");
    }
    if !s.binds.is_empty() {
        cmd.arg("--announce-submounts");
        bind_in_own_namespace(&mut cmd, &s.source, &s.binds)?;
    }
    // After the binds (made as host root), before the parent-death signal
    // (a change of user clears it).
    in_user_namespace(&mut cmd, s.userns.as_ref(), listener.as_raw_fd())?;
    if die_with_caller {
        super::die_with_parent(&mut cmd);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // The daemon holds its copy; capsa-vmm's connection waits in its
    // backlog, and a daemon that failed to start closes it (the VMM's
    // error names the share, the log the daemon's reason).
    drop(listener);
    Ok(Daemon {
        socket: socket.to_path_buf(),
        tag: s.tag.clone(),
        child,
    })
}

/// The user namespace a share's daemon starts in, as its root:
///
/// - for a container with its own mapping (`--userns=auto`), one mapped as
///   the container's: on the host the daemon is the container's root, an
///   unprivileged uid that owns only what the container owns. The guest's
///   ids (the mapped ones: the guest runs the container in the same
///   mapping) are translated back with `--translate-uid/gid
///   map:HOST:0:SIZE`, so a file the container writes gets the same host
///   owner as in container mode, and a host file outside the mapping is
///   nobody's to it;
/// - otherwise one that maps every id to itself. The daemon is still uid 0
///   to the files it serves, as the container's root is in container mode
///   (a file the guest's root writes is host root's in both modes), but
///   its capabilities are the namespace's only: none reaches the host's
///   (no CAP_DAC_READ_SEARCH to open a file by handle outside its root, no
///   CAP_SYS_ADMIN, no device nodes), whatever a guest makes it do.
///
/// virtiofsd, root in the namespace, makes its sandbox there (mount, pid
/// and network namespaces of its own).
fn user_namespace_of(container: Option<&LinuxIdMapping>) -> Result<OwnedFd> {
    let map = match container {
        Some(m) => *m,
        None => LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(0u32)
            .size(u32::MAX)
            .build()?,
    };
    capsa_container::idmap::user_namespace(&map)
}

/// Makes `cmd` (virtiofsd) start as root of its user namespace
/// ([`user_namespace_of`]), inheriting `listener`.
fn in_user_namespace(
    cmd: &mut Command,
    container: Option<&LinuxIdMapping>,
    listener: std::os::fd::RawFd,
) -> Result<()> {
    let userns = user_namespace_of(container)?;
    if let Some(map) = container {
        let translate = format!("map:{}:0:{}", map.host_id(), map.size());
        cmd.arg("--translate-uid")
            .arg(&translate)
            .arg("--translate-gid")
            .arg(&translate);
    }
    // SAFETY: between fork and exec the closure only makes system calls on
    // descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Inherited across exec (std's sockets are close-on-exec).
            if libc::fcntl(listener, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            capsa_container::idmap::enter_as_root(userns.as_fd()).map_err(Into::into)
        });
    }
    Ok(())
}

/// Makes `cmd` start in a mount namespace of its own, with each of `binds`
/// bind-mounted (recursively, nosuid and nodev, read-only ones read-only
/// all the way down) at `dir/N`.
fn bind_in_own_namespace(cmd: &mut Command, dir: &Path, binds: &[Bind]) -> Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte");
    let mut points = Vec::new();
    for (n, b) in binds.iter().enumerate() {
        let at = dir.join(n.to_string());
        std::fs::create_dir_all(&at).with_context(|| format!("creating {}", at.display()))?;
        points.push((c(&b.source)?, c(&at)?, b.readonly));
    }
    // SAFETY: between fork and exec the closure only makes system calls,
    // on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_long| {
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS).into())?;
            // Nothing mounted here reaches the host's namespace.
            let root = c"/";
            check(
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
                .into(),
            )?;
            for (src, at, readonly) in &points {
                check(
                    libc::mount(
                        src.as_ptr(),
                        at.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    )
                    .into(),
                )?;
                let mut attr: libc::mount_attr = std::mem::zeroed();
                attr.attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
                if *readonly {
                    attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
                }
                check(libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    at.as_ptr(),
                    libc::AT_RECURSIVE,
                    &attr as *const libc::mount_attr,
                    std::mem::size_of::<libc::mount_attr>(),
                ))?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Kills and reaps the daemons and removes their sockets.
pub fn stop(daemons: &mut Vec<Daemon>) {
    for mut d in daemons.drain(..) {
        let _ = d.child.kill();
        let _ = d.child.wait();
        remove_socket(&d.socket);
    }
}

/// Removes a share's socket and the pid file virtiofsd writes beside it.
pub fn remove_socket(socket: &Path) {
    let _ = std::fs::remove_file(socket);
    let mut pid_file = socket.as_os_str().to_os_string();
    pid_file.push(".pid");
    let _ = std::fs::remove_file(pid_file);
}

/// Reaps daemons whose VM has gone (they exit when it disconnects); any
/// still running after `grace` is killed.
pub fn reap(daemons: &mut Vec<Daemon>, grace: Duration) {
    let deadline = Instant::now() + grace;
    for d in daemons.iter_mut() {
        while matches!(d.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    stop(daemons);
}
