//! virtio-fs (device type 26) as a vhost-user frontend. The FUSE requests
//! in its queues never pass through capsa-vmm: a virtiofsd on the other end
//! of a unix socket maps guest memory (a shared memfd, see
//! `boot::create_memory`) and serves the queues itself. capsa-vmm only
//! negotiates features and hands over, at activation, the memory table,
//! each ring's addresses, its kick eventfd (the queue's KVM ioeventfd) and
//! its call eventfd (the device's irqfd). The protocol is rust-vmm's
//! `vhost` crate.
//!
//! If the daemon goes away the guest's file system would hang; the socket
//! closing ends the VM instead, with a line that names the share.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::{VmEvents, VmmExit};

pub const VIRTIO_ID_FS: u32 = 26;
/// One high-priority queue (FUSE interrupts) and one request queue.
const NUM_QUEUES: usize = 2;
const QUEUE_SIZE: u16 = 1024;
/// How long a vCPU waits for the daemon to answer one vhost-user message
/// before the activation fails (a stuck daemon must not hang the guest).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The virtio features the guest may see, when the daemon offers them.
const GUEST_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);
/// The protocol features capsa uses: several queues, acknowledged requests.
const PROTOCOL: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

pub struct Fs {
    name: String,
    config: Vec<u8>,
    frontend: Frontend,
    /// A second handle on the socket, watched by the event loop: it only
    /// becomes readable when the daemon closes it.
    watch: UnixStream,
    backend_features: u64,
    protocol_features: bool,
    kicks: Vec<EventFd>,
    events: Arc<VmEvents>,
    started: usize,
}

impl Fs {
    /// Connects to the daemon listening on `socket` and learns what it
    /// offers. The daemon serves one VM and exits when it disconnects.
    pub fn connect(socket: &Path, tag: &str, events: Arc<VmEvents>) -> Result<Fs, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let watch = stream.try_clone().map_err(|e| e.to_string())?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        let err = |what: &str, e: vhost::Error| format!("vhost-user {what}: {e}");
        frontend.set_owner().map_err(|e| err("SET_OWNER", e))?;
        let backend_features = frontend
            .get_features()
            .map_err(|e| err("GET_FEATURES", e))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err("the daemon does not offer VIRTIO_F_VERSION_1".into());
        }
        let protocol_features =
            backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(|e| err("GET_PROTOCOL_FEATURES", e))?;
            frontend
                .set_protocol_features(offered & PROTOCOL)
                .map_err(|e| err("SET_PROTOCOL_FEATURES", e))?;
            if offered.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend
                    .get_queue_num()
                    .map_err(|e| err("GET_QUEUE_NUM", e))?;
                if n < NUM_QUEUES as u64 {
                    return Err(format!(
                        "the daemon serves {n} queues, virtio-fs needs {NUM_QUEUES}"
                    ));
                }
            }
        }
        // struct virtio_fs_config: tag[36], num_request_queues (le32).
        let mut config = vec![0u8; crate::config::FS_TAG_MAX + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[crate::config::FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            name: format!("virtio-fs {tag}"),
            config,
            frontend,
            watch,
            backend_features,
            protocol_features,
            kicks: Vec::new(),
            events,
            started: 0,
        })
    }

    /// Hands the daemon guest memory and the rings; they run from here on.
    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked_features: u64,
        queues: &[Queue],
        interrupt: &Interrupt,
    ) -> Result<(), String> {
        let err = |what: &str, e: vhost::Error| format!("vhost-user {what}: {e}");
        let mut features = acked_features;
        if self.protocol_features {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(|e| err("SET_FEATURES", e))?;
        let regions = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("guest memory is not shareable: {e}"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| err("SET_MEM_TABLE", e))?;
        let host = |a: u64| -> Result<u64, String> {
            mem.get_host_address(GuestAddress(a))
                .map(|p| p as u64)
                .map_err(|e| format!("ring address {a:#x}: {e}"))
        };
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            let f = &self.frontend;
            f.set_vring_num(i, q.size())
                .map_err(|e| err("SET_VRING_NUM", e))?;
            f.set_vring_addr(i, &ring)
                .map_err(|e| err("SET_VRING_ADDR", e))?;
            f.set_vring_base(i, 0)
                .map_err(|e| err("SET_VRING_BASE", e))?;
            f.set_vring_call(i, interrupt.evt())
                .map_err(|e| err("SET_VRING_CALL", e))?;
            f.set_vring_kick(i, &self.kicks[i])
                .map_err(|e| err("SET_VRING_KICK", e))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(|e| err("SET_VRING_ENABLE", e))?;
            }
            self.started = i + 1;
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend_features & GUEST_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        if queues.len() != NUM_QUEUES || queues.iter().any(|q| !q.ready()) {
            return Err("virtio-fs needs both of its queues ready".into());
        }
        // The daemon raises the irqfd directly; the driver must look at
        // its queues whatever the status register last said.
        interrupt.report_vring_always();
        self.start(&mem, acked_features, &queues, &interrupt)
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops a ring in the daemon.
        for i in 0..self.started {
            let _ = self.frontend.get_vring_base(i);
        }
        self.started = 0;
    }

    fn process_queue(&mut self, _index: usize) {
        // The daemon reads the kick eventfds; the event loop never calls this.
    }

    fn take_queue_notifiers(&mut self, evts: &[EventFd]) -> std::io::Result<bool> {
        self.kicks = evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<_>>()?;
        Ok(true)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.watch.as_raw_fd())
    }

    fn process_backend(&mut self) {
        // Readable between requests means closed: peek to tell end of file
        // from a reply a vCPU is about to read.
        let mut b = [0u8; 1];
        // SAFETY: recv into a one-byte buffer we own, on a socket we own.
        let n = unsafe {
            libc::recv(
                self.watch.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let gone = n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock);
        if gone {
            self.events.request_exit(VmmExit::VmmError(format!(
                "{}: its virtiofsd closed the connection (the daemon exited or was killed); the guest's files there are gone, so the VM stops",
                self.name
            )));
        }
    }
}
