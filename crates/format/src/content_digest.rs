//! The trailer's digest of the original input (docs/FORMAT.md §12.6), computed over the input's
//! bytes in order ([`ContentHasher`]) or, by the writer, from the block hashes it already has
//! ([`BlockHashChain`]).
//!
//! This release writes `blake3-blocks`: the BLAKE3 of the BLAKE3 hashes of the input's blocks
//! followed by the input's length and the block size. A writer hashes each block once, on any
//! thread, for both the block-digest table and this digest; a reader checks it block by block.
//! Earlier releases wrote the SHA-256 of the input, which is still checked.

use sha2::{Digest, Sha256};

use crate::block_digest::{blake3_block_hash, BlockHash};
use crate::DigestAlgorithm;

/// The `blake3-blocks` digest built from the hashes of the input's blocks, in order.
#[derive(Debug, Clone, Default)]
pub struct BlockHashChain {
    hasher: blake3::Hasher,
}

impl BlockHashChain {
    /// An empty chain.
    pub fn new() -> BlockHashChain {
        BlockHashChain::default()
    }

    /// Adds the next block's hash ([`blake3_block_hash`] of its bytes zero-padded to the block
    /// size). Only blocks that hold input bytes are added: not the all-zero block written for
    /// an empty input.
    pub fn push(&mut self, hash: &BlockHash) {
        self.hasher.update(hash);
    }

    /// The digest of an input of `len` bytes cut into blocks of `block_size` bytes.
    pub fn finish(mut self, len: u64, block_size: u32) -> [u8; 32] {
        self.hasher.update(&len.to_be_bytes());
        self.hasher.update(&block_size.to_be_bytes());
        *self.hasher.finalize().as_bytes()
    }
}

/// A trailer's digest of the input, computed over its bytes in order. Bytes fed beyond the
/// original length (the padding of the last block) are not part of the input and are ignored.
#[derive(Debug, Clone)]
pub struct ContentHasher {
    original_len: u64,
    fed: u64,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Sha256(Sha256),
    Blake3Blocks {
        block_size: u32,
        /// The block being fed, and how many of its bytes have been.
        block: Box<blake3::Hasher>,
        in_block: u64,
        chain: Box<BlockHashChain>,
    },
}

impl ContentHasher {
    /// A hasher for `algorithm` over an input of `original_len` bytes in blocks of `block_size`;
    /// `None` for [`DigestAlgorithm::None`].
    pub fn new(
        algorithm: DigestAlgorithm,
        original_len: u64,
        block_size: u32,
    ) -> Option<ContentHasher> {
        let kind = match algorithm {
            DigestAlgorithm::None => return None,
            DigestAlgorithm::Sha256 => Kind::Sha256(Sha256::new()),
            DigestAlgorithm::Blake3Blocks => Kind::Blake3Blocks {
                block_size,
                block: Box::default(),
                in_block: 0,
                chain: Box::default(),
            },
        };
        Some(ContentHasher {
            original_len,
            fed: 0,
            kind,
        })
    }

    /// The algorithm it computes.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.kind {
            Kind::Sha256(_) => DigestAlgorithm::Sha256,
            Kind::Blake3Blocks { .. } => DigestAlgorithm::Blake3Blocks,
        }
    }

    /// Feeds the next bytes of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        let take = (self.original_len - self.fed).min(bytes.len() as u64) as usize;
        let mut bytes = &bytes[..take];
        self.fed += take as u64;
        match &mut self.kind {
            Kind::Sha256(hasher) => hasher.update(bytes),
            Kind::Blake3Blocks {
                block_size,
                block,
                in_block,
                chain,
            } => {
                while !bytes.is_empty() {
                    let room = u64::from(*block_size) - *in_block;
                    let piece = room.min(bytes.len() as u64) as usize;
                    block.update(&bytes[..piece]);
                    *in_block += piece as u64;
                    bytes = &bytes[piece..];
                    if *in_block == u64::from(*block_size) {
                        chain.push(block.finalize().as_bytes());
                        block.reset();
                        *in_block = 0;
                    }
                }
            }
        }
    }

    /// Feeds the next whole block of the content, `block_size` bytes as the device exposes it,
    /// and returns its BLAKE3 block hash ([`blake3_block_hash`]) when the hasher computed one
    /// (`blake3-blocks`, at a block boundary), so a BLAKE3 block-digest table can be checked
    /// without hashing the block again.
    pub fn update_block(&mut self, block: &[u8]) -> Option<BlockHash> {
        let remaining = self.original_len - self.fed;
        let Kind::Blake3Blocks {
            block_size,
            in_block: 0,
            chain,
            ..
        } = &mut self.kind
        else {
            self.update(block);
            return None;
        };
        if block.len() != *block_size as usize {
            self.update(block);
            return None;
        }
        let hash = blake3_block_hash(block, *block_size);
        if remaining >= u64::from(*block_size) {
            chain.push(&hash);
            self.fed += u64::from(*block_size);
        } else {
            // The last piece: only its bytes within the length count, zero-padded.
            self.update(block);
        }
        Some(hash)
    }

    /// Feeds `len` zero bytes (a zero block, or a hole).
    pub fn update_zeros(&mut self, mut len: u64) {
        const ZEROS: [u8; 4096] = [0; 4096];
        while len > 0 && self.fed < self.original_len {
            let piece = len.min(ZEROS.len() as u64) as usize;
            self.update(&ZEROS[..piece]);
            len -= piece as u64;
        }
    }

    /// Whether all `original_len` bytes have been fed.
    pub fn is_complete(&self) -> bool {
        self.fed == self.original_len
    }

    /// The digest of the bytes fed ([`DigestAlgorithm::len`] bytes). A last block fed only in
    /// part is hashed zero-padded to the block size, as it is stored.
    pub fn finalize(self) -> Vec<u8> {
        match self.kind {
            Kind::Sha256(hasher) => hasher.finalize().to_vec(),
            Kind::Blake3Blocks {
                block_size,
                mut block,
                in_block,
                mut chain,
            } => {
                if in_block > 0 {
                    let zeros = vec![0u8; (u64::from(block_size) - in_block) as usize];
                    block.update(&zeros);
                    chain.push(block.finalize().as_bytes());
                }
                chain.finish(self.fed, block_size).to_vec()
            }
        }
    }
}

