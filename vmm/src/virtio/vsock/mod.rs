//! virtio-vsock emulated in userspace (virtio 1.1 section 5.10), with the
//! host side provided by [`muxer::Muxer`] over unix sockets.
//!
//! Queues: 0 = RX (device -> guest), 1 = TX (guest -> device), 2 = event.
//! Packets are parsed with the virtio-vsock crate, which checks every
//! descriptor against guest memory and the header length against the
//! buffer sizes.

pub mod muxer;

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, ActiveQueues, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use muxer::{Muxer, MAX_PKT_DATA};

pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    muxer: Muxer,
    active: Option<ActiveQueues>,
}

impl Vsock {
    pub fn new(guest_cid: u64, uds: &Path) -> std::io::Result<Vsock> {
        Ok(Vsock {
            cid: guest_cid,
            config: guest_cid.to_le_bytes(),
            muxer: Muxer::new(guest_cid, uds)?,
            active: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.queues.get_mut(TXQ) else {
            return;
        };
        let mut used = false;
        for _ in 0..q.size() {
            let Some(mut chain) = q.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&a.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => self.muxer.send_pkt(&pkt),
                Err(e) => tracing::debug!("vsock: bad TX packet: {e:?}"),
            }
            if q.add_used(&a.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        if used && q.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }

    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.queues.get_mut(RXQ) else {
            return;
        };
        let mut used = false;
        for _ in 0..q.size() {
            if !self.muxer.has_pending_rx() {
                break;
            }
            let Some(mut chain) = q.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(&a.mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    if self.muxer.recv_pkt(&mut pkt) {
                        PKT_HEADER_SIZE as u32 + pkt.len()
                    } else {
                        // Nothing after all: give the buffer back.
                        q.go_to_previous_position();
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!("vsock: bad RX buffer: {e:?}");
                    0
                }
            };
            if q.add_used(&a.mem, head, len).is_err() {
                break;
            }
            used = true;
        }
        if used && q.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn name(&self) -> &str {
        "virtio-vsock"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        self.active = Some(ActiveQueues::new(
            mem,
            queues,
            interrupt,
            3,
            &[RXQ, TXQ],
            "vsock",
        )?);
        // Connections the host opened before the driver came up.
        self.process_rx();
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }
    fn process_queue(&mut self, index: usize) {
        match index {
            RXQ => self.process_rx(),
            TXQ => {
                self.process_tx();
                self.process_rx();
            }
            EVQ => {}
            _ => {}
        }
    }
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }
    fn process_backend(&mut self) {
        self.muxer.process_events();
        self.process_rx();
    }
}

#[cfg(test)]
mod tests;
