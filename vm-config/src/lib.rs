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

/// Most network interfaces: each uses one virtio-mmio slot and one IRQ line.
pub const MAX_NETS: usize = 4;
/// The MTU when none is given (Ethernet's).
pub const DEFAULT_MTU: u16 = 1500;

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// One virtio-net interface on a tap descriptor that capsa-vmm inherits
/// (opened by the caller with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR, a
/// 12-byte vnet header and offloads off): capsa-vmm opens no tap itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap_fd: i32,
    /// The guest interface's MAC address, `02:42:0a:59:00:02`.
    pub mac: String,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

impl NetConfig {
    /// Parses `tap-fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut fd, mut mac, mut mtu) = (None, None, DEFAULT_MTU);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("tap-fd", v)) => {
                    fd = Some(v.parse().map_err(|_| format!("--net: bad tap-fd {v:?}"))?)
                }
                Some(("mac", v)) => mac = Some(v.to_string()),
                Some(("mtu", v)) => mtu = v.parse().map_err(|_| format!("--net: bad mtu {v:?}"))?,
                _ => return Err(format!("--net {s:?}: expected tap-fd=N,mac=MAC[,mtu=M]")),
            }
        }
        let cfg = NetConfig {
            tap_fd: fd.ok_or_else(|| format!("--net {s:?}: tap-fd=N is required"))?,
            mac: mac.ok_or_else(|| format!("--net {s:?}: mac=MAC is required"))?,
            mtu,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.tap_fd < 0 {
            return Err(format!(
                "net: tap-fd must not be negative, got {}",
                self.tap_fd
            ));
        }
        parse_mac(&self.mac)?;
        if self.mtu < 68 {
            return Err(format!("net: mtu must be at least 68, got {}", self.mtu));
        }
        Ok(())
    }
}

/// A unicast MAC address in the usual colon form.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address (like 02:42:0a:59:00:02)");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!("{s:?} is not a unicast MAC address"));
    }
    Ok(mac)
}

/// Most virtio-fs shares: each uses one virtio-mmio slot and one IRQ line.
pub const MAX_FS: usize = 6;
/// The virtio-fs tag is a 36-byte field in the device's configuration.
pub const FS_TAG_MAX: usize = 36;

/// One virtio-fs share: a vhost-user-fs device whose requests a virtiofsd
/// serves on `socket` (already listening); the guest mounts it by `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub socket: PathBuf,
    pub tag: String,
}

impl FsConfig {
    /// Parses `socket=PATH,tag=TAG`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut socket, mut tag) = (None, None);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("socket", v)) => socket = Some(PathBuf::from(v)),
                Some(("tag", v)) => tag = Some(v.to_string()),
                _ => return Err(format!("--fs {s:?}: expected socket=PATH,tag=TAG")),
            }
        }
        let cfg = FsConfig {
            socket: socket.ok_or_else(|| format!("--fs {s:?}: socket=PATH is required"))?,
            tag: tag.ok_or_else(|| format!("--fs {s:?}: tag=TAG is required"))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.tag.is_empty() || self.tag.len() > FS_TAG_MAX || self.tag.contains('\0') {
            return Err(format!(
                "fs: the tag must be 1 to {FS_TAG_MAX} bytes without NUL, got {:?}",
                self.tag
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err("fs: empty socket path".into());
        }
        Ok(())
    }
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
    /// virtio-net interfaces (eth0, eth1, … in this order).
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// virtio-fs shares. With any, guest memory is a shared memfd that
    /// each share's virtiofsd maps.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
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
        if self.nets.len() > MAX_NETS {
            return Err(format!(
                "at most {MAX_NETS} network interfaces are supported, got {}",
                self.nets.len()
            ));
        }
        for n in &self.nets {
            n.validate()?;
        }
        if self.fs.len() > MAX_FS {
            return Err(format!(
                "at most {MAX_FS} virtio-fs shares are supported, got {}",
                self.fs.len()
            ));
        }
        for (i, f) in self.fs.iter().enumerate() {
            f.validate()?;
            if self.fs[..i].iter().any(|o| o.tag == f.tag) {
                return Err(format!("fs: the tag {:?} is used twice", f.tag));
            }
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
