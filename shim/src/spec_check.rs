//! Checks the runtime spec of a bundle someone else wrote (`capsa create`,
//! the containerd shim) before capsa acts on any of it, in either isolation
//! mode: libcontainer and the kernel read some bad values as something else
//! (a uid of 4294967295 is `(uid_t)-1`, "leave unchanged", so the process
//! stayed root; a negative CPU quota is "no limit"), and a cgroup path with
//! `..` reaches out of the cgroup filesystem. Each problem is one
//! [`Invalid`] naming the field, as a JSON path into config.json
//! (`linux.resources.cpu.period`).
//!
//! Where the kernel and runc take 0 to mean "leave the default" (CPU
//! shares; pids, memory limits) this does too; the CPU quota and period
//! are refused at 0, since the kernel takes neither.

use std::fmt;
use std::path::{Component, Path};

use oci_spec::runtime::{LinuxCpu, LinuxIdMapping, LinuxMemory, LinuxResources, Process, Spec};

/// One problem in a spec: the field it is about and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// A JSON path into config.json (`process.user.uid`); empty when the
    /// problem is about the document as a whole.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for Invalid {}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `(uid_t)-1` and `(gid_t)-1`: "leave unchanged" to setresuid(2) and
/// friends, never an id a process can have.
const NO_ID: u32 = u32::MAX;
/// The kernel's bounds on the CFS period (cpu.cfs_period_us, cpu.max).
pub const CPU_PERIOD_US: std::ops::RangeInclusive<u64> = 1000..=1_000_000;
/// The kernel's bounds on a CFS quota other than -1 ("no limit"): at
/// least 1 ms, at most its largest bandwidth (2^44 - 1 µs).
pub const CPU_QUOTA_US: std::ops::RangeInclusive<i64> = 1000..=(1 << 44) - 1;
/// cgroup v1's range of cpu.shares (0 leaves the default).
pub const CPU_SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

/// Parses config.json, naming the field and the place of a syntax or type
/// error (serde's own message says "serde failed" or only a line and a
/// column).
pub fn parse(text: &str) -> Result<Spec, Invalid> {
    serde_json::from_str(text).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let message = full
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(&full);
        let field = if line == 0 {
            String::new()
        } else {
            json_path_at(text, offset_of(text, line, column))
        };
        invalid(field, format!("{message} (line {line}, column {column})"))
    })
}

