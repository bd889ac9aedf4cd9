//! The container process: the command (docker's ENTRYPOINT + CMD rules),
//! the environment, the working directory, the user ids, capabilities and
//! rlimits.

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilitiesBuilder, PosixRlimitBuilder, PosixRlimitType,
    Process, ProcessBuilder, UserBuilder,
};

use super::{bad, internal, ResolvedUser, RunConfig};
use crate::error::Result;
use crate::store::Image;

/// Default PATH when neither the image nor the user sets one (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// podman's default capability set: docker's less CAP_MKNOD (device
/// nodes), CAP_NET_RAW (raw and packet sockets: forged frames on a shared
/// network) and CAP_AUDIT_WRITE (the host's audit log).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
];

/// Every capability Linux 6.x has, by its name without `CAP_`.
pub const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// podman's default process limit per container when `--pids-limit` is
/// not given: one fork bomb cannot take the host's (or the guest's) PIDs.
pub const DEFAULT_PIDS_LIMIT: i64 = 2048;

/// The open-files limit given to containers (soft and hard). Safe on hosts
/// whose own hard limit is low and where capsa has no CAP_SYS_RESOURCE.
pub const NOFILE_LIMIT: u64 = 1024;

/// A `--ulimit`: a resource limit by docker's name (`nofile`), soft and
/// hard (`u64::MAX`: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// docker's ulimit names, as setrlimit(2)'s resources.
const ULIMITS: [(&str, PosixRlimitType); 16] = [
    ("as", PosixRlimitType::RlimitAs),
    ("core", PosixRlimitType::RlimitCore),
    ("cpu", PosixRlimitType::RlimitCpu),
    ("data", PosixRlimitType::RlimitData),
    ("fsize", PosixRlimitType::RlimitFsize),
    ("locks", PosixRlimitType::RlimitLocks),
    ("memlock", PosixRlimitType::RlimitMemlock),
    ("msgqueue", PosixRlimitType::RlimitMsgqueue),
    ("nice", PosixRlimitType::RlimitNice),
    ("nofile", PosixRlimitType::RlimitNofile),
    ("nproc", PosixRlimitType::RlimitNproc),
    ("rss", PosixRlimitType::RlimitRss),
    ("rtprio", PosixRlimitType::RlimitRtprio),
    ("rttime", PosixRlimitType::RlimitRttime),
    ("sigpending", PosixRlimitType::RlimitSigpending),
    ("stack", PosixRlimitType::RlimitStack),
];

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    ULIMITS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

impl Ulimit {
    /// docker's `--ulimit NAME=SOFT[:HARD]` (the hard limit defaults to
    /// the soft one; -1 or unlimited is no limit).
    pub fn parse(s: &str) -> std::result::Result<Ulimit, String> {
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| format!("--ulimit {s}: give NAME=SOFT[:HARD], e.g. nofile=4096:8192"))?;
        if rlimit_type(name).is_none() {
            let names: Vec<&str> = ULIMITS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "--ulimit {s}: no limit {name} (the limits are {})",
                names.join(", ")
            ));
        }
        let (soft, hard) = values.split_once(':').unwrap_or((values, values));
        let number = |v: &str| match v {
            "-1" | "unlimited" => Ok(u64::MAX),
            _ => v
                .parse::<u64>()
                .map_err(|_| format!("--ulimit {s}: {v:?} is not a number (or -1 for no limit)")),
        };
        let (soft, hard) = (number(soft)?, number(hard)?);
        if soft > hard {
            return Err(format!(
                "--ulimit {s}: the soft limit is above the hard one"
            ));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }
}

/// docker's ENTRYPOINT + CMD rules.
pub fn command(image: &Image, rc: &RunConfig) -> Result<Vec<String>> {
    let cfg = image.config.config().as_ref();
    let image_ep = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let image_cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let entrypoint = rc.entrypoint.clone().unwrap_or(image_ep);
    let cmd = match (&rc.args, &rc.entrypoint) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image_cmd,
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(bad(
            "no command specified: the image has no CMD or ENTRYPOINT; give one after the image name",
        ));
    }
    Ok(args)
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

fn set_env(env: &mut Vec<String>, kv: String) {
    let key = env_key(&kv).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = kv,
        None => env.push(kv),
    }
}

