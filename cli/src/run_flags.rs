//! `capsa run` flags, and their translation into the image crate's
//! `RunConfig` (which turns them into an OCI runtime spec).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capsa_image::spec::{BindMount, Network, RunConfig, Seccomp};
use capsa_shim::logs::LogLimits;
use capsa_shim::monitor::restart::RestartPolicy;
use capsa_shim::{CodedError, Isolation, EXIT_CAPSA_ERROR};
use clap::Args;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Name the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: NAME, UID or UID:GID.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Bind-mount a host path (HOST:CONTAINER[:OPTIONS]) or a named volume
    /// (NAME:CONTAINER[:OPTIONS]; made on first use, filled from the image
    /// unless nocopy). OPTIONS, comma-separated: ro|rw, noexec|exec,
    /// nosuid|suid, nodev|dev, U (chown the source to the container's
    /// user), nocopy, z|Z (accepted; capsa labels nothing).
    #[arg(
        short = 'v',
        long = "volume",
        value_name = "HOST|NAME:CONTAINER[:OPTIONS]"
    )]
    pub volumes: Vec<String>,
    /// Mount a tmpfs: PATH[:OPTIONS].
    #[arg(long = "tmpfs", value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// docker's long mount form: type=bind|volume|tmpfs, source (src),
    /// target (dst, destination), readonly (ro), tmpfs-size, tmpfs-mode.
    #[arg(long = "mount", value_name = "type=…,source=…,target=…")]
    pub mount: Vec<String>,
    /// The size of /dev/shm (default 64m), e.g. 1g for a data loader's
    /// shared memory.
    #[arg(long = "shm-size", value_name = "BYTES")]
    pub shm_size: Option<String>,
    /// A resource limit: NAME=SOFT[:HARD], e.g. nofile=65536 or
    /// memlock=-1 (no limit).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// The signal `stop` sends first (default the image's STOPSIGNAL, else
    /// SIGTERM).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL when it is not given -t
    /// (default 10).
    #[arg(long = "stop-timeout", value_name = "SECONDS")]
    pub stop_timeout: Option<u64>,
    /// host (default), or auto[:size=N]: a user namespace of the
    /// container's own, its root an unprivileged host uid from capsa's
    /// range in /etc/subuid (VM mode: inside the guest).
    #[arg(long = "userns", value_name = "MODE")]
    pub userns: Option<String>,
    /// A user namespace with this range (podman's): 0:HOST:SIZE, the
    /// container's ids 0… as host ids HOST…; no other container may hold
    /// any of them.
    #[arg(long = "uidmap", value_name = "0:HOST:SIZE")]
    pub uidmap: Option<String>,
    /// The groups' range: capsa takes --uidmap's only (the default).
    #[arg(long = "gidmap", value_name = "0:HOST:SIZE")]
    pub gidmap: Option<String>,
    /// Memory limit, e.g. 64m or 1g; the container is OOM-killed beyond it
    /// (0: no limit).
    #[arg(short = 'm', long = "memory", value_name = "BYTES")]
    pub memory: Option<String>,
    /// CPU quota in CPUs, e.g. 0.5 (0: no limit).
    #[arg(long, allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Maximum number of processes (0 or -1: no limit).
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Give the container a capability beyond podman's default set
    /// (NET_RAW, SYS_ADMIN, …, or ALL); the seccomp filter opens what it
    /// guards, as docker's does.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Take a capability from the container (or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined|FILE (a profile in docker's JSON format),
    /// no-new-privileges (always on), label=disable, apparmor=unconfined.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Every capability, no seccomp filter, /proc and /sys unmasked and
    /// writable; host devices are not added. In VM mode this holds inside
    /// the guest, whose kernel stays the boundary.
    #[arg(long)]
    pub privileged: bool,
    /// Restart policy: no, always, unless-stopped or on-failure[:N] (docker's;
    /// with a back-off from 100 ms, doubling, at most a minute).
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Log options: max-size=SIZE (rotate the log at this size; default
    /// 20m), max-file=N (keep this many files; default 5).
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    /// size=SIZE: the most the container's writable layer holds (its own
    /// ext4 disk of that size, in both modes); a write past it fails with
    /// "No space left on device".
    #[arg(long = "storage-opt", value_name = "KEY=VALUE")]
    pub storage_opt: Vec<String>,
    /// A label on the container (`ps --filter label=…`, inspect's
    /// Config.Labels); a KEY alone has an empty value.
    #[arg(short = 'l', long = "label", value_name = "KEY[=VALUE]")]
    pub label: Vec<String>,
    /// A healthcheck command, run with /bin/sh -c in the container every
    /// --health-interval: exit 0 is healthy (over the image's HEALTHCHECK).
    #[arg(long = "health-cmd", value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between healthchecks (default 30s).
    #[arg(long = "health-interval", value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Time a healthcheck may take before it counts as failed (default 30s).
    #[arg(long = "health-timeout", value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Failures in a row that make the container unhealthy (default 3).
    #[arg(long = "health-retries", value_name = "N")]
    pub health_retries: Option<u64>,
    /// Time to start in, when failures do not count (default 0s).
    #[arg(long = "health-start-period", value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Time between healthchecks during the start period (default 5s).
    #[arg(long = "health-start-interval", value_name = "DURATION")]
    pub health_start_interval: Option<String>,
    /// Run no healthcheck, whatever the image says.
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Network: a network's name (default `bridge`, as docker's), none
    /// (loopback only), host (container mode only), or container:NAME
    /// (share a running container's network, container mode only).
    #[arg(long = "network", alias = "net")]
    pub network: Option<String>,
    /// Publish a port: [HOSTIP:][HOSTPORT:]CONTAINERPORT[/tcp|udp] (ranges
    /// A-B too); no host port: a free one.
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes, each on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Another name for the container on its network (user networks).
    #[arg(long = "network-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// The container's IPv4 address on its network.
    #[arg(long = "ip", value_name = "ADDRESS")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// The container's MAC address on its network.
    #[arg(long = "mac-address", value_name = "MAC")]
    pub mac_address: Option<String>,
    /// A DNS server for names that are not containers' (IPv4).
    #[arg(long = "dns", value_name = "ADDRESS")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Add a line to /etc/hosts: HOST:IP.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// Container hostname (default: the short container ID).
    #[arg(long, short = 'h')]
    pub hostname: Option<String>,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and connect it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Isolation: container (namespaces on this kernel) or vm (a microVM).
    #[arg(long, default_value = "container")]
    pub isolation: Isolation,
    /// VM mode: boot this guest kernel (an ELF vmlinux) instead of capsa's
    /// own, e.g. a PVM-enabled kernel on a PVM host.
    #[arg(long, value_name = "VMLINUX")]
    pub kernel: Option<PathBuf>,
    /// The image, then the command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "IMAGE [COMMAND [ARG...]]"
    )]
    pub image_and_command: Vec<String>,
}

