//! `capsa compose`: a compose file's services as capsa containers. Each
//! operation is capsa's own command, run as a child `capsa` (as docker
//! compose talks to the engine): `build`, `network create`, `run -d`,
//! `logs`, `exec`, `rm`. So a service gets exactly what the same flags give
//! on the command line, in either isolation (docs/compose.md).

mod file;

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use capsa_image::Store;
use capsa_shim::{CodedError, Roots, EXIT_CAPSA_ERROR};
use clap::{Args, Subcommand};

use crate::child::Capsa;
use file::{Build, Condition, Environment, Healthcheck, OneOrMany, Project, Service, VolumeFlag};

#[derive(Args)]
pub struct ComposeArgs {
    /// The compose file (default: compose.yaml or docker-compose.yml here).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The project name (default: the file's `name`, else its directory's).
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    project: Option<String>,
    /// Enable a profile (its services start too); repeatable. Default:
    /// COMPOSE_PROFILES (comma-separated).
    #[arg(long = "profile", value_name = "NAME")]
    profiles: Vec<String>,
    #[command(subcommand)]
    cmd: ComposeCmd,
}

#[derive(Subcommand)]
enum ComposeCmd {
    /// Build what needs building, make the networks, start the services in
    /// dependency order; without -d, follow their output until Ctrl-C.
    Up {
        #[arg(short = 'd', long)]
        detach: bool,
        /// Build images of services with `build` even if they exist.
        #[arg(long)]
        build: bool,
        /// Remove the project's containers whose service is no longer in
        /// the file (otherwise they are only named).
        #[arg(long)]
        remove_orphans: bool,
        /// Run N containers of SERVICE (over its scale or deploy.replicas).
        #[arg(long = "scale", value_name = "SERVICE=N")]
        scale: Vec<String>,
    },
    /// Remove the services' containers and the project's networks.
    Down {
        /// Remove the project's named volumes too.
        #[arg(short = 'v', long)]
        volumes: bool,
        /// Also remove the project's containers whose service is no
        /// longer in the file.
        #[arg(long)]
        remove_orphans: bool,
    },
    /// List the project's containers.
    Ps,
    /// The services' output, each line prefixed with its service.
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
        /// Begin each line with when it was written.
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Only the last N lines of each service (or `all`).
        #[arg(short = 'n', long, value_name = "N|all", value_parser = crate::containers::parse_tail)]
        tail: Option<crate::containers::Tail>,
        /// Only what was written since TIME (RFC 3339, Unix seconds, 10m).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only what was written before TIME.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        services: Vec<String>,
    },
    /// Run a command in a service's container.
    Exec {
        /// No terminal, even if stdin is one.
        #[arg(short = 'T')]
        no_tty: bool,
        /// Which of the service's containers (1 is the first).
        #[arg(long, default_value_t = 1)]
        index: usize,
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Build the images of services with `build`.
    Build { services: Vec<String> },
    /// Pull the images of services without `build`.
    Pull { services: Vec<String> },
    /// Print the file as capsa reads it (variables filled in).
    Config,
}

fn refuse(msg: String) -> anyhow::Error {
    CodedError::new(EXIT_CAPSA_ERROR, msg).into()
}

