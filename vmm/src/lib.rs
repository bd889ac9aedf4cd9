//! capsa-vmm: a small virtual machine monitor built on the rust-vmm crates.
//!
//! One process runs one microVM: an ELF `vmlinux` booted through its PVH
//! entry, a 16550 serial console, an i8042 controller for guest reset, and
//! virtio-mmio block and vsock devices emulated in userspace.
//!
//! Layout, one concern per module:
//! - [`config`]: the VM description (command line flags or JSON file).
//! - [`layout`], [`boot`], [`mptable`]: guest memory map and boot structures.
//! - [`cpu`]: vCPU register/CPUID/MSR/LAPIC setup and the vCPU run loop.
//! - [`devices`]: legacy port-I/O devices (serial, i8042) and the I/O buses.
//! - [`virtio`]: the virtio-mmio transport, virtio-blk and virtio-vsock.
//! - [`vmm`]: the `Vmm` builder and the event loop that owns device I/O.
//! - [`pvm`]: detection of PVM hosts whose /dev/kvm cannot run ordinary guests.
//! - [`jail`]: the namespaces, empty root and uid a jailed VMM runs in.
//! - [`seccomp`]: per-thread seccomp filters.

pub mod boot;
pub mod config;
pub mod cow_file;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod jail;
pub mod layout;
pub mod mptable;
pub mod pvm;
pub mod seccomp;
pub mod tcg;
pub mod virtio;
pub mod vmm;

pub use config::VmConfig;
pub use error::{Error, ExitCode, Result};
pub use vmm::{Vmm, VmmExit};
