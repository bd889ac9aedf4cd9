//! A file that "reads" into guest memory by mapping its pages there
//! copy-on-write instead of copying them.
//!
//! linux-loader copies every PT_LOAD segment of the kernel into guest
//! memory; for a 14 MiB kernel that copy (and the page faults behind it) was
//! most of the time from exec to the first KVM_RUN. Mapping the file's pages
//! privately costs one mmap per segment: the guest faults in the pages it
//! touches from the page cache, and the first write to a page gives the
//! guest its own copy, so the file is never changed. The file must not be
//! truncated while the VM runs (its pages would vanish under the guest);
//! capsa's kernel and initramfs are immutable cache entries.
//!
//! Only files on local file systems are mapped; others are copied as
//! linux-loader would. Guest memory backed by a 9p file crashed the KVM
//! test host's kernel (a kernel stack overflow in the vCPU thread's fault
//! path), and a network file can change under the guest.
//!
//! Nor are they mapped on a CPU emulated by qemu's TCG (see `crate::tcg`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const PAGE: usize = 4096;

/// Wraps a file for linux-loader (`Read + Seek + ReadVolatile`).
pub struct CowFile {
    file: File,
    size: u64,
    /// Whether the file's pages may back guest memory (see the module doc).
    mappable: bool,
    /// Bytes mapped rather than copied, for the debug log and tests.
    pub mapped: usize,
}

impl CowFile {
    pub fn new(file: File) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        let mappable = on_local_fs(&file)? && !crate::tcg::emulated();
        Ok(Self {
            file,
            size,
            mappable,
            mapped: 0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Maps the whole pages at the start of `buf` from the file's current
    /// position; returns how many bytes it mapped (0 when the file offset
    /// and the destination are not both page aligned).
    fn map_pages<B: BitmapSlice>(&mut self, buf: &VolatileSlice<B>) -> std::io::Result<usize> {
        let pos = self.file.stream_position()?;
        let guard = buf.ptr_guard_mut();
        let dst = guard.as_ptr();
        // Only pages wholly inside the file: touching a mapped page past
        // its end would be SIGBUS, not zeros.
        let in_file = usize::try_from(self.size.saturating_sub(pos)).unwrap_or(usize::MAX);
        let len = buf.len().min(in_file) & !(PAGE - 1);
        if !self.mappable || len == 0 || dst as usize % PAGE != 0 || pos % PAGE as u64 != 0 {
            return Ok(0);
        }
        let Ok(offset) = libc::off_t::try_from(pos) else {
            return Ok(0);
        };
        // SAFETY: `dst..dst+len` lies inside guest memory that vm-memory
        // mapped and owns (the VolatileSlice guarantees the bounds);
        // MAP_FIXED replaces those anonymous pages with private file pages,
        // which vm-memory unmaps with the rest of the region.
        let p = unsafe {
            libc::mmap(
                dst.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            // A file system without mmap: fall back to copying.
            return Ok(0);
        }
        buf.bitmap().mark_dirty(0, len);
        self.file.seek(SeekFrom::Start(pos + len as u64))?;
        self.mapped += len;
        Ok(len)
    }
}

/// Local disk and memory file systems, whose page cache is plain memory.
fn on_local_fs(file: &File) -> std::io::Result<bool> {
    const EXT4: i64 = 0xef53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683e;
    const TMPFS: i64 = 0x0102_1994;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct,
    // and fstatfs only writes into the struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the descriptor is open for the call's duration.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(matches!(st.f_type as i64, EXT4 | XFS | BTRFS | TMPFS))
}

impl Read for CowFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for CowFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for CowFile {
    /// Fills all of `buf` unless the file ends first: vm-memory's
    /// `read_exact_volatile_from` treats a short read as an error.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mapped = self.map_pages(buf).map_err(VolatileMemoryError::IOError)?;
        let mut done = mapped;
        while done < buf.len() {
            let n = self.file.read_volatile(&mut buf.offset(done)?)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// tmpfs, so that the files are mappable wherever the tests run.
    fn local_dir() -> tempfile::TempDir {
        tempfile::tempdir_in("/dev/shm").expect("a temporary directory in /dev/shm")
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn aligned_pages_are_mapped_and_the_tail_copied() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dir = local_dir();
        let path = dir.path().join("k");
        let data = pattern(3 * PAGE + 100);
        std::fs::write(&path, &data).unwrap();

        let mut f = CowFile::new(File::open(&path).unwrap()).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x4000), &mut f, data.len())
            .unwrap();
        assert_eq!(f.mapped, 3 * PAGE);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
        assert_eq!(back, data);
        // Bytes after the copied tail stay zero, as a segment's bss needs.
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x4000 + 3 * 4096 + 100))
                .unwrap(),
            0
        );

        // Guest writes land in private copies: the file is unchanged.
        mem.write_obj(0xffu8, GuestAddress(0x4000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x4000)).unwrap(), 0xff);
    }

    #[test]
    fn only_local_file_systems_are_mapped() {
        let dir = local_dir();
        let path = dir.path().join("k");
        std::fs::write(&path, pattern(PAGE)).unwrap();
        assert!(on_local_fs(&File::open(&path).unwrap()).unwrap());
        // procfs stands in for 9p, NFS, FUSE and overlays here.
        assert!(!on_local_fs(&File::open("/proc/self/status").unwrap()).unwrap());
    }

    #[test]
    fn unaligned_reads_are_copied() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dir = local_dir();
        let path = dir.path().join("k");
        let data = pattern(5 * PAGE);
        std::fs::write(&path, &data).unwrap();

        let mut f = CowFile::new(File::open(&path).unwrap()).unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x2000), &mut f, 4 * PAGE)
            .unwrap();
        assert_eq!(f.mapped, 0);
        let mut back = vec![0u8; 4 * PAGE];
        mem.read_slice(&mut back, GuestAddress(0x2000)).unwrap();
        assert_eq!(back, data[10..10 + 4 * PAGE]);
    }

    #[test]
    fn a_short_file_is_a_short_read() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dir = local_dir();
        let path = dir.path().join("k");
        std::fs::write(&path, pattern(PAGE + 10)).unwrap();
        let mut f = CowFile::new(File::open(&path).unwrap()).unwrap();
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0), &mut f, 3 * PAGE)
            .is_err());
        // Only the page inside the file was mapped; the rest reads as zeros.
        assert_eq!(f.mapped, PAGE);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(2 * PAGE as u64)).unwrap(),
            0
        );
    }
}
