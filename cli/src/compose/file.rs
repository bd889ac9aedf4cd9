//! The compose file: the compose specification's common subset as serde
//! types that refuse what they do not know, so an unknown key or a bad
//! value is one line naming its path (`services.web.ports[0]: …`). `${VAR}`
//! and `${VAR:-default}` are filled in from the environment and the
//! project's `.env` before the file is read, as docker compose does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub services: IndexMap<String, Service>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub networks: IndexMap<String, Option<NetworkDef>>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub volumes: IndexMap<String, Option<VolumeDef>>,
    /// Secrets and configs from files or environment variables, mounted
    /// read-only into the services that name them.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub secrets: IndexMap<String, FileDef>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub configs: IndexMap<String, FileDef>,
}

/// A top-level secret or config: a file, relative to the project, or the
/// value of an environment variable (the environment's, then `.env`'s).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// A service's use of a secret or config: its name, or `{source, target}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FileRef {
    Name(String),
    Long(FileRefLong),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRefLong {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl FileRef {
    pub fn source(&self) -> &str {
        match self {
            FileRef::Name(n) => n,
            FileRef::Long(l) => &l.source,
        }
    }

    /// Where it appears in the container: an absolute target as given,
    /// otherwise under `dir` (`/run/secrets` for secrets, `/` for
    /// configs), named after the target or the source.
    pub fn target(&self, dir: &str) -> String {
        let name = match self {
            FileRef::Long(FileRefLong {
                target: Some(t), ..
            }) => t.as_str(),
            _ => self.source(),
        };
        if name.starts_with('/') {
            name.to_string()
        } else {
            format!("{}/{name}", dir.trim_end_matches('/'))
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// One string, or a list (`command`, `entrypoint`, `env_file`, `dns`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The value or values as written (a `command` string is split by its
    /// reader, not here).
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `KEY=VALUE` list, or a map.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Environment {
    List(Vec<String>),
    Map(IndexMap<String, Option<Scalar>>),
}

/// A YAML scalar given where a string is meant (`PORT: 8080`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    /// YAML's true, or the string "true".
    pub fn is_true(&self) -> bool {
        match self {
            Scalar::Bool(b) => *b,
            other => other.to_string() == "true",
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Str(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Build {
    Context(String),
    Full(BuildDef),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDef {
    #[serde(default = "dot")]
    pub context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn dot() -> String {
    ".".into()
}

/// `[a, b]`, or `{a: {condition: service_healthy}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DependsOn {
    List(Vec<String>),
    Map(IndexMap<String, Dependency>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    #[serde(default = "started")]
    pub condition: Condition,
}

fn started() -> Condition {
    Condition::Started
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Condition {
    #[serde(rename = "service_started")]
    Started,
    #[serde(rename = "service_healthy")]
    Healthy,
    #[serde(rename = "service_completed_successfully")]
    CompletedSuccessfully,
}

/// `[a, b]`, or `{a: {aliases: [x]}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ServiceNetworks {
    List(Vec<String>),
    Map(IndexMap<String, Option<ServiceNetwork>>),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
}

/// A ulimit: one number for both limits, or each.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum UlimitDef {
    Both(i64),
    Each { soft: i64, hard: i64 },
}

impl UlimitDef {
    /// As `--ulimit NAME=…` takes it.
    pub fn flag(&self, name: &str) -> String {
        match self {
            UlimitDef::Both(n) => format!("{name}={n}"),
            UlimitDef::Each { soft, hard } => format!("{name}={soft}:{hard}"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// How many containers run the service (as `scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

/// capsa's extension: `x-capsa: {isolation: vm}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapsaExt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Labels on the service's container (list or map, as environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<ServiceNetworks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<DependsOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `HOST:IP` (or `HOST=IP`) list, or a map of HOST to IP;
    /// `host-gateway` for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// How many containers run the service (`PROJECT-SERVICE-1`, `-2`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<String>,
    /// The size of /dev/shm (`--shm-size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Scalar>,
    /// `host`, or `auto[:size=N]` (`--userns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<String>,
    /// Resource limits: NAME: N, or NAME: {soft, hard} (`--ulimit`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub ulimits: IndexMap<String, UlimitDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long `stop` waits before SIGKILL (`--stop-timeout`, whole
    /// seconds rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// `size: 1g` bounds the writable layer (`--storage-opt`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_opt: BTreeMap<String, Scalar>,
    /// docker's per-service runtime: `vm` (or `capsa-vm`) runs it in a
    /// microVM, as `x-capsa: {isolation: vm}` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, rename = "x-capsa", skip_serializing_if = "Option::is_none")]
    pub x_capsa: Option<CapsaExt>,
    /// Started only when one of these profiles is enabled (`--profile`,
    /// COMPOSE_PROFILES); none: always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
}

/// A published port: docker's short form (`"127.0.0.1:8080:80/udp"`), or
/// the long one.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Port {
    Short(Scalar),
    Long(PortLong),
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        short_or_long(d, Port::Short, Port::Long)
    }
}

/// A short form (a scalar) or a long one (a mapping), the long one's own
/// error kept ("unknown field `x`"), which an untagged enum's would lose.
fn short_or_long<'de, D, S, L, T>(
    d: D,
    short: impl FnOnce(S) -> T,
    long: impl FnOnce(L) -> T,
) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    S: serde::de::DeserializeOwned,
    L: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    let v = serde_yaml_ng::Value::deserialize(d)?;
    if v.is_mapping() {
        serde_yaml_ng::from_value(v)
            .map(long)
            .map_err(D::Error::custom)
    } else {
        serde_yaml_ng::from_value(v)
            .map(short)
            .map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortLong {
    pub target: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Only `ingress` or `host` (a swarm's distinction; one host here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Port {
    /// Whether it names one host port (not a range, not one the host
    /// picks).
    pub fn fixed_host_port(&self) -> bool {
        let short = self.short();
        let spec = short.split('/').next().unwrap_or("");
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        parts
            .get(1)
            .is_some_and(|host| !host.is_empty() && !host.contains('-'))
    }

    /// As `capsa run -p` takes it: `[HOSTIP:][HOSTPORT:]CTRPORT[/PROTO]`.
    pub fn short(&self) -> String {
        match self {
            Port::Short(s) => s.to_string(),
            Port::Long(l) => {
                let mut out = String::new();
                if let Some(ip) = &l.host_ip {
                    out = format!("{ip}:");
                }
                match &l.published {
                    Some(p) => out.push_str(&format!("{p}:")),
                    None if !out.is_empty() => out.push(':'),
                    None => {}
                }
                out.push_str(&l.target.to_string());
                if let Some(proto) = &l.protocol {
                    out.push_str(&format!("/{proto}"));
                }
                out
            }
        }
    }
}

/// A service's volume: docker's short form (`./data:/data:ro`), or the
/// long one (`type: bind|volume|tmpfs`, `source`, `target`, `read_only`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ServiceVolume {
    Short(String),
    Long(VolumeLong),
}

impl<'de> Deserialize<'de> for ServiceVolume {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        short_or_long(d, ServiceVolume::Short, ServiceVolume::Long)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeLong {
    #[serde(rename = "type")]
    pub kind: VolumeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `create_host_path` (a missing bind source is made unless false),
    /// `propagation`, `selinux`: given to `-v` as its options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BTreeMap<String, Scalar>>,
    /// `nocopy`: given to `-v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<BTreeMap<String, Scalar>>,
    /// `size` of a tmpfs (bytes, or with a unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<BTreeMap<String, Scalar>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Bind,
    Volume,
    Tmpfs,
}

/// What a service volume becomes on `capsa run`'s command line.
pub enum VolumeFlag {
    /// `-v` with the short form (its source not yet resolved).
    Volume(String),
    /// `--tmpfs TARGET[:size=…]`.
    Tmpfs(String),
}

impl ServiceVolume {
    pub fn flag(&self) -> Result<VolumeFlag> {
        let l = match self {
            ServiceVolume::Short(s) => return Ok(VolumeFlag::Volume(s.clone())),
            ServiceVolume::Long(l) => l,
        };
        let mut options: Vec<String> = Vec::new();
        if l.read_only {
            options.push("ro".into());
        }
        for key in ["propagation", "selinux"] {
            if let Some(v) = l.bind.as_ref().and_then(|b| b.get(key)) {
                options.push(v.to_string());
            }
        }
        if l.volume
            .as_ref()
            .and_then(|v| v.get("nocopy"))
            .is_some_and(Scalar::is_true)
        {
            options.push("nocopy".into());
        }
        let options = match options.is_empty() {
            true => String::new(),
            false => format!(":{}", options.join(",")),
        };
        Ok(match (l.kind, &l.source) {
            (VolumeKind::Tmpfs, _) => match l.tmpfs.as_ref().and_then(|t| t.get("size")) {
                Some(size) => VolumeFlag::Tmpfs(format!("{}:size={size}", l.target)),
                None => VolumeFlag::Tmpfs(l.target.clone()),
            },
            (VolumeKind::Bind, None) => bail!("a bind volume needs a source"),
            // Anonymous: a volume of its own, made for the container.
            (VolumeKind::Volume, None) => VolumeFlag::Volume(l.target.clone()),
            (_, Some(src)) => VolumeFlag::Volume(format!("{src}:{}{options}", l.target)),
        })
    }

    /// Whether a missing host directory it names is made first, as docker
    /// compose does: always for the short form, unless
    /// `bind.create_host_path` is false for the long one.
    pub fn creates_host_path(&self) -> bool {
        match self {
            ServiceVolume::Short(_) => true,
            ServiceVolume::Long(l) => l
                .bind
                .as_ref()
                .and_then(|b| b.get("create_host_path"))
                .is_none_or(Scalar::is_true),
        }
    }
}

/// A service's `logging`: capsa keeps every log in rotated local files,
/// whose `max-size` and `max-file` options it takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default)]
    pub options: BTreeMap<String, Scalar>,
}

impl Service {
    /// The isolation the file asks for: `x-capsa.isolation`, else
    /// `runtime`, else container.
    pub fn isolation(&self) -> Result<&'static str> {
        let want = self
            .x_capsa
            .as_ref()
            .and_then(|x| x.isolation.as_deref())
            .or(self.runtime.as_deref());
        match want {
            None | Some("container") | Some("runc") | Some("capsa") => Ok("container"),
            Some("vm") | Some("capsa-vm") | Some("kata") => Ok("vm"),
            Some(other) => bail!("isolation {other}: give container or vm"),
        }
    }

    /// The networks it joins (`default` when it names none), with its
    /// aliases on each.
    pub fn networks(&self) -> Vec<(String, Vec<String>)> {
        match &self.networks {
            None => vec![("default".into(), vec![])],
            Some(ServiceNetworks::List(l)) => l.iter().map(|n| (n.clone(), vec![])).collect(),
            Some(ServiceNetworks::Map(m)) => m
                .iter()
                .map(|(n, o)| {
                    (
                        n.clone(),
                        o.as_ref().map(|o| o.aliases.clone()).unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }

    /// The services this one waits for, with the condition.
    pub fn dependencies(&self) -> Vec<(String, Condition)> {
        match &self.depends_on {
            None => vec![],
            Some(DependsOn::List(l)) => l.iter().map(|s| (s.clone(), Condition::Started)).collect(),
            Some(DependsOn::Map(m)) => m.iter().map(|(k, d)| (k.clone(), d.condition)).collect(),
        }
    }
}

/// A compose file read, interpolated and checked.
pub struct Project {
    pub name: String,
    /// The directory relative paths in the file are relative to.
    pub dir: PathBuf,
    pub file: ComposeFile,
    /// The enabled profiles.
    pub profiles: Vec<String>,
    /// `up --scale SERVICE=N`, over the file's `scale`/`deploy.replicas`.
    pub scale: BTreeMap<String, u32>,
    /// `.env` beside the file (the environment wins over it).
    dotenv: BTreeMap<String, String>,
}

impl Project {
    /// Reads `path` (default: compose.yaml, compose.yml, docker-compose.yaml
    /// or docker-compose.yml in the current directory).
    pub fn load(path: Option<&Path>, name: Option<&str>) -> Result<Project> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => [
                "compose.yaml",
                "compose.yml",
                "docker-compose.yaml",
                "docker-compose.yml",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                anyhow!("no compose.yaml (or docker-compose.yml) here; give one with -f")
            })?,
        };
        let path = std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let vars = dotenv(&dir.join(".env"))?;
        let text = interpolate(&text, &vars).with_context(|| format!("{}", path.display()))?;
        let file =
            parse_in(&text, Some(&dir), &vars).with_context(|| format!("{}", path.display()))?;
        let name = name
            .map(str::to_string)
            .or_else(|| file.name.clone())
            .unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let name: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if name.is_empty() {
            bail!("the project has no usable name: give one with -p");
        }
        let project = Project {
            name,
            dir,
            file,
            profiles: Vec::new(),
            scale: BTreeMap::new(),
            dotenv: vars,
        };
        project.check()?;
        Ok(project)
    }

    /// Variable `name`, from the environment, else from `.env`.
    pub fn var(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.dotenv.get(name).cloned())
    }

    /// Whether `service` runs with the enabled profiles.
    pub fn active(&self, service: &str) -> bool {
        let wanted = &self.file.services[service].profiles;
        wanted.is_empty() || wanted.iter().any(|p| self.profiles.contains(p))
    }

    /// [`Project::order`] of the active services; an active service that
    /// depends on an inactive one is refused.
    pub fn active_order(&self) -> Result<Vec<String>> {
        let order: Vec<String> = self
            .order()?
            .into_iter()
            .filter(|s| self.active(s))
            .collect();
        for s in &order {
            for (dep, _) in self.file.services[s].dependencies() {
                if !self.active(&dep) {
                    bail!(
                        "services.{s}.depends_on: {dep} is in profile(s) {}, none of them enabled (--profile)",
                        self.file.services[&dep].profiles.join(", ")
                    );
                }
            }
        }
        Ok(order)
    }

    fn check(&self) -> Result<()> {
        for (name, s) in &self.file.services {
            let at = |what: &str| format!("services.{name}.{what}");
            if s.image.is_none() && s.build.is_none() {
                bail!("services.{name}: give image or build");
            }
            s.isolation()
                .map_err(|e| anyhow!("{}: {e}", at("x-capsa")))?;
            let replicas = s.deploy.as_ref().and_then(|d| d.replicas);
            if let (Some(a), Some(b)) = (s.scale, replicas) {
                if a != b {
                    bail!("services.{name}: scale ({a}) and deploy.replicas ({b}) differ");
                }
            }
            self.check_replicas(name, s.scale.or(replicas).unwrap_or(1))?;
            for (dep, _) in s.dependencies() {
                if !self.file.services.contains_key(&dep) {
                    bail!("{}: no service {dep} in the file", at("depends_on"));
                }
            }
            for (kind, refs, defs) in [
                ("secrets", &s.secrets, &self.file.secrets),
                ("configs", &s.configs, &self.file.configs),
            ] {
                for r in refs {
                    let Some(def) = defs.get(r.source()) else {
                        bail!(
                            "{}: {} is not declared under the top-level {kind}",
                            at(kind),
                            r.source()
                        );
                    };
                    match (&def.file, &def.environment) {
                        (Some(f), None) => {
                            let file = self.dir.join(f);
                            if !file.is_file() {
                                bail!(
                                    "{kind}.{}.file: {} is not a file",
                                    r.source(),
                                    file.display()
                                );
                            }
                        }
                        (None, Some(var)) => {
                            if self.var(var).is_none() {
                                bail!("{kind}.{}.environment: {var} is not set", r.source());
                            }
                        }
                        _ => bail!(
                            "{kind}.{}: give file or environment (one of them)",
                            r.source()
                        ),
                    }
                }
            }
            for (n, _) in s.networks() {
                if !self.file.networks.contains_key(&n) && n != "default" {
                    bail!(
                        "{}: network {n} is not declared under networks",
                        at("networks")
                    );
                }
            }
        }
        self.order().map(|_| ())
    }

    /// The services in an order that starts each after what it depends on.
    pub fn order(&self) -> Result<Vec<String>> {
        let mut done: Vec<String> = Vec::new();
        let mut visiting = Vec::new();
        fn visit(
            p: &Project,
            s: &str,
            done: &mut Vec<String>,
            visiting: &mut Vec<String>,
        ) -> Result<()> {
            if done.iter().any(|d| d == s) {
                return Ok(());
            }
            if visiting.iter().any(|v| v == s) {
                bail!(
                    "services.{s}.depends_on: a dependency cycle ({} → {s})",
                    visiting.join(" → ")
                );
            }
            visiting.push(s.to_string());
            for (dep, _) in p.file.services[s].dependencies() {
                visit(p, &dep, done, visiting)?;
            }
            visiting.pop();
            done.push(s.to_string());
            Ok(())
        }
        for s in self.file.services.keys() {
            visit(self, s, &mut done, &mut visiting)?;
        }
        Ok(done)
    }

    /// How many containers run `service`: `up --scale`, else the file's
    /// `scale` or `deploy.replicas`, else one.
    pub fn replicas(&self, service: &str) -> u32 {
        let s = &self.file.services[service];
        self.scale
            .get(service)
            .copied()
            .or(s.scale)
            .or_else(|| s.deploy.as_ref().and_then(|d| d.replicas))
            .unwrap_or(1)
    }

    /// `up --scale SERVICE=N`s, checked as the file's are.
    pub fn set_scale(&mut self, given: &[String]) -> Result<()> {
        for g in given {
            let (service, n) = g
                .split_once('=')
                .and_then(|(s, n)| Some((s, n.parse::<u32>().ok()?)))
                .ok_or_else(|| anyhow!("--scale {g}: give SERVICE=NUMBER"))?;
            if !self.file.services.contains_key(service) {
                bail!("--scale {g}: no service {service} in the file");
            }
            self.check_replicas(service, n)
                .with_context(|| format!("--scale {g}"))?;
            self.scale.insert(service.to_string(), n);
        }
        Ok(())
    }

    /// A service with a fixed container name, or a fixed published host
    /// port, runs as one container at most.
    fn check_replicas(&self, service: &str, n: u32) -> Result<()> {
        let s = &self.file.services[service];
        if n > 1 && s.container_name.is_some() {
            bail!("services.{service}.container_name: a fixed name is one container, not {n}");
        }
        if n > 1 {
            if let Some(p) = s.ports.iter().find(|p| p.fixed_host_port()) {
                bail!(
                    "services.{service}.ports: {} publishes one host port, which {n} containers cannot share",
                    p.short()
                );
            }
        }
        Ok(())
    }

    /// The containers that run `service`, first to last.
    pub fn container_names(&self, service: &str) -> Vec<String> {
        if let Some(n) = &self.file.services[service].container_name {
            return vec![n.clone()];
        }
        (1..=self.replicas(service))
            .map(|i| format!("{}-{service}-{i}", self.name))
            .collect()
    }

    /// A network's name on the host: `PROJECT_NAME`.
    pub fn network_name(&self, network: &str) -> String {
        format!("{}_{network}", self.name)
    }

    pub fn volume_name(&self, volume: &str) -> String {
        format!("{}_{volume}", self.name)
    }
}

/// Parses the (interpolated) text; errors name the key's path. An
/// `extends` may name a service of this text only.
#[cfg(test)]
fn parse(text: &str) -> Result<ComposeFile> {
    parse_in(text, None, &BTreeMap::new())
}

/// [`parse`], with `extends: {file: …}` read relative to `dir` (and
/// interpolated with `vars` as the main file was).
fn parse_in(
    text: &str,
    dir: Option<&Path>,
    vars: &BTreeMap<String, String>,
) -> Result<ComposeFile> {
    let mut value = yaml_of(text)?;
    extends::resolve(&mut value, dir, vars)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow!("{path}: {}", e.into_inner())
    })
}

/// A compose file's YAML with its merge keys applied and the extensions
/// capsa ignores dropped.
fn yaml_of(text: &str) -> Result<serde_yaml_ng::Value> {
    let mut value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| anyhow!("{e}"))?;
    value.apply_merge().map_err(|e| anyhow!("{e}"))?;
    Ok(strip_extensions(value))
}

/// A service's `extends`, as the compose specification merges it.
mod extends {
    use super::*;
    use serde_yaml_ng::{Mapping, Value};

    /// Replaces each service that extends another with the other's
    /// configuration (resolved the same way) with its own keys over it.
    pub(super) fn resolve(
        top: &mut Value,
        dir: Option<&Path>,
        vars: &BTreeMap<String, String>,
    ) -> Result<()> {
        let Some(Value::Mapping(services)) = top.get("services").cloned() else {
            return Ok(());
        };
        let mut resolved = Mapping::new();
        for (name, _) in &services {
            let name = name.as_str().unwrap_or_default().to_string();
            let mut stack = Vec::new();
            resolved.insert(
                Value::from(name.clone()),
                service(&services, &name, dir, vars, &mut stack)?,
            );
        }
        top["services"] = Value::Mapping(resolved);
        Ok(())
    }

    fn service(
        services: &Mapping,
        name: &str,
        dir: Option<&Path>,
        vars: &BTreeMap<String, String>,
        stack: &mut Vec<String>,
    ) -> Result<Value> {
        let at = format!("services.{name}.extends");
        let Some(own) = services.get(name) else {
            bail!("{at}: no service {name}");
        };
        let Value::Mapping(own) = own.clone() else {
            return Ok(own.clone());
        };
        let Some(ext) = own.get("extends").cloned() else {
            return Ok(Value::Mapping(own));
        };
        let (base_name, file) = match &ext {
            Value::String(s) => (s.clone(), None),
            Value::Mapping(m) => {
                for k in m.keys() {
                    if !matches!(k.as_str(), Some("service" | "file")) {
                        bail!(
                            "{at}: unknown field `{}`, expected `service` or `file`",
                            k.as_str().unwrap_or("?")
                        );
                    }
                }
                let service = m
                    .get("service")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("{at}: give the service to extend"))?;
                (
                    service.to_string(),
                    m.get("file").and_then(Value::as_str).map(str::to_string),
                )
            }
            _ => bail!("{at}: give a service name, or {{service, file}}"),
        };
        let key = format!("{}:{base_name}", file.as_deref().unwrap_or(""));
        if stack.contains(&key) {
            bail!(
                "{at}: {base_name} extends itself (through {})",
                stack.join(" → ")
            );
        }
        stack.push(key);
        let base = match &file {
            None if !services.contains_key(base_name.as_str()) => {
                bail!("{at}: no service {base_name} in the file")
            }
            None => service(services, &base_name, dir, vars, stack)?,
            Some(f) => {
                let dir = dir.ok_or_else(|| anyhow!("{at}.file: no directory to read {f} from"))?;
                let path = dir.join(f);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{at}.file: reading {}", path.display()))?;
                let text =
                    interpolate(&text, vars).with_context(|| format!("{}", path.display()))?;
                let other = yaml_of(&text).with_context(|| format!("{}", path.display()))?;
                let Some(Value::Mapping(theirs)) = other.get("services") else {
                    bail!("{at}.file: {} has no services", path.display());
                };
                if !theirs.contains_key(base_name.as_str()) {
                    bail!("{at}: no service {base_name} in {}", path.display());
                }
                let other_dir = path.parent().map(Path::to_path_buf);
                service(theirs, &base_name, other_dir.as_deref(), vars, stack)?
            }
        };
        stack.pop();
        let mut own = own;
        own.remove("extends");
        Ok(merge(base, Value::Mapping(own), None))
    }

    /// `over` on `base`: mappings key by key, lists joined (an item
    /// already in `base` once), a scalar (or a command) replaced.
    pub(super) fn merge(base: Value, over: Value, key: Option<&str>) -> Value {
        match (base, over) {
            (Value::Mapping(mut b), Value::Mapping(o)) => {
                for (k, v) in o {
                    let merged = match b.remove(&k) {
                        Some(bv) => merge(bv, v, k.as_str()),
                        None => v,
                    };
                    b.insert(k, merged);
                }
                Value::Mapping(b)
            }
            // What a command line is: the whole of it is replaced.
            (_, o @ Value::Sequence(_))
                if matches!(key, Some("command" | "entrypoint" | "test")) =>
            {
                o
            }
            (Value::Sequence(mut b), Value::Sequence(o)) => {
                for v in o {
                    if !b.contains(&v) {
                        b.push(v);
                    }
                }
                Value::Sequence(b)
            }
            (_, o) => o,
        }
    }
}

/// Drops `x-…` keys at the top level (YAML anchors' homes) and keeps
/// `x-capsa` on services, the one extension capsa reads.
fn strip_extensions(v: serde_yaml_ng::Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value;
    let Value::Mapping(mut top) = v else { return v };
    top.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
    if let Some(Value::Mapping(services)) = top.get_mut("services") {
        for (_, s) in services.iter_mut() {
            if let Value::Mapping(m) = s {
                m.retain(|k, _| {
                    !k.as_str()
                        .is_some_and(|k| k.starts_with("x-") && k != "x-capsa")
                });
            }
        }
    }
    Value::Mapping(top)
}

/// `.env`: `KEY=VALUE` lines (quotes removed), `#` comments.
fn dotenv(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(vars);
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("{}:{}: write KEY=VALUE", path.display(), n + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}

/// `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`
/// and `$$` (a literal `$`), from the environment first, then `.env`.
fn interpolate(text: &str, dotenv: &BTreeMap<String, String>) -> Result<String> {
    let get = |k: &str| std::env::var(k).ok().or_else(|| dotenv.get(k).cloned());
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => bail!("an unterminated ${{ in the file"),
                    }
                }
                let end = inner.find([':', '-', '?']).unwrap_or(inner.len());
                let (name, op) = inner.split_at(end);
                let value = get(name);
                let set = value.as_deref().is_some_and(|v| !v.is_empty());
                out.push_str(&match op {
                    "" => value.unwrap_or_default(),
                    _ if op.starts_with(":-") => {
                        if set {
                            value.unwrap_or_default()
                        } else {
                            op[2..].to_string()
                        }
                    }
                    _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
                    _ if op.starts_with(":?") || op.starts_with('?') => {
                        if !set {
                            bail!(
                                "variable {name} is required: {}",
                                op.trim_start_matches([':', '?'])
                            );
                        }
                        value.unwrap_or_default()
                    }
                    _ => bail!("${{{inner}}}: unsupported form"),
                });
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    name.push(c);
                }
                out.push_str(&get(&name).unwrap_or_default());
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_merges_the_base_under_the_service() {
        let f = parse(
            "services:\n  base:\n    image: demo\n    environment: {A: '1'}\n    ports: ['80']\n    command: [a, x]\n\
             \x20 web:\n    extends: base\n    environment: {B: '2'}\n    ports: ['81', '80']\n    command: [b]\n\
             \x20 deeper:\n    extends: {service: web}\n    image: other\n",
        )
        .unwrap();
        let web = &f.services["web"];
        assert_eq!(web.image.as_deref(), Some("demo"));
        let env = serde_json::to_value(&web.environment).unwrap();
        assert_eq!(env, serde_json::json!({"A": "1", "B": "2"}));
        let ports: Vec<String> = web.ports.iter().map(Port::short).collect();
        assert_eq!(ports, ["80", "81"]);
        assert_eq!(
            serde_json::to_value(&web.command).unwrap(),
            serde_json::json!(["b"])
        );
        let deeper = &f.services["deeper"];
        assert_eq!(deeper.image.as_deref(), Some("other"));
        assert_eq!(
            serde_json::to_value(&deeper.command).unwrap(),
            serde_json::json!(["b"])
        );
        let err = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err("services:\n  a:\n    extends: b\n  b:\n    extends: a\n")
                .contains("extends itself"),
        );
        assert!(err("services:\n  a:\n    extends: nope\n")
            .contains("services.a.extends: no service nope"));
        assert!(
            err("services:\n  a:\n    extends: {service: b, bogus: 1}\n  b: {image: x}\n")
                .contains("unknown field `bogus`")
        );
        // From another file, relative to the project's directory.
        let dir = std::env::temp_dir().join(format!("capsa-extends-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("common.yaml"),
            "services:\n  app:\n    image: ${IMG}\n    working_dir: /w\n",
        )
        .unwrap();
        let vars = BTreeMap::from([("IMG".to_string(), "demo".to_string())]);
        let f = parse_in(
            "services:\n  web:\n    extends: {file: common.yaml, service: app}\n    user: '1000'\n",
            Some(&dir),
            &vars,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let f = f.unwrap();
        let web = &f.services["web"];
        assert_eq!(
            (
                web.image.as_deref(),
                web.working_dir.as_deref(),
                web.user.as_deref()
            ),
            (Some("demo"), Some("/w"), Some("1000"))
        );
    }

    #[test]
    fn a_fixed_host_port_is_one_number() {
        let port = |y: &str| -> Port { serde_yaml_ng::from_str(y).unwrap() };
        for (y, fixed) in [
            ("'8080:80'", true),
            ("'127.0.0.1:8080:80/udp'", true),
            ("'[::1]:8080:80'", true),
            ("{target: 80, published: '8080'}", true),
            ("'80'", false),
            ("'127.0.0.1::80'", false),
            ("'8000-8010:80'", false),
            ("{target: 80}", false),
        ] {
            assert_eq!(port(y).fixed_host_port(), fixed, "{y}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named_by_path() {
        let err = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("services: {web: {image: x}}\nbogus: 1\n").contains("bogus"));
        let e = err("services: {web: {image: x, portz: [1]}}\n");
        assert!(e.starts_with("services.web") && e.contains("portz"), "{e}");
        let e = err("services: {web: {image: x, tty: maybe}}\n");
        assert!(e.starts_with("services.web.tty"), "{e}");
        let f = parse("x-common: &c {image: x}\nservices:\n  web:\n    <<: *c\n    x-note: hi\n    x-capsa: {isolation: vm}\n").unwrap();
        assert_eq!(f.services["web"].isolation().unwrap(), "vm");
    }

    #[test]
    fn variables_come_from_the_environment_then_dotenv() {
        let env: BTreeMap<String, String> = [("PORT".to_string(), "8888".to_string())].into();
        let t = interpolate("p: ${PORT}:${INNER:-80} $$HOME ${NOPE-x}", &env).unwrap();
        assert_eq!(t, "p: 8888:80 $HOME x");
        assert!(interpolate("${NEEDED:?give it}", &env).is_err());
    }
}
