//! `capsa run` flags, and their translation into the image crate's
//! `RunConfig` (which turns them into an OCI runtime spec).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use capsa_image::spec::{BindMount, Network, RunConfig};
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
    /// Bind-mount a host path: HOST:CONTAINER[:ro|rw].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs: PATH[:OPTIONS].
    #[arg(long = "tmpfs", value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// Memory limit, e.g. 64m or 1g; the container is OOM-killed beyond it.
    #[arg(short = 'm', long = "memory", value_name = "BYTES")]
    pub memory: Option<String>,
    /// CPU quota in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Network: none (own empty network namespace) or host.
    #[arg(long, default_value = "none")]
    pub network: String,
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
        let network = match self.network.as_str() {
            "none" => Network::None,
            "host" => Network::Host,
            other => bail!(usage(format!(
                "unsupported --network {other:?}: use \"none\" or \"host\""
            ))),
        };
        let mut mounts = Vec::new();
        for v in &self.volumes {
            mounts.push(parse_volume(v)?);
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                bail!(usage(format!(
                    "--cpus must be a positive number, not {cpus}"
                )));
            }
        }
        if let Some(p) = self.pids_limit {
            if p == 0 || p < -1 {
                bail!(usage(format!(
                    "--pids-limit must be positive (or -1 for unlimited), not {p}"
                )));
            }
        }
        Ok(RunConfig {
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
            tmpfs: self.tmpfs.clone(),
            memory_bytes: self.memory.as_deref().map(parse_bytes).transpose()?,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            read_only: self.read_only,
            network,
            hostname: self.hostname.clone(),
            tty: self.tty,
            ..Default::default()
        })
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

fn parse_volume(v: &str) -> Result<BindMount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, "rw"),
        [s, d, m] => (*s, *d, *m),
        _ => bail!(usage(format!(
            "invalid volume {v:?}: use HOST:CONTAINER or HOST:CONTAINER:ro"
        ))),
    };
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        other => bail!(usage(format!(
            "invalid volume mode {other:?} in {v:?}: use ro or rw"
        ))),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        bail!(usage(format!(
            "invalid volume {v:?}: both paths must be absolute"
        )));
    }
    if !Path::new(src).exists() {
        bail!(usage(format!("bind source path does not exist: {src}")));
    }
    Ok(BindMount {
        src: PathBuf::from(src),
        dst: dst.to_string(),
        readonly,
    })
}

/// docker's size syntax: a number with an optional b, k, m or g suffix
/// (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<i64> {
    let lower = s.trim().to_ascii_lowercase();
    // "1gb" means "1g"; a lone "b" means bytes.
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| usage(format!("invalid size {s:?}: use e.g. 512m or 1g")))?;
    let bytes = (n * mult as f64) as i64;
    if bytes < 6 * 1024 * 1024 {
        bail!(usage(format!(
            "memory limit {s:?} is too small: the minimum is 6m"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("10485760").unwrap(), 10 << 20);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1k").is_err());
    }

    #[test]
    fn volumes_need_absolute_existing_sources() {
        assert!(parse_volume("/tmp:/data:ro").unwrap().readonly);
        assert!(!parse_volume("/tmp:/data").unwrap().readonly);
        assert!(parse_volume("tmp:/data").is_err());
        assert!(parse_volume("/tmp:/data:xx").is_err());
        assert!(parse_volume("/no/such/dir/here:/data").is_err());
    }
}
