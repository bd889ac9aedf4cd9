//! PVM host detection.
//!
//! PVM (`kvm_pvm`) is a software hypervisor that provides /dev/kvm on
//! machines without VT-x/AMD-V. It runs only PVM-enabled guest kernels; an
//! ordinary guest kernel is emulated instruction by instruction there, needs
//! minutes to boot and then crashes in user space. capsa-vmm therefore
//! refuses to start on such a host unless told the kernel is PVM-enabled.

use std::path::Path;

use crate::error::{Error, Result};

/// Where the PVM module shows up when loaded.
pub const PVM_MODULE: &str = "/sys/module/kvm_pvm";

pub fn is_pvm_host_at(sysfs_module: &Path) -> bool {
    sysfs_module.exists()
}

pub fn is_pvm_host() -> bool {
    is_pvm_host_at(Path::new(PVM_MODULE))
}

/// The one-line refusal.
pub fn refusal() -> String {
    format!(
        "this host's /dev/kvm is PVM ({PVM_MODULE} exists), which runs only PVM-enabled guest \
         kernels; pass --allow-pvm with such a kernel, or run on a host with VT-x/AMD-V"
    )
}

/// Fails on a PVM host unless `allow` is set.
pub fn check(allow: bool) -> Result<()> {
    check_at(Path::new(PVM_MODULE), allow)
}

pub fn check_at(sysfs_module: &Path, allow: bool) -> Result<()> {
    if is_pvm_host_at(sysfs_module) {
        if allow {
            // Not a warning: the caller chose a PVM-enabled kernel, and a
            // warning would stand before any real error on stderr.
            tracing::info!("PVM host: running anyway (--allow-pvm)");
        } else {
            return Err(Error::PvmHost(refusal()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_on_pvm_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("kvm_pvm");
        assert!(check_at(&m, false).is_ok());
        std::fs::create_dir(&m).unwrap();
        let e = check_at(&m, false).unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::PvmHost);
        assert!(!e.to_string().contains('\n'));
        assert!(check_at(&m, true).is_ok());
    }
}
