//! The container inside the guest: its root filesystem (the image's
//! read-only disk under an overlay with a writable layer) and the container
//! itself, run by capsa-container's runtime — the same libcontainer code
//! the host's container mode uses.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capsa_container::process::exec_process;
use capsa_container::{cgroup, classify_start_error, ExecRequest, ProcessIo, Runtime};
use capsa_proto::{Rootfs, WritableLayer};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;

/// Where the agent keeps its state in the guest (a tmpfs).
pub const STATE_DIR: &str = "/run/capsa-agent";
/// The argument that makes the agent binary [`write_diff`] instead of
/// being PID 1.
pub const DIFF_COMMAND: &str = "__diff";

/// The argument that makes the agent binary wait until it is killed: the
/// process of a container created `idle` (see [`make_idle`]).
pub const IDLE_COMMAND: &str = "__idle";
/// Where an idle container's process is found: in the container's own
/// `/dev` tmpfs, so that nothing of it lands in the writable layer.
const IDLE_PATH: &str = "/dev/.capsa-idle";

/// `Create`'s `idle` (a stopped container's files reached for `cp` and
/// `commit`): the container runs no program of its image. Its process is
/// a copy of this agent (the initramfs's own file is gone), bind-mounted
/// read-only at [`IDLE_PATH`], waiting ([`IDLE_COMMAND`]) until killed;
/// once started, `Exec` and `Diff` work as in a running container. The
/// copy is kept in `dir`.
pub fn make_idle(spec: &mut Spec, dir: &Path) -> Result<()> {
    use oci_spec::runtime::MountBuilder;
    let copy = dir.join("idle");
    if !copy.exists() {
        let part = dir.join("idle.part");
        fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        fs::copy("/proc/self/exe", &part).context("copying the agent for an idle container")?;
        fs::rename(&part, &copy)?;
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let dev_is_tmpfs = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs"));
    if !dev_is_tmpfs {
        bail!("an idle container needs a tmpfs at /dev, and this spec mounts none");
    }
    mounts.push(
        MountBuilder::default()
            .destination(IDLE_PATH)
            .typ("bind")
            .source(copy)
            .options(["bind", "ro", "nosuid", "nodev"].map(String::from).to_vec())
            .build()?,
    );
    spec.set_mounts(Some(mounts));
    let process = spec
        .process_mut()
        .as_mut()
        .context("the spec has no process")?;
    process.set_args(Some(vec![IDLE_PATH.into(), IDLE_COMMAND.into()]));
    process.set_terminal(Some(false));
    Ok(())
}

/// `capsa-agent __diff UPPER CGROUP [HOST:SIZE]`: freezes the container's
/// cgroup (unless it is frozen already), writes UPPER as a layer tar to
/// stdout, and thaws it again, so the layer is one moment's. HOST:SIZE:
/// the container's user namespace mapping, whose ids the layer is
/// written in.
pub fn write_diff(upper: &Path, cgroup: &Path, userns: Option<&str>) -> Result<()> {
    let userns = match userns.map(|s| s.split_once(':')) {
        None => None,
        Some(Some((host, size))) => Some(
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host.parse::<u32>()?)
                .size(size.parse::<u32>()?)
                .build()?,
        ),
        Some(None) => bail!("a user namespace mapping is HOST:SIZE"),
    };
    let freeze = cgroup.join("cgroup.freeze");
    let was_frozen = fs::read_to_string(&freeze).is_ok_and(|s| s.trim() == "1");
    if !was_frozen {
        fs::write(&freeze, "1").context("freezing the container")?;
        // Frozen once cgroup.events says so; a few seconds at most.
        let events = cgroup.join("cgroup.events");
        for _ in 0..500 {
            if fs::read_to_string(&events).is_ok_and(|s| s.contains("frozen 1")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let written =
        capsa_container::layer_diff::write(upper, userns.as_ref(), std::io::stdout().lock());
    if !was_frozen {
        fs::write(&freeze, "0").context("thawing the container")?;
    }
    written
}

/// A created container.
pub struct Container {
    id: String,
    runtime: Runtime,
    pub spec: Spec,
    mounts: Vec<PathBuf>,
    /// A mount that even a lazy unmount could not remove: its directories
    /// are left alone.
    unmount_failed: bool,
}

/// `BLKFLSBUF`, `_IO(0x12, 97)` in `<linux/fs.h>` (not in the libc crate).
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Drops the guest's cached blocks of block device `device`. The host may
/// write a new filesystem image into a disk's backing file after boot (a
/// spare disk "slot" reused for a new container); what the guest read from
/// it before — at least the zero first block of the boot's partition scan —
/// must not be what the mount sees.
pub fn drop_cached_blocks(device: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(device).with_context(|| format!("opening {device}"))?;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is open.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("dropping the guest's cached blocks of {device} (BLKFLSBUF)")
        });
    }
    Ok(())
}

