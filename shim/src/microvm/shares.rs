//! Host directories shared into a VM with virtio-fs: one virtiofsd per
//! share (the Rust virtiofsd, scripts/build-virtiofsd.sh), listening on a
//! unix socket that capsa-vmm connects to as the vhost-user frontend.
//!
//! Each daemon runs in virtiofsd's own namespace sandbox (new mount, pid
//! and network namespaces, pivot_root into the shared directory) with its
//! seccomp filter on, so what the guest can name is the directory and what
//! lies below it. A daemon serves one connection and exits when capsa-vmm
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
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
    /// The container's user namespace mapping (`--userns=auto`): the
    /// daemon runs as its root, not the host's (see [`as_the_containers_root`]).
    pub userns: Option<oci_spec::runtime::LinuxIdMapping>,
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

/// Starts one daemon per share and waits until each listens. On error the
/// ones already started are stopped. With `die_with_caller`, each daemon is
/// killed if the calling process dies before its VM connects.
pub fn start(
    shares: &[ShareSpec],
    socket_of: impl Fn(usize) -> PathBuf,
    log: &Path,
    die_with_caller: bool,
) -> Result<Vec<Daemon>> {
    let mut out: Vec<Daemon> = Vec::new();
    for (n, s) in shares.iter().enumerate() {
        match start_one(s, &socket_of(n), log, die_with_caller) {
            Ok(d) => out.push(d),
            Err(e) => {
                stop(&mut out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn start_one(s: &ShareSpec, socket: &Path, log: &Path, die_with_caller: bool) -> Result<Daemon> {
    let bin = virtiofsd()?;
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(&bin);
    // As the container's root, the daemon cannot make its socket in
    // capsa's directory: it is handed one listening already.
    let listener = match &s.userns {
        Some(_) => Some(
            std::os::unix::net::UnixListener::bind(socket)
                .with_context(|| format!("listening on {}", socket.display()))?,
        ),
        None => None,
    };
    match &listener {
        Some(l) => cmd.arg("--fd").arg(l.as_raw_fd().to_string()),
        None => cmd.arg("--socket-path").arg(socket),
    };
    cmd.arg("--shared-dir")
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
    if let (Some(map), Some(l)) = (&s.userns, &listener) {
        as_the_containers_root(&mut cmd, map, l.as_raw_fd())?;
    }
    if die_with_caller {
        super::die_with_parent(&mut cmd);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // The daemon holds its copy; connections wait in its backlog.
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            let last = said.lines().last().unwrap_or("").trim().to_string();
            bail!(
                "virtiofsd for {} exited before listening ({status}): {last}",
                s.source.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "virtiofsd for {} did not listen within 10 s",
                s.source.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Daemon {
        socket: socket.to_path_buf(),
        tag: s.tag.clone(),
        child,
    })
}

/// Makes `cmd` (virtiofsd) start as root of a user namespace mapped as the
/// container's (`map`), inheriting `listener`: on the host it is the
/// container's root, an unprivileged uid that owns only what the container
/// owns. virtiofsd, root in its namespace, makes its sandbox there (mount,
/// pid and network namespaces of its own); the guest's ids (the mapped
/// ones: the guest runs the container in the same mapping) are translated
/// back to the namespace's with `--translate-uid/gid map:HOST:0:SIZE`, so
/// a file the container writes gets the same host owner as in container
/// mode, and a host file outside the mapping is nobody's to it.
fn as_the_containers_root(
    cmd: &mut Command,
    map: &oci_spec::runtime::LinuxIdMapping,
    listener: std::os::fd::RawFd,
) -> Result<()> {
    let userns = capsa_container::idmap::user_namespace(map)?;
    let translate = format!("map:{}:0:{}", map.host_id(), map.size());
    cmd.arg("--translate-uid")
        .arg(&translate)
        .arg("--translate-gid")
        .arg(&translate);
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
