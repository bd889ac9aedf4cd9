//! capsa-vm-config: the description of one microVM, as capsa's monitor
//! hands it to capsa-vmm (`capsa-vmm --config vm.json`) and as capsa-vmm's
//! own flags build it: one serde type on both sides, in a crate of its own
//! so the VMM links nothing else of the host side. The JSON field names are the
//! long flag names with `_` instead of `-` (`mem_mib`, `vsock_cid`, …),
//! `disks` is a list of `{"path": …, "read_only": …}` and `serial` is
//! `"stdout"`, `"none"` or a file path.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Highest vCPU count: the MP table and the APIC ID space we set up are
/// sized for this many.
pub const MAX_VCPUS: u8 = 32;
/// Highest guest memory size accepted (64 GiB).
pub const MAX_MEM_MIB: u32 = 64 * 1024;
/// Lowest guest memory size accepted: the boot structures, kernel and
/// initramfs need some room.
pub const MIN_MEM_MIB: u32 = 16;
/// Most disks: each uses one virtio-mmio slot and one IRQ line.
pub const MAX_DISKS: usize = 8;

/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 noapic_timer_check i8042.noaux i8042.nomux i8042.dumbkbd nomodule";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses `PATH[,ro]` (also `,rw`).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            _ => (s, false),
        };
        if path.is_empty() {
            return Err(format!("--disk {s:?}: empty path"));
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Guest context ID (>= 3).
    pub cid: u32,
    /// Host unix socket path of the hybrid vsock (Firecracker convention).
    pub uds: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialConfig {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

impl SerialConfig {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stdout" => Ok(SerialConfig::Stdout),
            "none" => Ok(SerialConfig::None),
            "" => Err("--serial: empty value (use stdout, none or a file path)".into()),
            p => Ok(SerialConfig::File(PathBuf::from(p))),
        }
    }
}

impl Serialize for SerialConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            SerialConfig::Stdout => s.serialize_str("stdout"),
            SerialConfig::None => s.serialize_str("none"),
            SerialConfig::File(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for SerialConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SerialConfig::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Guest memory when none is given.
pub const DEFAULT_MEM_MIB: u32 = 128;
/// vCPUs when none are given.
pub const DEFAULT_VCPUS: u8 = 1;

fn default_mem() -> u32 {
    DEFAULT_MEM_MIB
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

/// Everything needed to build one microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub serial: SerialConfig,
    /// Run even on a PVM host, where an ordinary guest kernel cannot run.
    #[serde(default)]
    pub allow_pvm: bool,
}

impl VmConfig {
    /// Checks limits that do not need the host.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(format!(
                "vcpus must be between 1 and {MAX_VCPUS}, got {}",
                self.vcpus
            ));
        }
        if self.mem_mib < MIN_MEM_MIB || self.mem_mib > MAX_MEM_MIB {
            return Err(format!(
                "mem-mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {}",
                self.mem_mib
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(format!(
                "at most {MAX_DISKS} disks are supported, got {}",
                self.disks.len()
            ));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 {
                return Err(format!(
                    "vsock-cid must be >= 3 (0-2 are reserved), got {}",
                    v.cid
                ));
            }
        }
        Ok(())
    }
}
