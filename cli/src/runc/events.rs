//! `events ID`: runc's, a container's resource statistics, once or at an
//! interval. Without an ID it is docker's `events` (crate::events).

use std::time::Duration;

use anyhow::{anyhow, Result};
use capsa_shim::oci;
use capsa_shim::Roots;
use clap::Args;
use serde_json::json;

use super::{coded, state_or_missing, EXIT_RUNC_ERROR};

#[derive(Args)]
pub struct EventsArgs {
    /// Print the container's statistics once and exit.
    #[arg(long)]
    stats: bool,
    /// How often to print statistics (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    interval: String,
    /// docker: events from this time on (RFC 3339, Unix seconds, or a
    /// duration ago such as 10m).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// docker: stop at this time (as --since) instead of following.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// docker: container=NAME|ID, event=ACTION, image=NAME, type=container.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// docker: json, or a template over docker's event ({{.Action}},
    /// {{.Actor.Attributes.name}}, …).
    #[arg(long)]
    format: Option<String>,
    /// runc: the container ID. Without it, docker's event stream.
    id: Option<String>,
}

/// runc's `{"type":"stats","id":…,"data":{…}}`, with the fields of runc's
/// `types.Stats` that capsa measures.
fn stats_event(id: &str, s: &oci::Stats) -> serde_json::Value {
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {"usage": {
                "total": s.cpu.usage_usec * 1000,
                "percpu": [],
                "kernel": s.cpu.system_usec * 1000,
                "user": s.cpu.user_usec * 1000,
            }},
            "memory": {"usage": {
                "usage": s.memory.usage_bytes,
                // runc reports "no limit" as the largest value.
                "limit": s.memory.limit_bytes.unwrap_or(u64::MAX),
            }},
            "pids": {"current": s.pids.current},
        }
    })
}

fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || anyhow!("--interval takes a duration like 5s, 500ms or 1m, not {s:?}");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if secs <= 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn events(roots: &Roots, a: EventsArgs) -> Result<i32> {
    let Some(id) = a.id.clone() else {
        let docker = crate::events::Query {
            since: a.since,
            until: a.until,
            filters: a.filter,
            format: a.format,
        };
        return crate::events::events(roots, docker);
    };
    let run = || -> Result<i32> {
        let interval = parse_interval(&a.interval)?;
        state_or_missing(roots, &id)?;
        loop {
            let s = oci::stats(roots, &id)?;
            println!("{}", stats_event(&id, &s));
            if a.stats {
                return Ok(0);
            }
            std::thread::sleep(interval);
            match oci::state(roots, &id) {
                Ok(st) if st.status != "stopped" => {}
                _ => return Ok(0),
            }
        }
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("x").is_err());
        assert!(parse_interval("0s").is_err());
    }
}
