//! The parts of an opened image that readers and read-ahead workers share, and the block lookup
//! every read goes through: zero map, cache, shared in-flight decode.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mkmodule_format::{BlockIndex, BlockKind, Layout, Trailer};

use crate::cache::{Block, BlockCache, Claim, Lookup};
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

    /// Decodes the blocks whose claims the caller holds (cache keys, in any order) and finishes
    /// every claim. The compressed bytes of several blocks are read with one
    /// [`crate::ImageSource::read_many_at`] call (a remote source fetches adjacent ones with
    /// one request), unless the source holds them in memory anyway. Returns each block with
    /// its decoded bytes, `None` where decoding failed (its own read then reports the error).
    pub(crate) fn decode_claimed(
        &self,
        claims: Vec<(u32, Claim<'_>)>,
    ) -> Vec<(u32, Option<Block>)> {
        if claims.is_empty() {
            return Vec::new();
        }
        let blocks: Vec<u32> = claims.iter().map(|(block, _)| *block).collect();
        // A failed read leaves each block to its own read, whose error names the block.
        let fetched = if claims.len() > 1 && !self.source.in_memory() {
            self.blocks().read_many(&blocks).ok()
        } else {
            None
        };
        claims
            .into_iter()
            .enumerate()
            .map(|(k, (block, claim))| {
                let bytes = fetched.as_ref().and_then(|f| f[k].as_deref());
                let value = self.decode_new_from(block, bytes).ok();
                claim.finish(value.clone());
                (block, value)
            })
            .collect()
    }

    /// Decodes together the blocks of `first..=last` that are neither known zero, cached nor
    /// being decoded by another thread, and returns them by cache key: the blocks one read
    /// asks for, fetched together without a block nobody asked for.
    pub(crate) fn load_together(&self, first: u32, last: u32) -> Vec<(u32, Block)> {
        let mut claims: Vec<(u32, Claim<'_>)> = Vec::new();
        for block in first..=last {
            if self.zero.is_zero(block) {
                continue;
            }
            let key = self.cache_key(block);
            if claims.iter().any(|(k, _)| *k == key) {
                continue;
            }
            // Registered unclaimed, then claimed: a thread that found it registered in
            // between and claimed it first decodes it, and this read waits for that one.
            if let Some(pending) = self.cache.queue(key) {
                if pending.claim() {
                    claims.push((key, self.cache.claimed(key, pending, false)));
                }
            }
        }
        self.decode_claimed(claims)
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect()
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
