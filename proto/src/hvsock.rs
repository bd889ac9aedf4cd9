//! Host side of capsa-vmm's hybrid vsock: a unix socket that stands for the
//! guest's vsock. Connect, write `CONNECT <port>\n`, read `OK <n>\n`; from
//! then on the socket carries the guest connection's bytes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest `OK <n>\n` line accepted.
const MAX_REPLY: usize = 32;

/// Opens a connection to guest vsock `port` through capsa-vmm's unix socket
/// at `uds`. `timeout` bounds the wait for the guest to accept (`None`:
/// wait forever); the returned stream has no timeouts set.
///
/// The reply line is read one byte at a time, so no byte of the protocol
/// that follows it is consumed here.
pub fn connect_hybrid_vsock(
    uds: &Path,
    port: u32,
    timeout: Option<Duration>,
) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the VM's vsock socket {}: {e}",
                uds.display()
            ),
        )
    })?;
    s.set_read_timeout(timeout)?;
    match s.write_all(format!("CONNECT {port}\n").as_bytes()) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(refused(port))
        }
        Err(e) => return Err(e),
    }
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match s.read(&mut byte) {
            Ok(0) => return Err(refused(port)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(refused(port)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_REPLY => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the VM's vsock socket sent an over-long reply to CONNECT",
                ))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the guest did not accept vsock port {port} in time"),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    let ok = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|n| n.trim().parse::<u32>().is_ok());
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected reply to CONNECT {port} from the VM's vsock socket: {:?}",
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

fn refused(port: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "the VM refused vsock port {port} (nothing listening in the guest, or the \
             VMM's connection limit reached)"
        ),
    )
}
