//! Runtime spec generation: an OCI runtime [`Spec`] (config.json) from an
//! image's config plus the user's `capsa run` flags ([`RunConfig`]), with
//! runc/docker-like secure defaults:
//!
//! - docker's default capability set in the bounding set (and, for root, in
//!   effective/permitted; never inheritable or ambient), `noNewPrivileges`;
//! - docker's masked and read-only `/proc`, `/sys` paths;
//! - a default seccomp profile ([`default_seccomp`]);
//! - runc's standard mounts (`/proc`, `/dev` tmpfs, `/dev/pts`, `/dev/shm`,
//!   `/dev/mqueue`, read-only `/sys` and cgroup) and cgroup device rules
//!   allowing only runc's default devices;
//! - new pid, mount, ipc, uts, cgroup and (unless `--network host`)
//!   network namespaces;
//! - `RLIMIT_NOFILE` 1024:1024.
//!
//! The user is resolved like docker: `uid[:gid]` or `name[:group]` looked
//! up in the image's `/etc/passwd` and `/etc/group`, read from its unpacked
//! layers as their overlay would show them (nothing is mounted for it), with
//! supplementary groups from `/etc/group`. Command: docker's ENTRYPOINT + CMD rules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxIdMapping, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxSeccomp, RootBuilder, Spec, SpecBuilder,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Image;

mod mounts;
mod process;
mod resources;
mod seccomp;
mod seccomp_file;
#[cfg(test)]
mod tests;
mod users;

pub use mounts::{MASKED_PATHS, READONLY_PATHS};
pub use process::{
    capability_set, command, environment, Ulimit, ALL_CAPS, DEFAULT_CAPS, DEFAULT_PATH,
    DEFAULT_PIDS_LIMIT, NOFILE_LIMIT,
};
pub use resources::{limits, Limits};
pub use seccomp::{allowed_syscalls, default_seccomp, DENIED_SYSCALLS};
pub use users::{resolve_user, ResolvedUser};

/// The network of the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A new, empty network namespace (loopback only).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// The network namespace pinned at this path (a capsa network's, or
    /// another container's).
    Namespace(PathBuf),
}

/// The seccomp filter of the container's processes (`--security-opt
/// seccomp=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// capsa's allow list, opened as the capabilities say.
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile file's text, docker's or the OCI format (`seccomp=FILE`).
    Profile(String),
}

/// A bind mount (`-v HOST:CTR[:OPTIONS]`), or a named volume's (`-v
/// NAME:CTR`: `volume` names it, and `src` is its directory once the
/// lifecycle has found or made it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub src: PathBuf,
    pub dst: String,
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Mount flags asked for (`noexec`, `nosuid`, `nodev` and their
    /// opposites), passed on as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// podman's `U`: the source's files become the container user's (its
    /// host ids, through the user namespace) when the container is made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chown: bool,
    /// docker's `nocopy`: a new named volume is not filled from the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
}

/// What the user asked for on `capsa run`, on top of the image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    /// Container id; the default hostname is its first 12 characters.
    pub container_id: String,
    /// Replaces the image's CMD (`capsa run IMAGE CMD…`).
    pub args: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT (`--entrypoint`); an empty vector
    /// clears it. Setting it also drops the image's CMD (as docker).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE`, overriding the image's variables of the same name.
    pub env: Vec<String>,
    /// Working directory (absolute); default: the image's, else `/`.
    pub workdir: Option<String>,
    /// `uid[:gid]` or `name[:group]`; default: the image's USER, else root.
    pub user: Option<String>,
    pub mounts: Vec<BindMount>,
    /// `/path[:opts]`, opts as for `mount -t tmpfs` (comma separated).
    pub tmpfs: Vec<String>,
    /// Memory limit in bytes (swap limited to the same: no swap).
    pub memory_bytes: Option<i64>,
    /// CPU quota in CPUs (`--cpus 1.5`).
    pub cpus: Option<f64>,
    /// Maximum number of processes; `<= 0` means unlimited.
    pub pids_limit: Option<i64>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    pub network: Network,
    /// Default: first 12 characters of `container_id` (the host's name with `Network::Host`).
    pub hostname: Option<String>,
    /// Allocate a terminal (`-t`); also sets `TERM=xterm` unless given.
    pub tty: bool,
    pub annotations: HashMap<String, String>,
    /// `--cap-add` and `--cap-drop` (names with or without `CAP_`, or ALL).
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub seccomp: Seccomp,
    /// `--privileged`: every capability, no seccomp filter, /proc and /sys
    /// neither masked nor read-only (VM mode: inside the guest).
    #[serde(default)]
    pub privileged: bool,
    /// `--ulimit`s (the open-files one replaces capsa's default).
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// `--userns=auto`: a user namespace of the container's own, whose
    /// uids and gids 0… are the host's `host_id`… (None: the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<LinuxIdMapping>,
}

