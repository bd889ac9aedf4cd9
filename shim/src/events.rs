//! docker's `events` for the containers `capsa run` and `capsa create`
//! make: each change of a container (create, start, kill, oom, die, stop,
//! pause, unpause, rename, restart, destroy) is one JSON line appended to
//! `events.jsonl` in the volatile state directory, so, as docker's, the
//! history is lost at reboot. A bundle's containers (an engine's) are not
//! logged: their engine has events of its own.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::paths::Roots;
use crate::record::Record;

/// Past this size the log is moved to `events.jsonl.1` (the one before it
/// is dropped), so it never grows without bound.
const ROTATE_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Nanoseconds since the epoch.
    pub time_nano: i64,
    pub action: String,
    /// The container's ID.
    pub id: String,
    /// docker's actor attributes: image and name always, and exitCode
    /// (die), signal (kill) or oldName (rename).
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    /// docker's JSON message (`docker events --format '{{json .}}'`).
    pub fn to_docker_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.action,
            "id": self.id,
            "from": self.attributes.get("image").cloned().unwrap_or_default(),
            "Type": "container",
            "Action": self.action,
            "Actor": {"ID": self.id, "Attributes": self.attributes},
            "scope": "local",
            "time": self.time_nano.div_euclid(1_000_000_000),
            "timeNano": self.time_nano,
        })
    }

    /// docker's line: `TIME container ACTION ID (k=v, …)`.
    pub fn to_line(&self) -> String {
        let time =
            chrono::DateTime::from_timestamp_nanos(self.time_nano).format("%Y-%m-%dT%H:%M:%S%.9fZ");
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{time} container {} {} ({})",
            self.action,
            self.id,
            attrs.join(", ")
        )
    }
}

fn log_path(roots: &Roots) -> PathBuf {
    roots.run.join("events.jsonl")
}

/// Logs `action` on `rec`, with `extra` attributes. Best effort: an event
/// that cannot be written is a warning, never a failed operation.
pub fn emit(roots: &Roots, rec: &Record, action: &str, extra: &[(&str, String)]) {
    if rec.bundle.is_some() {
        return;
    }
    let mut attributes = BTreeMap::from([
        ("image".to_string(), rec.image.clone()),
        ("name".to_string(), rec.name.clone()),
    ]);
    for (k, v) in extra {
        attributes.insert(k.to_string(), v.clone());
    }
    let event = Event {
        time_nano: Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        action: action.to_string(),
        id: rec.id.clone(),
        attributes,
    };
    if let Err(e) = append(roots, &event) {
        tracing::warn!("logging the {action} event of {}: {e:#}", rec.id);
    }
}

fn append(roots: &Roots, event: &Event) -> Result<()> {
    let path = log_path(roots);
    fs::create_dir_all(&roots.run)?;
    if fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        fs::rename(&path, path.with_extension("jsonl.1"))?;
    }
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    // One write of one line with O_APPEND: writers never interleave.
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(&line)?;
    Ok(())
}

/// The events from `since` (nanoseconds) on, in order: `until` None
/// follows the log (as `tail -f`) and never returns; otherwise it returns
/// once the clock passes `until`. `each` gets every event in range.
pub fn read(
    roots: &Roots,
    since: i64,
    until: Option<i64>,
    mut each: impl FnMut(&Event) -> Result<()>,
) -> Result<()> {
    let path = log_path(roots);
    let in_range = |e: &Event| e.time_nano >= since && until.is_none_or(|u| e.time_nano <= u);
    // The rotated log first: it holds the older events.
    if let Ok(old) = File::open(path.with_extension("jsonl.1")) {
        for e in parse_lines(BufReader::new(old)) {
            if in_range(&e) {
                each(&e)?;
            }
        }
    }
    let mut offset = 0;
    let mut inode = None;
    loop {
        // Read what is there, then wait for more; a rotation (a new inode)
        // starts the new file from its beginning.
        if let Ok(f) = File::open(&path) {
            let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata()?);
            if inode.is_some_and(|i| i != ino) {
                offset = 0;
            }
            inode = Some(ino);
            let mut reader = BufReader::new(f);
            reader.seek(SeekFrom::Start(offset))?;
            let mut line = String::new();
            // Only whole lines: a writer's line may be half there.
            while reader.read_line(&mut line)? > 0 && line.ends_with('\n') {
                offset += line.len() as u64;
                if let Ok(e) = serde_json::from_str::<Event>(&line) {
                    if in_range(&e) {
                        each(&e)?;
                    }
                }
                line.clear();
            }
        }
        let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        if until.is_some_and(|u| now > u) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parse_lines(r: impl BufRead) -> impl Iterator<Item = Event> {
    r.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, extra: &[(&str, &str)]) -> Event {
        let mut attributes = BTreeMap::from([
            ("image".to_string(), "demo".to_string()),
            ("name".to_string(), "web".to_string()),
        ]);
        for (k, v) in extra {
            attributes.insert(k.to_string(), v.to_string());
        }
        Event {
            time_nano: 1_764_853_200_123_456_789,
            action: action.into(),
            id: "abc".into(),
            attributes,
        }
    }

    #[test]
    fn events_print_as_dockers() {
        let e = event("die", &[("exitCode", "3")]);
        assert_eq!(
            e.to_line(),
            "2025-12-04T13:00:00.123456789Z container die abc (exitCode=3, image=demo, name=web)"
        );
        let j = e.to_docker_json();
        assert_eq!(j["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!((&j["status"], &j["from"]), (&"die".into(), &"demo".into()));
        assert_eq!(j["time"], 1_764_853_200);
    }

    #[test]
    fn the_log_is_read_in_range_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::new(Some(dir.path()));
        let mut old = event("create", &[]);
        old.time_nano = 10;
        append(&roots, &old).unwrap();
        fs::rename(log_path(&roots), log_path(&roots).with_extension("jsonl.1")).unwrap();
        for (t, a) in [(20, "start"), (30, "die")] {
            let mut e = event(a, &[]);
            e.time_nano = t;
            append(&roots, &e).unwrap();
        }
        let mut seen = Vec::new();
        read(&roots, 0, Some(25), |e| {
            seen.push(e.action.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["create", "start"]);
    }
}
