//! A block device held in memory, optionally writable, optionally reporting zero extents.

use std::io;
use std::sync::RwLock;

use crate::device::{BlockDevice, Extent};
use crate::error::read_only;

/// A device held in memory; optionally writable and with zero-extent reporting.
#[derive(Debug)]
pub struct MemoryDevice {
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

impl MemoryDevice {
    /// A read-only device over `data`, reporting everything as data.
    pub fn new(data: Vec<u8>) -> Self {
        let size = data.len() as u64;
        MemoryDevice {
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
        MemoryDevice {
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
                "range outside the device",
            )),
        }
    }

    fn modify(&self, offset: u64, len: u64, f: impl FnOnce(&mut [u8])) -> io::Result<()> {
        if !self.writable {
            return Err(read_only("write"));
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

/// Most extents returned by one `MemoryDevice::extents` call.
const MAX_MEMORY_EXTENTS: usize = 1 << 16;

impl BlockDevice for MemoryDevice {
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
        let e = MemoryDevice::new((0..=255u8).collect());
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
        let e = MemoryDevice::new(sample()).with_zero_extents(8192);
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
    }

    #[test]
    fn memory_writes_update_zero_map() {
        let e = MemoryDevice::new(sample())
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
}
