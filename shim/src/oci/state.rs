//! `state` and `list`: what runc prints about a container, and about all
//! of them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::common::{load_spec, record, rootfs_of, status_of};
use crate::paths::{ContainerPaths, Roots};
use crate::record::{Record, Status};

/// What `runc state` prints.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    /// The PID the caller reaps; 0 once the container stopped.
    pub pid: i32,
    /// created, running, paused or stopped.
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: DateTime<Utc>,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

fn state_of(roots: &Roots, rec: &Record) -> Result<State> {
    let bundle = rec.bundle.clone().unwrap_or_default();
    let spec = load_spec(&bundle).ok();
    let status = status_of(roots, rec);
    Ok(State {
        oci_version: spec
            .as_ref()
            .map_or_else(|| "1.0.2".into(), |s| s.version().clone()),
        id: rec.id.clone(),
        pid: if status == Status::Stopped {
            0
        } else {
            rec.pid.unwrap_or(0)
        },
        status: status.runc_name().into(),
        rootfs: spec
            .as_ref()
            .map_or_else(|| bundle.join("rootfs"), |s| rootfs_of(&bundle, s)),
        annotations: spec
            .as_ref()
            .and_then(|s| s.annotations().clone())
            .unwrap_or_default(),
        bundle,
        created: rec.created,
        owner: owner_of(&ContainerPaths::new(roots, &rec.id).dir),
    })
}

/// The user who owns the container's state, by name, as runc reports it.
fn owner_of(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(dir) else {
        return String::new();
    };
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid())) {
        Ok(Some(u)) => u.name,
        _ => meta.uid().to_string(),
    }
}

pub fn state(roots: &Roots, id: &str) -> Result<State> {
    state_of(roots, &record(roots, id)?)
}

/// Every container made by [`create`](fn@super::create), oldest first.
pub fn list(roots: &Roots) -> Result<Vec<State>> {
    Record::list(roots)?
        .iter()
        .filter(|r| r.bundle.is_some())
        .map(|r| state_of(roots, r))
        .collect()
}
