//! `-t` in VM mode. The container's terminal lives in the guest; the
//! monitor expects a pty master on its console socket, as the namespace
//! backend gives it. So we open a host pty, send its master to the monitor,
//! and bridge its (raw) slave to the guest's terminal over the agent
//! connection.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use capsa_proto::StdStream;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use super::client::AgentConn;

/// Opens a host pty, sends its master to `console_socket` and returns the
/// slave, in raw mode: the guest's terminal already does the line
/// discipline, so this one must pass bytes through unchanged.
pub fn bridge(console_socket: &Path) -> Result<OwnedFd> {
    let pty = nix::pty::openpty(None, None).context("opening a host pty for -t")?;
    let mut t = tcgetattr(pty.slave.as_fd())?;
    cfmakeraw(&mut t);
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t)?;
    let sock = UnixStream::connect(console_socket)
        .with_context(|| format!("connecting to {}", console_socket.display()))?;
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sending the terminal to the monitor")?;
    Ok(pty.slave)
}

/// Copies what the user types (read from the slave) to the guest terminal
/// until the container's output ends. Polls so it notices that end: a read
/// blocked on the slave would keep the pty open and the monitor waiting.
pub fn pump_input(conn: Arc<AgentConn>, id: &str, slave: OwnedFd) -> Result<()> {
    let id = id.to_string();
    std::thread::Builder::new()
        .name("vm-tty-input".into())
        .spawn(move || {
            let mut writer = conn.stdin_writer(&id);
            let mut file = std::fs::File::from(slave);
            let mut buf = [0u8; 4096];
            while conn.output_open(&id, StdStream::Stdout) {
                let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::from(100u16)), Ok(n) if n > 0) {
                    continue;
                }
                match file.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if writer.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = writer.close();
        })?;
    Ok(())
}
