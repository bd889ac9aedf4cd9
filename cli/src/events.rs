//! docker's `events`: what happened to `capsa run`/`create` containers
//! (capsa_shim::events), from `--since`, filtered, as docker prints it;
//! without `--until` it follows, as `docker events` does.

use std::io::Write;

use anyhow::Result;
use capsa_shim::events::{self, Event};
use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};
use chrono::Utc;

pub struct Query {
    pub since: Option<String>,
    pub until: Option<String>,
    pub filters: Vec<String>,
    pub format: Option<String>,
}

fn refuse(msg: String) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, msg).into()
}

/// docker's times: RFC 3339, Unix seconds (with a fraction), or a
/// duration before now (`10m`, `1h`, `30s`). In nanoseconds.
pub(crate) fn parse_time(flag: &str, s: &str, now: i64) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_nanos_opt().unwrap_or_default());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as i64);
    }
    // docker's "duration ago": Go's syntax, 0m (now) and 1h30m included.
    match capsa_shim::build::go_duration(s) {
        Some(ago) => Ok(now - ago as i64),
        None => Err(refuse(format!(
            "{flag} takes a time (RFC 3339 such as 2026-01-02T15:04:05Z, Unix seconds, or a duration ago such as 10m), not {s:?}"
        ))),
    }
}

/// `-f KEY=VALUE`s: values of one key are alternatives, keys all apply.
struct Filters(Vec<(String, String)>);

impl Filters {
    fn parse(flags: &[String]) -> Result<Filters> {
        let mut out = Vec::new();
        for f in flags {
            match f.split_once('=') {
                Some((k @ ("container" | "event" | "image" | "type"), v)) if !v.is_empty() => {
                    out.push((k.to_string(), v.to_string()))
                }
                _ => {
                    return Err(refuse(format!(
                        "--filter {f:?}: use container=NAME|ID, event=ACTION, image=NAME or type=container"
                    )))
                }
            }
        }
        Ok(Filters(out))
    }

    fn matches(&self, e: &Event) -> bool {
        let attr = |k: &str| e.attributes.get(k).map(String::as_str).unwrap_or("");
        let one = |key: &str, value: &str| match key {
            "container" => attr("name") == value || e.id.starts_with(value),
            "event" => e.action == value,
            "image" => attr("image") == value,
            _ => value == "container",
        };
        ["container", "event", "image", "type"].iter().all(|key| {
            let mut wanted = self.0.iter().filter(|(k, _)| k == key).peekable();
            wanted.peek().is_none() || wanted.any(|(_, v)| one(key, v))
        })
    }
}

pub fn events(roots: &Roots, q: Query) -> Result<i32> {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let since = match &q.since {
        Some(s) => parse_time("--since", s, now)?,
        // docker: only what happens from now on.
        None => now,
    };
    let until = q
        .until
        .as_deref()
        .map(|u| parse_time("--until", u, now))
        .transpose()?;
    let filters = Filters::parse(&q.filters)?;
    let format = q.format.as_deref().map(str::trim);
    // Fail on a bad template before waiting for the first event.
    if let Some(t) = format.filter(|t| !is_json(t)) {
        let sample = Event {
            time_nano: now,
            action: "create".into(),
            id: String::new(),
            attributes: Default::default(),
        };
        crate::format::fill_json(t, &sample.to_docker_json())?;
    }
    let mut out = std::io::stdout().lock();
    let result = events::read(roots, since, until, |e| {
        if !filters.matches(e) {
            return Ok(());
        }
        let line = match format {
            None => e.to_line(),
            Some(t) if is_json(t) => e.to_docker_json().to_string(),
            Some(t) => crate::format::fill_json(t, &e.to_docker_json())?,
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    });
    match result {
        // A reader that went away (`| head`) ends the stream quietly.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(0)
        }
        other => other.map(|()| 0),
    }
}

fn is_json(t: &str) -> bool {
    t == "json" || t.replace(' ', "") == "{{json.}}"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_docker_takes_them() {
        let now = 1_000_000_000_000_000_000;
        assert_eq!(
            parse_time("--since", "2001-09-09T01:46:40Z", now).unwrap(),
            now
        );
        assert_eq!(parse_time("--since", "1.5", now).unwrap(), 1_500_000_000);
        assert_eq!(
            parse_time("--since", "10m", now).unwrap(),
            now - 600_000_000_000
        );
        assert!(parse_time("--since", "yesterday", now).is_err());
        // Go's durations, as docker takes them: 0m is now.
        assert_eq!(parse_time("--until", "0m", now).unwrap(), now);
        assert_eq!(
            parse_time("--since", "1h30m", now).unwrap(),
            now - 5_400_000_000_000
        );
    }

    #[test]
    fn filters_of_one_key_are_alternatives() {
        let e = Event {
            time_nano: 0,
            action: "die".into(),
            id: "abcdef".into(),
            attributes: [("name", "web"), ("image", "demo")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        };
        let f = |flags: &[&str]| {
            let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            Filters::parse(&flags).unwrap().matches(&e)
        };
        assert!(f(&[]));
        assert!(f(&["event=start", "event=die"]));
        assert!(f(&["container=web", "image=demo"]));
        assert!(f(&["container=abc"]));
        assert!(!f(&["container=web", "event=start"]));
        assert!(!f(&["type=image"]));
        assert!(Filters::parse(&["label=x".into()]).is_err());
    }
}