fn mount_dev(device: &str, fstype: &str, target: &Path, flags: MsFlags, data: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
    mount(
        Some(device),
        target,
        Some(fstype),
        flags,
        (!data.is_empty()).then_some(data),
    )
    .with_context(|| format!("mounting {device} ({fstype}) at {}", target.display()))
}

/// Checks a container id before it becomes part of paths.
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > capsa_proto::MAX_ID_LEN
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("invalid container id {id:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// The tmpfs mount options for a writable layer of `size_bytes`.
pub fn tmpfs_options(size_bytes: u64) -> Result<String> {
    if size_bytes < 1024 * 1024 {
        bail!("the writable layer must be at least 1 MiB, got {size_bytes} bytes");
    }
    Ok(format!("size={size_bytes},mode=0755"))
}

impl Container {
    /// Assembles the root filesystem and creates the container (its
    /// process waits for [`Container::start`]). Returns it with its init
    /// PID (a child of this process). On failure, undoes what it did.
    pub fn create(
        id: &str,
        mut spec: Spec,
        rootfs: &Rootfs,
        io: ProcessIo,
        register: impl FnOnce(i32),
    ) -> Result<(Container, i32)> {
        check_id(id)?;
        let mut c = Container {
            id: id.to_string(),
            runtime: Runtime::new(Path::new(STATE_DIR).join("runtime")),
            spec: spec.clone(),
            mounts: Vec::new(),
            unmount_failed: false,
        };
        let result = (|| -> Result<i32> {
            let bundle = bundle_dir(id);
            c.assemble_rootfs(&bundle.join("rootfs"), rootfs)?;
            // The root is the overlay we just built; the cgroup is where
            // the backend looks for OOM kills and the agent for stats.
            let mut root = spec.root().clone().unwrap_or_default();
            root.set_path(bundle.join("rootfs"));
            spec.set_root(Some(root));
            if let Some(linux) = spec.linux_mut() {
                linux.set_cgroups_path(Some(cgroup::cgroup_path(id)));
            }
            if let Some(h) = spec.hostname() {
                let _ = crate::guest::set_hostname(h);
            }
            if !Path::new("/proc/swaps").exists() {
                drop_swap_limit(&mut spec);
            }
            guest_bind_sources(&mut spec, &etc_dir(id))?;
            if let Some(map) = capsa_container::idmap::own_mapping(&spec) {
                // Root in the container may edit them, as with docker.
                for f in fs::read_dir(etc_dir(id)).into_iter().flatten().flatten() {
                    capsa_container::idmap::chown_to_root(&f.path(), &map)?;
                }
            }
            let config = bundle.join("config.json");
            spec.save(&config)
                .with_context(|| format!("writing {}", config.display()))?;
            c.spec = spec;
            let pid = c.runtime.create(id, &bundle, io)?;
            register(pid);
            Ok(pid)
        })();
        match result {
            Ok(pid) => Ok((c, pid)),
            Err(e) => {
                c.destroy();
                Err(classify_start_error(e))
            }
        }
    }

    /// Mounts the container's root at `target`: the image's disk, read-only,
    /// under an overlay whose upper layer is the writable layer; or, for an
    /// engine's root directory shared with virtio-fs, that directory itself.
    fn assemble_rootfs(&mut self, target: &Path, rootfs: &Rootfs) -> Result<()> {
        let base = Path::new(STATE_DIR).join("disks").join(&self.id);
        let image = base.join("image");
        let scratch = base.join("scratch");
        let ro = MsFlags::MS_RDONLY;
        if rootfs.writable == WritableLayer::InPlace {
            self.mount_volumes(rootfs)?;
            // A pod member's root is a directory of its pod's share.
            let flags = if rootfs.fstype == "bind" {
                MsFlags::MS_BIND | MsFlags::MS_REC
            } else {
                MsFlags::empty()
            };
            mount_dev(&rootfs.device, &rootfs.fstype, target, flags, "")
                .context("mounting the container's shared root directory")?;
            self.mounts.push(target.to_path_buf());
            return Ok(());
        }
        drop_cached_blocks(&rootfs.device)?;
        mount_dev(&rootfs.device, &rootfs.fstype, &image, ro, "")
            .context("mounting the image's root filesystem")?;
        self.mounts.push(image.clone());
        match &rootfs.writable {
            WritableLayer::Tmpfs { size_bytes } => {
                let opts = tmpfs_options(*size_bytes)?;
                mount_dev("scratch", "tmpfs", &scratch, MsFlags::empty(), &opts)?
            }
            WritableLayer::Disk { device, fstype } => {
                drop_cached_blocks(device)?;
                // discard: what the container deletes goes back to the
                // host (capsa-vmm punches holes in the disk's file).
                let opts = if fstype == "ext4" { "discard" } else { "" };
                mount_dev(device, fstype, &scratch, MsFlags::empty(), opts)
                    .context("mounting the writable layer's disk")?
            }
            WritableLayer::InPlace => unreachable!("handled above"),
        }
        self.mounts.push(scratch.clone());
        self.mount_volumes(rootfs)?;
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        for d in [&upper, &work, target] {
            fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        // In a user namespace of its own, the container's root owns the
        // image's files through an idmapped mount of its disk, as on the
        // host (capsa_container::idmap).
        let stage = base.join("image.idmapped");
        let lower = match capsa_container::idmap::own_mapping(&self.spec) {
            Some(map) => {
                capsa_container::idmap::chown_to_root(&upper, &map)?;
                capsa_container::idmap::stage_layers(std::slice::from_ref(&image), &map, &stage)?
                    .remove(0)
            }
            None => image.clone(),
        };
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let mounted = mount_dev("overlay", "overlay", target, MsFlags::empty(), &data);
        capsa_container::idmap::detach_all(&stage);
        mounted.context("mounting the container's overlay root")?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    /// Mounts the volumes (disks and virtio-fs shares) where the spec's
    /// bind mounts now point.
    fn mount_volumes(&mut self, rootfs: &Rootfs) -> Result<()> {
        let ro = MsFlags::MS_RDONLY;
        for v in &rootfs.volumes {
            let flags = if v.readonly { ro } else { MsFlags::empty() };
            // A virtio-fs share's "device" is its tag; a disk's cached
            // blocks may be stale.
            if v.fstype != capsa_proto::VIRTIOFS {
                drop_cached_blocks(&v.device)?;
            }
            mount_dev(&v.device, &v.fstype, Path::new(&v.guest_path), flags, "")
                .with_context(|| format!("mounting the volume {}", v.device))?;
            self.mounts.push(PathBuf::from(&v.guest_path));
        }
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn start(&mut self) -> Result<()> {
        self.runtime.start(&self.id)
    }

    pub fn kill(&self, sig: Signal) -> Result<()> {
        self.runtime
            .kill(&self.id, sig)
            .with_context(|| format!("sending {sig} to container {}", self.id))
    }

    /// Starts another process in the container; returns its PID (a child
    /// of this process).
    pub fn exec(&self, req: &ExecRequest, io: ProcessIo) -> Result<i32> {
        let init = self
            .spec
            .process()
            .as_ref()
            .context("the spec has no process")?;
        let process = exec_process(init, req)?;
        let options = capsa_container::ExecOptions {
            sub_cgroup: req.sub_cgroup.clone(),
            ..Default::default()
        };
        self.runtime
            .exec(&self.id, Some(&self.spec), &process, io, &options)
            .map_err(classify_start_error)
    }

    /// `Diff`: starts `capsa-agent __diff UPPER CGROUP` (this binary, not
    /// in the container) with `io`'s stdout and stderr; it writes the
    /// overlay's upper directory as a layer tar (see [`write_diff`]).
    /// Returns its PID, which the reaper collects like an exec'd one.
    pub fn diff(&self, io: ProcessIo) -> Result<i32> {
        let upper = Path::new(STATE_DIR)
            .join("disks")
            .join(&self.id)
            .join("scratch/upper");
        if !upper.is_dir() {
            bail!(
                "container {} has no writable layer of its own (its root is shared in place)",
                self.id
            );
        }
        let null = || std::process::Stdio::null();
        let child = std::process::Command::new("/proc/self/exe")
            .arg(DIFF_COMMAND)
            .arg(&upper)
            .arg(self.cgroup_dir())
            .args(
                capsa_container::idmap::own_mapping(&self.spec)
                    .map(|m| format!("{}:{}", m.host_id(), m.size())),
            )
            .stdin(null())
            .stdout(io.stdout.map_or_else(null, Into::into))
            .stderr(io.stderr.map_or_else(null, Into::into))
            .spawn()
            .context("starting the agent's layer writer")?;
        Ok(child.id() as i32)
    }

    /// Whether the kernel's OOM killer killed a process of the container
    /// (its cgroup's `memory.events`); ask before [`Container::destroy`].
    pub fn oom_killed(&self) -> bool {
        cgroup::oom_kill_count(&self.id) > 0
    }

    /// New cgroup limits, applied by the same code as on the host.
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.runtime.update(&self.id, resources)
    }

    /// The container's cgroup directory.
    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup::v2_dir(&self.id)
    }

    /// Kills what is left, deletes the runtime state and cgroups, and
    /// unmounts the root filesystem. Idempotent.
    pub fn destroy(&mut self) {
        if let Err(e) = self.runtime.delete(&self.id) {
            crate::guest::say(&format!("releasing container {}: {e:#}", self.id));
        }
        while let Some(m) = self.mounts.pop() {
            if umount2(&m, MntFlags::empty()).is_err() && umount2(&m, MntFlags::MNT_DETACH).is_err()
            {
                crate::guest::say(&format!("could not unmount {}", m.display()));
                self.unmount_failed = true;
            }
        }
    }

    /// After [`Container::destroy`]: removes the container's directories in
    /// the agent's state (bundle, disk mount points, generated /etc files),
    /// so its id can be created again. Volume mount points (guest paths the
    /// host chose) are left in place.
    pub fn remove_state(&self) {
        if self.unmount_failed {
            return;
        }
        let id = &self.id;
        let dirs = [
            Path::new(STATE_DIR).join("disks").join(id),
            etc_dir(id),
            container_dir(id),
        ];
        for d in dirs {
            if let Err(e) = fs::remove_dir_all(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    crate::guest::say(&format!("removing {}: {e}", d.display()));
                }
            }
        }
    }
}

/// Where the container's /etc files from the host (hosts, resolv.conf,
/// hostname) are written in the guest, for its bind mounts.
pub fn etc_dir(id: &str) -> PathBuf {
    Path::new(STATE_DIR).join("etc").join(id)
}

/// The agent's directory for container `id`: its bundle, nothing else.
fn container_dir(id: &str) -> PathBuf {
    Path::new(STATE_DIR).join("containers").join(id)
}

/// The bundle libcontainer creates container `id` from: config.json and
/// the root filesystem's mount point.
fn bundle_dir(id: &str) -> PathBuf {
    container_dir(id).join("bundle")
}

/// Makes the spec's bind mounts usable in the guest. The host's spec
/// binds the container's own `/etc/hostname` and `/etc/hosts` (and, with
/// the host network, `/etc/resolv.conf`) from files on the host, which the
/// guest cannot see: the agent writes the same files under `dir` (a
/// hostname line, docker's hosts template) and points the mounts there;
/// a resolv.conf the guest cannot provide is left to the image. Any other
/// bind mount whose source is missing in the guest is an error naming it
/// (host paths reach the guest only as volume disks).
pub fn guest_bind_sources(spec: &mut Spec, dir: &Path) -> Result<()> {
    let hostname = spec.hostname().clone().unwrap_or_default();
    let annotations = spec.annotations().clone();
    let Some(mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let mut out = Vec::with_capacity(mounts.len());
    for mut m in mounts {
        let missing = m.source().as_ref().is_some_and(|s| !s.exists());
        if !capsa_container::is_bind_mount(&m) || !missing {
            out.push(m);
            continue;
        }
        let dest = m.destination().display().to_string();
        let content = match dest.as_str() {
            "/etc/hostname" => capsa_container::etc_hostname(&hostname),
            "/etc/hosts" => capsa_container::etc_hosts(&hostname, None, None, annotations.as_ref()),
            "/etc/resolv.conf" => continue,
            _ => bail!(
                "the bind mount for {dest} has source {}, which does not exist in the guest \
                 (in VM mode host paths reach the container only as volume disks)",
                m.source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default()
            ),
        };
        fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let src = dir.join(dest.trim_start_matches("/etc/"));
        fs::write(&src, content).with_context(|| format!("writing {}", src.display()))?;
        m.set_source(Some(src));
        out.push(m);
    }
    spec.set_mounts(Some(out));
    Ok(())
}

/// Removes the spec's swap limit. capsa's guest kernel has no swap (no
/// `/proc/swaps`, no `memory.swap.max`), so the limit the host writes
/// (swap = memory, i.e. no swap, as docker) is already how the guest
/// behaves, and libcontainer would fail writing the missing file.
pub fn drop_swap_limit(spec: &mut Spec) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let Some(mut res) = linux.resources().clone() else {
        return;
    };
    if let Some(mut mem) = *res.memory() {
        mem.set_swap(None);
        res.set_memory(Some(mem));
        linux.set_resources(Some(res));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_escape_paths_are_refused() {
        for bad in ["", "..", "a/b", ".hidden", "x y", &"a".repeat(256)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "0123456789abcdef", "my_ctr-1.2"] {
            check_id(good).unwrap();
        }
    }

    #[test]
    fn etc_files_are_made_in_the_guest_and_other_missing_binds_refused() {
        use oci_spec::runtime::MountBuilder;
        let d = tempfile::tempdir().unwrap();
        let existing = d.path().join("data");
        fs::create_dir(&existing).unwrap();
        let bind = |dest: &str, src: &Path| {
            MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string(), "rprivate".to_string()])
                .build()
                .unwrap()
        };
        let gone = Path::new("/nonexistent/host/container");
        let mut spec = Spec::default();
        spec.set_hostname(Some("abc123".into()));
        let mut mounts = spec.mounts().clone().unwrap();
        let defaults = mounts.len();
        mounts.push(bind("/data", &existing));
        mounts.push(bind("/etc/hostname", &gone.join("hostname")));
        mounts.push(bind("/etc/hosts", &gone.join("hosts")));
        mounts.push(bind("/etc/resolv.conf", &gone.join("resolv.conf")));
        spec.set_mounts(Some(mounts));
        let etc = d.path().join("etc");
        guest_bind_sources(&mut spec, &etc).unwrap();
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(
            mounts.len(),
            defaults + 3,
            "resolv.conf dropped, others kept"
        );
        assert_eq!(
            mounts[defaults].source().as_deref(),
            Some(existing.as_path())
        );
        assert_eq!(
            fs::read_to_string(mounts[defaults + 1].source().as_ref().unwrap()).unwrap(),
            "abc123\n"
        );
        let hosts = fs::read_to_string(mounts[defaults + 2].source().as_ref().unwrap()).unwrap();
        assert!(hosts.contains("127.0.1.1\tabc123\n"), "{hosts}");

        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind("/srv", &gone.join("srv")));
        spec.set_mounts(Some(mounts));
        let e = guest_bind_sources(&mut spec, &etc).unwrap_err();
        assert!(format!("{e}").contains("/srv"), "{e}");
    }

    #[test]
    fn an_idle_container_runs_a_copy_of_the_agent_from_its_dev_tmpfs() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = Spec::default();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_terminal(Some(true));
        make_idle(&mut spec, d.path()).unwrap();
        let copy = d.path().join("idle");
        assert!(
            fs::read(&copy).unwrap() == fs::read("/proc/self/exe").unwrap(),
            "a copy of this binary"
        );
        let process = spec.process().as_ref().unwrap();
        let args = process.args().clone().unwrap();
        assert_eq!(args, [IDLE_PATH, IDLE_COMMAND]);
        assert_eq!(process.terminal(), Some(false));
        let mounts = spec.mounts().clone().unwrap();
        let idle = mounts.last().unwrap();
        assert_eq!(idle.destination(), Path::new(IDLE_PATH));
        assert_eq!(idle.source().as_deref(), Some(copy.as_path()));
        assert!(idle.options().as_ref().unwrap().contains(&"ro".into()));

        // Without a /dev tmpfs the copy would land in the writable layer.
        let mut spec = Spec::default();
        let others: Vec<_> = spec
            .mounts()
            .clone()
            .unwrap()
            .into_iter()
            .filter(|m| m.destination() != Path::new("/dev"))
            .collect();
        spec.set_mounts(Some(others));
        let e = make_idle(&mut spec, d.path()).unwrap_err();
        assert!(format!("{e}").contains("tmpfs at /dev"), "{e}");
    }

    #[test]
    fn swap_limit_is_dropped_and_the_memory_limit_kept() {
        use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
        let mut spec = Spec::default();
        let mem = LinuxMemoryBuilder::default()
            .limit(32 << 20)
            .swap(32 << 20)
            .build()
            .unwrap();
        let res = LinuxResourcesBuilder::default()
            .memory(mem)
            .build()
            .unwrap();
        spec.set_linux(Some(
            LinuxBuilder::default().resources(res).build().unwrap(),
        ));
        drop_swap_limit(&mut spec);
        let mem = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .and_then(|r| *r.memory())
            .unwrap();
        assert_eq!(mem.limit(), Some(32 << 20));
        assert_eq!(mem.swap(), None);
    }

    #[test]
    fn tmpfs_size_is_checked() {
        assert_eq!(tmpfs_options(64 << 20).unwrap(), "size=67108864,mode=0755");
        assert!(tmpfs_options(4096).is_err());
    }
}