impl RunArgs {
    pub fn image(&self) -> &str {
        &self.image_and_command[0]
    }

    pub fn to_run_config(&self) -> Result<RunConfig> {
        let command = &self.image_and_command[1..];
        let mut env = Vec::new();
        for file in &self.env_file {
            env.extend(read_env_file(file)?);
        }
        for e in &self.env {
            env.extend(env_entry(e));
        }
        let network = match self.network_mode() {
            "host" => Network::Host,
            // A network's namespace is joined once the container has one.
            _ => Network::None,
        };
        let mut mounts = Vec::new();
        for v in &self.volumes {
            mounts.push(parse_volume(v)?);
        }
        let mut tmpfs = self.tmpfs.clone();
        for m in &self.mount {
            match parse_mount(m)? {
                LongMount::Bind(b) => mounts.push(b),
                LongMount::Tmpfs(t) => tmpfs.push(t),
            }
        }
        if let Some(size) = &self.shm_size {
            if tmpfs
                .iter()
                .any(|t| t.split(':').next() == Some("/dev/shm"))
            {
                bail!(usage(
                    "--shm-size and a tmpfs on /dev/shm both size it: give one".to_string()
                ));
            }
            let n = parse_bytes(size).map_err(|e| usage(format!("--shm-size: {e}")))?;
            if n <= 0 {
                bail!(usage(format!("--shm-size {size}: give a size above 0")));
            }
            tmpfs.push(format!("/dev/shm:size={n}"));
        }
        let cpus = cpus_flag(self.cpus.as_deref())?;
        let mut annotations = std::collections::HashMap::new();
        if !self.add_host.is_empty() {
            let entries = self
                .add_host
                .iter()
                .map(|h| {
                    // HOST:IP (docker's form; the IP may be IPv6) or HOST=IP.
                    let (name, ip) = h
                        .split_once('=')
                        .or_else(|| h.split_once(':'))
                        .unwrap_or((h, ""));
                    if ip == capsa_container::HOST_GATEWAY && self.network_mode() == "none" {
                        bail!(usage(format!(
                            "--add-host {h}: host-gateway needs a network: it cannot be used with --network none"
                        )));
                    }
                    Ok(capsa_container::extra_host(name, ip).map_err(|e| {
                        usage(format!(
                            "invalid --add-host {h:?}: {e} (give HOST:IP or HOST:host-gateway)"
                        ))
                    })?)
                })
                .collect::<Result<Vec<_>>>()?;
            annotations.insert(
                capsa_container::EXTRA_HOSTS_ANNOTATION.to_string(),
                entries.join(","),
            );
        }
        if let Some(p) = self.pids_limit {
            if p < -1 {
                bail!(usage(format!(
                    "--pids-limit {p} is invalid: give a positive number of processes, or 0 or -1 for no limit"
                )));
            }
        }
        let rc = RunConfig {
            seccomp: security_options(&self.security_opt)?,
            args: (!command.is_empty()).then(|| command.to_vec()),
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    vec![]
                } else {
                    vec![e.clone()]
                }
            }),
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            mounts,
            tmpfs,
            ulimits: self
                .ulimit
                .iter()
                .map(|u| capsa_image::spec::Ulimit::parse(u).map_err(usage))
                .collect::<Result<_, _>>()?,
            memory_bytes: memory_flag(self.memory.as_deref())?,
            cpus,
            // docker's meaning: 0 and -1 are both "no limit"; podman's
            // default when not given.
            pids_limit: match self.pids_limit {
                None => Some(capsa_image::spec::DEFAULT_PIDS_LIMIT),
                Some(p) => Some(p).filter(|p| *p > 0),
            },
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            privileged: self.privileged,
            network,
            hostname: self.hostname.clone(),
            tty: self.tty,
            annotations,
            ..Default::default()
        };
        // A profile file that does not parse is refused now, before any
        // image or VM work.
        capsa_image::spec::seccomp_of(&rc).map_err(|e| usage(e.to_string()))?;
        Ok(rc)
    }
}

