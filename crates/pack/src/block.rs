//! What travels between the conveyor's stages: a block's buffers, what a compressor made of
//! it, its dedup key, and the compressed all-zero block computed once per image.

use mkmodule_format::{stored_check, BlockHash};

use crate::encode::{BlockEncoder, Encoding};
use crate::error::PackError;
use crate::options::Plan;

/// One block's buffers, recycled through the pool.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Uncompressed bytes (always `block_size` long).
    pub input: Vec<u8>,
    /// Compressed bytes.
    pub output: Vec<u8>,
    /// The dm-verity hashes of the block's 4096-byte pieces (only with a hash tree).
    pub leaves: Vec<crate::verity::VerityDigest>,
}

/// What a compressor made of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoded {
    /// All zeros: no compression; the writer uses the precomputed zero block.
    Zero,
    /// Compressed into the slot's output.
    Data(Encoding),
}

/// A compressed block on its way to the writer.
#[derive(Debug)]
pub(crate) struct Done {
    /// Block number.
    pub block: u64,
    /// Real input bytes in the block.
    pub real_len: usize,
    /// How it was encoded.
    pub encoded: Encoded,
    /// Dedup key of the compressed bytes (dedup dialects only).
    pub key: Option<DedupKey>,
    /// BLAKE3 hash of the uncompressed block zero-padded to the block size (with a trailer or
    /// reuse): its first 16 bytes are its block digest.
    pub digest: Option<BlockHash>,
    /// The stored check (CRC32) of the compressed bytes (0 for an all-zero block: the writer
    /// knows its bytes).
    pub stored_check: u32,
    /// Whether the bytes were copied from an older image.
    pub reused: Reused,
    /// The buffers; the output holds the compressed bytes.
    pub slot: Slot,
}

/// Whether a block's bytes came from an older image (`create --reuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reused {
    /// Compressed here: no older image, or no block of it with this content.
    No,
    /// Copied from the older image.
    Copied,
    /// The older image's block `old_block` had the digest but not the bytes: compressed here.
    Rejected {
        /// Block of the older image.
        old_block: u32,
    },
}

/// A block's 16-byte dedup key: the start of the BLAKE3 of its compressed bytes.
pub(crate) type DedupKey = [u8; 16];

/// The compressed bytes of an all-zero block, computed once per image.
#[derive(Debug, Clone)]
pub(crate) struct ZeroBlock {
    /// The compressed bytes.
    pub bytes: Vec<u8>,
    /// How they were encoded.
    pub encoding: Encoding,
    /// Their dedup key.
    pub key: Option<DedupKey>,
    /// Their stored check.
    pub check: u32,
}

/// The dedup key of compressed bytes.
pub(crate) fn dedup_key(bytes: &[u8]) -> DedupKey {
    let mut key = [0u8; 16];
    key.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    key
}

/// Compresses one all-zero block of the plan's block size with a fresh encoder.
pub(crate) fn zero_block(plan: &Plan) -> Result<ZeroBlock, PackError> {
    let mut encoder = BlockEncoder::new(plan).map_err(|(spec, source)| PackError::Compress {
        block: 0,
        offset: 0,
        codec: spec.kind(),
        source,
    })?;
    let zeros = vec![0u8; plan.block_size as usize];
    let mut bytes = Vec::new();
    let encoding = encoder
        .encode(&zeros, &mut bytes)
        .map_err(|source| PackError::Compress {
            block: 0,
            offset: 0,
            codec: plan.candidates[0].kind(),
            source,
        })?;
    let key = plan.dedup.then(|| dedup_key(&bytes));
    let check = stored_check(&bytes);
    Ok(ZeroBlock {
        bytes,
        encoding,
        key,
        check,
    })
}
