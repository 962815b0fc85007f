//! Checking a block's compressed bytes before they are copied into another image (`create
//! --reuse`, `commit`, `convert`, `fetch --seed`): by their stored check (docs/FORMAT.md §12.4)
//! when one is recorded for them, else by decoding them.
//!
//! Every copier goes through [`CopyCheck::accepts`], so damage to the image copied from is
//! caught the same way everywhere: the caller then compresses (or downloads) the block instead.

use mkmodule_codec::{BlockDecompressor, CodecKind};
use mkmodule_format::{stored_check, BlockDigest, BlockDigestAlgorithm};

/// What the copied block must be.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// These uncompressed bytes (a whole block).
    Data(&'a [u8]),
    /// A block of this digest of that hash (docs/FORMAT.md §12.4).
    Digest(BlockDigestAlgorithm, &'a BlockDigest),
}

/// One thread's checker: a decoder and its buffer, for blocks without a stored check.
pub struct CopyCheck {
    decompressor: BlockDecompressor,
    decoded: Vec<u8>,
    block_size: u32,
}

impl std::fmt::Debug for CopyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyCheck")
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl CopyCheck {
    /// A checker for blocks of `block_size` bytes.
    pub fn new(block_size: u32) -> CopyCheck {
        CopyCheck {
            decompressor: BlockDecompressor::new(),
            decoded: vec![0; block_size as usize],
            block_size,
        }
    }

    /// Whether `bytes`, stored bytes of `codec`, are the block `wanted`. With `stored`, the
    /// check recorded for the bytes that belong there, only their CRC32 is compared (the
    /// decoder is not run); without it they are decoded and compared with `wanted`. Empty
    /// bytes are never accepted.
    pub fn accepts(
        &mut self,
        codec: CodecKind,
        bytes: &[u8],
        stored: Option<u32>,
        wanted: Wanted<'_>,
    ) -> bool {
        if bytes.is_empty() {
            return false;
        }
        if let Some(stored) = stored {
            return stored_check(bytes) == stored;
        }
        let len = match wanted {
            Wanted::Data(data) => data.len(),
            Wanted::Digest(..) => self.block_size as usize,
        };
        let Some(out) = self.decoded.get_mut(..len) else {
            return false;
        };
        if self
            .decompressor
            .decompress_exact(codec, bytes, out)
            .is_err()
        {
            return false;
        }
        match wanted {
            Wanted::Data(data) => out == data,
            Wanted::Digest(algorithm, digest) => algorithm.digest(out, self.block_size) == *digest,
        }
    }

    /// The decoder, for callers that decode blocks of their own between checks.
    pub fn decompressor(&mut self) -> &mut BlockDecompressor {
        &mut self.decompressor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_codec::{BlockCompressor, CodecSpec};

    fn compressed(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        BlockCompressor::new(CodecSpec::new(CodecKind::Zlib, 6).unwrap())
            .unwrap()
            .compress(data, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_stored_check_is_compared_without_decoding() {
        let data = vec![7u8; 4096];
        let bytes = compressed(&data);
        let mut check = CopyCheck::new(4096);
        let good = stored_check(&bytes);
        assert!(check.accepts(CodecKind::Zlib, &bytes, Some(good), Wanted::Data(&data)));
        assert!(!check.accepts(CodecKind::Zlib, &bytes, Some(good ^ 1), Wanted::Data(&data)));
        assert!(!check.accepts(CodecKind::Zlib, &[], Some(0), Wanted::Data(&data)));
    }

    #[test]
    fn without_one_the_bytes_are_decoded() {
        let data = vec![7u8; 4096];
        let bytes = compressed(&data);
        let algorithm = BlockDigestAlgorithm::WRITTEN;
        let digest = algorithm.digest(&data, 4096);
        let mut check = CopyCheck::new(4096);
        assert!(check.accepts(CodecKind::Zlib, &bytes, None, Wanted::Data(&data)));
        assert!(check.accepts(
            CodecKind::Zlib,
            &bytes,
            None,
            Wanted::Digest(algorithm, &digest)
        ));
        let other = vec![8u8; 4096];
        assert!(!check.accepts(CodecKind::Zlib, &bytes, None, Wanted::Data(&other)));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        assert!(!check.accepts(
            CodecKind::Zlib,
            &damaged,
            None,
            Wanted::Digest(algorithm, &digest)
        ));
    }
}
