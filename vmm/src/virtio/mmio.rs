//! The virtio-mmio transport (virtio 1.1 section 4.2, version 2 layout).
//!
//! The transport owns the register state and the queue configuration; on
//! DRIVER_OK it validates every queue against guest memory and hands them
//! to the device. Queue notifications arrive on one eventfd per queue (a KVM
//! ioeventfd on the QueueNotify register, so they do not exit to
//! userspace); a notify write that does reach us is forwarded to the same
//! eventfd.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Interrupt, VirtioDevice, INT_CONFIG, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "CAPS"
const VENDOR_ID: u32 = 0x5350_4143;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
    queues_elsewhere: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq_evt: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e:?}"))
            })?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        let mut device = device;
        let queues_elsewhere = device.take_queue_notifiers(&queue_evts)?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Interrupt::new(irq_evt),
            queues,
            queue_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
            queues_elsewhere,
        })
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Whether another process (a vhost-user backend) reads the queue
    /// eventfds; the event loop must not.
    pub fn queues_served_elsewhere(&self) -> bool {
        self.queues_elsewhere
    }

    /// One eventfd per queue, signalled when the driver notifies it.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// The driver notified queue `index` (called by the event loop).
    pub fn notify(&mut self, index: usize) {
        if self.active && index < self.queues.len() {
            self.device.process_queue(index);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.active {
            // Queue configuration is frozen once the device runs.
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut new = value;
        if new & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.acked_features & !offered != 0 || self.acked_features & VIRTIO_F_VERSION_1 == 0
            {
                tracing::warn!(
                    dev = self.device.name(),
                    acked = format_args!("{:#x}", self.acked_features),
                    "driver accepted features we did not offer (or not VERSION_1)"
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        if new & STATUS_DRIVER_OK != 0
            && self.status & STATUS_DRIVER_OK == 0
            && new & STATUS_FEATURES_OK != 0
            && !self.active
        {
            match self.activate() {
                Ok(()) => self.active = true,
                Err(e) => {
                    tracing::warn!(dev = self.device.name(), "activation failed: {e}");
                    new |= STATUS_NEEDS_RESET;
                    self.status = new;
                    self.interrupt
                        .status
                        .fetch_or(INT_CONFIG, std::sync::atomic::Ordering::SeqCst);
                    let _ = self.interrupt.evt().write(1);
                    return;
                }
            }
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!("queue {i} does not fit in guest memory"));
            }
        }
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()).map_err(|e| format!("queue state: {e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        self.device.activate(
            self.mem.clone(),
            self.acked_features,
            queues,
            self.interrupt.clone(),
        )
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 || self.active {
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // Queue::set_size refuses sizes that are zero, too big
                    // or not a power of two.
                    q.set_size(v.min(u32::from(u16::MAX)) as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(v), None)
                }
            }
            REG_QUEUE_DESC_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(v))
                }
            }
            REG_QUEUE_DRIVER_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(v), None)
                }
            }
            REG_QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(v))
                }
            }
            REG_QUEUE_DEVICE_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(v), None)
                }
            }
            REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(v))
                }
            }
            _ => tracing::trace!(offset, "write to read-only or unknown virtio-mmio register"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such.
        if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset % 4 == 0) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::testutil::memory;
    use std::sync::Mutex;

    /// A device that records what the transport tells it.
    #[derive(Default)]
    pub struct Probe {
        pub activated: Arc<Mutex<Option<(u64, usize)>>>,
        pub notified: Arc<Mutex<Vec<usize>>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn name(&self) -> &str {
            "probe"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            acked: u64,
            queues: Vec<Queue>,
            _i: Arc<Interrupt>,
        ) -> Result<(), String> {
            *self.activated.lock().unwrap() = Some((acked, queues.len()));
            Ok(())
        }
        fn reset(&mut self) {
            *self.activated.lock().unwrap() = None;
        }
        fn process_queue(&mut self, index: usize) {
            self.notified.lock().unwrap().push(index);
        }
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
        w(t, REG_QUEUE_SEL, sel);
        w(t, REG_QUEUE_NUM, size);
        w(t, REG_QUEUE_DESC_LOW, base as u32);
        w(t, REG_QUEUE_DESC_HIGH, (base >> 32) as u32);
        w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, 0);
        w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, 0);
        w(t, REG_QUEUE_READY, 1);
    }

    fn new_transport() -> (MmioTransport, Probe) {
        let probe = Probe::default();
        let dev = Probe {
            activated: probe.activated.clone(),
            notified: probe.notified.clone(),
        };
        let t = MmioTransport::new(Box::new(dev), memory(), EventFd::new(EFD_NONBLOCK).unwrap())
            .unwrap();
        (t, probe)
    }

    #[test]
    fn driver_init_sequence_activates_device() {
        let (mut t, probe) = new_transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1); // VERSION_1 is bit 32
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, REG_STATUS, 0xf);
        assert!(t.is_active());
        assert_eq!(
            *probe.activated.lock().unwrap(),
            Some((VIRTIO_F_VERSION_1 | 1, 2))
        );
        // Notifications go through the queue eventfd.
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
        t.notify(1);
        t.notify(7); // out of range: ignored
        assert_eq!(*probe.notified.lock().unwrap(), vec![1]);
        // Config space and its bounds.
        let mut d = [0u8; 4];
        t.read(CONFIG_SPACE + 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        t.read(CONFIG_SPACE + u64::MAX / 2, &mut d);
        assert_eq!(d, [0; 4]);
        // Reset.
        w(&mut t, REG_STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(*probe.activated.lock().unwrap(), None);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn bad_features_and_bad_queues_do_not_activate() {
        let (mut t, probe) = new_transport();
        // Accepting a feature we did not offer (bit 5), without VERSION_1.
        w(&mut t, REG_DRIVER_FEATURES, 1 << 5);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, REG_STATUS, 0);

        // Queue rings outside guest memory.
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        setup_queue(&mut t, 0, 16, 0x7fff_0000_0000);
        // A size that is not a power of two is refused by the queue.
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_QUEUE_NUM, 3);
        w(&mut t, REG_STATUS, 0xf);
        assert!(!t.is_active());
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_eq!(*probe.activated.lock().unwrap(), None);
        // Misaligned and wrongly sized register accesses are ignored.
        t.write(REG_STATUS + 1, &[1, 2, 3, 4]);
        t.write(REG_STATUS, &[1]);
        let mut d = [9u8; 2];
        t.read(REG_MAGIC, &mut d);
        assert_eq!(d, [0, 0]);
    }
}