/// `--security-opt` values (docker's `=` form, or its older `:` form): the
/// seccomp filter.
fn security_options(opts: &[String]) -> Result<Seccomp> {
    let mut seccomp = Seccomp::Default;
    for o in opts {
        let (key, value) = o
            .split_once(['=', ':'])
            .map_or((o.as_str(), None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("seccomp", Some("unconfined")) => seccomp = Seccomp::Unconfined,
            ("seccomp", Some(path)) if !path.is_empty() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("--security-opt seccomp={path}: {e}")))?;
                seccomp = Seccomp::Profile(text);
            }
            // Always on: an exec'd process gets the container's filter
            // after its capabilities are dropped, which needs no_new_privs.
            ("no-new-privileges", None | Some("true")) => {}
            ("no-new-privileges", Some("false")) => bail!(usage(
                "--security-opt no-new-privileges=false: capsa sets no_new_privs on every container process (its seccomp filter needs it)".into()
            )),
            // capsa applies no LSM profile: asking for none is honoured.
            ("label", Some("disable")) | ("apparmor", Some("unconfined")) => {}
            _ => bail!(usage(format!(
                "--security-opt {o}: not supported (give seccomp=unconfined|FILE, no-new-privileges, label=disable or apparmor=unconfined)"
            ))),
        }
    }
    Ok(seccomp)
}

impl RunArgs {
    /// `--restart`, refused with `--rm` as docker refuses it.
    pub fn restart_policy(&self) -> Result<RestartPolicy> {
        let Some(r) = &self.restart else {
            return Ok(RestartPolicy::No);
        };
        let policy = RestartPolicy::parse(r).map_err(usage)?;
        if policy != RestartPolicy::No && self.rm {
            bail!(usage(format!("--restart {r} cannot be used with --rm")));
        }
        Ok(policy)
    }

    /// `--log-opt max-size=…` and `max-file=…` over capsa's defaults.
    pub fn log_limits(&self) -> Result<LogLimits> {
        let mut limits = LogLimits::default();
        for o in &self.log_opt {
            let bad = |why: &str| usage(format!("--log-opt {o}: {why}"));
            match o.split_once('=') {
                Some(("max-size", v)) => {
                    let n = parse_bytes(v).map_err(|e| bad(&e))?;
                    if n < 4096 {
                        bail!(bad("give at least 4k"));
                    }
                    limits.max_size = n as u64;
                }
                Some(("max-file", v)) => match v.parse::<u32>() {
                    Ok(n) if n >= 1 => limits.max_files = n,
                    _ => bail!(bad("give a number of files, 1 or more")),
                },
                _ => bail!(bad("not supported (give max-size=SIZE or max-file=N)")),
            }
        }
        Ok(limits)
    }

