//! `--userns`: a container in a user namespace of its own (`auto`) runs
//! its root as an unprivileged host uid. Each such container gets a range
//! of host uids and gids no other container of the same state root holds,
//! carved out of capsa's subordinate range: the `capsa:START:COUNT` line of
//! /etc/subuid and /etc/subgid (podman's `containers` line, for capsa),
//! which capsa adds to both files the first time it needs one.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::LinuxIdMapping;

use crate::record::Record;

/// The name capsa's range goes by in /etc/subuid and /etc/subgid.
const SUBID_NAME: &str = "capsa";
/// The range capsa claims when the files have none: 4096 containers of
/// 65536 ids, clear of the login users' ranges (100000…) and of the
/// jailed VMMs' uids (0x60000000 + PID).
const DEFAULT_RANGE: (u32, u32) = (0x2000_0000, 0x1000_0000);
const JAIL_UIDS: u32 = 0x6000_0000;
/// Each container's ids when `auto` names no size: every 16-bit id
/// (nobody, 65534, included), as podman gives an image that needs them.
pub const DEFAULT_SIZE: u32 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The host's user namespace (docker's default).
    #[default]
    Host,
    /// A namespace of its own; `size` ids (default [`DEFAULT_SIZE`]).
    Auto { size: Option<u32> },
    /// A namespace of its own with the range the user gave (podman's
    /// `--uidmap`/`--gidmap`, see [`given`]).
    Map(LinuxIdMapping),
}

/// podman's `--uidmap CONTAINER:HOST:SIZE` and `--gidmap`, as far as capsa
/// maps ids: one range from container id 0, the same for uids and gids
/// (`--gidmap` left out is `--uidmap`'s, as podman takes it).
pub fn given(uidmap: &str, gidmap: Option<&str>) -> Result<LinuxIdMapping> {
    let parse = |flag: &str, s: &str| -> Result<(u32, u32, u32)> {
        let bad = || anyhow::anyhow!("{flag} {s:?}: give CONTAINER:HOST:SIZE, e.g. 0:300000:65536");
        let n: Vec<u32> = s
            .split(':')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        let [c, h, size] = n[..] else {
            return Err(bad());
        };
        if c != 0 {
            bail!("{flag} {s:?}: capsa maps one range from container id 0 (0:HOST:SIZE)");
        }
        if size == 0 || h.checked_add(size).is_none() {
            bail!("{flag} {s:?}: SIZE must be at least 1 and HOST+SIZE within 2^32");
        }
        Ok((c, h, size))
    };
    let (c, h, size) = parse("--uidmap", uidmap)?;
    if let Some(g) = gidmap {
        if parse("--gidmap", g)? != (c, h, size) {
            bail!(
                "--gidmap {g:?}: capsa maps uids and gids alike: give --uidmap's range ({uidmap})"
            );
        }
    }
    Ok(oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(c)
        .host_id(h)
        .size(size)
        .build()?)
}

/// A given range (`--uidmap`) that no other container of the root holds
/// any of: tenants sharing host ids could reach each other's processes and
/// files.
pub fn claim(records: &[Record], map: LinuxIdMapping) -> Result<LinuxIdMapping> {
    let (a, b) = host_ids(&map);
    for r in records {
        if let Some(m) = r.userns {
            let (c, d) = host_ids(&m);
            if a < d && c < b {
                bail!(
                    "--uidmap 0:{}:{}: host ids {c}…{} are container {}'s already; give a range no container holds",
                    map.host_id(),
                    map.size(),
                    d - 1,
                    r.name
                );
            }
        }
    }
    Ok(map)
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "--userns {s:?}: expected host, auto or auto:size=N (N ids, 1 to {})",
                DEFAULT_RANGE.1
            )
        };
        match s {
            "" | "host" => Ok(Mode::Host),
            "auto" => Ok(Mode::Auto { size: None }),
            _ => {
                let n = s.strip_prefix("auto:size=").ok_or_else(bad)?;
                let n: u32 = n.parse().map_err(|_| bad())?;
                if n == 0 || n > DEFAULT_RANGE.1 {
                    return Err(bad());
                }
                Ok(Mode::Auto { size: Some(n) })
            }
        }
    }
}

/// The host ids `map` holds, as `[start, end)`.
fn host_ids(map: &LinuxIdMapping) -> (u64, u64) {
    let start = map.host_id() as u64;
    (start, start + map.size() as u64)
}

/// A range for a new container that none of `records` (the root's
/// containers) holds. Call with the containers lock held, and keep the
/// range in the new record before the lock goes.
pub fn allocate(records: &[Record], size: Option<u32>) -> Result<LinuxIdMapping> {
    let size = size.unwrap_or(DEFAULT_SIZE);
    let (start, count) = capsa_range(Path::new("/etc/subuid"), Path::new("/etc/subgid"))?;
    let mut used: Vec<(u64, u64)> = records
        .iter()
        .filter_map(|r| r.userns.as_ref().map(host_ids))
        .collect();
    used.sort();
    let host = first_fit(
        start as u64,
        start as u64 + count as u64,
        size as u64,
        &used,
    )
    .with_context(|| {
        format!(
            "capsa's user namespace range ({SUBID_NAME}:{start}:{count} in /etc/subuid) has no \
                 {size} ids left: remove containers that use --userns=auto, or widen the range"
        )
    })?;
    Ok(oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(host as u32)
        .size(size)
        .build()?)
}

