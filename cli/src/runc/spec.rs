//! `spec`: writes the default config.json into a bundle.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use capsa_image::oci_spec::runtime::Spec;
use clap::Args;

use super::{coded, EXIT_RUNC_ERROR};

#[derive(Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(short = 'b', long, default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    // `spec --rootless` is the global --rootless flag (see main.rs).
}

/// The default spec `runc spec` writes: a terminal with `sh`, a read-only
/// `rootfs`, the usual mounts and namespaces.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    spec.set_hostname(Some("capsa".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec
}

pub fn spec(a: SpecArgs, rootless: bool) -> Result<i32> {
    let run = || -> Result<i32> {
        let path = a.bundle.join("config.json");
        if path.exists() {
            bail!("File {} exists. Remove it first", path.display());
        }
        if !a.bundle.is_dir() {
            bail!("bundle directory {} does not exist", a.bundle.display());
        }
        let text = serde_json::to_string_pretty(&default_spec(rootless))?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(0)
    };
    run().map_err(coded(EXIT_RUNC_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn default_spec_is_runc_like() {
        let s = default_spec(false);
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }
}