    /// The `--health-*` flags, checked.
    pub fn health(&self) -> Result<capsa_shim::health::HealthFlags> {
        capsa_shim::health::HealthFlags::parse(&capsa_shim::health::HealthArgs {
            cmd: self.health_cmd.as_deref(),
            interval: self.health_interval.as_deref(),
            timeout: self.health_timeout.as_deref(),
            start_period: self.health_start_period.as_deref(),
            start_interval: self.health_start_interval.as_deref(),
            retries: self.health_retries,
            none: self.no_healthcheck,
        })
        .map_err(|e| usage(format!("{e:#}")).into())
    }

    /// `--stop-signal`, checked: a signal's name (with or without SIG) or
    /// number.
    pub fn stop_signal(&self) -> Result<Option<String>> {
        let Some(s) = &self.stop_signal else {
            return Ok(None);
        };
        match capsa_shim::lifecycle::parse_signal(s) {
            Some(sig) => Ok(Some(sig.as_str().to_string())),
            None => bail!(usage(format!("--stop-signal {s}: not a signal"))),
        }
    }

    pub fn userns(&self) -> Result<capsa_shim::userns::Mode> {
        let to_usage = |e: anyhow::Error| -> anyhow::Error { usage(format!("{e}")).into() };
        match (&self.userns, &self.uidmap, &self.gidmap) {
            (None, None, None) => Ok(Default::default()),
            (Some(s), None, None) => s.parse().map_err(to_usage),
            (None, Some(u), g) => capsa_shim::userns::given(u, g.as_deref())
                .map(capsa_shim::userns::Mode::Map)
                .map_err(to_usage),
            (None, None, Some(_)) => bail!(usage("--gidmap needs --uidmap".into())),
            (Some(_), ..) => bail!(usage(
                "--userns and --uidmap/--gidmap both given: give one".into()
            )),
        }
    }

    /// `--label KEY[=VALUE]`s; a later one for a key wins, as docker's.
    pub fn labels(&self) -> Result<std::collections::BTreeMap<String, String>> {
        self.label
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                if k.is_empty() {
                    bail!(CodedError::new(
                        EXIT_CAPSA_ERROR,
                        format!("--label {l:?}: give KEY=VALUE or KEY")
                    ));
                }
                Ok((k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// `--storage-opt size=…`: the writable layer's bound in bytes.
    pub fn storage_size(&self) -> Result<Option<u64>> {
        let mut size = None;
        for o in &self.storage_opt {
            let bad = |why: &str| usage(format!("--storage-opt {o}: {why}"));
            match o.split_once('=') {
                Some(("size", v)) => {
                    let n = parse_bytes(v).map_err(|e| bad(&e))? as u64;
                    if n < capsa_shim::writable::MIN_BYTES {
                        bail!(bad("give at least 16m"));
                    }
                    size = Some(n);
                }
                _ => bail!(bad("not supported (give size=SIZE)")),
            }
        }
        Ok(size)
    }

    /// `--network`, or docker's default network `bridge`.
    fn network_mode(&self) -> &str {
        self.network
            .as_deref()
            .unwrap_or(capsa_network::DEFAULT_NETWORK)
    }

    /// `--network container:NAME`: the container whose network to share.
    pub fn network_of(&self) -> Option<&str> {
        self.network_mode().strip_prefix("container:")
    }

    /// The networks to join and ports to publish; None for `none`, `host`
    /// and `container:NAME`.
    pub fn to_network_request(&self) -> Result<Option<capsa_network::Request>> {
        let mode = self.network_mode();
        if let Some(other) = self.network_of() {
            // Docker's rule: the network, its names and the /etc files
            // are the other container's.
            let conflicts = [
                ("-p/-P", !self.publish.is_empty() || self.publish_all),
                ("--network-alias", !self.network_alias.is_empty()),
                ("--ip", self.ip.is_some()),
                ("--mac-address", self.mac_address.is_some()),
                ("--dns", !self.dns.is_empty()),
                ("--hostname", self.hostname.is_some()),
                ("--add-host", !self.add_host.is_empty()),
            ];
            if let Some((flag, _)) = conflicts.iter().find(|(_, given)| *given) {
                bail!(usage(format!(
                    "{flag} cannot be used with --network container:{other}: the network is that container's"
                )));
            }
            if other.is_empty() {
                bail!(usage(
                    "--network container: needs a container's name or ID".into()
                ));
            }
            return Ok(None);
        }
        let networked = !matches!(mode, "none" | "host");
        let network_only = |flag: &str| -> Result<()> {
            bail!(usage(format!(
                "{flag} needs a network: it cannot be used with --network {mode}"
            )))
        };
        if !networked {
            if !self.publish.is_empty() || self.publish_all {
                network_only("-p/-P")?;
            }
            if !self.network_alias.is_empty() {
                network_only("--network-alias")?;
            }
            if self.ip.is_some() {
                network_only("--ip")?;
            }
            if self.mac_address.is_some() {
                network_only("--mac-address")?;
            }
            if !self.dns.is_empty() && mode != "host" {
                network_only("--dns")?;
            }
            return Ok(None);
        }
        if let Some(mac) = &self.mac_address {
            let ok = mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
            if !ok {
                bail!(usage(format!(
                    "invalid --mac-address {mac:?}: give six hex bytes such as 02:42:ac:11:00:02"
                )));
            }
        }
        let ports = self
            .publish
            .iter()
            .map(|p| p.parse::<capsa_network::PortSpec>())
            .collect::<Result<Vec<_>>>()
            .map_err(|e| usage(format!("{e:#}")))?;
        Ok(Some(capsa_network::Request {
            endpoints: vec![capsa_network::Endpoint {
                network: mode.to_string(),
                aliases: self.network_alias.clone(),
                ip: self.ip,
                mac: self.mac_address.clone(),
            }],
            ports,
            dns: self.dns.clone(),
            publish_all: self.publish_all,
        }))
    }
}

fn usage(msg: String) -> CodedError {
    CodedError::new(EXIT_CAPSA_ERROR, msg)
}

/// `KEY=VALUE` as given; a bare `KEY` takes this process's value, and is
/// dropped if unset (as docker does).
fn env_entry(e: &str) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        std::env::var(e).ok().map(|v| format!("{e}={v}"))
    }
}

fn read_env_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --env-file {}", path.display()))
        .map_err(|e| usage(format!("{e:#}")))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(env_entry)
        .collect())
}