/// The process environment: image env, then the user's, plus PATH,
/// HOSTNAME, HOME and (with a tty) TERM defaults.
pub fn environment(
    image: &Image,
    rc: &RunConfig,
    hostname: &str,
    home: &str,
) -> Result<Vec<String>> {
    let mut env: Vec<String> = Vec::new();
    let image_env = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    for kv in image_env {
        if kv.contains('=') {
            set_env(&mut env, kv);
        }
    }
    for kv in &rc.env {
        match kv.split_once('=') {
            Some((k, _)) if !k.is_empty() => set_env(&mut env, kv.clone()),
            _ => {
                return Err(bad(format!(
                    "environment variable {kv:?} must be KEY=VALUE"
                )))
            }
        }
    }
    let has = |env: &Vec<String>, k: &str| env.iter().any(|e| env_key(e) == k);
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if rc.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    Ok(env)
}

/// `CAP_CHOWN` -> [`Capability::Chown`].
fn capability(name: &str) -> Result<Capability> {
    name.strip_prefix("CAP_")
        .unwrap_or(name)
        .parse()
        .map_err(|e| internal(format!("capability {name}: {e}")))
}

/// The capability names (`CAP_…`) the container's processes get:
/// podman's default set, `--cap-drop` taken out (`ALL`: every one), then
/// `--cap-add` put in (`ALL`: every one), as docker combines them; every
/// one with `--privileged`.
pub fn capability_set(rc: &RunConfig) -> Result<Vec<String>> {
    let norm = |flag: &str, c: &str| -> Result<String> {
        let up = c.trim().to_ascii_uppercase();
        let bare = up.strip_prefix("CAP_").unwrap_or(&up).to_string();
        if bare == "ALL" || ALL_CAPS.contains(&bare.as_str()) {
            Ok(bare)
        } else {
            Err(bad(format!("{flag} {c}: no such capability")))
        }
    };
    let add = rc
        .cap_add
        .iter()
        .map(|c| norm("--cap-add", c))
        .collect::<Result<Vec<_>>>()?;
    let drop = rc
        .cap_drop
        .iter()
        .map(|c| norm("--cap-drop", c))
        .collect::<Result<Vec<_>>>()?;
    let held = bounding_set();
    let holds = |c: &str| {
        let bit = ALL_CAPS.iter().position(|k| *k == c);
        bit.is_some_and(|i| held & (1 << i) != 0)
    };
    let all: Vec<String> = ALL_CAPS
        .iter()
        .filter(|c| holds(c))
        .map(|c| c.to_string())
        .collect();
    if let Some(c) = add.iter().find(|c| *c != "ALL" && !holds(c)) {
        return Err(bad(format!(
            "--cap-add {c}: capsa itself does not hold CAP_{c}, so it cannot give it"
        )));
    }
    let mut set: Vec<String> = if rc.privileged {
        all.clone()
    } else if drop.iter().any(|c| c == "ALL") {
        vec![]
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.trim_start_matches("CAP_").to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    let added: Vec<String> = if add.iter().any(|c| c == "ALL") {
        all
    } else {
        add
    };
    for c in added {
        if !set.contains(&c) {
            set.push(c);
        }
    }
    Ok(set.into_iter().map(|c| format!("CAP_{c}")).collect())
}

/// The capabilities capsa itself may hand on (its bounding set, bit i for
/// `ALL_CAPS[i]`): `ALL` and `--privileged` mean these, as they do for
/// podman (a sandbox can run capsa without some, e.g. SYS_RESOURCE, and
/// the kernel would refuse the rest when the container starts).
pub(super) fn bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

/// The process to run: `args` (see [`command`]) as `user` with its
/// environment, working directory, capabilities and rlimits.
pub(super) fn process(
    image: &Image,
    rc: &RunConfig,
    args: Vec<String>,
    user: ResolvedUser,
    hostname: &str,
) -> Result<Process> {
    let cfg = image.config.config().as_ref();
    let env = environment(image, rc, hostname, &user.home)?;
    let cwd = rc
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| {
            cfg.and_then(|c| c.working_dir().clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(bad(format!(
            "working directory {cwd:?} must be an absolute path"
        )));
    }

    let caps: Capabilities = capability_set(rc)?
        .iter()
        .map(|c| capability(c))
        .collect::<Result<_>>()?;
    let active = if user.uid == 0 {
        caps.clone()
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(active.clone())
        .permitted(active)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(internal)?;
    // The default open-files limit, unless `--ulimit nofile=…` gives one.
    let mut rlimits = Vec::new();
    if !rc.ulimits.iter().any(|u| u.name == "nofile") {
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(NOFILE_LIMIT)
                .soft(NOFILE_LIMIT)
                .build()
                .map_err(internal)?,
        );
    }
    for u in &rc.ulimits {
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(
                    rlimit_type(&u.name)
                        .ok_or_else(|| bad(format!("--ulimit {}: no such limit", u.name)))?,
                )
                .hard(u.hard)
                .soft(u.soft)
                .build()
                .map_err(internal)?,
        );
    }
    let process_user = UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .additional_gids(user.additional_gids)
        .umask(0o022u32)
        .build()
        .map_err(internal)?;
    ProcessBuilder::default()
        .terminal(rc.tty)
        .user(process_user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_as_docker_writes_them() {
        let u = |s: &str| Ulimit::parse(s).map(|u| (u.name, u.soft, u.hard));
        assert_eq!(u("nofile=2048:4096"), Ok(("nofile".into(), 2048, 4096)));
        assert_eq!(u("nproc=500"), Ok(("nproc".into(), 500, 500)));
        assert_eq!(u("memlock=-1"), Ok(("memlock".into(), u64::MAX, u64::MAX)));
        assert_eq!(u("core=0:unlimited"), Ok(("core".into(), 0, u64::MAX)));
        for bad in [
            "nofile",
            "bogus=1",
            "nofile=10:5",
            "nofile=many",
            "nofile=-2",
        ] {
            assert!(u(bad).is_err(), "{bad}");
        }
    }
    use crate::spec::generate;
    use crate::spec::tests::{env_of, gen, image, rc, rootfs};
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn entrypoint_and_cmd_like_docker() {
        let img = image(json!({"Entrypoint": ["/ep", "-x"], "Cmd": ["default"]}));
        let args = |rc: &RunConfig| command(&img, rc).unwrap();
        assert_eq!(args(&rc()), vec!["/ep", "-x", "default"]);
        let mut r = rc();
        r.args = Some(vec!["other".into()]);
        assert_eq!(args(&r), vec!["/ep", "-x", "other"]);
        let mut r = rc();
        r.entrypoint = Some(vec!["/bin/sh".into()]);
        assert_eq!(args(&r), vec!["/bin/sh"]);
        r.args = Some(vec!["-c".into(), "echo hi".into()]);
        assert_eq!(args(&r), vec!["/bin/sh", "-c", "echo hi"]);
        let mut r = rc();
        r.entrypoint = Some(vec![]);
        r.args = Some(vec!["ls".into()]);
        assert_eq!(args(&r), vec!["ls"]);
        let empty = image(json!({}));
        let err = command(&empty, &rc()).unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
        assert!(generate(&empty, Path::new("/nonexistent"), &[], &rc()).is_err());
    }

    #[test]
    fn env_merge() {
        let img = image(json!({"Cmd": ["x"], "Env": ["PATH=/img/bin", "A=1", "B=2"]}));
        let mut r = rc();
        r.env = vec!["B=3".into(), "C=4=5".into(), "EMPTY=".into()];
        r.tty = true;
        let env = env_of(&gen(&img, &r));
        assert_eq!(env[0], "PATH=/img/bin");
        assert!(env.contains(&"A=1".into()));
        assert!(env.contains(&"B=3".into()));
        assert!(!env.contains(&"B=2".into()));
        assert!(env.contains(&"C=4=5".into()));
        assert!(env.contains(&"EMPTY=".into()));
        assert!(env.contains(&"TERM=xterm".into()));
        let mut r = rc();
        r.env = vec!["PATH=/mine".into(), "TERM=vt100".into(), "HOME=/h".into()];
        r.tty = true;
        let env = env_of(&gen(&img, &r));
        assert!(env.contains(&"PATH=/mine".into()));
        assert!(env.contains(&"TERM=vt100".into()));
        assert!(!env.contains(&"TERM=xterm".into()));
        assert!(env.contains(&"HOME=/h".into()));
        let mut r = rc();
        r.env = vec!["NOVALUE".into()];
        assert!(generate(&img, rootfs().path(), &[rootfs().path().into()], &r).is_err());
    }
}
