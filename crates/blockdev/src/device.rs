//! The block-device trait and the extents it reports.

use std::io;

use crate::error::read_only;

/// One run of bytes with the same allocation state, as reported by [`BlockDevice::extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (consumers ignore extents of length 0).
    pub len: u64,
    /// The range reads as zeroes.
    pub zero: bool,
    /// The range is unallocated (a hole: nothing stored for it).
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

    /// An extent that reads as zeroes and is stored as a hole.
    pub fn zeroes(len: u64) -> Self {
        Extent {
            len,
            zero: true,
            hole: true,
        }
    }
}

/// A fixed-size, randomly readable block device: an image, a raw file, memory, an overlay.
///
/// All methods take `&self` and may be called from many threads at once. Errors are
/// [`io::Error`]s whose kind says what a client should see: `InvalidInput` for a bad range,
/// `PermissionDenied` for a write to a read-only device, anything else is an I/O error
/// (see [`crate::ErrorKind::io_kind`]).
pub trait BlockDevice: Send + Sync {
    /// Size of the device in bytes.
    fn size(&self) -> u64;

    /// Preferred I/O size in bytes (consumers round it to a power of two they accept).
    fn preferred_block_size(&self) -> u32 {
        4096
    }

    /// Fill `buf` with the bytes at `offset`; callers keep the range inside the device.
    ///
    /// On success every byte of `buf` must have been written: callers hand in reused
    /// buffers that may still hold other bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Allocation state of `[offset, offset + len)`, in order from `offset`.
    ///
    /// May cover less than `len` (the caller asks again) but should cover at least one byte;
    /// anything past the range is ignored. Default: all data.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent::data(len)])
    }

    /// Prefetch hint for `[offset, offset + len)`. Default: nothing.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Whether writes are refused. Default: true.
    fn is_read_only(&self) -> bool {
        true
    }

    /// Whether every user sees the same data at the same time (NBD's multi-conn).
    fn can_multi_conn(&self) -> bool {
        true
    }

    /// Whether `trim` does something useful (only asked of writable devices).
    fn can_trim(&self) -> bool {
        false
    }

    /// Whether `write_zeroes` is supported (only asked of writable devices).
    fn can_write_zeroes(&self) -> bool {
        false
    }

    /// Write `buf` at `offset`; callers keep the range inside the device. Default: refused.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let _ = (buf, offset);
        Err(read_only("write"))
    }

    /// Make every completed write durable. Default: nothing to do.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Discard `[offset, offset + len)` (contents become unspecified). Default: refused.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(read_only("trim"))
    }

    /// Make `[offset, offset + len)` read as zeroes; `may_trim` allows punching holes.
    /// Default: refused.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> io::Result<()> {
        let _ = (offset, len, may_trim);
        Err(read_only("write zeroes"))
    }
}