/// `-v SOURCE:TARGET[:OPTIONS]`, OPTIONS comma-separated as docker's and
/// podman's.
fn parse_volume(v: &str) -> Result<BindMount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, options) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => bail!(usage(format!(
            "invalid volume {v:?}: use SOURCE:TARGET or SOURCE:TARGET:OPTIONS (e.g. ro)"
        ))),
    };
    let bad = |why: String| usage(format!("invalid volume {v:?}: {why}"));
    let mut mode: Option<&str> = None;
    let (mut flags, mut chown, mut nocopy) = (Vec::<String>::new(), false, false);
    for o in options.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" | "rw" => {
                if mode.is_some_and(|m| m != o) {
                    bail!(bad("ro and rw both given".into()));
                }
                mode = Some(o);
            }
            "noexec" | "exec" | "nosuid" | "suid" | "nodev" | "dev" => {
                let opposite = o.strip_prefix("no").map_or(format!("no{o}"), str::to_string);
                if flags.contains(&opposite) {
                    bail!(bad(format!("{o} and {opposite} both given")));
                }
                flags.push(o.to_string());
            }
            "U" => chown = true,
            "nocopy" => nocopy = true,
            // SELinux relabelling: capsa labels nothing (as docker and
            // podman on a host without SELinux, they are accepted).
            "z" | "Z" => {}
            // capsa's bind mounts are always recursive and private.
            "rbind" | "rprivate" | "private" => {}
            // macOS settings; nothing on Linux.
            "cached" | "delegated" | "consistent" => {}
            "shared" | "rshared" | "slave" | "rslave" | "runbindable" | "unbindable" => {
                bail!(bad(format!(
                    "propagation {o} is not supported: capsa's bind mounts are private (rprivate)"
                )))
            }
            other => bail!(bad(format!(
                "option {other:?} is not supported (give ro, rw, noexec, exec, nosuid, suid, nodev, dev, U, nocopy, z or Z)"
            ))),
        }
    }
    let mut m = bind_mount(v, src, dst, mode == Some("ro"), nocopy)?;
    if chown {
        if let Some(why) = refused_chown(&m.src) {
            bail!(bad(why));
        }
    }
    m.flags = flags;
    m.chown = chown;
    Ok(m)
}

