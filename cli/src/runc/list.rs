//! `list`: the containers made by `create`, as runc prints them.

use anyhow::Result;
use capsa_shim::oci;
use capsa_shim::Roots;
use chrono::SecondsFormat;
use clap::Args;

use super::{coded, Format, EXIT_RUNC_ERROR};

#[derive(Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    format: Format,
    /// Only print container IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn list(roots: &Roots, a: ListArgs) -> Result<i32> {
    let states = oci::list(roots).map_err(coded(EXIT_RUNC_ERROR))?;
    if a.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    if a.format == Format::Json {
        // runc prints `null` for no containers (a nil Go slice).
        if states.is_empty() {
            println!("null");
        } else {
            println!("{}", serde_json::to_string(&states)?);
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.pid.to_string(),
                s.status.clone(),
                s.bundle.display().to_string(),
                s.created.to_rfc3339_opts(SecondsFormat::Nanos, true),
                s.owner.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        tab_table(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &rows
        )
    );
    Ok(0)
}

/// Go's tabwriter as runc sets it up for `list` (min width 12, padding 3);
/// the last column is not padded.
fn tab_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut widths = vec![0usize; n];
    let all = std::iter::once(header.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
        .collect::<Vec<_>>();
    for r in &all {
        for (i, c) in r.iter().enumerate().take(n - 1) {
            widths[i] = widths[i].max((c.chars().count() + 3).max(12));
        }
    }
    let mut out = String::new();
    for r in &all {
        for (i, c) in r.iter().enumerate() {
            if i + 1 < n {
                out.push_str(&format!("{c:<w$}", w = widths[i]));
            } else {
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_table_is_aligned_like_runc() {
        let t = tab_table(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &[vec![
                "c1".into(),
                "42".into(),
                "running".into(),
                "/b".into(),
                "2024-01-01T00:00:00Z".into(),
                "root".into(),
            ]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID          PID         STATUS      BUNDLE      CREATED                OWNER"
        );
        assert!(lines[1].starts_with("c1          42          running     /b          2024"));
    }
}
