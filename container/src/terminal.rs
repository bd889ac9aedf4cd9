//! Terminals: window sizes, and the pty master a container's process sends
//! over its console socket.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use anyhow::{Context, Result};
use capsa_proto::WinSize;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use rustix::termios::{tcgetwinsize, tcsetwinsize, Winsize};

/// The window size of terminal `fd`, if it is a terminal with a size.
pub fn window_size(fd: impl AsFd) -> Option<WinSize> {
    let ws = tcgetwinsize(fd).ok()?;
    (ws.ws_row > 0).then_some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Sets the window size of terminal `fd` (its processes get SIGWINCH).
pub fn set_window_size(fd: impl AsFd, size: WinSize) -> std::io::Result<()> {
    let ws = Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(fd, ws).map_err(std::io::Error::from)
}

/// Gives terminal `to` the window size of terminal `from`, if it has one.
pub fn copy_window_size(from: impl AsFd, to: impl AsFd) {
    if let Some(size) = window_size(from) {
        let _ = set_window_size(to, size);
    }
}

/// Receives the pty master that the container's process sent over the
/// console socket (SCM_RIGHTS).
pub fn receive_master(listener: &UnixListener) -> Result<OwnedFd> {
    let (conn, _) = listener.accept().context("accepting the console socket")?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .context("receiving the terminal from the container")?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this fd; we own it now.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    anyhow::bail!("the container did not send its terminal over the console socket")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_size_set_on_a_pty_is_read_back_and_copied() {
        let a = nix::pty::openpty(None, None).unwrap();
        let b = nix::pty::openpty(None, None).unwrap();
        let size = WinSize {
            rows: 41,
            cols: 132,
        };
        set_window_size(&a.master, size).unwrap();
        assert_eq!(window_size(&a.slave), Some(size));
        copy_window_size(&a.slave, &b.master);
        assert_eq!(window_size(&b.slave), Some(size));
        let file = tempfile::tempfile().unwrap();
        assert_eq!(window_size(&file), None, "not a terminal");
    }
}