/// Why `U` may not change the owner of everything under host path `src`
/// (a named volume's is not known yet, and always capsa's to change): the
/// root, a top-level directory, or one of the system's trees, as podman
/// refuses them.
fn refused_chown(src: &Path) -> Option<String> {
    if src.as_os_str().is_empty() {
        return None;
    }
    let real = src.canonicalize().unwrap_or_else(|_| src.to_path_buf());
    const SYSTEM: [&str; 10] = [
        "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/usr",
    ];
    let top_level = real.parent().is_none_or(|p| p == Path::new("/"));
    (top_level || SYSTEM.iter().any(|s| real.starts_with(s))).then(|| {
        format!(
            "U would change the owner of every file under {}: refusing a system directory",
            real.display()
        )
    })
}

/// What `--mount` gives: a bind mount or named volume (as `-v`'s), or a
/// tmpfs (as `--tmpfs`'s).
enum LongMount {
    Bind(BindMount),
    Tmpfs(String),
}

/// docker's `--mount` form: comma-separated KEY=VALUE (`readonly` alone
/// too); type defaults to volume, as docker's.
fn parse_mount(m: &str) -> Result<LongMount> {
    let bad = |why: String| usage(format!("invalid --mount {m:?}: {why}"));
    let (mut typ, mut src, mut dst, mut ro, mut nocopy) = ("volume", None, None, false, false);
    let (mut size, mut mode) = (None, None);
    for field in m.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        let flag = |v: &str| match v {
            "" | "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad(format!("{k}={v}: give true or false"))),
        };
        match k {
            "type" => typ = v,
            "source" | "src" => src = Some(v),
            "target" | "destination" | "dst" => dst = Some(v),
            "readonly" | "ro" => ro = flag(v)?,
            "volume-nocopy" => nocopy = flag(v)?,
            "tmpfs-size" => size = Some(v),
            "tmpfs-mode" => mode = Some(v),
            // capsa's bind mounts are always private, as docker's default.
            "bind-propagation" if matches!(v, "rprivate" | "private") => {}
            // A macOS setting; nothing on Linux.
            "consistency" => {}
            other => bail!(bad(format!(
                "{other} is not supported (give type, source, target, readonly, volume-nocopy, tmpfs-size, tmpfs-mode)"
            ))),
        }
    }
    let dst = dst.ok_or_else(|| bad("give a target".into()))?;
    match typ {
        "bind" | "volume" => {
            if size.is_some() || mode.is_some() {
                bail!(bad("tmpfs-size and tmpfs-mode are for type=tmpfs".into()));
            }
            let src = src.ok_or_else(|| bad("give a source".into()))?;
            if typ == "bind" && !src.starts_with('/') {
                bail!(bad(format!(
                    "a bind source is an absolute host path, not {src:?}"
                )));
            }
            if typ == "volume" && src.starts_with('/') {
                bail!(bad(format!(
                    "a volume source is a volume's name, not the path {src:?}"
                )));
            }
            Ok(LongMount::Bind(bind_mount(m, src, dst, ro, nocopy)?))
        }
        "tmpfs" => {
            if src.is_some() {
                bail!(bad("a tmpfs has no source".into()));
            }
            let mut opts = Vec::new();
            if let Some(s) = size {
                let n = parse_bytes(s).map_err(|e| bad(format!("tmpfs-size: {e}")))?;
                opts.push(format!("size={n}"));
            }
            if let Some(md) = mode {
                if u32::from_str_radix(md, 8).is_err() {
                    bail!(bad(format!(
                        "tmpfs-mode {md}: give an octal mode such as 1777"
                    )));
                }
                opts.push(format!("mode={md}"));
            }
            if ro {
                opts.push("ro".into());
            }
            Ok(LongMount::Tmpfs(if opts.is_empty() {
                dst.to_string()
            } else {
                format!("{dst}:{}", opts.join(","))
            }))
        }
        other => bail!(bad(format!(
            "type {other} is not supported (give bind, volume or tmpfs)"
        ))),
    }
}