/// The `blake3-blocks` digest of `input` in blocks of `block_size`, in one call.
pub fn blake3_blocks_digest(input: &[u8], block_size: u32) -> [u8; 32] {
    let mut chain = BlockHashChain::new();
    for block in input.chunks(block_size as usize) {
        chain.push(&blake3_block_hash(block, block_size));
    }
    chain.finish(input.len() as u64, block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    /// The definition of docs/FORMAT.md §12.6, written out with the blake3 crate alone.
    #[test]
    fn blake3_blocks_is_the_documented_construction() {
        let input = content(10_000);
        let mut outer = Vec::new();
        for block in input.chunks(4096) {
            let mut padded = block.to_vec();
            padded.resize(4096, 0);
            outer.extend_from_slice(blake3::hash(&padded).as_bytes());
        }
        outer.extend_from_slice(&10_000u64.to_be_bytes());
        outer.extend_from_slice(&4096u32.to_be_bytes());
        assert_eq!(
            blake3_blocks_digest(&input, 4096),
            *blake3::hash(&outer).as_bytes()
        );
        // An empty input has no blocks: the length and block size alone.
        let mut empty = 0u64.to_be_bytes().to_vec();
        empty.extend_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            blake3_blocks_digest(&[], 512),
            *blake3::hash(&empty).as_bytes()
        );
    }

    #[test]
    fn padding_fed_past_the_length_is_ignored() {
        let input = content(5000);
        let mut padded = input.clone();
        padded.resize(8192, 0xee);
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Blake3Blocks] {
            let mut hasher = ContentHasher::new(algorithm, 5000, 4096).unwrap();
            hasher.update(&padded);
            assert!(hasher.is_complete());
            let expected = match algorithm {
                DigestAlgorithm::Sha256 => Sha256::digest(&input).to_vec(),
                _ => blake3_blocks_digest(&input, 4096).to_vec(),
            };
            assert_eq!(hasher.finalize(), expected, "{}", algorithm.name());
        }
        assert!(ContentHasher::new(DigestAlgorithm::None, 1, 512).is_none());
    }

    #[test]
    fn whole_blocks_give_their_hash_and_the_same_digest() {
        let input = content(3 * 4096 + 100);
        let mut padded = input.clone();
        padded.resize(4 * 4096, 0x55);
        let mut hasher =
            ContentHasher::new(DigestAlgorithm::Blake3Blocks, input.len() as u64, 4096).unwrap();
        for block in padded.chunks(4096) {
            assert_eq!(
                hasher.update_block(block),
                Some(blake3_block_hash(block, 4096))
            );
        }
        assert_eq!(
            hasher.finalize(),
            blake3_blocks_digest(&input, 4096).to_vec()
        );
        let mut sha =
            ContentHasher::new(DigestAlgorithm::Sha256, input.len() as u64, 4096).unwrap();
        for block in padded.chunks(4096) {
            assert_eq!(sha.update_block(block), None);
        }
        assert_eq!(sha.finalize(), Sha256::digest(&input).to_vec());
    }

    proptest! {
        /// Any cut of the content into pieces, zero runs fed as such, gives the one-call digest.
        #[test]
        fn pieces_give_the_whole(
            len in 0usize..20_000,
            block_size in prop::sample::select(vec![512u32, 1024, 4096, 8192]),
            cuts in prop::collection::vec(1usize..6000, 0..12),
            zero_from in 0usize..20_000,
        ) {
            let mut input = content(len);
            let zero_from = zero_from.min(len);
            input[zero_from..].fill(0);
            let mut hasher = ContentHasher::new(DigestAlgorithm::Blake3Blocks, len as u64, block_size).unwrap();
            let mut at = 0;
            for cut in cuts {
                let end = (at + cut).min(zero_from);
                hasher.update(&input[at..end]);
                at = end;
            }
            hasher.update(&input[at..zero_from]);
            hasher.update_zeros((len - zero_from) as u64 + 100);
            prop_assert!(hasher.is_complete());
            prop_assert_eq!(hasher.finalize(), blake3_blocks_digest(&input, block_size).to_vec());
        }
    }
}