pub fn compose(roots: &Roots, args: ComposeArgs) -> Result<i32> {
    let mut p = Project::load(args.file.as_deref(), args.project.as_deref())
        .map_err(|e| refuse(format!("{e:#}")))?;
    p.profiles = args.profiles;
    if p.profiles.is_empty() {
        if let Ok(env) = std::env::var("COMPOSE_PROFILES") {
            p.profiles = env
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
    }
    let c = Capsa { roots };
    match args.cmd {
        ComposeCmd::Up {
            detach,
            build,
            remove_orphans,
            scale,
        } => {
            p.set_scale(&scale).map_err(|e| refuse(format!("{e:#}")))?;
            orphans(&c, &p, remove_orphans)?;
            up(&c, &p, detach, build)
        }
        ComposeCmd::Down {
            volumes,
            remove_orphans,
        } => {
            orphans(&c, &p, remove_orphans)?;
            down(&c, &p, volumes)
        }
        ComposeCmd::Ps => ps(&c, &p),
        ComposeCmd::Logs {
            follow,
            timestamps,
            tail,
            since,
            until,
            services,
        } => {
            // `capsa logs` takes the same flags; a bad time is refused
            // once, here, not by each service's `capsa logs`.
            for (flag, value) in [("--since", &since), ("--until", &until)] {
                if let Some(v) = value {
                    crate::events::parse_time(flag, v, 0)?;
                }
            }
            let mut flags: Vec<String> = timestamps.then(|| "-t".to_string()).into_iter().collect();
            let tail = tail.map(|t| t.0.map_or("all".to_string(), |n| n.to_string()));
            for (flag, value) in [("--tail", tail), ("--since", since), ("--until", until)] {
                if let Some(v) = value {
                    flags.extend([flag.to_string(), v]);
                }
            }
            logs(&c, &p, &services, follow, &flags)
        }
        ComposeCmd::Exec {
            no_tty,
            index,
            service,
            command,
        } => {
            service_of(&p, &service)?;
            let names = p.container_names(&service);
            let name = index
                .checked_sub(1)
                .and_then(|i| names.get(i))
                .ok_or_else(|| {
                    refuse(format!(
                        "--index {index}: service {service} has {} container(s)",
                        names.len()
                    ))
                })?;
            let mut argv = vec!["exec".to_string()];
            if !no_tty && std::io::stdin().is_terminal() {
                argv.push("-it".into());
            }
            argv.push(name.clone());
            argv.extend(command);
            Ok(c.status(&argv, false)?)
        }
        ComposeCmd::Build { services } => {
            for s in selected(&p, &services)? {
                if p.file.services[&s].build.is_some() {
                    build(&c, &p, &s)?;
                }
            }
            Ok(0)
        }
        ComposeCmd::Pull { services } => {
            for s in selected(&p, &services)? {
                let svc = &p.file.services[&s];
                if let (Some(image), None) = (&svc.image, &svc.build) {
                    c.run(&["pull", image.as_str()])?;
                }
            }
            Ok(0)
        }
        ComposeCmd::Config => {
            // The services that would run, as docker compose prints them.
            let mut file = serde_yaml_ng::to_value(&p.file)?;
            if let Some(services) = file.get_mut("services").and_then(|s| s.as_mapping_mut()) {
                services.retain(|name, _| name.as_str().is_none_or(|n| p.active(n)));
            }
            print!("{}", serde_yaml_ng::to_string(&file)?);
            Ok(0)
        }
    }
}

fn service_of<'p>(p: &'p Project, name: &str) -> Result<&'p Service> {
    p.file
        .services
        .get(name)
        .ok_or_else(|| refuse(format!("no service {name} in the compose file")))
}

fn selected(p: &Project, names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return p.active_order().map_err(|e| refuse(format!("{e:#}")));
    }
    for n in names {
        service_of(p, n)?;
    }
    Ok(names.to_vec())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The image a service runs: its `image`, or for a build without one
/// `PROJECT-SERVICE`.
fn image_of(p: &Project, service: &str) -> String {
    let s = &p.file.services[service];
    s.image
        .clone()
        .unwrap_or_else(|| format!("{}-{service}", p.name))
}

fn build(c: &Capsa, p: &Project, service: &str) -> Result<()> {
    let s = &p.file.services[service];
    let Some(b) = &s.build else { return Ok(()) };
    let (context, dockerfile, args, target) = match b {
        Build::Context(ctx) => (ctx.clone(), None, None, None),
        Build::Full(d) => (
            d.context.clone(),
            d.dockerfile.clone(),
            d.args.clone(),
            d.target.clone(),
        ),
    };
    let context = p.dir.join(context);
    let mut argv = strings(&["build", "-t"]);
    argv.push(image_of(p, service));
    if let Some(f) = dockerfile {
        argv.push("-f".into());
        argv.push(context.join(f).display().to_string());
    }
    for kv in env_pairs(args.as_ref()) {
        argv.push("--build-arg".into());
        argv.push(kv);
    }
    if let Some(t) = target {
        argv.extend(["--target".into(), t]);
    }
    argv.extend(["--isolation".into(), s.isolation()?.to_string()]);
    argv.push(context.display().to_string());
    eprintln!("Building {service}");
    c.run(&argv)
}