/// A bind mount of host path `src`, or named volume `src`, at `dst`
/// (`given` is the flag's value, for messages); `nocopy` only for a
/// named volume.
fn bind_mount(
    given: &str,
    src: &str,
    dst: &str,
    readonly: bool,
    nocopy: bool,
) -> Result<BindMount> {
    let v = given;
    if !dst.starts_with('/') {
        bail!(usage(format!(
            "invalid volume {v:?}: the container path must be absolute"
        )));
    }
    if !src.starts_with('/') {
        // A named volume (docker's rule: a source that is not a path).
        if !capsa_shim::volumes::valid_name(src) {
            bail!(usage(format!(
                "invalid volume {v:?}: {src:?} is neither an absolute host path nor a volume name"
            )));
        }
        return Ok(BindMount {
            src: PathBuf::new(),
            dst: dst.to_string(),
            readonly,
            volume: Some(src.to_string()),
            nocopy,
            ..Default::default()
        });
    }
    if nocopy {
        bail!(usage(format!(
            "invalid volume {v:?}: nocopy is for named volumes, not host paths"
        )));
    }
    if !Path::new(src).exists() {
        bail!(usage(format!("bind source path does not exist: {src}")));
    }
    Ok(BindMount {
        src: PathBuf::from(src),
        dst: dst.to_string(),
        readonly,
        volume: None,
        ..Default::default()
    })
}

/// docker's size syntax (go-units' `RAMInBytes`): a whole or decimal
/// number, an optional space, and an optional unit `b`, or `k`, `m`, `g`,
/// `t`, `p` (powers of 1024) optionally followed by `b` or `ib`, in any
/// case. Anything else (an exponent, a sign, `nan`) is refused, and so is a
/// value beyond the largest byte count a limit can hold.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let invalid = || {
        format!("{s:?} is not a size: use a number of bytes, or a number with a unit b, k, m, g, t or p (e.g. 512m, 1.5g)")
    };
    let lower = s.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    // One space may separate the number from a unit ("1 g").
    let unit = match unit.strip_prefix(' ') {
        Some(u) if !u.is_empty() => u,
        _ => unit,
    };
    let well_formed = match num.split_once('.') {
        Some((whole, frac)) => {
            !whole.is_empty()
                && !frac.is_empty()
                && (whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
        }
        None => !num.is_empty(),
    };
    if !well_formed {
        return Err(invalid());
    }
    let shift = match unit.as_bytes() {
        [] | [b'b'] => 0,
        [u] | [u, b'b'] | [u, b'i', b'b'] => match u {
            b'k' => 10,
            b'm' => 20,
            b'g' => 30,
            b't' => 40,
            b'p' => 50,
            _ => return Err(invalid()),
        },
        _ => return Err(invalid()),
    };
    let too_large = || {
        format!(
            "{s:?} is too large: the most is {} bytes (just under 8192p)",
            i64::MAX
        )
    };
    let bytes = match num.split_once('.') {
        // Whole numbers exactly, without going through a float.
        None => num
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(1i64 << shift))
            .ok_or_else(too_large)?,
        Some(_) => {
            let n: f64 = num.parse().map_err(|_| invalid())?;
            let b = n * (1u64 << shift) as f64;
            // i64::MAX as f64 rounds up to 2^63, which does not fit.
            if !b.is_finite() || b >= i64::MAX as f64 {
                return Err(too_large());
            }
            b as i64
        }
    };
    Ok(bytes)
}

/// `--memory` as given, if it was (run and update): None for none or 0.
pub fn memory_flag(flag: Option<&str>) -> Result<Option<i64>> {
    Ok(flag.map(parse_memory).transpose()?.flatten())
}

/// `--cpus` as given, if it was, against this host's CPUs: None for none
/// or 0.
pub fn cpus_flag(flag: Option<&str>) -> Result<Option<f64>> {
    Ok(flag
        .map(|c| parse_cpus(c, host_cpus()))
        .transpose()?
        .flatten())
}

/// `--memory`: a size as [`parse_bytes`] reads it; 0 means no limit (as
/// docker), anything else must be at least docker's minimum of 6 MiB.
pub fn parse_memory(s: &str) -> Result<Option<i64>> {
    let bytes = parse_bytes(s).map_err(|e| usage(format!("invalid --memory: {e}")))?;
    if bytes == 0 {
        return Ok(None);
    }
    if bytes < 6 * 1024 * 1024 {
        bail!(usage(format!(
            "--memory {s:?} is too small: the minimum is 6m (or 0 for no limit)"
        )));
    }
    Ok(Some(bytes))
}