/// Checks everything capsa relies on before creating anything: ids,
/// cgroup paths, resource values. Returns the first problem.
pub fn check(spec: &Spec) -> Result<(), Invalid> {
    if let Some(p) = spec.process() {
        check_process(p, "process")?;
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (name, maps) in [
        ("uidMappings", linux.uid_mappings()),
        ("gidMappings", linux.gid_mappings()),
    ] {
        for (i, m) in maps.iter().flatten().enumerate() {
            check_mapping(m, &format!("linux.{name}[{i}]"))?;
        }
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        if let Some(uid) = d.uid() {
            check_id(uid, &format!("linux.devices[{i}].uid"))?;
        }
        if let Some(gid) = d.gid() {
            check_id(gid, &format!("linux.devices[{i}].gid"))?;
        }
    }
    if let Some(path) = linux.cgroups_path() {
        check_cgroups_path(path)?;
    }
    if let Some(r) = linux.resources() {
        check_resources(r)?;
    }
    Ok(())
}

/// A process's ids and rlimits: for the container's first process
/// (`field` "process") and for one `runc exec --process` runs (`field`
/// empty: the process is the whole document).
pub fn check_process(p: &Process, field: &str) -> Result<(), Invalid> {
    let field = if field.is_empty() {
        String::new()
    } else {
        format!("{field}.")
    };
    let user = p.user();
    check_id(user.uid(), &format!("{field}user.uid"))?;
    check_id(user.gid(), &format!("{field}user.gid"))?;
    for (i, g) in user.additional_gids().iter().flatten().enumerate() {
        check_id(*g, &format!("{field}user.additionalGids[{i}]"))?;
    }
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        if r.soft() > r.hard() {
            return Err(invalid(
                format!("{field}rlimits[{i}].soft"),
                format!(
                    "{} is above the hard limit {}: the soft limit of {:?} must not exceed the hard one",
                    r.soft(),
                    r.hard(),
                    r.typ()
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_id(id: u32, field: &str) -> Result<(), Invalid> {
    if id == NO_ID {
        return Err(invalid(
            field,
            format!("{id} is not a valid id (it is (uid_t)-1, which the kernel reads as \"unchanged\"): use 0–{}", NO_ID - 1),
        ));
    }
    Ok(())
}

/// A range of a user namespace's id map, as the kernel takes it in
/// uid_map: at least one id, and neither end past 4294967294.
fn check_mapping(m: &LinuxIdMapping, field: &str) -> Result<(), Invalid> {
    if m.size() == 0 {
        return Err(invalid(
            format!("{field}.size"),
            "0 maps no ids: give at least 1",
        ));
    }
    for (name, first) in [("containerID", m.container_id()), ("hostID", m.host_id())] {
        if u64::from(first) + u64::from(m.size()) > u64::from(NO_ID) {
            return Err(invalid(
                format!("{field}.{name}"),
                format!(
                    "{first} with size {} goes past {}, the highest id",
                    m.size(),
                    NO_ID - 1
                ),
            ));
        }
    }
    Ok(())
}

/// The cgroup path is taken relative to each cgroup hierarchy's root: it
/// must name a cgroup below that root, never the root itself and never,
/// through `..`, something outside it.
fn check_cgroups_path(path: &Path) -> Result<(), Invalid> {
    const FIELD: &str = "linux.cgroupsPath";
    let shown = path.display();
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(invalid(FIELD, format!("{shown:?} contains a NUL byte")));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            FIELD,
            format!("{shown:?} has a '..' component: a cgroup path must stay inside the cgroup hierarchy"),
        ));
    }
    if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid(
            FIELD,
            format!("{shown:?} is the root of the cgroup hierarchy: give the container a cgroup of its own (like /capsa/ID)"),
        ));
    }
    Ok(())
}

fn check_resources(r: &LinuxResources) -> Result<(), Invalid> {
    if let Some(cpu) = r.cpu() {
        check_cpu(cpu)?;
    }
    if let Some(m) = r.memory() {
        check_memory(m)?;
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return Err(invalid(
                "linux.resources.pids.limit",
                format!(
                    "{} is out of range: give a number of processes, or -1 for no limit",
                    p.limit()
                ),
            ));
        }
    }
    // Each key is a file in the container's cgroup directory: a name with
    // a '/' would write elsewhere.
    if let Some(unified) = r.unified() {
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for k in keys {
            if k.is_empty() || k == "." || k == ".." || k.contains('/') || k.contains('\0') {
                return Err(invalid(
                    format!("linux.resources.unified{}", key_segment(k)),
                    "not a cgroup file name: give a name like \"memory.high\", without '/'",
                ));
            }
        }
    }
    Ok(())
}

fn check_cpu(cpu: &LinuxCpu) -> Result<(), Invalid> {
    if let Some(s) = cpu.shares() {
        if s != 0 && !CPU_SHARES.contains(&s) {
            return Err(invalid(
                "linux.resources.cpu.shares",
                format!(
                    "{s} is out of range ({}–{})",
                    CPU_SHARES.start(),
                    CPU_SHARES.end()
                ),
            ));
        }
    }
    if let Some(p) = cpu.period() {
        if !CPU_PERIOD_US.contains(&p) {
            return Err(invalid(
                "linux.resources.cpu.period",
                format!(
                    "{p} is out of range ({}–{})",
                    CPU_PERIOD_US.start(),
                    CPU_PERIOD_US.end()
                ),
            ));
        }
    }
    if let Some(q) = cpu.quota() {
        if q != -1 && !CPU_QUOTA_US.contains(&q) {
            return Err(invalid(
                "linux.resources.cpu.quota",
                format!(
                    "{q} is out of range: give -1 for no limit, or {}–{} (µs per period)",
                    CPU_QUOTA_US.start(),
                    CPU_QUOTA_US.end()
                ),
            ));
        }
    }
    if let Some(rt) = cpu.realtime_runtime() {
        if rt < -1 {
            return Err(invalid(
                "linux.resources.cpu.realtimeRuntime",
                format!("{rt} is out of range: give µs per period, or -1 for no limit"),
            ));
        }
    }
    if let Some(idle) = cpu.idle() {
        if idle != 0 && idle != 1 {
            return Err(invalid(
                "linux.resources.cpu.idle",
                format!("{idle} is out of range: give 0 or 1"),
            ));
        }
    }
    Ok(())
}

