//! capsa's kernel, in its two roles: the microVM **guest** kernel and the
//! **KVM test host** kernel. One vmlinux serves both (the guest's options
//! plus the test host's few); it is built from Debian's `linux-source-6.1` by
//! `build.sh` with the config fragments in `fragments/`, and cached outside
//! the checkout under a key that hashes every input (see
//! `docs/guest-kernel.md`).
//!
//! - [`kernel_path`] returns the cached `vmlinux`, building it if needed.
//! - [`kernel_config`] returns its resolved `.config`.
//! - [`test_host`] boots the test-host kernel under qemu TCG with an emulated
//!   SVM CPU and runs one command inside it with a working `/dev/kvm`.
//! - [`cli`] holds the clap argument structs for `capsa kernel …` and
//!   `capsa test-host …`.
//!
//! The build script, fragments and patches are compiled into this library, so
//! an installed `capsa` binary builds the same kernels (with the same cache
//! key) as the checkout.

pub mod cli;
pub mod initramfs;
pub mod test_host;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Which role of capsa's kernel (both are the same vmlinux today; callers
/// say which they need, so the two could part again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The microVM guest kernel capsa-vmm boots.
    Guest,
    /// The KVM test host: the guest config plus KVM, TUN and virtio-9p.
    TestHost,
}

impl Kind {
    /// The name `build.sh` takes and the cache directory starts with.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Guest => "guest",
            Kind::TestHost => "test-host",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The build inputs, embedded byte for byte (the cache key hashes them).
const BUILD_SCRIPT: &str = include_str!("../build.sh");
const FRAGMENTS: &[(&str, &str)] = &[
    ("guest.config", include_str!("../fragments/guest.config")),
    (
        "test-host.config",
        include_str!("../fragments/test-host.config"),
    ),
];
/// Our kernel patches, in the order `build.sh` applies them (it applies
/// `patches/*.patch` in glob order). Currently none are needed; a unit test
/// checks that this list matches the `patches/` directory.
const PATCHES: &[(&str, &str)] = &[];

/// Writes the build script, fragments and patches into `dir`.
fn materialize_inputs(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir.join("fragments"))?;
    fs::create_dir_all(dir.join("patches"))?;
    let script = dir.join("build.sh");
    fs::write(&script, BUILD_SCRIPT)?;
    for (name, text) in FRAGMENTS {
        fs::write(dir.join("fragments").join(name), text)?;
    }
    for (name, text) in PATCHES {
        fs::write(dir.join("patches").join(name), text)?;
    }
    Ok(script)
}

fn run_build_script(args: &[&str]) -> Result<String> {
    let inputs = tempfile::Builder::new()
        .prefix("capsa-kernel-inputs-")
        .tempdir()
        .context("creating a temporary directory for the kernel build inputs")?;
    let script = materialize_inputs(inputs.path())?;
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running bash (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "the kernel build script failed ({}); its messages are above",
            out.status
        );
    }
    let text = String::from_utf8(out.stdout).context("build script printed non-UTF-8")?;
    Ok(text.trim().to_string())
}

/// The cache directory this kernel lives (or would live) in, without building.
pub fn kernel_dir(kind: Kind) -> Result<PathBuf> {
    Ok(PathBuf::from(run_build_script(&["--key", kind.name()])?))
}

/// The path of the cached `vmlinux` of `kind`, building it first if it is not
/// cached (this takes minutes; progress goes to stderr).
pub fn kernel_path(kind: Kind) -> Result<PathBuf> {
    let dir = kernel_dir(kind)?;
    let cached = dir.join("vmlinux");
    if cached.is_file() {
        return Ok(cached);
    }
    tracing::info!(%kind, "kernel not cached; building it");
    let path = PathBuf::from(run_build_script(&[kind.name()])?);
    if !path.is_file() {
        bail!(
            "the kernel build script reported {} but it is not a file",
            path.display()
        );
    }
    Ok(path)
}

/// The resolved kernel `.config` of `kind` (building the kernel if needed).
pub fn kernel_config(kind: Kind) -> Result<String> {
    let vmlinux = kernel_path(kind)?;
    let config = vmlinux.with_file_name("config");
    fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_patches_match_the_patches_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("patches");
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".patch"))
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        let embedded: Vec<String> = PATCHES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            on_disk, embedded,
            "register every patches/*.patch in PATCHES (in glob order)"
        );
    }

    #[test]
    fn embedded_fragments_match_the_fragments_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fragments");
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = FRAGMENTS.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, embedded);
    }

    /// The key printed by the embedded copy must equal the checkout's, or an
    /// installed binary would rebuild what `scripts/build-kernels.sh` built.
    #[test]
    fn embedded_inputs_give_the_same_cache_key_as_the_checkout() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh");
        for kind in [Kind::Guest, Kind::TestHost] {
            let out = Command::new("bash")
                .arg(&script)
                .args(["--key", kind.name()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let from_checkout = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            assert_eq!(kernel_dir(kind).unwrap(), from_checkout);
            assert!(from_checkout
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("kernel-"));
        }
    }
}