/// `--cpus`: a decimal number of CPUs, with docker's limits: at least
/// 0.01, at most the CPUs this host has; 0 means no limit.
pub fn parse_cpus(s: &str, host_cpus: usize) -> Result<Option<f64>> {
    let range = format!("give a number of CPUs from 0.01 to {host_cpus} (this host has {host_cpus}), or 0 for no limit");
    let decimal = {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        !(whole.is_empty() && frac.is_empty())
            && whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
            && !(s.contains('.') && frac.is_empty())
    };
    if !decimal {
        bail!(usage(format!(
            "--cpus {s:?} is not a number of CPUs: {range}"
        )));
    }
    let cpus: f64 = s
        .parse()
        .map_err(|_| usage(format!("--cpus {s:?} is not a number of CPUs: {range}")))?;
    if cpus == 0.0 {
        return Ok(None);
    }
    if cpus < 0.01 || cpus > host_cpus as f64 {
        bail!(usage(format!("--cpus {s} is out of range: {range}")));
    }
    Ok(Some(cpus))
}

/// The CPUs this process may run on (what docker counts for `--cpus`).
fn host_cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .ok()
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("2 t").unwrap(), 2 << 40);
        assert_eq!(parse_bytes("1p").unwrap(), 1 << 50);
        assert_eq!(parse_bytes("10485760").unwrap(), 10 << 20);
        assert_eq!(parse_bytes("100b").unwrap(), 100);
        assert_eq!(parse_bytes("8191p").unwrap(), 8191 << 50);
        for bad in [
            "lots", "1e30", "1E3", "-1", "+5", "nan", "inf", "", "m", ".5g", "1.g", "1..2", "1x",
            "1kk", "1bb", "1mbb", "1ki", "1 ", " 1", "0x10",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
        for huge in [
            "8192p",
            "9223372036854775808",
            "99999999999999999999",
            "1e400",
        ] {
            assert!(parse_bytes(huge).is_err(), "{huge:?} accepted");
        }
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory("64m").unwrap(), Some(64 << 20));
        assert_eq!(parse_memory("0").unwrap(), None);
        let err = parse_memory("1k").unwrap_err().to_string();
        assert!(err.contains("--memory") && err.contains("6m"), "{err}");
        let err = parse_memory("1e30").unwrap_err().to_string();
        assert!(err.contains("--memory") && err.contains("1e30"), "{err}");
        let err = parse_memory("9000p").unwrap_err().to_string();
        assert!(
            err.contains("--memory") && err.contains("too large"),
            "{err}"
        );
    }

    #[test]
    fn cpus_like_docker() {
        assert_eq!(parse_cpus("0.5", 2).unwrap(), Some(0.5));
        assert_eq!(parse_cpus("2", 2).unwrap(), Some(2.0));
        assert_eq!(parse_cpus("0", 2).unwrap(), None);
        assert_eq!(parse_cpus("0.0", 2).unwrap(), None);
        for bad in [
            "-1", "nan", "NaN", "inf", "1e3", "", ".", "1.", "abc", "0.001", "3", "2.01",
        ] {
            let err = parse_cpus(bad, 2).unwrap_err().to_string();
            assert!(err.starts_with("--cpus"), "{bad:?}: {err}");
        }
        let err = parse_cpus("3", 2).unwrap_err().to_string();
        assert!(err.contains("this host has 2"), "{err}");
    }

    #[test]
    fn volumes_need_absolute_existing_sources() {
        assert!(parse_volume("/tmp:/data:ro").unwrap().readonly);
        assert!(!parse_volume("/tmp:/data").unwrap().readonly);
        assert_eq!(
            parse_volume("cache:/data").unwrap().volume.as_deref(),
            Some("cache")
        );
        assert!(parse_volume("./tmp:/data").is_err());
        assert!(parse_volume("/tmp:data").is_err());
        assert!(parse_volume("/tmp:/data:xx").is_err());
        assert!(parse_volume("/no/such/dir/here:/data").is_err());
    }

    #[test]
    fn volume_options_as_docker_and_podman_write_them() {
        let m = parse_volume("/var/tmp:/data:ro,Z,noexec,nodev,rprivate,cached").unwrap();
        assert!(m.readonly && !m.chown && !m.nocopy);
        assert_eq!(m.flags, ["noexec", "nodev"]);
        let m = parse_volume("cache:/data:nocopy,U").unwrap();
        assert!(m.nocopy && m.chown && !m.readonly);
        assert!(parse_volume("/var/tmp:/data:U").unwrap().chown);
        for bad in [
            "/var/tmp:/d:rw,ro",
            "/var/tmp:/d:suid,nosuid",
            "/var/tmp:/d:rslave",
            "/var/tmp:/d:nocopy",
            "/var/tmp:/d:idmap",
            "/etc/ssl:/d:U",
            "/home:/d:U",
            "/:/d:U",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }
}