/// The lowest start of `size` ids in `[start, end)` that overlaps none of
/// `used` (sorted).
fn first_fit(start: u64, end: u64, size: u64, used: &[(u64, u64)]) -> Option<u64> {
    let mut at = start;
    for &(a, b) in used {
        if a >= at + size {
            break;
        }
        at = at.max(b);
    }
    (at + size <= end).then_some(at)
}

/// capsa's `(start, count)`: its line in `subuid`, which `subgid` must
/// match; both are added when neither has one.
fn capsa_range(subuid: &Path, subgid: &Path) -> Result<(u32, u32)> {
    let read = |p: &Path| match fs::read_to_string(p) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let (uids, gids) = (read(subuid)?, read(subgid)?);
    match (line_of(&uids)?, line_of(&gids)?) {
        (Some(u), Some(g)) if u == g => Ok(u),
        (None, None) => {
            let range = free_range(&uids, &gids).with_context(|| {
                format!(
                    "no room for capsa's user namespaces below uid {JAIL_UIDS:#x}: add a line \
                     `{SUBID_NAME}:START:COUNT` to {} and {}",
                    subuid.display(),
                    subgid.display()
                )
            })?;
            let line = format!("{SUBID_NAME}:{}:{}\n", range.0, range.1);
            for p in [subuid, subgid] {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?;
                f.write_all(line.as_bytes())
                    .with_context(|| format!("adding capsa's range to {}", p.display()))?;
            }
            Ok(range)
        }
        _ => bail!(
            "capsa's lines in {} and {} differ: give `{SUBID_NAME}:` the same START:COUNT in both",
            subuid.display(),
            subgid.display()
        ),
    }
}

/// The `capsa:START:COUNT` of a subid file, checked.
fn line_of(text: &str) -> Result<Option<(u32, u32)>> {
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() != 3 || f[0] != SUBID_NAME {
            continue;
        }
        let (Ok(start), Ok(count)) = (f[1].parse::<u32>(), f[2].parse::<u32>()) else {
            bail!("capsa's subordinate id line {line:?} is not NAME:START:COUNT");
        };
        if start == 0 || count == 0 || start.checked_add(count).is_none() {
            bail!("capsa's subordinate id line {line:?} is out of range");
        }
        return Ok(Some((start, count)));
    }
    Ok(None)
}

/// [`DEFAULT_RANGE`], or the same count after every range the files
/// already hold, if that still ends below the jailed VMMs' uids.
fn free_range(uids: &str, gids: &str) -> Option<(u32, u32)> {
    let (start, count) = DEFAULT_RANGE;
    let taken: Vec<(u64, u64)> = uids
        .lines()
        .chain(gids.lines())
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            let (a, n) = (
                f.get(1)?.parse::<u64>().ok()?,
                f.get(2)?.parse::<u64>().ok()?,
            );
            Some((a, a + n))
        })
        .collect();
    let overlaps = |a: u64| taken.iter().any(|&(s, e)| s < a + count as u64 && a < e);
    if !overlaps(start as u64) {
        return Some((start, count));
    }
    let after = taken.iter().map(|&(_, e)| e).max()?;
    let at = after.div_ceil(65536) * 65536;
    (at + count as u64 <= JAIL_UIDS as u64).then_some((at as u32, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_podman_takes_them() {
        assert_eq!("host".parse::<Mode>().unwrap(), Mode::Host);
        assert_eq!("".parse::<Mode>().unwrap(), Mode::Host);
        assert_eq!("auto".parse::<Mode>().unwrap(), Mode::Auto { size: None });
        assert_eq!(
            "auto:size=2000".parse::<Mode>().unwrap(),
            Mode::Auto { size: Some(2000) }
        );
        for bad in [
            "keep-id",
            "auto:size=0",
            "auto:size=x",
            "auto:size=-1",
            "private",
        ] {
            let e = bad.parse::<Mode>().unwrap_err().to_string();
            assert!(e.contains("expected host, auto"), "{bad}: {e}");
        }
    }

    #[test]
    fn ranges_are_disjoint_and_first_fit() {
        let used = [(100, 200), (200, 300), (400, 500)];
        assert_eq!(first_fit(100, 1000, 100, &used), Some(300));
        assert_eq!(first_fit(100, 1000, 101, &used), Some(500));
        assert_eq!(first_fit(100, 350, 100, &used), None);
        assert_eq!(first_fit(0, 1000, 100, &[]), Some(0));
    }

    #[test]
    fn capsas_line_is_added_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let (u, g) = (d.path().join("subuid"), d.path().join("subgid"));
        fs::write(&u, "alice:100000:65536\n").unwrap();
        let r = capsa_range(&u, &g).unwrap();
        assert_eq!(r, DEFAULT_RANGE);
        assert_eq!(capsa_range(&u, &g).unwrap(), r);
        let text = fs::read_to_string(&u).unwrap();
        assert_eq!(text.matches("capsa:").count(), 1, "{text}");
        assert!(fs::read_to_string(&g).unwrap().starts_with("capsa:"));
        // A range already taken by someone else: capsa's goes after it.
        fs::write(&u, format!("bob:{}:65536\n", DEFAULT_RANGE.0)).unwrap();
        fs::remove_file(&g).unwrap();
        let (start, _) = capsa_range(&u, &g).unwrap();
        assert_eq!(
            start as u64,
            (DEFAULT_RANGE.0 as u64 + 65536).div_ceil(65536) * 65536
        );
        // Different lines in the two files are the administrator's to fix.
        fs::write(&g, "capsa:5:5\n").unwrap();
        let e = capsa_range(&u, &g).unwrap_err().to_string();
        assert!(e.contains("differ"), "{e}");
    }
}