fn env_pairs(env: Option<&Environment>) -> Vec<String> {
    match env {
        None => vec![],
        Some(Environment::List(l)) => l.clone(),
        Some(Environment::Map(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                // `KEY:` alone: the value from compose's environment.
                None => std::env::var(k)
                    .map(|v| format!("{k}={v}"))
                    .unwrap_or_else(|_| k.clone()),
            })
            .collect(),
    }
}

/// The project networks the services use, created if missing.
fn ensure_networks(c: &Capsa, p: &Project) -> Result<()> {
    let mut used: Vec<String> = Vec::new();
    for s in p.file.services.values() {
        for (n, _) in s.networks() {
            if !used.contains(&n) {
                used.push(n);
            }
        }
    }
    for n in used {
        let name = p.network_name(&n);
        if c.status(&["network", "inspect", &name], true)? == 0 {
            continue;
        }
        let mut argv = strings(&["network", "create"]);
        let internal = p
            .file
            .networks
            .get(&n)
            .and_then(|d| d.as_ref())
            .and_then(|d| d.internal)
            .unwrap_or(false);
        if internal {
            argv.push("--internal".into());
        }
        argv.push(name.clone());
        eprintln!("Network {name}: creating");
        c.run(&argv)?;
    }
    Ok(())
}

/// `-v` as compose writes it: a relative host path is the project's,
/// a bare name a project volume.
fn volume_arg(p: &Project, v: &str) -> String {
    let (src, rest) = v.split_once(':').unwrap_or((v, ""));
    if rest.is_empty() {
        return v.to_string();
    }
    let src = if src.starts_with("./") || src.starts_with("../") || src == "." {
        p.dir.join(src).display().to_string()
    } else if let Some(home) = src.strip_prefix("~/") {
        Path::new(&std::env::var("HOME").unwrap_or_default())
            .join(home)
            .display()
            .to_string()
    } else if !src.starts_with('/') {
        p.volume_name(src)
    } else {
        src.to_string()
    };
    format!("{src}:{rest}")
}

/// `capsa run -d` for one service.
/// Where a secret or config taken from an environment variable is kept
/// for the containers to mount: under `values` (the project's directory in
/// capsa's run directory, a tmpfs by default, so never on disk), named
/// after its content's hash, so that a new value is a new file, a changed
/// `run` command line and a recreated container.
fn value_file(values: &Path, kind: &str, name: &str, content: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(content.as_bytes()));
    values.join(kind).join(format!("{name}-{}", &hash[..12]))
}

