//! An address bus: ranges mapped to devices. One for port I/O, one for MMIO.

use std::sync::{Arc, Mutex};

/// A device reached through a bus. `offset` is relative to the start of
/// the range it was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Clone)]
struct Range {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Clone, Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn new() -> Self {
        Bus::default()
    }

    /// Maps `[base, base+len)` to `dev`. Overlapping ranges are refused.
    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), String> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| format!("bad bus range {base:#x}+{len:#x}"))?;
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(format!("bus range {base:#x}+{len:#x} overlaps"));
        }
        self.ranges.push(Range { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        self.ranges.iter().find_map(|r| {
            let off = addr.checked_sub(r.base)?;
            (off < r.len && off + size as u64 <= r.len).then_some((r, off))
        })
    }

    /// Reads from the device at `addr`; unmapped addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, off)) => {
                r.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; writes to unmapped addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, off)) => {
                r.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatch_overlap_and_unmapped() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(1))), 0x10, 4).unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Reg(1))), 0x12, 4).is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Reg(1))), u64::MAX, 4)
            .is_err());
        let mut d = [0u8; 1];
        assert!(bus.read(0x12, &mut d));
        assert_eq!(d, [3]);
        assert!(bus.write(0x10, &[9]));
        assert!(bus.read(0x10, &mut d));
        assert_eq!(d, [9]);
        // Straddling the end of a range is not a hit.
        let mut d4 = [0u8; 4];
        assert!(!bus.read(0x12, &mut d4));
        assert_eq!(d4, [0xff; 4]);
        assert!(!bus.write(0x20, &[1]));
    }
}
