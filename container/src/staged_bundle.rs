//! The bundle libcontainer reads, where capsa must change the engine's:
//!
//! - runc's default cgroup for a bundle that names none;
//! - a network namespace a new user namespace does not own, left out
//!   (the container inherits it instead: see [`Staged::netns`]).
//!
//! runc puts such a container in the cgroup `/<id>` of each hierarchy.
//! libcontainer reads the bundle's config.json itself (at create, and again
//! for every exec) and, without a `linux.cgroupsPath`, picks `:youki:<id>`.
//! capsa never writes into an engine's bundle, so for such a bundle it
//! stages one of its own: the same config.json with `cgroupsPath: /<id>`
//! and the root made absolute, beside links to every other entry of the
//! original (a hook reading `$bundle/...` finds what it expects). The
//! container's libcontainer state then names the staged bundle, so create,
//! exec, kill and delete all see the one cgroup path. capsa's own state
//! (`runc state`, `list`) keeps the engine's bundle path; a hook's state
//! names the staged one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

/// Where container `id`'s staged bundle lives under a runtime state dir.
fn dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(".bundles").join(id)
}

pub struct Staged {
    /// The bundle libcontainer reads.
    pub bundle: PathBuf,
    /// A network namespace the container's new user namespace does not
    /// own: libcontainer enters the user namespace first, and could then
    /// not join it (setns needs CAP_SYS_ADMIN over the namespace's owner).
    /// The container is made by a thread already in it, and inherits it,
    /// as runc's containers join such a namespace before the user one.
    pub netns: Option<PathBuf>,
}

/// The bundle libcontainer should read for `bundle`: `bundle` itself when
/// its spec names a cgroup path and needs no inherited network namespace,
/// else a staged copy whose spec names `/<id>` (or the bundle's own path)
/// and leaves that namespace out. Refuses when `/<id>` is a cgroup that
/// holds processes already (on a systemd host `/init.scope` holds PID 1):
/// that is the bundle's to name, not capsa's to join.
pub fn stage(state_dir: &Path, id: &str, bundle: &Path) -> Result<Staged> {
    let config = bundle.join("config.json");
    let mut spec = Spec::load(&config).with_context(|| format!("reading {}", config.display()))?;
    let as_is = Staged {
        bundle: bundle.to_path_buf(),
        netns: None,
    };
    let Some(linux) = spec.linux_mut() else {
        return Ok(as_is);
    };
    let netns = take_foreign_netns(linux);
    if linux.cgroups_path().is_some() && netns.is_none() {
        return Ok(as_is);
    }
    if linux.cgroups_path().is_none() {
        default_cgroup(id, linux)?;
    }
    if let Some(root) = spec.root_mut() {
        root.set_path(bundle.join(root.path()));
    }
    let staged = dir(state_dir, id);
    remove(state_dir, id);
    fs::create_dir_all(&staged).with_context(|| format!("creating {}", staged.display()))?;
    let made = || -> Result<()> {
        for e in fs::read_dir(bundle)? {
            let name = e?.file_name();
            if name != "config.json" {
                std::os::unix::fs::symlink(bundle.join(&name), staged.join(&name))?;
            }
        }
        spec.save(staged.join("config.json"))?;
        Ok(())
    };
    if let Err(e) = made() {
        remove(state_dir, id);
        return Err(e.context(format!("staging the bundle in {}", staged.display())));
    }
    Ok(Staged {
        bundle: staged,
        netns,
    })
}

/// With a new user namespace, the path of the network namespace `linux`
/// joins, taken out of its list.
fn take_foreign_netns(linux: &mut oci_spec::runtime::Linux) -> Option<PathBuf> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    if !crate::idmap::makes_user_namespace(linux) {
        return None;
    }
    let namespaces = linux.namespaces().as_ref()?;
    let path = namespaces
        .iter()
        .find(|n| n.typ() == T::Network)
        .and_then(|n| n.path().clone())?;
    let kept = namespaces
        .iter()
        .filter(|n| n.typ() != T::Network)
        .cloned()
        .collect();
    linux.set_namespaces(Some(kept));
    Some(path)
}

/// runc's `/<id>`, unless it holds processes already.
fn default_cgroup(id: &str, linux: &mut oci_spec::runtime::Linux) -> Result<()> {
    let cgroup = PathBuf::from(format!("/{id}"));
    for h in crate::cgroup::hierarchies() {
        let procs = h.join(id).join("cgroup.procs");
        if fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty()) {
            bail!(
                "cgroup {} already holds processes: name the container's cgroup in linux.cgroupsPath",
                h.join(id).display()
            );
        }
    }
    linux.set_cgroups_path(Some(cgroup));
    Ok(())
}

/// Removes container `id`'s staged bundle, if it has one.
pub fn remove(state_dir: &Path, id: &str) {
    let _ = fs::remove_dir_all(dir(state_dir, id));
}
