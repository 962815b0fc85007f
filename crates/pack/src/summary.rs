//! What the packer reports while it runs and when it is done.

use std::time::Duration;

use mkmodule_codec::CodecKind;

/// Progress reports, delivered on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Another block was written; totals so far.
    Blocks {
        /// Blocks written.
        blocks: u64,
        /// Input bytes consumed (before padding).
        input_bytes: u64,
        /// Compressed bytes written.
        output_bytes: u64,
    },
    /// Every block is written; the index (and a spooled block area) is being put in place.
    Finishing,
    /// The older image given for reuse has a block with the digest of block `block` whose
    /// bytes do not decode to it (damage, or a digest collision), or cannot be read: the block
    /// was compressed instead. Delivered just before the block's `Blocks` report.
    ReuseRejected {
        /// The block of the new image.
        block: u64,
        /// The block of the older image.
        old_block: u32,
    },
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// The dialect written.
    pub dialect: mkmodule_format::Dialect,
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// Blocks in the image.
    pub num_blocks: u32,
    /// Exact input length.
    pub input_len: u64,
    /// Length of the image file.
    pub image_len: u64,
    /// Image offset one past the last block (`index[n]`).
    pub data_end: u64,
    /// All-zero input blocks (not compressed).
    pub zero_blocks: u64,
    /// Blocks written as dedup back-references.
    pub shared_blocks: u64,
    /// Blocks that did not shrink (stored as level-0 zlib where the dialect has zlib).
    pub incompressible_blocks: u64,
    /// Blocks whose compressed bytes were copied from an older image (`--reuse`).
    pub reused_blocks: u64,
    /// Blocks an older image offered whose bytes did not check out (compressed instead).
    pub rejected_blocks: u64,
    /// Blocks whose bytes were written, per codec (codecs with none are left out).
    pub blocks_per_codec: Vec<(CodecKind, u64)>,
    /// The trailer's digest of the input (`None` without a trailer), of
    /// [`mkmodule_format::DigestAlgorithm::WRITTEN`]: BLAKE3, as `b3sum` prints it.
    pub input_digest: Option<Vec<u8>>,
    /// Whether the image carries mkmodule's trailer.
    pub trailer: bool,
    /// Wall time of the whole job.
    pub elapsed: Duration,
}