fn check_memory(m: &LinuxMemory) -> Result<(), Invalid> {
    for (name, value) in [
        ("limit", m.limit()),
        ("reservation", m.reservation()),
        ("swap", m.swap()),
        ("kernel", m.kernel()),
        ("kernelTCP", m.kernel_tcp()),
    ] {
        if let Some(v) = value.filter(|v| *v < -1) {
            return Err(invalid(
                format!("linux.resources.memory.{name}"),
                format!("{v} is out of range: give a number of bytes, or -1 for no limit"),
            ));
        }
    }
    if let Some(s) = m.swappiness().filter(|s| *s > 100) {
        return Err(invalid(
            "linux.resources.memory.swappiness",
            format!("{s} is out of range (0–100)"),
        ));
    }
    // The swap value is memory plus swap: never below the memory limit.
    if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
        if limit > 0 && swap > 0 && swap < limit {
            return Err(invalid(
                "linux.resources.memory.swap",
                format!("{swap} is below the memory limit {limit}: it counts memory plus swap, so give at least the limit, or -1 for no limit"),
            ));
        }
    }
    Ok(())
}

/// `.name` for a plain key, `["odd key"]` for any other.
fn key_segment(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!(".{key}")
    } else {
        format!("[{}]", serde_json::Value::from(key))
    }
}

/// The byte offset just past serde_json's (1-based) line and column.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (start + column).min(text.len())
}

