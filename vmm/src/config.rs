//! The description of one microVM ([`VmConfig`], shared with capsa's
//! monitor through capsa-vm-config), from command line flags or a JSON file.

use std::path::{Path, PathBuf};

use clap::Parser;

pub use capsa_vm_config::*;

use crate::error::{Error, Result};

/// Reads a [`VmConfig`] from a JSON file.
pub fn from_json_file(path: &Path) -> Result<VmConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Command line of `capsa-vmm`.
#[derive(Debug, Parser)]
#[command(
    name = "capsa-vmm",
    version,
    about = "Run one KVM microVM: ELF vmlinux (PVH), serial, virtio-blk, virtio-vsock, virtio-net"
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
    /// A virtio-net interface on an inherited, already configured tap
    /// descriptor (IFF_VNET_HDR, 12-byte header). Repeatable: eth0, eth1, …
    #[arg(long = "net", value_name = "tap-fd=N,mac=MAC[,mtu=M]", value_parser = NetConfig::parse)]
    pub nets: Vec<NetConfig>,
    /// A virtio-fs share served by the vhost-user daemon (virtiofsd)
    /// listening on PATH; the guest mounts it with `mount -t virtiofs TAG`.
    /// Repeatable.
    #[arg(long = "fs", value_name = "socket=PATH,tag=TAG", value_parser = FsConfig::parse)]
    pub fs: Vec<FsConfig>,
    /// Where the guest console goes: stdout, none, or a file.
    #[arg(long, value_name = "stdout|FILE|none", value_parser = SerialConfig::parse)]
    pub serial: Option<SerialConfig>,
    /// Read the VM description from a JSON file (same fields as the flags).
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["kernel", "initrd", "cmdline", "mem_mib", "vcpus", "disks", "vsock_cid", "vsock_uds", "serial", "nets", "fs"])]
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
    /// Once the VM is built, run in a jail: namespaces of its own, an empty
    /// read-only root, an unprivileged uid of its own, no capabilities
    /// (see the jail module). capsa runs every VM this way.
    #[arg(long, conflicts_with = "report_first_run")]
    pub jail: bool,
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
            from_json_file(path)?
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
                mem_mib: self.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
                vcpus: self.vcpus.unwrap_or(DEFAULT_VCPUS),
                disks: self.disks.clone(),
                vsock,
                nets: self.nets.clone(),
                fs: self.fs.clone(),
                serial: self.serial.clone().unwrap_or_default(),
                allow_pvm: false,
            }
        };
        cfg.allow_pvm |= self.allow_pvm;
        cfg.validate().map_err(Error::Config)?;
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
            "--net",
            "tap-fd=7,mac=02:42:0a:59:00:02",
        ])
        .unwrap();
        let from_flags = cli.to_config().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("vm.json");
        std::fs::write(
            &json,
            r#"{"kernel":"/k","initrd":"/i","cmdline":"console=ttyS0","mem_mib":256,"vcpus":2,
               "disks":[{"path":"/a.img","read_only":true},{"path":"/b.img"}],
               "vsock":{"cid":3,"uds":"/tmp/v.sock"},"serial":"none",
               "nets":[{"tap_fd":7,"mac":"02:42:0a:59:00:02","mtu":1500}]}"#,
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
        for bad in [
            "mac=02:42:0a:59:00:02",
            "tap-fd=3",
            "tap-fd=3,mac=03:42:0a:59:00:02",
            "tap-fd=3,mac=02:42:0a:59:00",
            "tap-fd=3,mac=02:42:0a:59:00:02,mtu=10",
            "tap-fd=-1,mac=02:42:0a:59:00:02",
            "tap-fd=3,mac=02:42:0a:59:00:02,speed=10",
        ] {
            assert!(NetConfig::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NetConfig::parse("tap-fd=3,mac=02:42:0a:59:00:02,mtu=9000")
                .unwrap()
                .mtu,
            9000
        );
    }
}
