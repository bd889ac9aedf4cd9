//! The container log: every chunk the container wrote to stdout or stderr,
//! in order, byte-exact.
//!
//! Framing is the one docker uses on its attach stream: an 8-byte header
//! (stream id: 1 = stdout, 2 = stderr; three zero bytes; big-endian u32
//! length) followed by the payload. It keeps the two streams apart and does
//! not care whether the bytes are text.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

pub struct LogWriter {
    file: File,
}

impl LogWriter {
    pub fn create(path: &Path) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter { file })
    }

    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.push(stream as u8);
        frame.extend_from_slice(&[0, 0, 0]);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.file.write_all(&frame)
    }
}

/// Copies the log at `path` to `out`/`err`. With `follow`, keeps reading
/// until `still_running` says the container is gone and the file is drained.
pub fn copy_log(
    path: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
    follow: bool,
    still_running: &mut dyn FnMut() -> bool,
) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !follow => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Reads what is there and writes its complete frames; false at EOF.
    let mut drain =
        |file: &mut File, out: &mut dyn Write, err: &mut dyn Write| -> io::Result<bool> {
            let n = file.read(&mut buf)?;
            if n > 0 {
                pending.extend_from_slice(&buf[..n]);
                let used = emit_frames(&pending, out, err)?;
                pending.drain(..used);
            }
            Ok(n > 0)
        };
    loop {
        if drain(&mut file, out, err)? {
            continue;
        }
        if !follow {
            break;
        }
        // Check liveness before the final read so nothing written between
        // the last read and the exit is missed.
        let running = still_running();
        if drain(&mut file, out, err)? {
            continue;
        }
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Writes every complete frame in `data`; returns how many bytes it used.
fn emit_frames(data: &[u8], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<usize> {
    let mut pos = 0;
    while data.len() - pos >= 8 {
        let len = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if data.len() - pos - 8 < len {
            break;
        }
        let payload = &data[pos + 8..pos + 8 + len];
        match data[pos] {
            2 => {
                err.write_all(payload)?;
                err.flush()?;
            }
            _ => {
                out.write_all(payload)?;
                out.flush()?;
            }
        }
        pos += 8 + len;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_streams_apart_and_bytes_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = LogWriter::create(&path).unwrap();
        w.write(Stream::Stdout, b"hello ").unwrap();
        w.write(Stream::Stderr, &[0xff, 0x00, b'\n']).unwrap();
        w.write(Stream::Stdout, b"world\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        copy_log(&path, &mut out, &mut err, false, &mut || false).unwrap();
        assert_eq!(out, b"hello world\n");
        assert_eq!(err, vec![0xff, 0x00, b'\n']);
    }

    #[test]
    fn a_truncated_last_frame_is_not_emitted() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let data = [1u8, 0, 0, 0, 0, 0, 0, 5, b'a', b'b'];
        let used = emit_frames(&data, &mut out, &mut err).unwrap();
        assert_eq!(used, 0);
        assert!(out.is_empty());
    }
}
