//! Human-readable output: aligned tables, "5 minutes ago", sizes.

use chrono::{DateTime, Utc};

/// Prints rows as columns separated by at least three spaces, like docker.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn ago(t: DateTime<Utc>) -> String {
    format!("{} ago", duration(Utc::now() - t))
}

pub fn duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        // docker's units.HumanDuration from here on.
        172_800..=1_209_599 => format!("{} days", s / 86400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// docker's sizes of images, layers, traffic and I/O: decimal units,
/// three significant digits ("2.1MB", "1.54kB").
pub fn size(bytes: u64) -> String {
    scaled(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB"], 3)
}

/// docker's memory sizes: binary units, four significant digits
/// ("1.544MiB").
pub fn binary_size(bytes: u64) -> String {
    scaled(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"], 4)
}

/// Go's `%.Ng` of the value in the largest unit below `step`: N
/// significant digits, trailing zeros dropped.
fn scaled(bytes: u64, step: f64, units: &[&str], digits: i32) -> String {
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= step && unit + 1 < units.len() {
        v /= step;
        unit += 1;
    }
    let decimals = (digits - 1 - v.max(1.0).log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[unit])
}

pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_docker() {
        assert_eq!(size(4_300_000), "4.3MB");
        assert_eq!(size(512), "512B");
        assert_eq!(size(1536), "1.54kB");
        assert_eq!(size(12_345_678), "12.3MB");
        assert_eq!(binary_size(0), "0B");
        assert_eq!(binary_size(1536), "1.5KiB");
        assert_eq!(binary_size(1_619_000), "1.544MiB");
        assert_eq!(binary_size(512 << 20), "512MiB");
        assert_eq!(duration(chrono::Duration::seconds(5)), "5 seconds");
        assert_eq!(duration(chrono::Duration::seconds(300)), "5 minutes");
        assert_eq!(duration(chrono::Duration::days(3)), "3 days");
        assert_eq!(duration(chrono::Duration::days(20)), "2 weeks");
        assert_eq!(duration(chrono::Duration::days(90)), "3 months");
        assert_eq!(duration(chrono::Duration::days(1068)), "2 years");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }
}
