//! The opened image: its public face, from what it is made of to reads of blocks and extents.
//! The shared parts and the block lookup live in [`crate::image_core`].

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use mkmodule_blockdev::Extent;
use mkmodule_format::{BlockIndex, Dialect, Layout, Trailer};

use crate::cache::{Block, CacheStats};
use crate::image_core::Core;
use crate::readahead::ReadAhead;
use crate::ImageError;

/// Most extents [`Image::extents`] returns for one call.
pub const MAX_EXTENTS: usize = 1 << 16;

/// A cloop-family image opened for random access.
///
/// Every method takes `&self`: an `Image` is `Send + Sync`, so share it between threads with an
/// [`Arc`] and call [`Image::read_at`] from all of them at once. Decoded blocks are kept in a
/// cache shared by all readers, and sequential readers get the following blocks decoded ahead of
/// them on a small thread pool.
pub struct Image {
    pub(crate) core: Arc<Core>,
    pub(crate) ahead: ReadAhead,
}

impl Image {
    /// The path the image was opened from (empty for [`Image::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// Where header and index sit, the dialect and the file length.
    pub fn layout(&self) -> &Layout {
        &self.core.layout
    }

    /// The detected dialect.
    pub fn dialect(&self) -> Dialect {
        self.core.layout.dialect
    }

    /// The validated block index.
    pub fn index(&self) -> &BlockIndex {
        &self.core.index
    }

    /// Uncompressed bytes per block.
    pub fn block_size(&self) -> u32 {
        self.core.block_size()
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> u32 {
        self.core.layout.header.num_blocks
    }

    /// Length of the image file.
    pub fn file_len(&self) -> u64 {
        self.core.layout.file_len
    }

    /// mkmodule's trailer, when the image has one that belongs to its index.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.core.trailer.as_ref()
    }

    /// What is wrong with the trailer, when there is one that cannot be used (corrupt checksum,
    /// unknown layout, or an original length the blocks cannot hold). The image is still
    /// readable; its exposed size is then the padded size.
    pub fn trailer_problem(&self) -> Option<&ImageError> {
        self.core.trailer_problem.as_ref()
    }

    /// Bytes readers see: [`Image::padded_size`] or, when opened with
    /// [`crate::ExposedSize::Original`] and the trailer records it, the original length.
    pub fn size(&self) -> u64 {
        self.core.size
    }

    /// Blocks × block size: the device size every cloop reader exposes.
    pub fn padded_size(&self) -> u64 {
        self.core.layout.header.device_size()
    }

    /// The original input length recorded in a usable trailer.
    pub fn original_size(&self) -> Option<u64> {
        match (&self.core.trailer, &self.core.trailer_problem) {
            (Some(trailer), None) => Some(trailer.original_len),
            _ => None,
        }
    }

    /// Whether block `block` is known to be all zeros (see the crate documentation).
    pub fn is_zero_block(&self, block: u32) -> bool {
        self.core.zero.is_zero(block)
    }

    /// How many blocks are known to be all zeros.
    pub fn zero_blocks(&self) -> u64 {
        self.core.zero.count()
    }

    /// Counters of the block cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.core.cache.stats()
    }

    /// How many decoded blocks the cache can hold.
    pub fn cache_capacity(&self) -> usize {
        self.core.cache.capacity()
    }

    /// Blocks decoded ahead of a sequential reader (0 when read-ahead is off, or when the source
    /// wants asked-for reads only).
    pub fn readahead_window(&self) -> u32 {
        self.ahead.window()
    }

    /// The decoded block `block`, exactly one block size long (a short final block is
    /// zero-filled), shared with the cache.
    pub fn block(&self, block: u32) -> Result<Block, ImageError> {
        if block >= self.num_blocks() {
            return Err(ImageError::NoSuchBlock {
                block: u64::from(block),
                num_blocks: self.num_blocks(),
            });
        }
        self.core.get_block(block)
    }

    /// Asks the read-ahead pool to decode the blocks under `[offset, offset + len)` in the
    /// background (a hint, e.g. NBD's `CACHE` command). At most one read-ahead window of blocks
    /// is queued per call, so a huge hint cannot flush the cache; nothing happens when
    /// read-ahead is off.
    pub fn prefetch(&self, offset: u64, len: u64) {
        let size = self.size();
        let window = self.ahead.hint_window();
        if len == 0 || offset >= size || window == 0 {
            return;
        }
        let bs = u64::from(self.block_size());
        let end = offset.saturating_add(len).min(size);
        let first = (offset / bs) as u32;
        let last = ((end - 1) / bs) as u32;
        let last = last.min(first.saturating_add(window - 1));
        self.ahead.queue(&self.core, first..=last);
    }

    /// The zero and data runs of `[offset, offset + len)`, clipped to the exposed size, in
    /// order and merged. At most [`MAX_EXTENTS`] runs are returned, so the result may cover
    /// less than asked (as NBD block status allows); it covers at least one byte when the range
    /// starts inside the image.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let size = self.size();
        let end = offset.saturating_add(len).min(size);
        let mut out: Vec<Extent> = Vec::new();
        if offset >= end {
            return out;
        }
        let bs = u64::from(self.block_size());
        let mut at = offset;
        while at < end {
            let block = at / bs;
            let block_end = ((block + 1) * bs).min(end);
            let zero = self.core.zero.is_zero(block as u32);
            match out.last_mut() {
                Some(last) if last.zero == zero => last.len += block_end - at,
                _ => {
                    if out.len() == MAX_EXTENTS {
                        break;
                    }
                    out.push(if zero {
                        Extent::zeroes(block_end - at)
                    } else {
                        Extent::data(block_end - at)
                    });
                }
            }
            at = block_end;
        }
        out
    }

    /// Every byte range of the exposed device known to be zeros, merged.
    pub fn zero_extents(&self) -> Vec<Range<u64>> {
        let bs = u64::from(self.block_size());
        let size = self.size();
        let mut out: Vec<Range<u64>> = Vec::new();
        for block in 0..self.num_blocks() {
            if !self.core.zero.is_zero(block) {
                continue;
            }
            let start = u64::from(block) * bs;
            let end = (start + bs).min(size);
            if start >= end {
                break;
            }
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        out
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.core.path)
            .field("dialect", &self.core.layout.dialect)
            .field("block_size", &self.block_size())
            .field("num_blocks", &self.num_blocks())
            .field("size", &self.core.size)
            .finish_non_exhaustive()
    }
}
