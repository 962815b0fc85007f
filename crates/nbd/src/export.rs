//! The `Export` trait served by the NBD server, plus memory- and file-backed exports.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::RwLock;

use crate::error::not_permitted;

/// One run of bytes with the same allocation state, as reported by [`Export::extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (extents of length 0 are ignored by the server).
    pub len: u64,
    /// The range reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
    /// The range is unallocated (`NBD_STATE_HOLE`).
    pub hole: bool,
}

impl Extent {
    /// An allocated extent holding data.
    pub fn data(len: u64) -> Self {
        Extent {
            len,
            zero: false,
            hole: false,
        }
    }

    /// An extent that reads as zeroes and is reported as a hole (`HOLE|ZERO`).
    pub fn zeroes(len: u64) -> Self {
        Extent {
            len,
            zero: true,
            hole: true,
        }
    }

    /// The `base:allocation` flags of this extent.
    pub fn flags(&self) -> u32 {
        (if self.hole {
            crate::proto::STATE_HOLE
        } else {
            0
        }) | (if self.zero {
            crate::proto::STATE_ZERO
        } else {
            0
        })
    }
}

/// Something the server can serve: a fixed-size, randomly readable block device.
///
/// All methods take `&self` and may be called from many threads at once.
/// Errors are mapped to NBD error numbers with [`crate::NbdErrno::from_io`]
/// (`PermissionDenied` → `EPERM`, `InvalidInput` → `EINVAL`, anything else → `EIO`).
pub trait Export: Send + Sync {
    /// Size of the export in bytes.
    fn size(&self) -> u64;

    /// Preferred I/O size; the server rounds it down to a power of two in [512, 32 MiB].
    fn preferred_block_size(&self) -> u32 {
        4096
    }

    /// Fill `buf` with the bytes at `offset`; the range is always inside the export.
    ///
    /// On success every byte of `buf` must have been written: the server hands in reused
    /// buffers that may still hold another reply's bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Allocation state of `[offset, offset + len)`, in order from `offset`.
    ///
    /// May cover less than `len` (the client asks again) but should cover at
    /// least one byte; anything past the range is ignored. Default: all data.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent::data(len)])
    }

    /// Prefetch hint for `[offset, offset + len)`. Default: nothing.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Whether writes are refused (advertised as `READ_ONLY`). Default: true.
    fn is_read_only(&self) -> bool {
        true
    }

    /// Whether every connection sees the same data (advertised as `CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> bool {
        true
    }

    /// Whether `trim` does something useful (advertised only for writable exports).
    fn can_trim(&self) -> bool {
        false
    }

    /// Whether `write_zeroes` is supported (advertised only for writable exports).
    fn can_write_zeroes(&self) -> bool {
        false
    }

    /// Write `buf` at `offset`; the range is always inside the export. Default: `EPERM`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let _ = (buf, offset);
        Err(not_permitted("write"))
    }

    /// Make every completed write durable. Default: nothing to do.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Discard `[offset, offset + len)` (contents become unspecified). Default: `EPERM`.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(not_permitted("trim"))
    }

    /// Make `[offset, offset + len)` read as zeroes; `may_trim` allows punching holes.
    /// Default: `EPERM`.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> io::Result<()> {
        let _ = (offset, len, may_trim);
        Err(not_permitted("write zeroes"))
    }
}

/// An export held in memory; optionally writable and with zero-extent reporting.
#[derive(Debug)]
pub struct MemoryExport {
    inner: RwLock<MemInner>,
    size: u64,
    writable: bool,
    preferred: u32,
}

#[derive(Debug)]
struct MemInner {
    data: Vec<u8>,
    /// Granularity of the zero map in bytes (0 = no zero reporting).
    granularity: u64,
    /// One entry per `granularity` block: true when the block is all zeroes.
    zero_blocks: Vec<bool>,
}

