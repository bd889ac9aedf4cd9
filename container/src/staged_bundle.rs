//! runc's default cgroup for a bundle that names none.
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

/// The bundle libcontainer should read for `bundle`: `bundle` itself when
/// its spec names a cgroup path, else a staged copy whose spec names
/// `/<id>`. Refuses when `/<id>` is a cgroup that holds processes already
/// (on a systemd host `/init.scope` holds PID 1): that is the bundle's to
/// name, not capsa's to join.
pub fn stage(state_dir: &Path, id: &str, bundle: &Path) -> Result<PathBuf> {
    let config = bundle.join("config.json");
    let mut spec = Spec::load(&config).with_context(|| format!("reading {}", config.display()))?;
    let Some(linux) = spec.linux_mut() else {
        return Ok(bundle.to_path_buf());
    };
    if linux.cgroups_path().is_some() {
        return Ok(bundle.to_path_buf());
    }
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
    Ok(staged)
}

/// Removes container `id`'s staged bundle, if it has one.
pub fn remove(state_dir: &Path, id: &str) {
    let _ = fs::remove_dir_all(dir(state_dir, id));
}
