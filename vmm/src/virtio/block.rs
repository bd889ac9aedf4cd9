//! virtio-blk backed by a host file (virtio 1.1 section 5.2).
//!
//! Supported requests: read (IN), write (OUT), flush, get ID, and on a
//! writable disk discard (the file's blocks are given back with a punched
//! hole, so a container's writable disk shrinks as the guest frees
//! space). A read-only disk offers VIRTIO_BLK_F_RO and fails writes with
//! IOERR. Every request is
//! parsed through virtio-queue's bounds-checked `Reader`/`Writer` over the
//! descriptor chain; malformed requests complete with an error status (or,
//! when there is no room for a status byte at all, with nothing written).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    virtio_blk_discard_write_zeroes, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{read_config_bytes, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
const CHUNK: usize = 64 * 1024;
/// Ranges one discard request may carry, and the sectors in each.
const MAX_DISCARD_SEG: u32 = 32;
const MAX_DISCARD_SECTORS: u32 = (1 << 22) - 1;
/// Offsets in virtio_blk_config (virtio 1.1 section 5.2.4).
const CONFIG_MAX_DISCARD_SECTORS: usize = 36;
const CONFIG_LEN: usize = 48;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct RequestHeader {
    pub type_: u32,
    pub reserved: u32,
    pub sector: u64,
}
// SAFETY: plain old data, no padding (u32, u32, u64).
unsafe impl ByteValued for RequestHeader {}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

pub struct Block {
    name: String,
    file: File,
    read_only: bool,
    size: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    bounce: Vec<u8>,
}

impl Block {
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Block> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let md = file.metadata()?;
        if !md.is_file() && !md.file_type().is_block_device_like() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        // Size through seek, which also works for block devices.
        let size = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0))?
        };
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let s = format!("capsa{:x}{:x}", md.dev(), md.ino());
        let n = s.len().min(id.len());
        id[..n].copy_from_slice(&s.as_bytes()[..n]);
        let sectors = size / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&sectors.to_le_bytes());
        // max_discard_sectors, max_discard_seg, discard_sector_alignment
        // (4 KiB, a page of the host's file).
        let discard = [MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 8];
        for (i, v) in discard.iter().enumerate() {
            let at = CONFIG_MAX_DISCARD_SECTORS + 4 * i;
            config[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        Ok(Block {
            name: format!("virtio-blk {}", path.display()),
            file,
            read_only,
            size: sectors * SECTOR_SIZE,
            id,
            config,
            active: None,
            bounce: vec![0u8; CHUNK],
        })
    }

    /// The serial number returned by GET_ID (NUL padded).
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    fn check_range(&self, sector: u64, len: usize) -> Option<u64> {
        if len as u64 % SECTOR_SIZE != 0 {
            return None;
        }
        let off = sector.checked_mul(SECTOR_SIZE)?;
        let end = off.checked_add(len as u64)?;
        (end <= self.size).then_some(off)
    }

    /// Executes one request; returns the number of bytes written into the
    /// chain's device-writable buffers (the used length).
    fn execute(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) => (r, w),
            _ => return 0,
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            // Nowhere to put the status byte.
            return 0;
        }
        let Ok(mut status_w) = writer.split_at(writable - 1) else {
            return 0;
        };
        let status = match reader.read_obj::<RequestHeader>() {
            Ok(h) => self.handle(h, &mut reader, &mut writer),
            Err(_) => VIRTIO_BLK_S_IOERR,
        };
        if status_w.write_all(&[status as u8]).is_err() {
            return writer.bytes_written() as u32;
        }
        (writer.bytes_written() + 1) as u32
    }

    fn handle(
        &mut self,
        h: RequestHeader,
        reader: &mut virtio_queue::Reader<'_>,
        writer: &mut virtio_queue::Writer<'_>,
    ) -> u32 {
        let result: std::io::Result<u32> = match h.type_ {
            VIRTIO_BLK_T_IN => {
                let len = writer.available_bytes();
                let Some(mut off) = self.check_range(h.sector, len) else {
                    return VIRTIO_BLK_S_IOERR;
                };
                let mut left = len;
                (|| {
                    while left > 0 {
                        let n = left.min(CHUNK);
                        self.file.read_exact_at(&mut self.bounce[..n], off)?;
                        writer.write_all(&self.bounce[..n])?;
                        off += n as u64;
                        left -= n;
                    }
                    Ok(VIRTIO_BLK_S_OK)
                })()
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return VIRTIO_BLK_S_IOERR;
                }
                let len = reader.available_bytes();
                let Some(mut off) = self.check_range(h.sector, len) else {
                    return VIRTIO_BLK_S_IOERR;
                };
                let mut left = len;
                (|| {
                    while left > 0 {
                        let n = left.min(CHUNK);
                        reader.read_exact(&mut self.bounce[..n])?;
                        self.file.write_all_at(&self.bounce[..n], off)?;
                        off += n as u64;
                        left -= n;
                    }
                    Ok(VIRTIO_BLK_S_OK)
                })()
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    Ok(VIRTIO_BLK_S_OK)
                } else {
                    self.file.sync_data().map(|_| VIRTIO_BLK_S_OK)
                }
            }
            VIRTIO_BLK_T_DISCARD => {
                if self.read_only {
                    return VIRTIO_BLK_S_IOERR;
                }
                self.discard(reader)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = writer.available_bytes().min(self.id.len());
                writer.write_all(&self.id[..n]).map(|_| VIRTIO_BLK_S_OK)
            }
            _ => Ok(VIRTIO_BLK_S_UNSUPP),
        };
        result.unwrap_or_else(|e| {
            tracing::debug!(dev = %self.name, "request failed: {e}");
            VIRTIO_BLK_S_IOERR
        })
    }

    /// DISCARD: each range (sector, count; no flags) is checked against the
    /// disk before any is punched.
    fn discard(&mut self, reader: &mut virtio_queue::Reader<'_>) -> std::io::Result<u32> {
        let seg = std::mem::size_of::<virtio_blk_discard_write_zeroes>();
        let n = reader.available_bytes() / seg;
        if n == 0 || n > MAX_DISCARD_SEG as usize || reader.available_bytes() % seg != 0 {
            return Ok(VIRTIO_BLK_S_IOERR);
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            let mut raw = [0u8; 16];
            reader.read_exact(&mut raw)?;
            let sector = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
            let count = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(raw[12..].try_into().unwrap_or_default());
            if flags != 0 {
                return Ok(VIRTIO_BLK_S_UNSUPP);
            }
            let len = u64::from(count) * SECTOR_SIZE;
            match self.check_range(sector, len as usize) {
                Some(off) if count <= MAX_DISCARD_SECTORS => ranges.push((off, len)),
                _ => return Ok(VIRTIO_BLK_S_IOERR),
            }
        }
        for (off, len) in ranges {
            punch_hole(&self.file, off, len)?;
        }
        Ok(VIRTIO_BLK_S_OK)
    }

    fn process(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let mut used_any = false;
        // At most one pass over the ring per notification: the guest
        // cannot keep us here forever by refilling it.
        for _ in 0..a.queue.size() {
            let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.execute(&a.mem, chain);
            if let Err(e) = a.queue.add_used(&a.mem, head, len) {
                tracing::warn!(dev = %self.name, "add_used: {e:?}");
                break;
            }
            used_any = true;
        }
        if used_any && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        self.active = Some(a);
    }
}

