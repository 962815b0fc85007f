//! The parts of an opened image that readers and read-ahead workers share, and the block lookup
//! every read goes through: zero map, cache, shared in-flight decode.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mkmodule_format::{BlockIndex, BlockKind, Layout, Trailer};

use crate::cache::{Block, BlockCache, Lookup};
use crate::decode::Blocks;
use crate::source::Source;
use crate::zero_map::ZeroMap;
use crate::ImageError;

/// The parts of an image that read-ahead workers share with readers.
pub(crate) struct Core {
    pub(crate) path: PathBuf,
    pub(crate) source: Source,
    pub(crate) layout: Layout,
    pub(crate) index: BlockIndex,
    pub(crate) trailer: Option<Trailer>,
    pub(crate) trailer_problem: Option<ImageError>,
    pub(crate) zero: ZeroMap,
    pub(crate) cache: BlockCache,
    pub(crate) size: u64,
    pub(crate) zero_block: OnceLock<Block>,
}

impl Core {
    pub(crate) fn blocks(&self) -> Blocks<'_> {
        Blocks {
            source: &self.source,
            layout: &self.layout,
            index: &self.index,
        }
    }

    pub(crate) fn block_size(&self) -> u32 {
        self.layout.header.block_size
    }

    /// The block whose decoded bytes stand for `block` in the cache: back-references share the
    /// entry of the block they point to.
    pub(crate) fn cache_key(&self, block: u32) -> u32 {
        match self.index.get(block as usize).map(|e| e.kind) {
            Some(BlockKind::Shared { of }) => of,
            _ => block,
        }
    }

    /// A block of zeros, allocated once.
    pub(crate) fn zero_block(&self) -> Block {
        Arc::clone(self.zero_block.get_or_init(|| self.new_block()))
    }

    /// A fresh zeroed block-size buffer.
    fn new_block(&self) -> Block {
        std::iter::repeat_n(0u8, self.block_size() as usize).collect()
    }

    /// Decodes `block` into a buffer of its own (a recycled one when the cache has one),
    /// bypassing the cache.
    pub(crate) fn decode_new(&self, block: u32) -> Result<Block, ImageError> {
        self.decode_new_from(block, None)
    }

    /// As [`Core::decode_new`], from the block's compressed bytes when already `fetched`.
    pub(crate) fn decode_new_from(
        &self,
        block: u32,
        fetched: Option<&[u8]>,
    ) -> Result<Block, ImageError> {
        let bs = self.block_size() as usize;
        // Decoding writes every byte of the buffer, so a recycled one needs no clearing.
        let mut out = self
            .cache
            .take_spare(bs)
            .unwrap_or_else(|| self.new_block());
        match Arc::get_mut(&mut out) {
            Some(buf) => self.blocks().decode_fetched(block, fetched, buf)?,
            None => {
                // Cannot happen for a fresh Arc; decode through a Vec all the same.
                let mut buf = vec![0u8; self.block_size() as usize];
                self.blocks().decode_fetched(block, fetched, &mut buf)?;
                out = Arc::from(buf);
            }
        }
        Ok(out)
    }

    /// The decoded block `block`, from the cache or decoded now (once, however many threads ask).
    pub(crate) fn get_block(&self, block: u32) -> Result<Block, ImageError> {
        if self.zero.is_zero(block) {
            return Ok(self.zero_block());
        }
        let key = self.cache_key(block);
        // A shared block is decoded (and cached) as the block it shares bytes with; an error
        // still names the block asked for, as a pass over all blocks does.
        self.get_cached(key).map_err(|e| e.for_block(block))
    }

    /// The decoded block `key` (a block that is not shared) from the cache, decoding it once.
    fn get_cached(&self, key: u32) -> Result<Block, ImageError> {
        match self.cache.lookup(key) {
            Lookup::Hit(found) => Ok(found),
            Lookup::Owner(claim) => {
                let result = self.decode_new(key);
                claim.finish(result.as_ref().ok().cloned());
                result
            }
            Lookup::Wait(pending) => {
                if pending.claim() {
                    let claim = self.cache.claimed(key, pending, false);
                    let result = self.decode_new(key);
                    claim.finish(result.as_ref().ok().cloned());
                    result
                } else if let Some(found) = pending.wait() {
                    Ok(found)
                } else {
                    // The other decode failed: decode again to report the error ourselves.
                    self.decode_new(key)
                }
            }
        }
    }
}