impl MemInner {
    fn block_is_zero(&self, i: usize) -> bool {
        let g = self.granularity as usize;
        let start = i.saturating_mul(g).min(self.data.len());
        let end = start.saturating_add(g).min(self.data.len());
        self.data[start..end].iter().all(|&b| b == 0)
    }

    fn rescan(&mut self, first: usize, last: usize) {
        for i in first..=last.min(self.zero_blocks.len().saturating_sub(1)) {
            let z = self.block_is_zero(i);
            if let Some(slot) = self.zero_blocks.get_mut(i) {
                *slot = z;
            }
        }
    }
}

impl MemoryExport {
    /// A read-only export over `data`, reporting everything as data.
    pub fn new(data: Vec<u8>) -> Self {
        let size = data.len() as u64;
        MemoryExport {
            inner: RwLock::new(MemInner {
                data,
                granularity: 0,
                zero_blocks: Vec::new(),
            }),
            size,
            writable: false,
            preferred: 4096,
        }
    }

    /// Report all-zero blocks of `granularity` bytes (a power of two ≥ 512 is sensible)
    /// as `HOLE|ZERO` extents, computed from the content.
    pub fn with_zero_extents(self, granularity: u32) -> Self {
        let mut inner = self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let g = u64::from(granularity.max(1));
        inner.granularity = g;
        let blocks = (inner.data.len() as u64).div_ceil(g) as usize;
        inner.zero_blocks = vec![false; blocks];
        if blocks > 0 {
            inner.rescan(0, blocks - 1);
        }
        MemoryExport {
            inner: RwLock::new(inner),
            ..self
        }
    }

    /// Allow writes, trim and write-zeroes (the data stays in memory).
    pub fn writable(mut self) -> Self {
        self.writable = true;
        self
    }

    /// Set the preferred block size advertised to clients.
    pub fn with_preferred_block_size(mut self, size: u32) -> Self {
        self.preferred = size;
        self
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.read_inner().data.clone()
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, MemInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, MemInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<(usize, usize)> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok((offset as usize, end as usize)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the export",
            )),
        }
    }

    fn modify(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8])) -> io::Result<()> {
        if !self.writable {
            return Err(not_permitted("write"));
        }
        let (start, end) = self.range(offset, len)?;
        let mut inner = self.write_inner();
        f(&mut inner.data[start..end]);
        if inner.granularity > 0 && end > start {
            let g = inner.granularity as usize;
            inner.rescan(start / g, (end - 1) / g);
        }
        Ok(())
    }
}

/// Most extents returned by one `MemoryExport::extents` call.
const MAX_MEMORY_EXTENTS: usize = 1 << 16;

impl Export for MemoryExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn preferred_block_size(&self) -> u32 {
        self.preferred
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let (start, end) = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.read_inner().data[start..end]);
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let (start, end) = self.range(offset, len)?;
        let inner = self.read_inner();
        if inner.granularity == 0 || start == end {
            return Ok(vec![Extent::data(len)]);
        }
        let g = inner.granularity as usize;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = start;
        while pos < end && out.len() < MAX_MEMORY_EXTENTS {
            let block = pos / g;
            let block_end = ((block + 1) * g).min(end);
            let zero = inner.zero_blocks.get(block).copied().unwrap_or(false);
            let n = (block_end - pos) as u64;
            match out.last_mut() {
                Some(last) if last.zero == zero => last.len += n,
                _ => out.push(Extent {
                    len: n,
                    zero,
                    hole: zero,
                }),
            }
            pos = block_end;
        }
        Ok(out)
    }

    fn is_read_only(&self) -> bool {
        !self.writable
    }

    fn can_trim(&self) -> bool {
        self.writable
    }

    fn can_write_zeroes(&self) -> bool {
        self.writable
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.modify(offset, buf.len() as u64, |d| d.copy_from_slice(buf))
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        // Trimmed contents are unspecified; keep them (a valid choice).
        self.modify(offset, len, |_| {})
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> io::Result<()> {
        self.modify(offset, len, |d| d.fill(0))
    }
}