/// Gives the range's blocks back to the host's filesystem; it reads as
/// zeros, and the file keeps its size.
fn punch_hole(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: fallocate on a descriptor we own, with plain integers.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

trait FileTypeExt {
    fn is_block_device_like(&self) -> bool;
}
impl FileTypeExt for std::fs::FileType {
    fn is_block_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt as _;
        self.is_block_device()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked: u64,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        let queue = queues
            .pop()
            .filter(|q| q.ready())
            .ok_or("request queue not ready")?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn process_queue(&mut self, index: usize) {
        if index == 0 {
            self.process();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::memory;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    struct Rig {
        mem: GuestMemoryMmap,
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        dev: Block,
        irq: Arc<Interrupt>,
    }

    fn rig(read_only: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let content: Vec<u8> = (0..8 * 512u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, content).unwrap();
        Rig {
            mem: memory(),
            dev: Block::open(&path, read_only).unwrap(),
            path,
            _dir: dir,
            irq: Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        }
    }

    fn d(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    /// Runs one chain through the device; returns (used len, status byte).
    fn run(r: &mut Rig, descs: &[RawDescriptor]) -> (u32, u8) {
        r.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(&r.mem, 16);
        vq.build_desc_chain(descs).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        r.dev.reset();
        r.dev
            .activate(r.mem.clone(), 0, vec![q], r.irq.clone())
            .unwrap();
        r.dev.process_queue(0);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(vq.used().idx().load(), 1, "request was not completed");
        (
            used.len(),
            r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        )
    }

    fn header(r: &Rig, type_: u32, sector: u64) {
        r.mem
            .write_obj(
                RequestHeader {
                    type_,
                    reserved: 0,
                    sector,
                },
                GuestAddress(HDR),
            )
            .unwrap();
    }

    fn rw(r: &mut Rig, type_: u32, sector: u64, len: u32) -> (u32, u8) {
        header(r, type_, sector);
        let data_flags = if type_ == VIRTIO_BLK_T_OUT {
            0
        } else {
            VRING_DESC_F_WRITE
        };
        run(
            r,
            &[
                d(HDR, 16, 0),
                d(DATA, len, data_flags),
                d(STATUS, 1, VRING_DESC_F_WRITE),
            ],
        )
    }

    #[test]
    fn read_write_flush_get_id() {
        let mut r = rig(false);
        assert_eq!(r.dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mut cap = [0u8; 8];
        r.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);

        // Read sectors 2..4.
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_IN, 2, 1024),
            (1025, VIRTIO_BLK_S_OK as u8)
        );
        let mut buf = vec![0u8; 1024];
        r.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        let expect: Vec<u8> = (1024..2048u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf, expect);
        assert_ne!(r.irq.status() & crate::virtio::INT_VRING, 0);

        // Write sector 7.
        r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_OUT, 7, 512),
            (1, VIRTIO_BLK_S_OK as u8)
        );
        let file = std::fs::read(&r.path).unwrap();
        assert_eq!(&file[7 * 512..], &[0xab; 512][..]);
        assert_eq!(file[7 * 512 - 1], ((7 * 512 - 1) % 251) as u8);

        // Flush.
        header(&r, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            run(&mut r, &[d(HDR, 16, 0), d(STATUS, 1, VRING_DESC_F_WRITE)]),
            (1, VIRTIO_BLK_S_OK as u8)
        );

        // Get ID.
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_GET_ID, 0, 20),
            (21, VIRTIO_BLK_S_OK as u8)
        );
        let mut id = [0u8; 20];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, r.dev.id());
        assert!(id.starts_with(b"capsa"));

        // Unknown request type.
        assert_eq!(rw(&mut r, 99, 0, 512), (1, VIRTIO_BLK_S_UNSUPP as u8));
    }

    /// DISCARD punches a hole: the range reads as zeros and the file's
    /// blocks go back to the host; a bad range, flags or a read-only disk
    /// are refused and change nothing.
    #[test]
    fn discard_gives_blocks_back() {
        use std::os::unix::fs::MetadataExt;
        let mut r = rig(false);
        assert_ne!(r.dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let mut max = [0u8; 4];
        r.dev
            .read_config(CONFIG_MAX_DISCARD_SECTORS as u64 + 4, &mut max);
        assert_eq!(u32::from_le_bytes(max), MAX_DISCARD_SEG);
        std::fs::write(&r.path, vec![0x5a; 256 * 1024]).unwrap();
        r.dev = Block::open(&r.path, false).unwrap();
        let path = r.path.clone();
        let blocks = || std::fs::metadata(&path).unwrap().blocks();
        let before = blocks();
        let discard = |r: &mut Rig, segs: &[(u64, u32, u32)]| {
            header(r, VIRTIO_BLK_T_DISCARD, 0);
            let mut raw = Vec::new();
            for (sector, count, flags) in segs {
                raw.extend_from_slice(&sector.to_le_bytes());
                raw.extend_from_slice(&count.to_le_bytes());
                raw.extend_from_slice(&flags.to_le_bytes());
            }
            r.mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
            let descs = [
                d(HDR, 16, 0),
                d(DATA, raw.len() as u32, 0),
                d(STATUS, 1, VRING_DESC_F_WRITE),
            ];
            run(r, &descs).1
        };
        // 128 KiB from 64 KiB on, in two ranges.
        let ok = discard(&mut r, &[(128, 128, 0), (256, 128, 0)]);
        assert_eq!(ok, VIRTIO_BLK_S_OK as u8);
        let file = std::fs::read(&r.path).unwrap();
        assert_eq!(file.len(), 256 * 1024, "the size is kept");
        assert!(file[64 * 1024..192 * 1024].iter().all(|b| *b == 0));
        assert!(file[..64 * 1024]
            .iter()
            .chain(&file[192 * 1024..])
            .all(|b| *b == 0x5a));
        assert!(blocks() < before, "blocks {} -> {}", before, blocks());

        let beyond = discard(&mut r, &[(500, 20, 0)]);
        assert_eq!(beyond, VIRTIO_BLK_S_IOERR as u8);
        let flagged = discard(&mut r, &[(0, 8, 1)]);
        assert_eq!(flagged, VIRTIO_BLK_S_UNSUPP as u8);
        assert_eq!(&std::fs::read(&r.path).unwrap()[..4096], &[0x5a; 4096][..]);

        let mut ro = rig(true);
        assert_eq!(ro.dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(discard(&mut ro, &[(0, 8, 0)]), VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn read_only_disk_rejects_writes() {
        let mut r = rig(true);
        assert_ne!(r.dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let before = std::fs::read(&r.path).unwrap();
        r.mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_OUT, 0, 512),
            (1, VIRTIO_BLK_S_IOERR as u8)
        );
        assert_eq!(std::fs::read(&r.path).unwrap(), before);
        // Reads still work.
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_IN, 0, 512),
            (513, VIRTIO_BLK_S_OK as u8)
        );
    }

    #[test]
    fn out_of_range_and_misaligned_requests_fail() {
        let mut r = rig(false);
        // Past the end of the disk.
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_IN, 7, 1024).1,
            VIRTIO_BLK_S_IOERR as u8
        );
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_OUT, 8, 512).1,
            VIRTIO_BLK_S_IOERR as u8
        );
        // Sector number that overflows when turned into bytes.
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_IN, u64::MAX / 2, 512).1,
            VIRTIO_BLK_S_IOERR as u8
        );
        // Not a multiple of the sector size.
        assert_eq!(
            rw(&mut r, VIRTIO_BLK_T_IN, 0, 100).1,
            VIRTIO_BLK_S_IOERR as u8
        );
    }

    #[test]
    fn malformed_chains_never_touch_memory_outside_guest() {
        let mut r = rig(false);
        header(&r, VIRTIO_BLK_T_IN, 0);
        // Data buffer outside guest memory: the chain is rejected, nothing written.
        let (len, status) = run(
            &mut r,
            &[
                d(HDR, 16, 0),
                d(0x7fff_ffff_0000, 512, VRING_DESC_F_WRITE),
                d(STATUS, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!((len, status), (0, 0xee));
        // Buffer straddling the end of guest memory.
        let (len, _) = run(
            &mut r,
            &[
                d(HDR, 16, 0),
                d(0x40_0000 - 256, 512, VRING_DESC_F_WRITE),
                d(STATUS, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!(len, 0);
        // Header too short.
        let (len, status) = run(&mut r, &[d(HDR, 8, 0), d(STATUS, 1, VRING_DESC_F_WRITE)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        // Missing status descriptor (no writable buffer at all).
        let (len, status) = run(&mut r, &[d(HDR, 16, 0), d(DATA, 512, 0)]);
        assert_eq!((len, status), (0, 0xee));
        // Zero-length descriptors: the zero-length data buffer is a 0-byte read.
        let (len, status) = run(
            &mut r,
            &[
                d(HDR, 16, 0),
                d(DATA, 0, VRING_DESC_F_WRITE),
                d(STATUS, 1, VRING_DESC_F_WRITE),
            ],
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let (len, _) = run(&mut r, &[d(HDR, 0, 0), d(STATUS, 0, VRING_DESC_F_WRITE)]);
        assert_eq!(len, 0);
    }

    #[test]
    fn looping_chain_terminates() {
        let mut r = rig(false);
        header(&r, VIRTIO_BLK_T_IN, 0);
        r.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(&r.mem, 16);
        // 0 -> 1 -> 0 -> 1 ... : descriptors written by hand so `next` loops.
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                DATA,
                512,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        r.dev
            .activate(r.mem.clone(), 0, vec![q], r.irq.clone())
            .unwrap();
        r.dev.process_queue(0);
        // The chain was consumed (bounded walk) and completed with some
        // status; the device is still usable afterwards.
        assert_eq!(vq.used().idx().load(), 1);
        let mut r2 = rig(false);
        assert_eq!(
            rw(&mut r2, VIRTIO_BLK_T_IN, 0, 512).1,
            VIRTIO_BLK_S_OK as u8
        );
    }

    #[test]
    fn avail_index_beyond_queue_size_is_ignored() {
        let mut r = rig(false);
        let vq = MockSplitQueue::new(&r.mem, 16);
        // The driver claims 1000 new buffers in a 16-entry ring.
        vq.avail().idx().store(1000);
        let q: Queue = vq.create_queue().unwrap();
        r.dev
            .activate(r.mem.clone(), 0, vec![q], r.irq.clone())
            .unwrap();
        r.dev.process_queue(0);
        assert_eq!(vq.used().idx().load(), 0);
    }
}
