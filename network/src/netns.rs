//! Each networked container's network namespace, pinned by iproute2's
//! `ip netns` (a bind mount under /run/netns, as podman's are), so it
//! outlives the container's processes until its network is torn down, and
//! `ip netns` lists it.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

const NETNS_DIR: &str = "/run/netns";

fn name(id: &str) -> String {
    format!("capsa-{id}")
}

/// Where the network namespace of container `id` is pinned.
pub fn netns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name(id))
}

/// Makes and pins the namespace, with its loopback up.
pub(crate) fn add(id: &str) -> Result<()> {
    ip(&["netns", "add", &name(id)])?;
    ip(&["-n", &name(id), "link", "set", "lo", "up"])
}

/// Unpins the namespace at `path` (no error if it is not there). The
/// kernel frees it, and with it the container's ends of its veths, once
/// no process is left in it.
pub(crate) fn delete(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a network namespace name")?;
    ip(&["netns", "delete", name])
}

fn ip(args: &[&str]) -> Result<()> {
    crate::run_tool("ip", args)
}