/// A raw file (or block device) served with positioned reads and writes.
#[derive(Debug)]
pub struct FileExport {
    file: File,
    size: u64,
    writable: bool,
    preferred: u32,
}

impl FileExport {
    /// Open `path` read-only; the size is taken once, at open time.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::from_file(File::open(path)?, false)
    }

    /// Open `path` for reading and writing.
    pub fn open_writable(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file, true)
    }

    /// Serve an already-open file; `writable` requires it to be open for writing.
    pub fn from_file(file: File, writable: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            // Block devices report length 0 in metadata: seek to the end instead.
            use std::io::Seek;
            let mut f = &file;
            f.seek(io::SeekFrom::End(0))?
        };
        let blk = u32::try_from(meta.blksize()).unwrap_or(4096);
        Ok(FileExport {
            file,
            size,
            writable,
            preferred: if blk == 0 { 4096 } else { blk },
        })
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn preferred_block_size(&self) -> u32 {
        self.preferred
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn is_read_only(&self) -> bool {
        !self.writable
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(not_permitted("write"));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    fn can_write_zeroes(&self) -> bool {
        self.writable
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> io::Result<()> {
        if !self.writable {
            return Err(not_permitted("write zeroes"));
        }
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let n = (end - pos).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut d = vec![0u8; 8192 * 4];
        d[100] = 1; // block 0 data
        d[3 * 8192 + 5] = 7; // block 3 data
        d
    }

    #[test]
    fn memory_read_and_bounds() {
        let e = MemoryExport::new((0..=255u8).collect());
        let mut b = [0u8; 4];
        e.read_at(&mut b, 10).unwrap();
        assert_eq!(b, [10, 11, 12, 13]);
        assert!(e.read_at(&mut b, 254).is_err());
        assert!(e.read_at(&mut b, u64::MAX - 1).is_err());
        assert!(e.is_read_only());
        assert_eq!(
            e.write_at(&b, 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(e.extents(0, 256).unwrap(), vec![Extent::data(256)]);
    }

    #[test]
    fn memory_zero_extents() {
        let e = MemoryExport::new(sample()).with_zero_extents(8192);
        assert_eq!(
            e.extents(0, 4 * 8192).unwrap(),
            vec![
                Extent::data(8192),
                Extent::zeroes(2 * 8192),
                Extent::data(8192)
            ]
        );
        // partial ranges are clipped to the request
        assert_eq!(
            e.extents(8000, 400).unwrap(),
            vec![Extent::data(192), Extent::zeroes(208)]
        );
        assert_eq!(Extent::zeroes(1).flags(), 3);
        assert_eq!(Extent::data(1).flags(), 0);
    }

    #[test]
    fn memory_writes_update_zero_map() {
        let e = MemoryExport::new(sample())
            .with_zero_extents(8192)
            .writable();
        assert!(!e.is_read_only());
        e.write_at(&[9, 9], 8192 + 10).unwrap();
        assert_eq!(e.extents(8192, 8192).unwrap(), vec![Extent::data(8192)]);
        e.write_zeroes(0, 8192, true).unwrap();
        assert_eq!(e.extents(0, 8192).unwrap(), vec![Extent::zeroes(8192)]);
        let mut b = [0u8; 2];
        e.read_at(&mut b, 8192 + 10).unwrap();
        assert_eq!(b, [9, 9]);
        assert!(e.write_at(&[1], 4 * 8192).is_err());
    }

    #[test]
    fn file_export_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.raw");
        std::fs::write(&p, b"hello world").unwrap();
        let e = FileExport::open(&p).unwrap();
        assert_eq!(e.size(), 11);
        let mut b = [0u8; 5];
        e.read_at(&mut b, 6).unwrap();
        assert_eq!(&b, b"world");
        assert!(e.read_at(&mut b, 10).is_err());
        assert!(e.write_at(b"x", 0).is_err());
        let w = FileExport::open_writable(&p).unwrap();
        w.write_at(b"J", 0).unwrap();
        w.write_zeroes(1, 2, false).unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"J\0\0lo world");
    }
}
