//! COM1: a 16550A UART (vm-superio) on ports 0x3f8-0x3ff, IRQ 4.
//!
//! Output goes to the configured sink and into [`VmEvents`], which keeps the
//! last console lines for error messages and watches for kernel panics.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{BusDevice, VmEvents};

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;

/// Raises an interrupt line by writing to an eventfd registered as a KVM
/// irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest console goes.
pub struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
    events: Arc<VmEvents>,
}

impl ConsoleWriter {
    pub fn new(sink: Option<Box<dyn Write + Send>>, events: Arc<VmEvents>) -> Self {
        ConsoleWriter { sink, events }
    }

    /// The process's standard output, unbuffered.
    pub fn stdout_sink() -> io::Result<Box<dyn Write + Send>> {
        use std::os::fd::AsFd;
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Box::new(File::from(fd)))
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.events.console_output(buf);
        if let Some(s) = self.sink.as_mut() {
            // A console nobody reads (closed pipe, full disk) must not stop
            // the guest: the byte is dropped.
            let _ = s.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            if let Err(e) = self.uart.write(offset as u8, data[0]) {
                tracing::trace!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_sink_tail_and_raises_irq() {
        let events = Arc::new(VmEvents::new().unwrap());
        let sink = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            ConsoleWriter::new(Some(Box::new(sink.clone())), events.clone()),
        );
        // Enable the THR-empty interrupt, then write "hi\n" through THR.
        dev.write(1, &[0x02]);
        for b in b"hi\nthere" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\nthere");
        assert_eq!(
            events.console_tail(),
            vec!["hi".to_string(), "there".to_string()]
        );
        assert!(irq.read().unwrap() >= 1);
        // LSR: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Wrong-size accesses are ignored, not fatal.
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        dev.write(0, &[1, 2]);
        assert_eq!(sink.0.lock().unwrap().len(), 8);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let events = Arc::new(VmEvents::new().unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, ConsoleWriter::new(None, events));
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        let mut d = [0u8];
        dev.read(0, &mut d);
        assert_eq!(d[0], b'a');
        dev.read(0, &mut d);
        assert_eq!(d[0], b'b');
    }

    #[test]
    fn kernel_panic_on_console_is_noticed() {
        let events = Arc::new(VmEvents::new().unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, ConsoleWriter::new(None, events.clone()));
        for b in b"Kernel panic - not syncing: Attempted to kill init!\n---[ end Kernel panic - not syncing ]---\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(
            events.exit_reason(),
            Some(super::super::VmmExit::GuestPanic)
        );
    }
}
