//! The container log: every chunk the container wrote to stdout or stderr,
//! in order, byte-exact, in files of bounded size ([`LogLimits`]).
//!
//! Framing is the one docker uses on its attach stream: an 8-byte header
//! (stream id: 1 = stdout, 2 = stderr; a flags byte and two zero bytes;
//! big-endian u32 length) followed by the payload. It keeps the two
//! streams apart and does not care whether the bytes are text. With the
//! [`TIMED`] flag (every frame written now has it) the payload is preceded
//! by the time it was written, for `logs --timestamps/--since/--until`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Header flag: 8 bytes of big-endian nanoseconds since 1970 come before
/// the payload. (Logs from before it have 0 there and are still read.)
const TIMED: u8 = 1;

fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// How much log a container keeps (`--log-opt max-size=…,max-file=…`):
/// once the log would pass `max_size` bytes it is rotated (`container.log`
/// becomes `container.log.1`, the older ones move up one) and at most
/// `max_files` files are kept, so one container's log never holds more
/// than about `max_size × max_files` bytes of the host's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    /// docker's `local` log driver's defaults: 20 MiB, 5 files.
    fn default() -> LogLimits {
        LogLimits {
            max_size: 20 << 20,
            max_files: 5,
        }
    }
}

/// `path` with rotation number `n` (0: the log itself).
fn rotated(path: &Path, n: u32) -> PathBuf {
    match n {
        0 => path.to_path_buf(),
        n => {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        }
    }
}

pub struct LogWriter {
    file: File,
    path: PathBuf,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    pub fn create(path: &Path, limits: LogLimits) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            size,
            limits,
        })
    }

    /// A writer that keeps nothing (for an attached `exec`).
    pub fn discard() -> io::Result<LogWriter> {
        let unlimited = LogLimits {
            max_size: u64::MAX,
            max_files: 1,
        };
        LogWriter::create(Path::new("/dev/null"), unlimited)
    }

    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(16 + data.len());
        frame.extend_from_slice(&[stream as u8, TIMED, 0, 0]);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(&now_nanos().to_be_bytes());
        frame.extend_from_slice(data);
        // A frame is never split between files; one larger than the limit
        // gets a file of its own.
        if self.size > 0 && self.size.saturating_add(frame.len() as u64) > self.limits.max_size {
            self.rotate()?;
        }
        self.file.write_all(&frame)?;
        self.size += frame.len() as u64;
        Ok(())
    }

    /// Shifts the files up one (the oldest falls off) and starts a new log;
    /// with `max_files` 1 the log just starts again.
    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.limits.max_files.max(1)).rev() {
            match std::fs::rename(rotated(&self.path, n - 1), rotated(&self.path, n)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&self.path);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// What of a log to copy, as docker's `logs` flags choose it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogQuery {
    /// Keep reading what the container writes (`-f`).
    pub follow: bool,
    /// Only the last that many lines of what is there (`--tail`, both
    /// streams counted together).
    pub tail: Option<usize>,
    /// Only what was written at or after this time (ns since 1970).
    pub since: Option<i64>,
    /// Only what was written at or before this time; following stops once
    /// it has passed.
    pub until: Option<i64>,
    /// Each line begins with when it was written (`-t`), in docker's
    /// RFC 3339 format with nanoseconds.
    pub timestamps: bool,
}

