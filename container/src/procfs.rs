//! What `capsa top` and `capsa stats` read from /proc, on whichever kernel
//! runs the container: the host's in container mode, the guest's (through
//! capsa-agent) in VM mode, so both modes report the same fields.

use std::fs;

use capsa_proto::{NetStats, ProcessInfo};

/// A process as `ps -ef` shows it; None when it is gone.
pub fn process(pid: i32) -> Option<ProcessInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let boot = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| field_after(&s, "btime"))
        .unwrap_or(0);
    parse_process(pid, &stat, &status, &cmdline, ticks, boot)
}

fn parse_process(
    pid: i32,
    stat: &str,
    status: &str,
    cmdline: &[u8],
    ticks: u64,
    boot: u64,
) -> Option<ProcessInfo> {
    // The name is in parentheses and may itself hold ") ".
    let (head, rest) = stat.rsplit_once(") ")?;
    let name = head.split_once(" (")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(ProcessInfo {
        pid,
        ppid: num(4)? as i32,
        uid,
        started: (boot + num(22)? / ticks) as i64,
        cpu_ms: (num(14)? + num(15)?) * 1000 / ticks,
        tty: tty_name(num(7)?),
        cmd: if args.is_empty() {
            format!("[{name}]")
        } else {
            args.join(" ")
        },
    })
}

/// `ps`'s name for a `tty_nr` from /proc/PID/stat.
fn tty_name(nr: u64) -> String {
    let major = (nr >> 8) & 0xfff;
    let minor = (nr & 0xff) | ((nr >> 12) & 0xfff00);
    match major {
        0 => "?".into(),
        136..=143 => format!("pts/{}", minor + (major - 136) * 256),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        _ => "?".into(),
    }
}

/// The traffic of the network namespace `pid` is in, every interface but
/// loopback.
pub fn net_dev(pid: i32) -> NetStats {
    fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .map(|s| parse_net_dev(&s))
        .unwrap_or_default()
}

fn parse_net_dev(text: &str) -> NetStats {
    let mut out = NetStats::default();
    // Two header lines, then "  name: rx_bytes … (8 receive fields) tx_bytes …".
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let c: Vec<u64> = counters
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        out.rx_bytes += c.first().copied().unwrap_or(0);
        out.tx_bytes += c.get(8).copied().unwrap_or(0);
    }
    out
}

fn field_after(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_reads_as_ps_shows_it() {
        let stat =
            "42 (my (odd) name) S 7 42 42 34816 42 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1000 0 0";
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\n";
        let p = parse_process(
            42,
            stat,
            status,
            b"python3\0-m\0http.server\0",
            100,
            1_700_000_000,
        )
        .unwrap();
        assert_eq!((p.pid, p.ppid, p.uid), (42, 7, 1000));
        assert_eq!(p.started, 1_700_000_010, "boot time + 1000 ticks at 100 Hz");
        assert_eq!(p.cpu_ms, 3000, "utime + stime = 300 ticks");
        assert_eq!(p.tty, "pts/0", "major 136 minor 0");
        assert_eq!(p.cmd, "python3 -m http.server");
        let zombie = parse_process(43, stat, status, b"", 100, 0).unwrap();
        assert_eq!(zombie.cmd, "[my (odd) name]");
        assert!(parse_process(44, "garbage", status, b"", 100, 0).is_none());
    }

    #[test]
    fn net_dev_sums_every_interface_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:    5000      10    0    0    0     0          0         0     5000      10    0    0    0     0       0          0\n  \
            eth0:    1200       9    0    0    0     0          0         0      800       7    0    0    0     0       0          0\n  \
            eth1:      30       1    0    0    0     0          0         0       20       1    0    0    0     0       0          0\n";
        let s = parse_net_dev(text);
        assert_eq!((s.rx_bytes, s.tx_bytes), (1230, 820));
    }

    #[test]
    fn tty_numbers_decode() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name((136 << 8) | 3), "pts/3");
        assert_eq!(tty_name((4 << 8) | 1), "tty1");
    }
}
