//! Legacy devices on port I/O, the address buses the vCPU threads dispatch
//! to, and the shared state through which devices end the VM.

pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset (i8042 pulse, KVM system event).
    Reset,
    /// The guest kernel panicked.
    GuestPanic,
    /// A vCPU triple-faulted or KVM could not continue running it.
    GuestCrash(String),
    /// capsa-vmm failed while the VM ran.
    VmmError(String),
    /// SIGTERM/SIGINT.
    Terminated,
}

/// How many console lines are kept for error messages.
pub const CONSOLE_TAIL_LINES: usize = 20;
const MAX_LINE: usize = 512;

/// The last lines the guest printed on its console.
#[derive(Debug, Default)]
pub struct ConsoleTail {
    lines: VecDeque<String>,
    current: Vec<u8>,
}

impl ConsoleTail {
    /// Feeds console bytes; returns the lines completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in bytes {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.current)
                        .trim_end_matches('\r')
                        .to_string();
                    self.current.clear();
                    if self.lines.len() == CONSOLE_TAIL_LINES {
                        self.lines.pop_front();
                    }
                    self.lines.push_back(line.clone());
                    done.push(line);
                }
                _ if self.current.len() < MAX_LINE => self.current.push(b),
                _ => {}
            }
        }
        done
    }

    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lines.iter().cloned().collect();
        if !self.current.is_empty() {
            v.push(String::from_utf8_lossy(&self.current).to_string());
        }
        v
    }
}

/// State shared by the vCPU threads, the devices and the event loop:
/// the first exit reason wins and wakes the event loop.
pub struct VmEvents {
    exit: Mutex<Option<VmmExit>>,
    exit_evt: EventFd,
    /// Signalled when the kernel reports a panic, so the event loop can
    /// end the VM should the reset that normally follows never come.
    panic_evt: EventFd,
    panicked: AtomicBool,
    panic_line: Mutex<Option<String>>,
    console: Mutex<ConsoleTail>,
}

impl VmEvents {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmEvents {
            exit: Mutex::new(None),
            exit_evt: EventFd::new(EFD_NONBLOCK)?,
            panic_evt: EventFd::new(EFD_NONBLOCK)?,
            panicked: AtomicBool::new(false),
            panic_line: Mutex::new(None),
            console: Mutex::new(ConsoleTail::default()),
        })
    }

    /// Records why the VM must stop (first caller wins) and wakes the loop.
    pub fn request_exit(&self, why: VmmExit) {
        let mut guard = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        // A reset after a panic (panic=N reboots) is a panic.
        let why = if why == VmmExit::Reset && self.panicked.load(Ordering::SeqCst) {
            VmmExit::GuestPanic
        } else {
            why
        };
        if guard.is_none() {
            tracing::debug!(?why, "VM exit requested");
            *guard = Some(why);
        }
        drop(guard);
        let _ = self.exit_evt.write(1);
    }

    pub fn exit_reason(&self) -> Option<VmmExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn should_stop(&self) -> bool {
        self.exit_reason().is_some()
    }

    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }

    pub fn panic_evt(&self) -> &EventFd {
        &self.panic_evt
    }

    /// The kernel has reported a panic (it may still reset the VM).
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }

    /// Console bytes from the guest: kept for error messages and watched
    /// for kernel panics and power-off.
    pub fn console_output(&self, bytes: &[u8]) {
        let lines = self
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bytes);
        for line in lines {
            if line.contains("---[ end Kernel panic") {
                // panic=0: the kernel stops here and never resets.
                self.request_exit(VmmExit::GuestPanic);
            } else if let Some(i) = line.find("Kernel panic - not syncing") {
                // panic=N: a reset follows; it will be reported as a panic.
                self.panicked.store(true, Ordering::SeqCst);
                self.panic_line
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| line[i..].to_string());
                let _ = self.panic_evt.write(1);
            } else if line.contains("reboot: Power down") || line.contains("reboot: System halted")
            {
                // Without ACPI the kernel has no way to turn the machine
                // off: `poweroff` becomes a halt (Linux 6.1 prints "System
                // halted", older ones "Power down") and the CPUs stop for
                // good. That line is its last word.
                self.request_exit(VmmExit::PowerOff);
            }
        }
    }

    /// The kernel's "Kernel panic - not syncing: ..." line, if it printed one.
    pub fn panic_line(&self) -> Option<String> {
        self.panic_line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn console_tail(&self) -> Vec<String> {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_keeps_last_lines_and_bounds_length() {
        let mut t = ConsoleTail::default();
        for i in 0..30 {
            t.push(format!("line {i}\r\n").as_bytes());
        }
        t.push(&vec![b'x'; 10_000]);
        let l = t.lines();
        assert_eq!(l.len(), CONSOLE_TAIL_LINES + 1);
        assert_eq!(l[0], "line 10");
        assert_eq!(l[CONSOLE_TAIL_LINES - 1], "line 29");
        assert_eq!(l[CONSOLE_TAIL_LINES].len(), MAX_LINE);
    }

    #[test]
    fn panic_then_reset_is_a_panic() {
        let ev = VmEvents::new().unwrap();
        ev.console_output(b"[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n");
        assert!(!ev.should_stop());
        assert_eq!(
            ev.panic_line().as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root fs")
        );
        assert_eq!(ev.panic_evt().read().unwrap(), 1, "the event loop is told");
        assert!(ev.panicked());
        ev.request_exit(VmmExit::Reset);
        assert_eq!(ev.exit_reason(), Some(VmmExit::GuestPanic));
        assert_eq!(ev.exit_evt().read().unwrap(), 1);
    }

    #[test]
    fn halt_without_acpi_is_a_power_off() {
        let ev = VmEvents::new().unwrap();
        ev.console_output(b"[    2.1] reboot: System halted\r\n");
        assert_eq!(ev.exit_reason(), Some(VmmExit::PowerOff));
    }

    #[test]
    fn first_exit_reason_wins() {
        let ev = VmEvents::new().unwrap();
        ev.console_output(b"reboot: Power down\n");
        ev.request_exit(VmmExit::Terminated);
        assert_eq!(ev.exit_reason(), Some(VmmExit::PowerOff));
    }
}