/// Copies the log at `path`, its rotated files first (oldest first), to
/// `out`/`err`, as `query` chooses. Following, keeps reading until
/// `still_running` says the container is gone and the log is drained,
/// going on to the new file when the log is rotated under it.
pub fn copy_log(
    path: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
    query: LogQuery,
    still_running: &mut dyn FnMut() -> bool,
) -> io::Result<()> {
    let follow = query.follow;
    let mut sink = Sink {
        out,
        err,
        tail: query.tail.map(Tail::new),
        query,
        at_line_start: [true; 2],
    };
    let older = (1..).take_while(|n| rotated(path, *n).exists()).count() as u32;
    for n in (1..=older).rev() {
        if let Ok(mut f) = File::open(rotated(path, n)) {
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            emit_frames(&data, &mut sink)?;
        }
    }
    // Following, a log that is not there yet (or is between a rotation's
    // rename and the new file) is waited for while the container runs.
    let mut file = loop {
        match File::open(path) {
            Ok(f) => break f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !follow || !still_running() {
                    return sink.end_of_backlog();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    // Whether the log at `path` is no longer the file being read.
    let replaced = |file: &File| -> bool {
        match (std::fs::metadata(path), file.metadata()) {
            (Ok(now), Ok(open)) => now.ino() != open.ino() || now.dev() != open.dev(),
            _ => false,
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Reads what is there and writes its complete frames; false at EOF.
    let mut drain = |file: &mut File, sink: &mut Sink| -> io::Result<bool> {
        let n = file.read(&mut buf)?;
        if n > 0 {
            pending.extend_from_slice(&buf[..n]);
            let used = emit_frames(&pending, sink)?;
            pending.drain(..used);
        }
        Ok(n > 0)
    };
    loop {
        if drain(&mut file, &mut sink)? {
            continue;
        }
        // What was there is read: the tail of it is written.
        sink.end_of_backlog()?;
        if !follow {
            break;
        }
        // Check liveness before the final read so nothing written between
        // the last read and the exit is missed.
        let running = still_running();
        if drain(&mut file, &mut sink)? {
            continue;
        }
        // Rotated: the old file is read to its end (the writer never
        // splits a frame between files); go on with the new one. (Between
        // the rotation's rename and the new file the path is missing: the
        // next round looks again.)
        if replaced(&file) {
            if let Ok(f) = File::open(path) {
                file = f;
                continue;
            }
        }
        if !running || query.until.is_some_and(|u| now_nanos() > u) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Writes every complete frame in `data`; returns how many bytes it used.
fn emit_frames(data: &[u8], sink: &mut Sink) -> io::Result<usize> {
    let mut pos = 0;
    while data.len() - pos >= 8 {
        let len = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let timed = data[pos + 1] & TIMED != 0;
        let start = pos + if timed { 16 } else { 8 };
        if data.len() < start + len {
            break;
        }
        let stream = if data[pos] == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let time = timed.then(|| i64::from_be_bytes(data[pos + 8..pos + 16].try_into().unwrap()));
        sink.write(stream, time, &data[start..start + len])?;
        pos = start + len;
    }
    Ok(pos)
}

/// docker's `--timestamps` format; a time the log does not know is
/// docker's zero time.
fn rfc3339_nanos(time: Option<i64>) -> String {
    match time {
        Some(t) => chrono::DateTime::from_timestamp_nanos(t)
            .format("%Y-%m-%dT%H:%M:%S%.9fZ")
            .to_string(),
        None => "0001-01-01T00:00:00.000000000Z".into(),
    }
}

/// Where [`copy_log`] writes: the two streams, what the query's times
/// let through, via a [`Tail`] until the backlog is read.
struct Sink<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    tail: Option<Tail>,
    query: LogQuery,
    /// Whether each stream (stdout, stderr) is at the start of a line,
    /// where a timestamp goes.
    at_line_start: [bool; 2],
}

impl Sink<'_> {
    fn write(&mut self, stream: Stream, time: Option<i64>, payload: &[u8]) -> io::Result<()> {
        // A frame from before logs were timed counts as written at 1970.
        let t = time.unwrap_or(0);
        if self.query.since.is_some_and(|s| t < s) || self.query.until.is_some_and(|u| t > u) {
            return Ok(());
        }
        match &mut self.tail {
            Some(tail) => {
                tail.push(stream, time, payload);
                Ok(())
            }
            None => self.emit(stream, time, payload),
        }
    }

    fn emit(&mut self, stream: Stream, time: Option<i64>, payload: &[u8]) -> io::Result<()> {
        let i = stream as usize - 1;
        let to = match stream {
            Stream::Stderr => &mut *self.err,
            Stream::Stdout => &mut *self.out,
        };
        if self.query.timestamps {
            for piece in payload.split_inclusive(|&b| b == b'\n') {
                if self.at_line_start[i] {
                    write!(to, "{} ", rfc3339_nanos(time))?;
                }
                to.write_all(piece)?;
                self.at_line_start[i] = piece.ends_with(b"\n");
            }
        } else {
            to.write_all(payload)?;
        }
        to.flush()
    }

    /// Writes the lines the tail kept; from now on everything passes.
    fn end_of_backlog(&mut self) -> io::Result<()> {
        if let Some(t) = self.tail.take() {
            for (stream, time, line) in t.lines() {
                self.emit(stream, time, &line)?;
            }
        }
        Ok(())
    }
}

/// A line and when it began: the time of the frame that began it.
type TimedLine = (Stream, Option<i64>, Vec<u8>);

/// The last `keep` lines written, each with its stream (a line ends at
/// `\n`; a stream's unfinished line counts as one).
struct Tail {
    keep: usize,
    lines: std::collections::VecDeque<TimedLine>,
    /// Each stream's line being written (stdout, stderr), and when it began.
    open: [(Option<i64>, Vec<u8>); 2],
}

impl Tail {
    fn new(keep: usize) -> Tail {
        Tail {
            keep,
            lines: Default::default(),
            open: Default::default(),
        }
    }

    fn push(&mut self, stream: Stream, time: Option<i64>, mut payload: &[u8]) {
        let i = stream as usize - 1;
        while let Some(end) = payload.iter().position(|&b| b == b'\n') {
            let (began, mut line) = std::mem::take(&mut self.open[i]);
            let began = if line.is_empty() { time } else { began };
            line.extend_from_slice(&payload[..=end]);
            self.lines.push_back((stream, began, line));
            if self.lines.len() > self.keep {
                self.lines.pop_front();
            }
            payload = &payload[end + 1..];
        }
        if !payload.is_empty() {
            let open = &mut self.open[i];
            if open.1.is_empty() {
                open.0 = time;
            }
            open.1.extend_from_slice(payload);
        }
    }

    fn lines(mut self) -> Vec<TimedLine> {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let (began, open) = std::mem::take(&mut self.open[i]);
            if !open.is_empty() {
                self.lines.push_back((stream, began, open));
            }
        }
        let skip = self.lines.len().saturating_sub(self.keep);
        self.lines.into_iter().skip(skip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_streams_apart_and_bytes_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = LogWriter::create(&path, LogLimits::default()).unwrap();
        w.write(Stream::Stdout, b"hello ").unwrap();
        w.write(Stream::Stderr, &[0xff, 0x00, b'\n']).unwrap();
        w.write(Stream::Stdout, b"world\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        copy_log(&path, &mut out, &mut err, LogQuery::default(), &mut || {
            false
        })
        .unwrap();
        assert_eq!(out, b"hello world\n");
        assert_eq!(err, vec![0xff, 0x00, b'\n']);
    }

    #[test]
    fn tail_keeps_the_last_lines_of_both_streams_and_then_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // Frames of 16 header bytes and the payload: two files.
        let limits = LogLimits {
            max_size: 60,
            max_files: 3,
        };
        let mut w = LogWriter::create(&path, limits).unwrap();
        w.write(Stream::Stdout, b"one\ntwo\nthr").unwrap();
        w.write(Stream::Stderr, b"err1\n").unwrap();
        w.write(Stream::Stdout, b"ee\nfour\n").unwrap();
        w.write(Stream::Stderr, b"err2\nerr-unfinished").unwrap();
        assert!(rotated(&path, 1).exists(), "a rotated file is read too");
        let tail = |n| LogQuery {
            tail: Some(n),
            ..Default::default()
        };
        let tail_of = |n| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            copy_log(&path, &mut out, &mut err, tail(n), &mut || false).unwrap();
            (
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        assert_eq!(tail_of(0), (String::new(), String::new()));
        assert_eq!(tail_of(2), (String::new(), "err2\nerr-unfinished".into()));
        assert_eq!(
            tail_of(4),
            ("three\nfour\n".into(), "err2\nerr-unfinished".into())
        );
        assert_eq!(
            tail_of(100),
            (
                "one\ntwo\nthree\nfour\n".into(),
                "err1\nerr2\nerr-unfinished".into()
            )
        );
        // Following: the tail of what is there, then everything new.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut w = Some(w);
        let follow = LogQuery {
            follow: true,
            ..tail(1)
        };
        copy_log(&path, &mut out, &mut err, follow, &mut || {
            if let Some(mut w) = w.take() {
                w.write(Stream::Stdout, b"five\nsix\n").unwrap();
                return true;
            }
            false
        })
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "five\nsix\n");
        assert_eq!(String::from_utf8(err).unwrap(), "err-unfinished");
    }

    #[test]
    fn the_log_rotates_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: 100,
            max_files: 3,
        };
        let mut w = LogWriter::create(&path, limits).unwrap();
        // 40 lines of 10 bytes: 26-byte frames, 3 per 100-byte file (the
        // newest file holds line 39 alone)
        for i in 0..40 {
            w.write(Stream::Stdout, format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["container.log", "container.log.1", "container.log.2"]
        );
        for f in &files {
            assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() <= 100);
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        copy_log(&path, &mut out, &mut err, LogQuery::default(), &mut || {
            false
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let want: String = (33..40).map(|i| format!("line {i:04}\n")).collect();
        assert_eq!(text, want);
        // One file: the log starts again.
        let one = dir.path().join("one.log");
        let limits = LogLimits {
            max_size: 60,
            max_files: 1,
        };
        let mut w = LogWriter::create(&one, limits).unwrap();
        for i in 0..5 {
            w.write(Stream::Stderr, format!("e{i}\n").as_bytes())
                .unwrap();
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        copy_log(&one, &mut out, &mut err, LogQuery::default(), &mut || false).unwrap();
        assert_eq!(err, b"e3\ne4\n");
        assert!(!dir.path().join("one.log.1").exists());
    }

    #[test]
    fn following_goes_on_to_the_new_file_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        let limits = LogLimits {
            max_size: 30,
            max_files: 2,
        };
        let mut w = LogWriter::create(&path, limits).unwrap();
        w.write(Stream::Stdout, b"first\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut polls = 0;
        let follow = LogQuery {
            follow: true,
            ..Default::default()
        };
        copy_log(&path, &mut out, &mut err, follow, &mut || {
            // The container writes on while it is followed, then exits.
            polls += 1;
            match polls {
                1 => w.write(Stream::Stdout, b"second line\n").unwrap(),
                2 => w.write(Stream::Stdout, b"third line\n").unwrap(),
                _ => return false,
            }
            true
        })
        .unwrap();
        assert_eq!(out, b"first\nsecond line\nthird line\n");
    }

    /// A frame as logs were written before they were timed.
    fn untimed_frame(stream: Stream, data: &[u8]) -> Vec<u8> {
        let mut f = vec![stream as u8, 0, 0, 0];
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn times_choose_frames_and_prefix_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // An older untimed frame, then timed ones a moment apart.
        std::fs::write(&path, untimed_frame(Stream::Stdout, b"old\n")).unwrap();
        let mut w = LogWriter::create(&path, LogLimits::default()).unwrap();
        w.write(Stream::Stdout, b"one\ntw").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let between = now_nanos();
        std::thread::sleep(Duration::from_millis(5));
        w.write(Stream::Stdout, b"o\nthree\n").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        let copy = |q: LogQuery| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            copy_log(&path, &mut out, &mut err, q, &mut || false).unwrap();
            (
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        let all = copy(LogQuery::default());
        assert_eq!(all, ("old\none\ntwo\nthree\n".into(), "err\n".into()));
        let since = LogQuery {
            since: Some(between),
            ..Default::default()
        };
        assert_eq!(copy(since), ("o\nthree\n".into(), "err\n".into()));
        let until = LogQuery {
            until: Some(between),
            ..Default::default()
        };
        assert_eq!(copy(until), ("old\none\ntw".into(), String::new()));
        // Each line starts with the time of the frame that began it; a
        // line continued by a later frame gets no second one.
        let (out, err) = copy(LogQuery {
            timestamps: true,
            ..Default::default()
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "0001-01-01T00:00:00.000000000Z old");
        let stamp = |l: &str| {
            let (t, rest) = l.split_once(' ').unwrap();
            let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
            (t.timestamp_nanos_opt().unwrap(), rest.to_string())
        };
        let (t1, l1) = stamp(lines[1]);
        let (t2, l2) = stamp(lines[2]);
        let (t3, l3) = stamp(lines[3]);
        assert_eq!(
            (l1.as_str(), l2.as_str(), l3.as_str()),
            ("one", "two", "three")
        );
        assert!(t1 == t2 && t2 < between && between < t3, "{out}");
        assert!(lines[1].split(' ').next().unwrap().len() == 30, "{out}");
        assert!(err.ends_with(" err\n"), "{err}");
        // With --tail, the kept lines keep their times.
        let (out, _) = copy(LogQuery {
            timestamps: true,
            tail: Some(2),
            ..Default::default()
        });
        assert!(out.ends_with(" three\n") && !out.contains("two"), "{out}");
    }

    #[test]
    fn a_truncated_last_frame_is_not_emitted() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let data = [1u8, 0, 0, 0, 0, 0, 0, 5, b'a', b'b'];
        let mut sink = Sink {
            out: &mut out,
            err: &mut err,
            tail: None,
            query: LogQuery::default(),
            at_line_start: [true; 2],
        };
        let used = emit_frames(&data, &mut sink).unwrap();
        assert_eq!(used, 0);
        // A timed frame whose time is there but not all of its payload.
        let data = [1u8, TIMED, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, b'a'];
        let used = emit_frames(&data, &mut sink).unwrap();
        assert_eq!(used, 0);
        assert!(out.is_empty());
    }
}
