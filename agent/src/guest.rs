//! PID 1 duties: the guest's own file systems, the console, power-off.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

/// The console descriptor: a close-on-exec copy of PID 1's stdout
/// (`/dev/console`), or -1 before [`console_init`] (then stderr is used).
static CONSOLE: AtomicI32 = AtomicI32::new(-1);

/// Keeps a close-on-exec copy of stdout for the agent's messages. Not
/// stdout itself: libcontainer's forked helpers log before they exec the
/// container's command, with the container's pipes already on 0, 1 and 2,
/// so anything written to "stdout" there would land in the container's
/// output.
pub fn console_init() {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on fd 1, which the kernel opened.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 100) };
    if fd >= 0 {
        CONSOLE.store(fd, Ordering::SeqCst);
    }
}

/// A writer to the console (for the log).
pub struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let fd = match CONSOLE.load(Ordering::SeqCst) {
            -1 => 2,
            fd => fd,
        };
        // SAFETY: write(2) from a buffer we borrow.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prints one line on the serial console.
pub fn say(msg: &str) {
    let _ = Console.write_all(format!("capsa-agent: {msg}\n").as_bytes());
}

/// Leaves the initramfs: PID 1 starts on the kernel's `rootfs`, which
/// `pivot_root` cannot move away from, so libcontainer could not set up a
/// container. Moves a fresh tmpfs over `/` and chroots into it (what
/// `switch_root` does), after unlinking `/init` to give back its memory.
pub fn switch_root() -> Result<()> {
    let new = Path::new("/newroot");
    fs::create_dir_all(new).context("mkdir /newroot")?;
    mount(
        Some("rootfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mounting the tmpfs root")?;
    let _ = fs::remove_file("/init");
    nix::unistd::chdir(new)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the tmpfs root to /")?;
    nix::unistd::chroot(".").context("chroot into the tmpfs root")?;
    nix::unistd::chdir("/")?;
    Ok(())
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
    mount(
        Some(source),
        target,
        Some(fstype),
        flags,
        (!data.is_empty()).then_some(data),
    )
    .with_context(|| format!("mounting {fstype} at {target}"))
}

/// Mounts the guest's own file systems: `/proc`, `/sys`, `/dev`
/// (devtmpfs), `/dev/pts`, `/dev/shm`, cgroup2 at `/sys/fs/cgroup`, and
/// tmpfs at `/run` and `/tmp`.
pub fn mount_system() -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nodev, "")?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, "")?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0620,ptmxmode=0666",
    )?;
    mount_fs("shm", "/dev/shm", "tmpfs", nodev, "mode=1777")?;
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, "")?;
    mount_fs(
        "run",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )?;
    mount_fs(
        "tmp",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
    )?;
    // The container's cgroup (memory, pids, cpu limits) needs its
    // controllers enabled from the root down; libcontainer enables them
    // below the root, the root's own subtree_control is ours to set.
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if !enable.is_empty() {
        fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
            .context("enabling the cgroup controllers")?;
    }
    Ok(())
}

/// Sets the guest's host name.
pub fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).with_context(|| format!("setting the host name to {name}"))
}

/// Syncs and ends the guest. Never returns.
///
/// capsa's guest kernel has no ACPI, so it has no way to power the machine
/// off: `RB_POWER_OFF` would only halt the CPUs (the kernel turns it into
/// `RB_HALT_SYSTEM`), and a halted guest looks alive to the VMM. So, as
/// Firecracker guests do, the agent resets the machine (`RB_AUTOBOOT`; the
/// host passes `reboot=k`, the keyboard-controller reset), which capsa-vmm
/// treats as the end of the VM. Power-off and halt are the fallbacks.
pub fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot(2) takes no pointers; on success it does not return.
    unsafe {
        libc::reboot(libc::RB_AUTOBOOT);
        libc::reboot(libc::RB_POWER_OFF);
        libc::reboot(libc::RB_HALT_SYSTEM);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The kernel command line.
pub fn kernel_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}