/// Whether the container makes a network namespace of its own (one its
/// user namespace owns), rather than joining the host's or a prepared one.
pub fn own_network(rc: &RunConfig) -> bool {
    rc.network == Network::None
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRunConfig(msg.into())
}

fn internal(e: impl std::fmt::Display) -> Error {
    bad(format!("internal error building the runtime spec: {e}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The filter `rc` asks for; None for none.
pub fn seccomp_of(rc: &RunConfig) -> Result<Option<LinuxSeccomp>> {
    let caps = process::capability_set(rc)?;
    match &rc.seccomp {
        _ if rc.privileged => Ok(None),
        Seccomp::Default => seccomp::seccomp_profile(&caps).map(Some),
        Seccomp::Unconfined => Ok(None),
        Seccomp::Profile(text) => seccomp_file::from_file(text, &caps).map(Some),
    }
}

/// The container's hostname: `--hostname`, else the host's with
/// `--network host`, else the first 12 characters of the container id.
fn hostname(rc: &RunConfig) -> Result<String> {
    let hostname = match &rc.hostname {
        Some(h) if !h.is_empty() => h.clone(),
        _ if rc.network == Network::Host => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
        _ => rc.container_id.chars().take(12).collect(),
    };
    if hostname.is_empty() {
        return Err(bad("no hostname: give a container id or a hostname"));
    }
    Ok(hostname)
}

/// New pid, ipc, uts, mount and cgroup namespaces; a new network one for
/// `--network none`, the given one for a network, the host's for `host`.
fn namespaces(rc: &RunConfig) -> Result<Vec<LinuxNamespace>> {
    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if own_network(rc) {
        ns_types.push(LinuxNamespaceType::Network);
    }
    if rc.userns.is_some() {
        ns_types.push(LinuxNamespaceType::User);
    }
    let mut out = ns_types
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(internal)?;
    if let Network::Namespace(path) = &rc.network {
        out.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()
                .map_err(internal)?,
        );
    }
    Ok(out)
}

/// Builds the runtime spec for running `image` with root filesystem
/// `rootfs` (absolute path of where the root will be) and the user's
/// options `rc`; users and groups are looked up in the image's unpacked
/// `layers` (lowest first), so nothing needs to be mounted for it. The
/// caller adds what only it knows (cgroups path, /etc/hosts and
/// resolv.conf mounts, hooks).
pub fn generate(image: &Image, rootfs: &Path, layers: &[PathBuf], rc: &RunConfig) -> Result<Spec> {
    let args = command(image, rc)?;
    let user = resolve_user(layers, &users::requested_user(image, rc))?;
    if let Some(map) = &rc.userns {
        let mut ids = [user.uid, user.gid]
            .into_iter()
            .chain(user.additional_gids.clone());
        if let Some(id) = ids.find(|id| *id >= map.size()) {
            return Err(bad(format!(
                "the container's user or group {id} is outside its user namespace's {} ids: \
                 give --userns=auto:size=N with N above {id}",
                map.size()
            )));
        }
    }
    let hostname = hostname(rc)?;

    // Every field is set, even empty ones: oci-spec's builders fill an unset
    // field with oci-spec's own default (a `sh` process, more capabilities,
    // other namespaces), not with nothing.
    let process = process::process(image, rc, args, user, &hostname)?;
    let mounts = mounts::mounts(rc)?;
    let (masked, readonly) = match rc.privileged {
        true => (vec![], vec![]),
        false => (strings(MASKED_PATHS), strings(READONLY_PATHS)),
    };
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(rc)?)
        .masked_paths(masked)
        .readonly_paths(readonly)
        .resources(resources::resources(rc)?)
        .build()
        .map_err(internal)?;
    linux.set_seccomp(seccomp_of(rc)?);
    if let Some(map) = rc.userns {
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(rc.read_only)
        .build()
        .map_err(internal)?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .hostname(hostname)
        .annotations(rc.annotations.clone())
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(internal)
}