/// The JSON path (`linux.resources.cpu.period`, `process.args[2]`) of the
/// value being read at byte `offset` of `text`: the keys and indices of
/// the objects and arrays open there.
fn json_path_at(text: &str, offset: usize) -> String {
    enum Frame {
        Object { key: Option<String>, want_key: bool },
        Array(usize),
    }
    let bytes = &text.as_bytes()[..offset.min(text.len())];
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                want_key: true,
            }),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { key, want_key }) => {
                    *key = None;
                    *want_key = true;
                }
                Some(Frame::Array(n)) => *n += 1,
                None => {}
            },
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                if j >= bytes.len() {
                    break;
                }
                if let Some(Frame::Object { key, want_key }) = stack.last_mut() {
                    if *want_key {
                        let raw = &text[i..=j];
                        *key = Some(
                            serde_json::from_str(raw)
                                .unwrap_or_else(|_| raw.trim_matches('"').to_string()),
                        );
                        *want_key = false;
                    }
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => path.push_str(&key_segment(k)),
            Frame::Object { key: None, .. } => break,
            Frame::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path.strip_prefix('.').map(str::to_string).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A spec like `runc spec`'s, with the values the rules look at.
    fn base() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {
                "cwd": "/",
                "args": ["sh"],
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
            },
            "linux": {
                "cgroupsPath": "/capsa/c1",
                "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "uid": 0, "gid": 0}],
                "resources": {
                    "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "idle": 0},
                    "memory": {"limit": 67108864, "swap": 134217728, "reservation": 0, "swappiness": 60},
                    "pids": {"limit": 64},
                    "unified": {"memory.high": "max"}
                }
            }
        })
    }

    /// `base` with the value at JSON pointer `pointer` replaced.
    fn with(pointer: &str, value: Value) -> Spec {
        let mut v = base();
        *v.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in the base spec")) = value;
        serde_json::from_value(v).expect("still a spec")
    }

    fn field_of(spec: &Spec) -> String {
        check(spec).expect_err("should be refused").field
    }

    #[test]
    fn the_base_spec_passes() {
        check(&serde_json::from_value(base()).unwrap()).unwrap();
    }

    #[test]
    fn ids_exclude_uid_t_minus_one() {
        for (pointer, field) in [
            ("/process/user/uid", "process.user.uid"),
            ("/process/user/gid", "process.user.gid"),
            (
                "/process/user/additionalGids/1",
                "process.user.additionalGids[1]",
            ),
            ("/linux/devices/0/uid", "linux.devices[0].uid"),
            ("/linux/devices/0/gid", "linux.devices[0].gid"),
        ] {
            let e = check(&with(pointer, json!(4294967295u32))).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().contains("(uid_t)-1"), "{e}");
            check(&with(pointer, json!(4294967294u32))).unwrap();
        }
    }

    #[test]
    fn id_maps_stay_within_the_id_range() {
        let s = with("/linux/uidMappings/0/size", json!(0));
        assert_eq!(field_of(&s), "linux.uidMappings[0].size");
        let s = with("/linux/gidMappings/0/hostID", json!(4294967295u32));
        assert_eq!(field_of(&s), "linux.gidMappings[0].hostID");
        let s = with("/linux/uidMappings/0/containerID", json!(4294967290u32));
        assert_eq!(field_of(&s), "linux.uidMappings[0].containerID");
        // The last mappable id is 4294967294.
        let mut v = base();
        v["linux"]["uidMappings"] = json!([{"containerID": 4294967294u32, "hostID": 0, "size": 1}]);
        check(&serde_json::from_value(v).unwrap()).unwrap();
    }

    #[test]
    fn rlimit_soft_above_hard_is_refused() {
        let s = with("/process/rlimits/0/soft", json!(4096));
        assert_eq!(field_of(&s), "process.rlimits[0].soft");
    }

    #[test]
    fn cgroups_path_stays_in_the_hierarchy() {
        for bad in [
            "/../../../../tmp/x",
            "../x",
            "capsa/../../x",
            "/capsa/..",
            "/",
            "",
            "/./.",
            "/capsa/\u{0}x",
        ] {
            let e = check(&with("/linux/cgroupsPath", json!(bad))).unwrap_err();
            assert_eq!(e.field, "linux.cgroupsPath", "{bad:?}");
        }
        for good in ["/capsa/c1", "capsa/c1", "/a/./b", "machine.slice/x:y"] {
            check(&with("/linux/cgroupsPath", json!(good))).unwrap();
        }
        // None: libcontainer picks the path.
        let mut v = base();
        v["linux"].as_object_mut().unwrap().remove("cgroupsPath");
        check(&serde_json::from_value(v).unwrap()).unwrap();
    }

    #[test]
    fn cpu_period_is_within_the_kernels_range() {
        let e = check(&with("/linux/resources/cpu/period", json!(0))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "linux.resources.cpu.period: 0 is out of range (1000–1000000)"
        );
        for bad in [999, 1_000_001] {
            let s = with("/linux/resources/cpu/period", json!(bad));
            assert_eq!(field_of(&s), "linux.resources.cpu.period");
        }
        for good in [1000, 1_000_000] {
            check(&with("/linux/resources/cpu/period", json!(good))).unwrap();
        }
    }

    #[test]
    fn cpu_quota_is_minus_one_or_at_least_a_millisecond() {
        for bad in [-7, -2, 0, 999, 1i64 << 44] {
            let s = with("/linux/resources/cpu/quota", json!(bad));
            assert_eq!(field_of(&s), "linux.resources.cpu.quota", "{bad}");
        }
        for good in [-1, 1000, (1i64 << 44) - 1] {
            check(&with("/linux/resources/cpu/quota", json!(good))).unwrap();
        }
    }

    #[test]
    fn cpu_shares_idle_and_realtime_runtime() {
        for bad in [1, 262_145] {
            let s = with("/linux/resources/cpu/shares", json!(bad));
            assert_eq!(field_of(&s), "linux.resources.cpu.shares");
        }
        for good in [0, 2, 262_144] {
            check(&with("/linux/resources/cpu/shares", json!(good))).unwrap();
        }
        let s = with("/linux/resources/cpu/idle", json!(2));
        assert_eq!(field_of(&s), "linux.resources.cpu.idle");
        let mut v = base();
        v["linux"]["resources"]["cpu"]["realtimeRuntime"] = json!(-5);
        let s: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(field_of(&s), "linux.resources.cpu.realtimeRuntime");
    }

    #[test]
    fn memory_values_are_bytes_or_minus_one() {
        for name in ["limit", "swap", "reservation"] {
            let pointer = format!("/linux/resources/memory/{name}");
            let e = check(&with(&pointer, json!(-7))).unwrap_err();
            assert_eq!(e.field, format!("linux.resources.memory.{name}"));
            if name != "limit" {
                check(&with(&pointer, json!(-1))).unwrap();
                check(&with(&pointer, json!(0))).unwrap();
            }
        }
        let s = with("/linux/resources/memory/swappiness", json!(101));
        assert_eq!(field_of(&s), "linux.resources.memory.swappiness");
        // Memory plus swap below memory.
        let s = with("/linux/resources/memory/swap", json!(1 << 20));
        assert_eq!(field_of(&s), "linux.resources.memory.swap");
        let s = with("/linux/resources/memory/limit", json!(-1));
        check(&s).unwrap();
    }

    #[test]
    fn pids_limit_is_a_count_or_minus_one() {
        let s = with("/linux/resources/pids/limit", json!(-7));
        assert_eq!(field_of(&s), "linux.resources.pids.limit");
        // 0 is what CRI-O sends for "unset"; -1 is "no limit".
        for good in [-1, 0, 1] {
            check(&with("/linux/resources/pids/limit", json!(good))).unwrap();
        }
    }

    #[test]
    fn unified_keys_are_file_names() {
        for bad in ["../../../../etc/passwd", "memory/high", "..", ""] {
            let s = with("/linux/resources/unified", json!({ bad: "1" }));
            let e = check(&s).unwrap_err();
            assert!(
                e.field.starts_with("linux.resources.unified["),
                "{bad:?}: {e}"
            );
        }
        check(&with(
            "/linux/resources/unified",
            json!({"cpu.weight": "50"}),
        ))
        .unwrap();
    }

    #[test]
    fn process_check_names_the_given_field() {
        let mut p = Process::default();
        let mut u = p.user().clone();
        u.set_uid(NO_ID);
        p.set_user(u);
        let e = check_process(&p, "process").unwrap_err();
        assert_eq!(e.field, "process.user.uid");
        let e = check_process(&p, "").unwrap_err();
        assert_eq!(e.field, "user.uid");
    }

    #[test]
    fn specs_capsa_generates_pass() {
        use capsa_image::spec::{generate, RunConfig};
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            rootfs.path().join("etc/group"),
            "root:x:0:\nuser:x:1000:\naudio:x:29:user\n",
        )
        .unwrap();
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": []}
        });
        let image = capsa_image::Image::from_config(serde_json::from_value(config).unwrap());
        let plain = RunConfig {
            container_id: "0123456789abcdef".into(),
            ..Default::default()
        };
        let limited = RunConfig {
            user: Some("user".into()),
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(50),
            ..plain.clone()
        };
        let unlimited = RunConfig {
            cpus: Some(0.01),
            pids_limit: Some(-1),
            ..plain.clone()
        };
        for rc in [plain, limited, unlimited] {
            let mut spec = generate(&image, rootfs.path(), &[rootfs.path().into()], &rc).unwrap();
            if let Some(linux) = spec.linux_mut() {
                linux
                    .set_cgroups_path(Some(capsa_container::cgroup::cgroup_path(&rc.container_id)));
            }
            check(&spec).unwrap_or_else(|e| panic!("{rc:?}: {e}"));
        }
    }

    #[test]
    fn parse_errors_name_the_field_and_the_place() {
        let mut v = base();
        v["process"]["user"]["uid"] = json!(-1);
        let text = serde_json::to_string_pretty(&v).unwrap();
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "process.user.uid", "{e}");
        assert!(e.problem.contains("expected u32"), "{e}");
        assert!(e.problem.contains("line "), "{e}");

        let mut v = base();
        v["linux"]["resources"]["cpu"]["period"] = json!(-7);
        let e = parse(&serde_json::to_string_pretty(&v).unwrap()).unwrap_err();
        assert_eq!(e.field, "linux.resources.cpu.period", "{e}");

        let mut v = base();
        v["process"]["args"] = json!(["sh", 3]);
        let e = parse(&serde_json::to_string(&v).unwrap()).unwrap_err();
        assert_eq!(e.field, "process.args[1]", "{e}");

        // A missing field: the object it is missing from.
        let mut v = base();
        v["process"].as_object_mut().unwrap().remove("cwd");
        let e = parse(&serde_json::to_string_pretty(&v).unwrap()).unwrap_err();
        assert_eq!(e.field, "process", "{e}");
        assert!(e.problem.contains("missing field `cwd`"), "{e}");

        // Odd keys, and strings holding JSON's own punctuation.
        let mut v = base();
        v["annotations"] = json!({"a\"{[,": "x}]", "io.capsa.isolation": 5});
        let e = parse(&serde_json::to_string_pretty(&v).unwrap()).unwrap_err();
        assert_eq!(e.field, "annotations[\"io.capsa.isolation\"]", "{e}");

        // A syntax error: where it is.
        let e = parse("{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {\"cwd\": \"/\",,}\n}")
            .unwrap_err();
        assert_eq!(e.field, "process", "{e}");
        assert!(e.problem.contains("line 3"), "{e}");
        let e = parse("").unwrap_err();
        assert!(e.problem.contains("EOF"), "{e}");
        assert!(e.field.is_empty());
    }
}