/// Writes the files [`value_file`] names for the active services, readable
/// by root alone.
fn write_values(p: &Project, values: &Path, services: &[String]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for s in services {
        let svc = &p.file.services[s];
        for (kind, refs, defs) in [
            ("secrets", &svc.secrets, &p.file.secrets),
            ("configs", &svc.configs, &p.file.configs),
        ] {
            for r in refs {
                let Some(var) = defs.get(r.source()).and_then(|d| d.environment.as_ref()) else {
                    continue;
                };
                let content = p.var(var).unwrap_or_default();
                let file = value_file(values, kind, r.source(), &content);
                if file.exists() {
                    continue;
                }
                let dir = file.parent().unwrap_or(values);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
                let tmp = dir.join(format!(".{}.tmp", r.source()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o400)
                    .open(&tmp)?;
                f.write_all(content.as_bytes())?;
                std::fs::rename(&tmp, &file)?;
            }
        }
    }
    Ok(())
}

/// `capsa run` for container `name` of `service` (every replica's is the
/// same but for its name).
fn run_argv(p: &Project, values: &Path, service: &str, name: &str) -> Result<Vec<String>> {
    let s = &p.file.services[service];
    let at = |e: anyhow::Error| refuse(format!("services.{service}: {e:#}"));
    let mut a = strings(&["run", "-d", "--name", name]);
    a.extend(["--isolation".into(), s.isolation().map_err(at)?.to_string()]);
    let nets = s.networks();
    if let Some((first, aliases)) = nets.first() {
        a.extend(["--network".into(), p.network_name(first)]);
        for al in std::iter::once(service.to_string()).chain(aliases.iter().cloned()) {
            a.extend(["--network-alias".into(), al]);
        }
    }
    for kv in env_pairs(s.environment.as_ref()) {
        a.extend(["-e".into(), kv]);
    }
    // docker compose's labels: which project and service a container is.
    let ours = [
        format!("{PROJECT_LABEL}={}", p.name),
        format!("{SERVICE_LABEL}={service}"),
    ];
    for kv in env_pairs(s.labels.as_ref()).into_iter().chain(ours) {
        a.extend(["--label".into(), kv]);
    }
    for f in s.env_file.iter().flat_map(OneOrMany::items) {
        a.extend(["--env-file".into(), p.dir.join(f).display().to_string()]);
    }
    for port in &s.ports {
        a.extend(["-p".into(), port.short()]);
    }
    // Secrets and configs: their files, read-only (Project::check made
    // sure each is declared and is a file or a set variable).
    for (kind, refs, defs, dir) in [
        ("secrets", &s.secrets, &p.file.secrets, "/run/secrets"),
        ("configs", &s.configs, &p.file.configs, "/"),
    ] {
        for r in refs {
            let Some(def) = defs.get(r.source()) else {
                continue;
            };
            let file = match (&def.file, &def.environment) {
                (Some(f), _) => p.dir.join(f),
                (None, Some(var)) => {
                    value_file(values, kind, r.source(), &p.var(var).unwrap_or_default())
                }
                (None, None) => continue,
            };
            a.extend([
                "-v".into(),
                format!("{}:{}:ro", file.display(), r.target(dir)),
            ]);
        }
    }
    for host in env_pairs(s.extra_hosts.as_ref()) {
        a.extend(["--add-host".into(), host]);
    }
    for d in s.dns.iter().flat_map(OneOrMany::items) {
        a.extend(["--dns".into(), d.clone()]);
    }
    for (i, v) in s.volumes.iter().enumerate() {
        let flag = v
            .flag()
            .map_err(|e| refuse(format!("services.{service}.volumes[{i}]: {e:#}")))?;
        match flag {
            VolumeFlag::Volume(flag) => {
                let arg = volume_arg(p, &flag);
                // An anonymous volume (a target alone) names no host path.
                let src = Path::new(arg.split_once(':').map_or("", |(s, _)| s));
                if src.is_absolute() && !src.exists() && v.creates_host_path() {
                    std::fs::create_dir_all(src).map_err(|e| {
                        refuse(format!(
                            "services.{service}.volumes[{i}]: making {}: {e}",
                            src.display()
                        ))
                    })?;
                }
                a.extend(["-v".into(), arg]);
            }
            VolumeFlag::Tmpfs(t) => a.extend(["--tmpfs".into(), t]),
        }
    }
    let repeated = [
        ("--tmpfs", &s.tmpfs),
        ("--cap-add", &s.cap_add),
        ("--cap-drop", &s.cap_drop),
        ("--security-opt", &s.security_opt),
    ];
    for (flag, values) in repeated {
        for v in values {
            a.extend([flag.to_string(), v.clone()]);
        }
    }
    if s.privileged {
        a.push("--privileged".into());
    }
    if let Some(l) = &s.logging {
        match l.driver.as_deref() {
            None | Some("local") | Some("json-file") | Some("k8s-file") => {}
            Some(d) => bail!("service {service}: logging driver {d}: capsa keeps logs in local files (give local or json-file)"),
        }
        for (k, v) in &l.options {
            a.extend(["--log-opt".into(), format!("{k}={v}")]);
        }
    }
    for (k, v) in &s.storage_opt {
        a.extend(["--storage-opt".into(), format!("{k}={v}")]);
    }
    let pairs: [(&str, Option<&String>); 3] = [
        ("-w", s.working_dir.as_ref()),
        ("-u", s.user.as_ref()),
        ("--hostname", s.hostname.as_ref()),
    ];
    for (flag, v) in pairs {
        if let Some(v) = v {
            a.extend([flag.to_string(), v.clone()]);
        }
    }
    if s.tty {
        a.push("-t".into());
    }
    if s.stdin_open {
        a.push("-i".into());
    }
    if s.read_only == Some(true) {
        a.push("--read-only".into());
    }
    if let Some(size) = &s.shm_size {
        a.extend(["--shm-size".into(), size.to_string()]);
    }
    if let Some(mode) = &s.userns_mode {
        a.extend(["--userns".into(), mode.clone()]);
    }
    for (name, u) in &s.ulimits {
        a.extend(["--ulimit".into(), u.flag(name)]);
    }
    if let Some(sig) = &s.stop_signal {
        a.extend(["--stop-signal".into(), sig.clone()]);
    }
    if let Some(d) = &s.stop_grace_period {
        let ns = capsa_shim::build::go_duration(d.trim())
            .ok_or_else(|| at(anyhow!("stop_grace_period {d}: not a duration such as 10s")))?;
        a.extend([
            "--stop-timeout".into(),
            ns.div_ceil(1_000_000_000).to_string(),
        ]);
    }
    let limits = s
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    if let Some(m) = limits
        .and_then(|l| l.memory.clone())
        .or_else(|| s.mem_limit.clone())
    {
        a.extend(["-m".into(), m]);
    }
    if let Some(cpus) = limits.and_then(|l| l.cpus.as_ref()) {
        a.extend(["--cpus".into(), cpus.to_string()]);
    }
    if let Some(pids) = limits.and_then(|l| l.pids) {
        a.extend(["--pids-limit".into(), pids.to_string()]);
    }
    if let Some(r) = &s.restart {
        a.extend(["--restart".into(), r.clone()]);
    }
    if let Some(hc) = &s.healthcheck {
        a.extend(health_flags(hc).map_err(at)?);
    }
    let split = |c: &OneOrMany| -> Result<Vec<String>> {
        match c {
            OneOrMany::Many(v) => Ok(v.clone()),
            OneOrMany::One(s) => shlex::split(s).ok_or_else(|| anyhow!("{s:?}: unbalanced quotes")),
        }
    };
    let mut command = match &s.command {
        Some(c) => split(c).map_err(at)?,
        None => vec![],
    };
    if let Some(ep) = &s.entrypoint {
        let mut ep = split(ep).map_err(at)?;
        if ep.is_empty() {
            a.extend(["--entrypoint".into(), String::new()]);
        } else {
            a.extend(["--entrypoint".into(), ep.remove(0)]);
            // The entrypoint's other words go before the command.
            ep.append(&mut command);
            command = ep;
        }
    }
    a.push(image_of(p, service));
    a.extend(command);
    Ok(a)
}

/// The container's state as `capsa ps` says it (`running`, `exited`, …),
/// or None if there is none.
fn state_of(c: &Capsa, name: &str) -> Result<Option<String>> {
    let out = c
        .out(&["ps", "-a", "--format", "{{.Names}}\t{{.State}}"])?
        .1;
    Ok(out.lines().find_map(|l| {
        let (n, st) = l.split_once('\t')?;
        (n == name).then(|| st.to_string())
    }))
}

const PROJECT_LABEL: &str = "com.docker.compose.project";
const SERVICE_LABEL: &str = "com.docker.compose.service";
/// What a service's container was made from: its `capsa run` and its
/// image. `up` recreates a running container whose hash is another.
const HASH_LABEL: &str = "com.docker.compose.config-hash";

fn config_hash(argv: &[String], image_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for word in argv.iter().map(String::as_str).chain([image_id]) {
        h.update(word.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The project's containers, by their project label: (name, service),
/// in name order (`-2` before `-10`).
fn project_containers(c: &Capsa, p: &Project) -> Result<Vec<(String, String)>> {
    let (_, out, _) = c.out(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={PROJECT_LABEL}={}", p.name),
        "--format",
        "{{.Names}}\t{{.Labels}}",
    ])?;
    let prefix = format!("{SERVICE_LABEL}=");
    let mut found: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let (name, labels) = l.split_once('\t')?;
            let service = labels.split(',').find_map(|kv| kv.strip_prefix(&prefix))?;
            Some((name.to_string(), service.to_string()))
        })
        .collect();
    let number = |n: &str| n.rsplit('-').next().and_then(|i| i.parse::<u32>().ok());
    found.sort_by(|a, b| (number(&a.0), &a.0).cmp(&(number(&b.0), &b.0)));
    Ok(found)
}

/// Service `service`'s containers that exist, in order.
fn containers_of(found: &[(String, String)], service: &str) -> Vec<String> {
    found
        .iter()
        .filter(|(_, s)| s == service)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The project's containers whose service is not in the file, as docker
/// compose finds them: removed with `remove`, otherwise named in a
/// warning.
fn orphans(c: &Capsa, p: &Project, remove: bool) -> Result<()> {
    let found: Vec<String> = project_containers(c, p)?
        .into_iter()
        .filter(|(_, s)| !p.file.services.contains_key(s))
        .map(|(n, _)| n)
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    if !remove {
        eprintln!(
            "Found orphan containers ({}) for this project. If you removed or renamed their \
             service in the compose file, run this command with --remove-orphans to remove them.",
            found.join(", ")
        );
        return Ok(());
    }
    for name in found {
        eprintln!("Container {name}: removing orphan");
        c.run(&["rm", "-f", &name])?;
    }
    Ok(())
}

/// The value of label `key` on container `name`, if it has one.
fn label_of(c: &Capsa, name: &str, key: &str) -> Result<Option<String>> {
    let (_, out, _) = c.out(&["inspect", name])?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(v[0]["Config"]["Labels"][key].as_str().map(str::to_string))
}

/// The project's secrets and configs from variables ([`value_file`]).
fn values_dir(c: &Capsa, p: &Project) -> PathBuf {
    c.roots.run.join("compose").join(&p.name)
}

fn up(c: &Capsa, p: &Project, detach: bool, rebuild: bool) -> Result<i32> {
    let store = Store::open(&c.roots.images())?;
    let values = values_dir(c, p);
    let order = p.active_order().map_err(|e| refuse(format!("{e:#}")))?;
    for s in &order {
        let svc = &p.file.services[s];
        if svc.build.is_some() && (rebuild || store.get(&image_of(p, s)).is_err()) {
            build(c, p, s)?;
        }
    }
    // Every service's flags are checked before anything starts.
    let argvs: Vec<Vec<Vec<String>>> = order
        .iter()
        .map(|s| {
            p.container_names(s)
                .iter()
                .map(|name| run_argv(p, &values, s, name))
                .collect()
        })
        .collect::<Result<_>>()?;
    write_values(p, &values, &order)?;
    ensure_networks(c, p)?;
    let existing = project_containers(c, p)?;
    for (s, argvs) in order.iter().zip(argvs) {
        // The image as it is now (pulled first if missing, as docker
        // compose does): a rebuilt or re-pulled one changes the hash.
        let image = image_of(p, s);
        if store.get(&image).is_err() {
            c.run(&["pull", &image])?;
        }
        let image_id = store.get(&image).map(|i| i.id.clone()).unwrap_or_default();
        let names = p.container_names(s);
        // Scaled down: the last ones go.
        for extra in containers_of(&existing, s) {
            if !names.contains(&extra) {
                eprintln!("Container {extra}: removing (scaled down)");
                c.run(&["rm", "-f", &extra])?;
            }
        }
        let mut waited = false;
        for (name, mut argv) in names.iter().zip(argvs) {
            let hash = config_hash(&argv, &image_id);
            argv.splice(
                1..1,
                ["--label".to_string(), format!("{HASH_LABEL}={hash}")],
            );
            match state_of(c, name)?.as_deref() {
                Some("running") if label_of(c, name, HASH_LABEL)?.as_deref() == Some(&hash) => {
                    eprintln!("Container {name}: running");
                    continue;
                }
                Some("running") => {
                    eprintln!("Container {name}: recreating (its configuration or image changed)");
                    c.run(&["rm", "-f", name])?;
                }
                Some(_) => c.run(&["rm", "-f", name])?,
                None => {}
            }
            if !waited {
                for (dep, cond) in p.file.services[s].dependencies() {
                    wait_for(c, p, &dep, cond)?;
                }
                waited = true;
            }
            eprintln!("Container {name}: starting");
            c.run(&argv)?;
            for (net, aliases) in p.file.services[s].networks().iter().skip(1) {
                let mut argv = strings(&["network", "connect"]);
                for al in std::iter::once(s.clone()).chain(aliases.iter().cloned()) {
                    argv.extend(["--alias".into(), al]);
                }
                argv.extend([p.network_name(net), name.clone()]);
                c.run(&argv)?;
            }
        }
    }
    if detach {
        return Ok(0);
    }
    follow_logs(c, p, &order, true, &[])?;
    // Ctrl-C (or every service's end): stop them, as docker compose does.
    for s in order.iter().rev() {
        for name in p.container_names(s).iter().rev() {
            let _ = c.status(&["stop", name], true);
        }
    }
    Ok(0)
}

/// Waits until each container of service `dep` meets `cond`: running,
/// healthy (capsa runs its healthcheck), or exited with 0.
fn wait_for(c: &Capsa, p: &Project, dep: &str, cond: Condition) -> Result<()> {
    for name in p.container_names(dep) {
        wait_for_one(c, &name, dep, cond)?;
    }
    Ok(())
}

fn wait_for_one(c: &Capsa, name: &str, dep: &str, cond: Condition) -> Result<()> {
    match cond {
        Condition::Started => Ok(()),
        Condition::CompletedSuccessfully => {
            let code = c.out(&["wait", name])?.1;
            match code.trim() {
                "0" => Ok(()),
                other => bail!(refuse(format!(
                    "service {dep} did not complete successfully (exit {other})"
                ))),
            }
        }
        Condition::Healthy => {
            // capsa runs the healthcheck (the service's, or its image's).
            eprintln!("Container {name}: waiting until healthy");
            loop {
                let out = c.stdout(&[
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{.State.Health.Status}}",
                    name,
                ])?;
                match out.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [_, "healthy"] => return Ok(()),
                    [_, "unhealthy"] => bail!(refuse(format!("service {dep} is unhealthy"))),
                    ["running", "starting"] => {}
                    ["running", ..] => bail!(refuse(format!(
                        "depends_on {dep}: service_healthy, but {dep} has no healthcheck"
                    ))),
                    _ => bail!(refuse(format!(
                        "service {dep} stopped before it was healthy"
                    ))),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// A compose healthcheck as `capsa run`'s --health-* flags.
fn health_flags(hc: &Healthcheck) -> Result<Vec<String>> {
    if hc.disable {
        return Ok(vec!["--no-healthcheck".into()]);
    }
    let mut a = Vec::new();
    match &hc.test {
        Some(OneOrMany::Many(v)) => match v.first().map(String::as_str) {
            Some("NONE") => return Ok(vec!["--no-healthcheck".into()]),
            // The exec form, as one command line for the shell.
            Some("CMD") => a.extend([
                "--health-cmd".into(),
                shlex::try_join(v[1..].iter().map(String::as_str))
                    .map_err(|e| anyhow!("healthcheck.test: {e}"))?,
            ]),
            Some("CMD-SHELL") => a.extend(["--health-cmd".into(), v[1..].join(" ")]),
            _ => bail!("healthcheck.test: start it with CMD, CMD-SHELL or NONE"),
        },
        Some(OneOrMany::One(s)) => a.extend(["--health-cmd".into(), s.clone()]),
        None => {}
    }
    for (flag, v) in [
        ("--health-interval", &hc.interval),
        ("--health-timeout", &hc.timeout),
        ("--health-start-period", &hc.start_period),
        ("--health-start-interval", &hc.start_interval),
    ] {
        if let Some(v) = v {
            a.extend([flag.into(), v.clone()]);
        }
    }
    if let Some(r) = hc.retries {
        a.extend(["--health-retries".into(), r.to_string()]);
    }
    Ok(a)
}

fn down(c: &Capsa, p: &Project, volumes: bool) -> Result<i32> {
    let existing = project_containers(c, p)?;
    for s in p.order()?.iter().rev() {
        for name in containers_of(&existing, s).iter().rev() {
            eprintln!("Container {name}: removing");
            c.run(&["rm", "-f", name])?;
        }
    }
    match std::fs::remove_dir_all(values_dir(c, p)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut nets: Vec<String> = p
        .file
        .services
        .values()
        .flat_map(Service::networks)
        .map(|(n, _)| n)
        .collect();
    nets.sort();
    nets.dedup();
    for n in nets {
        let name = p.network_name(&n);
        if c.status(&["network", "inspect", &name], true)? == 0 {
            eprintln!("Network {name}: removing");
            c.run(&["network", "rm", &name])?;
        }
    }
    if volumes {
        let mut vols: Vec<String> = p.file.volumes.keys().map(|v| p.volume_name(v)).collect();
        for s in p.file.services.values() {
            for v in &s.volumes {
                let Ok(VolumeFlag::Volume(v)) = v.flag() else {
                    continue;
                };
                let arg = volume_arg(p, &v);
                let src = arg.split(':').next().unwrap_or("");
                if src.starts_with(&format!("{}_", p.name)) && !vols.iter().any(|x| x == src) {
                    vols.push(src.to_string());
                }
            }
        }
        for v in vols {
            if c.status(&["volume", "inspect", &v], true)? == 0 {
                eprintln!("Volume {v}: removing");
                c.run(&["volume", "rm", &v])?;
            }
        }
    }
    Ok(0)
}

fn ps(c: &Capsa, p: &Project) -> Result<i32> {
    let out = c
        .out(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}\t{{.Isolation}}",
        ])?
        .1;
    let existing = project_containers(c, p)?;
    let mut rows = Vec::new();
    for s in p.order()? {
        for name in containers_of(&existing, &s) {
            if let Some(line) = out
                .lines()
                .find(|l| l.split('\t').next() == Some(name.as_str()))
            {
                let f: Vec<&str> = line.split('\t').collect();
                let get = |i: usize| f.get(i).copied().unwrap_or("").to_string();
                rows.push(vec![name, s.clone(), get(1), get(2), get(3), get(4)]);
            }
        }
    }
    crate::table::print(
        &["NAME", "SERVICE", "IMAGE", "STATUS", "PORTS", "ISOLATION"],
        &rows,
    );
    Ok(0)
}

fn logs(
    c: &Capsa,
    p: &Project,
    services: &[String],
    follow: bool,
    flags: &[String],
) -> Result<i32> {
    let services = selected(p, services)?;
    follow_logs(c, p, &services, follow, flags)?;
    Ok(0)
}

/// Each service's output, line by line, prefixed `SERVICE  | `; with
/// `follow`, until the containers end or Ctrl-C (which this process
/// waits out, so that `up` can stop the services after). `flags` are
/// more of `capsa logs`'s.
fn follow_logs(
    c: &Capsa,
    p: &Project,
    services: &[String],
    follow: bool,
    flags: &[String],
) -> Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // Each container's prefix: its service, or with several `SERVICE-N`.
    let mut sources: Vec<(String, String)> = Vec::new();
    for s in services {
        let names = p.container_names(s);
        let several = names.len() > 1;
        for (i, name) in names.into_iter().enumerate() {
            let label = if several {
                format!("{s}-{}", i + 1)
            } else {
                s.clone()
            };
            sources.push((label, name));
        }
    }
    let width = sources.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut children = Vec::new();
    let mut threads = Vec::new();
    // SAFETY: setting a disposition runs no handler.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
    }
    for (s, name) in &sources {
        let mut argv = vec!["logs".to_string()];
        if follow {
            argv.push("-f".into());
        }
        argv.extend_from_slice(flags);
        argv.push(name.clone());
        let mut cmd = c.cmd(&argv);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // The children take Ctrl-C as usual; only this process outlives it.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let _ = signal(Signal::SIGINT, SigHandler::SigDfl);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let prefix = format!("{s:<width$}  | ");
        for stream in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let prefix = prefix.clone();
            threads.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    println!("{prefix}{line}");
                }
            }));
        }
        children.push(child);
        if !follow {
            // One service after another, in order.
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
    for mut ch in children {
        let _ = ch.wait();
    }
    for t in threads {
        let _ = t.join();
    }
    // SAFETY: as above.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigDfl);
    }
    Ok(())
}
