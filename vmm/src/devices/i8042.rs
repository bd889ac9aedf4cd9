//! A minimal i8042 keyboard controller on ports 0x60 and 0x64.
//!
//! It exists for one reason: Linux reboots (`reboot=k`) by pulsing the CPU
//! reset line through the controller (command 0xFE on port 0x64). That ends
//! the VM. The few controller commands the Linux driver sends while probing
//! are answered so that it does not wait for timeouts.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{BusDevice, VmEvents, VmmExit};

pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_RESET_CPU: u8 = 0xfe;

const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

/// The data port and the command port, each a one-byte bus range.
pub struct I8042 {
    events: Arc<VmEvents>,
    ctr: u8,
    status: u8,
    out: VecDeque<u8>,
    pending_cmd: Option<u8>,
}

impl I8042 {
    pub fn new(events: Arc<VmEvents>) -> Self {
        I8042 {
            events,
            ctr: 0x45,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            out: VecDeque::new(),
            pending_cmd: None,
        }
    }

    fn push(&mut self, b: u8) {
        if self.out.len() < 16 {
            self.out.push_back(b);
        }
    }

    fn status(&self) -> u8 {
        self.status | if self.out.is_empty() { 0 } else { SB_OUT_FULL }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_CMD;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR => self.pending_cmd = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_DISABLE_KBD => self.status &= !SB_KBD_ENABLED,
            CMD_ENABLE_KBD => self.status |= SB_KBD_ENABLED,
            CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => self.events.request_exit(VmmExit::Reset),
            _ => {}
        }
    }

    fn data(&mut self, b: u8) {
        self.status &= !SB_LAST_WAS_CMD;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.ctr = b,
            // A byte for the keyboard itself: acknowledge it.
            _ => self.push(0xfa),
        }
    }
}

/// Port-I/O range covering 0x60..=0x64; offsets 0 and 4 are the registers.
pub const PORT_BASE: u64 = DATA_PORT;
pub const PORT_LEN: u64 = COMMAND_PORT - DATA_PORT + 1;

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.out.pop_front().unwrap_or(0),
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match offset {
            0 => self.data(b),
            4 => self.command(b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let ev = Arc::new(VmEvents::new().unwrap());
        let mut dev = I8042::new(ev.clone());
        let mut s = [0u8];
        dev.read(4, &mut s);
        assert_eq!(s[0] & SB_OUT_FULL, 0);
        assert!(!ev.should_stop());
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(ev.exit_reason(), Some(VmmExit::Reset));
    }

    #[test]
    fn controller_config_round_trip() {
        let ev = Arc::new(VmEvents::new().unwrap());
        let mut dev = I8042::new(ev.clone());
        dev.write(4, &[CMD_WRITE_CTR]);
        dev.write(0, &[0x30]);
        dev.write(4, &[CMD_READ_CTR]);
        let mut s = [0u8];
        dev.read(4, &mut s);
        assert_ne!(s[0] & SB_OUT_FULL, 0);
        dev.read(0, &mut s);
        assert_eq!(s[0], 0x30);
        dev.write(4, &[CMD_SELF_TEST]);
        dev.read(0, &mut s);
        assert_eq!(s[0], 0x55);
        // The output buffer is bounded however much the guest asks.
        for _ in 0..1000 {
            dev.write(4, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.out.len(), 16);
        assert!(!ev.should_stop());
    }
}
