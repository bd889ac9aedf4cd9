//! `exec`: runc's and docker's `exec` in one command, and the process a
//! runc `exec` runs.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use capsa_image::oci_spec::runtime::{Capability, Process, Spec};
use capsa_shim::oci;
use capsa_shim::Roots;
use clap::Args;
use serde_json::json;

use super::{coded, is_oci, std_io, write_pid_file, EXIT_EXEC_FAILED};
use crate::containers;

/// docker's `exec [-it] [-e] [-w] [-u] CONTAINER CMD…` and runc's
/// `exec [--process FILE] [--pid-file] [--detach] [--console-socket] … ID [CMD…]`.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct ExecArgs {
    #[command(flatten)]
    docker: containers::ExecArgs,
    /// runc: the process to run, as an OCI process JSON file.
    #[arg(short = 'p', long, value_name = "FILE")]
    process: Option<PathBuf>,
    /// runc: write the pid of the process to FILE.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Do not wait for the process; print nothing and exit 0 (docker's and
    /// runc's).
    #[arg(short = 'd', long)]
    detach: bool,
    /// runc: an AF_UNIX socket that receives the master end of the terminal.
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// runc: working directory (docker's -w).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// runc: add a capability to the process.
    #[arg(long = "cap", value_name = "CAP")]
    caps: Vec<String>,
    /// runc: set no_new_privileges.
    #[arg(long)]
    no_new_privs: bool,
    /// runc: the AppArmor profile.
    #[arg(long, value_name = "PROFILE")]
    apparmor: Option<String>,
    /// runc: the SELinux process label.
    #[arg(long, value_name = "LABEL")]
    process_label: Option<String>,
    /// runc: additional groups.
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    additional_gids: Vec<u32>,
    /// runc: pass this process's descriptors 3 to 3+N-1 on to the process
    /// (container mode).
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
    /// runc: run the process in this sub-cgroup of the container's
    /// (`PATH`, or `CONTROLLER:PATH` for each controller the same).
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroup: Vec<String>,
    /// runc: allow exec in a paused container (the process runs once it
    /// is resumed).
    #[arg(long)]
    ignore_paused: bool,
}

impl ExecArgs {
    #[cfg(test)]
    pub fn pid_file_is_none(&self) -> bool {
        self.pid_file.is_none()
    }
}

pub fn exec(roots: &Roots, a: ExecArgs) -> Result<i32> {
    let container = a.docker.container_and_command[0].clone();
    let runc_flags = a.process.is_some()
        || a.pid_file.is_some()
        || a.console_socket.is_some()
        || a.preserve_fds > 0
        || !a.cgroup.is_empty()
        || a.ignore_paused;
    if !runc_flags && !is_oci(roots, &container) {
        let mut docker = a.docker;
        if docker.workdir.is_none() {
            docker.workdir = a.cwd;
        }
        return containers::exec(roots, docker, a.detach);
    }
    let run = || -> Result<i32> {
        let process = runc_process(roots, &a, &container)?;
        if process.terminal().unwrap_or(false) && a.console_socket.is_none() {
            bail!("exec --tty needs --console-socket for a container made by `capsa create`");
        }
        let mut io = std_io(a.console_socket.clone());
        io.preserve_fds = a.preserve_fds;
        let options = oci::ExecOptions {
            sub_cgroup: sub_cgroup(&a.cgroup)?,
            ignore_paused: a.ignore_paused,
        };
        let pid = oci::exec(roots, &container, &process, io, &options)?;
        if let Some(p) = &a.pid_file {
            write_pid_file(p, pid)?;
        }
        if a.detach {
            return Ok(0);
        }
        capsa_container::process::wait_pid(pid)
    };
    run().map_err(coded(EXIT_EXEC_FAILED))
}

/// runc's `--cgroup` values as one sub-cgroup path, relative to the
/// container's. libcontainer places a process in one path for every
/// controller, so `CONTROLLER:PATH` forms must all name the same path.
fn sub_cgroup(values: &[String]) -> Result<Option<String>> {
    let mut path: Option<&str> = None;
    for v in values {
        let p = v.rsplit_once(':').map_or(v.as_str(), |(_, p)| p);
        let p = p.trim_start_matches('/');
        if p.is_empty() || p.split('/').any(|c| c == "..") {
            bail!("exec --cgroup {v:?}: give a path under the container's cgroup");
        }
        match path {
            Some(q) if q != p => {
                bail!("exec --cgroup: every controller must use the same sub-cgroup, not {q:?} and {p:?}")
            }
            _ => path = Some(p),
        }
    }
    Ok(path.map(str::to_string))
}

/// The process to exec: `--process FILE`, or the container's own process
/// from its config.json with the command line's overrides (runc's rules).
fn runc_process(roots: &Roots, a: &ExecArgs, id: &str) -> Result<Process> {
    let d = &a.docker;
    let command = &d.container_and_command[1..];
    if let Some(f) = &a.process {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the process file {}", f.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("parsing the process file {}", f.display()));
    }
    if command.is_empty() {
        bail!("exec needs a command or --process FILE: capsa exec ID COMMAND [ARG...]");
    }
    let st = oci::state(roots, id)?;
    let config = st.bundle.join("config.json");
    let spec = Spec::load(&config).with_context(|| format!("reading {}", config.display()))?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(command.to_vec()));
    p.set_terminal(Some(d.tty));
    if let Some(cwd) = a.cwd.as_ref().or(d.workdir.as_ref()) {
        p.set_cwd(PathBuf::from(cwd));
    }
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &d.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(u) = &d.user {
        // runc keeps the process's group when only a UID is given.
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse(), g.parse()),
            None => (u.parse(), Ok(p.user().gid())),
        };
        let (Ok(uid), Ok(gid)) = (uid, gid) else {
            bail!("exec --user takes UID[:GID], not {u:?}");
        };
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    if !a.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for c in &a.caps {
            let name = c.to_ascii_uppercase();
            let name = name.strip_prefix("CAP_").unwrap_or(&name).to_string();
            let cap: Capability = serde_json::from_value(json!(format!("CAP_{name}")))
                .map_err(|_| anyhow!("unknown capability {c:?}"))?;
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut s = set.1.clone().unwrap_or_default();
                s.insert(cap);
                match set.0 {
                    0 => caps.set_bounding(Some(s)),
                    1 => caps.set_effective(Some(s)),
                    _ => caps.set_permitted(Some(s)),
                };
            }
        }
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(x) = &a.apparmor {
        p.set_apparmor_profile(Some(x.clone()));
    }
    if let Some(x) = &a.process_label {
        p.set_selinux_label(Some(x.clone()));
    }
    Ok(p)
}
