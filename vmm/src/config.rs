//! The description of one microVM, from command line flags or a JSON file.
//!
//! `capsa-vmm --config vm.json` and the equivalent flags produce the same
//! [`VmConfig`]; the JSON field names are the long flag names with `_`
//! instead of `-` (`mem_mib`, `vsock_cid`, …), `disks` is a list of
//! `{"path": …, "read_only": …}` and `serial` is `"stdout"`, `"none"` or a
//! file path.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

fn default_mem() -> u32 {
    128
}
fn default_vcpus() -> u8 {
    1
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
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks limits that do not need the host.
    pub fn validate(&self) -> Result<()> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::Config(format!(
                "vcpus must be between 1 and {MAX_VCPUS}, got {}",
                self.vcpus
            )));
        }
        if self.mem_mib < MIN_MEM_MIB || self.mem_mib > MAX_MEM_MIB {
            return Err(Error::Config(format!(
                "mem-mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {}",
                self.mem_mib
            )));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(Error::Config(format!(
                "at most {MAX_DISKS} disks are supported, got {}",
                self.disks.len()
            )));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 {
                return Err(Error::Config(format!(
                    "vsock-cid must be >= 3 (0-2 are reserved), got {}",
                    v.cid
                )));
            }
        }
        Ok(())
    }
}

/// Command line of `capsa-vmm`.
#[derive(Debug, Parser)]
#[command(
    name = "capsa-vmm",
    version,
    about = "Run one KVM microVM: ELF vmlinux (PVH), serial, virtio-blk, virtio-vsock"
)]
pub struct Cli {
    /// Guest kernel: an uncompressed ELF vmlinux with a PVH entry note.
    #[arg(long, value_name = "VMLINUX", required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) handed to the kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio device entries are appended).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "N")]
    pub mem_mib: Option<u32>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u8>,
    /// A virtio-blk disk backed by a file; append ",ro" for read-only. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,ro]", value_parser = DiskConfig::parse)]
    pub disks: Vec<DiskConfig>,
    /// Guest vsock context ID (needs --vsock-uds).
    #[arg(long, value_name = "N", requires = "vsock_uds")]
    pub vsock_cid: Option<u32>,
    /// Host unix socket of the hybrid vsock (needs --vsock-cid).
    #[arg(long, value_name = "PATH", requires = "vsock_cid")]
    pub vsock_uds: Option<PathBuf>,
    /// Where the guest console goes: stdout, none, or a file.
    #[arg(long, value_name = "stdout|FILE|none", value_parser = SerialConfig::parse)]
    pub serial: Option<SerialConfig>,
    /// Read the VM description from a JSON file (same fields as the flags).
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["kernel", "initrd", "cmdline", "mem_mib", "vcpus", "disks", "vsock_cid", "vsock_uds", "serial"])]
    pub config: Option<PathBuf>,
    /// Run even if this host's /dev/kvm is PVM (needs a PVM-enabled guest kernel).
    #[arg(long)]
    pub allow_pvm: bool,
    /// Log filter (tracing env-filter syntax), e.g. info or capsa_vmm=debug.
    #[arg(long, default_value = "warn", env = "CAPSA_VMM_LOG")]
    pub log_level: String,
    /// Print a timestamped line to stderr when the first vCPU first enters
    /// KVM_RUN (microseconds since process start), for measurements.
    #[arg(long)]
    pub report_first_run: bool,
    /// Do not install the per-thread seccomp filters (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Stop the VM right after the first KVM_RUN returns (measurement aid).
    #[arg(long, hide = true)]
    pub exit_after_first_run: bool,
}

impl Cli {
    /// Turns the flags (or the JSON file they name) into a [`VmConfig`].
    pub fn to_config(&self) -> Result<VmConfig> {
        let mut cfg = if let Some(path) = &self.config {
            VmConfig::from_json_file(path)?
        } else {
            let vsock = match (self.vsock_cid, &self.vsock_uds) {
                (Some(cid), Some(uds)) => Some(VsockConfig {
                    cid,
                    uds: uds.clone(),
                }),
                _ => None,
            };
            VmConfig {
                kernel: self
                    .kernel
                    .clone()
                    .ok_or_else(|| Error::Config("--kernel is required".into()))?,
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone(),
                mem_mib: self.mem_mib.unwrap_or_else(default_mem),
                vcpus: self.vcpus.unwrap_or_else(default_vcpus),
                disks: self.disks.clone(),
                vsock,
                serial: self.serial.clone().unwrap_or_default(),
                allow_pvm: false,
            }
        };
        cfg.allow_pvm |= self.allow_pvm;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_json_give_the_same_config() {
        let cli = Cli::try_parse_from([
            "capsa-vmm",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0",
            "--mem-mib",
            "256",
            "--vcpus",
            "2",
            "--disk",
            "/a.img,ro",
            "--disk",
            "/b.img",
            "--vsock-cid",
            "3",
            "--vsock-uds",
            "/tmp/v.sock",
            "--serial",
            "none",
        ])
        .unwrap();
        let from_flags = cli.to_config().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("vm.json");
        std::fs::write(
            &json,
            r#"{"kernel":"/k","initrd":"/i","cmdline":"console=ttyS0","mem_mib":256,"vcpus":2,
               "disks":[{"path":"/a.img","read_only":true},{"path":"/b.img"}],
               "vsock":{"cid":3,"uds":"/tmp/v.sock"},"serial":"none"}"#,
        )
        .unwrap();
        let cli = Cli::try_parse_from(["capsa-vmm", "--config", json.to_str().unwrap()]).unwrap();
        assert_eq!(cli.to_config().unwrap(), from_flags);
        // And the serialized form reads back identically.
        let round: VmConfig =
            serde_json::from_str(&serde_json::to_string(&from_flags).unwrap()).unwrap();
        assert_eq!(round, from_flags);
    }

    #[test]
    fn config_conflicts_with_flags_and_bad_values_are_rejected() {
        assert!(
            Cli::try_parse_from(["capsa-vmm", "--config", "x.json", "--kernel", "/k"]).is_err()
        );
        assert!(Cli::try_parse_from(["capsa-vmm"]).is_err());
        assert!(Cli::try_parse_from(["capsa-vmm", "--kernel", "/k", "--vsock-cid", "3"]).is_err());
        let cli = Cli::try_parse_from(["capsa-vmm", "--kernel", "/k", "--vcpus", "0"]).unwrap();
        assert!(cli.to_config().is_err());
        let cli = Cli::try_parse_from([
            "capsa-vmm",
            "--kernel",
            "/k",
            "--vsock-cid",
            "2",
            "--vsock-uds",
            "/s",
        ])
        .unwrap();
        assert!(cli.to_config().is_err());
        assert_eq!(
            DiskConfig::parse("/x,ro").unwrap(),
            DiskConfig {
                path: "/x".into(),
                read_only: true
            }
        );
        assert!(DiskConfig::parse(",ro").is_err());
    }
}
