//! The block-digest table of mkmodule's trailer (docs/FORMAT.md §12.4): one short digest of
//! every block's uncompressed bytes, and the encoder that made the blocks, so that a later
//! `create --reuse` can find unchanged blocks without decoding the image.
//!
//! A block's digest is the first 16 bytes of the SHA-256 of the block as the device exposes it:
//! its bytes zero-padded to the block size (only a uzip final block is ever shorter).

use sha2::{Digest, Sha256};

use crate::{CodecKind, FormatError};

/// Bytes of one block digest.
pub const BLOCK_DIGEST_LEN: usize = 16;

/// The first 16 bytes of the SHA-256 of a block zero-padded to the block size.
pub type BlockDigest = [u8; BLOCK_DIGEST_LEN];

/// Table algorithm code of [`BlockDigest`] (SHA-256 cut to 16 bytes).
pub(crate) const TABLE_SHA256_128: u8 = 1;

/// Zeros fed to the hash for the padding of a short block, a piece at a time.
const ZEROS: [u8; 4096] = [0; 4096];

/// The digest of `data` zero-padded to `block_size` bytes (no padding when it is not shorter).
pub fn block_digest(data: &[u8], block_size: u32) -> BlockDigest {
    let mut hasher = Sha256::new();
    hasher.update(data);
    let mut missing = (block_size as usize).saturating_sub(data.len());
    while missing > 0 {
        let piece = missing.min(ZEROS.len());
        hasher.update(&ZEROS[..piece]);
        missing -= piece;
    }
    let mut digest = [0u8; BLOCK_DIGEST_LEN];
    digest.copy_from_slice(&hasher.finalize()[..BLOCK_DIGEST_LEN]);
    digest
}

/// How the blocks of an image were compressed, as far as the bytes of a block depend on it
/// (with the dialect and the block size, which the header records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockEncoding {
    /// One codec at one level for every block (level 0 for codecs without levels).
    Fixed {
        /// The codec.
        codec: CodecKind,
        /// Its level.
        level: u8,
    },
    /// Per block, the smallest of the dialect's written codecs at their highest levels.
    Best,
}

/// Code of [`BlockEncoding::Best`] in the trailer.
const BEST_CODE: u8 = 255;

impl BlockEncoding {
    /// The codec byte and level byte recorded in the trailer.
    pub(crate) fn code(self) -> (u8, u8) {
        match self {
            BlockEncoding::Fixed { codec, level } => (codec_code(codec), level),
            BlockEncoding::Best => (BEST_CODE, 0),
        }
    }

    /// The encoding recorded as `code`/`level`; `None` when unrecorded (0) or unknown.
    pub(crate) fn from_code(code: u8, level: u8) -> Option<BlockEncoding> {
        match code {
            BEST_CODE => Some(BlockEncoding::Best),
            0 => None,
            code => CodecKind::ALL
                .get(usize::from(code) - 1)
                .map(|&codec| BlockEncoding::Fixed { codec, level }),
        }
    }
}

/// A codec's number in the trailer: its position in [`CodecKind::ALL`] plus one.
fn codec_code(codec: CodecKind) -> u8 {
    CodecKind::ALL.iter().position(|&k| k == codec).unwrap_or(0) as u8 + 1
}

impl std::fmt::Display for BlockEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockEncoding::Fixed { codec, level } => write!(f, "{}:{level}", codec.name()),
            BlockEncoding::Best => f.write_str("best"),
        }
    }
}

/// Where a trailer says its block-digest table is, and the checksum of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestTableRef {
    /// File offset of the table.
    pub offset: u64,
    /// Digests in the table (the image's block count).
    pub entries: u32,
    /// CRC32 (zlib polynomial) of the table's bytes.
    pub crc: u32,
}

impl DigestTableRef {
    /// The reference to `table` (concatenated digests) placed at `offset`.
    pub fn for_table(offset: u64, table: &[u8]) -> DigestTableRef {
        DigestTableRef {
            offset,
            entries: (table.len() / BLOCK_DIGEST_LEN) as u32,
            crc: crc32fast::hash(table),
        }
    }

    /// Length of the table in bytes.
    pub const fn len(&self) -> u64 {
        self.entries as u64 * BLOCK_DIGEST_LEN as u64
    }

    /// Whether the table has no entries.
    pub const fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Checks that the table has one entry per block and lies between the end of data and the
    /// trailer at the end of a file of `file_len` bytes.
    pub fn check_place(
        &self,
        data_end: u64,
        num_blocks: u32,
        file_len: u64,
    ) -> Result<(), FormatError> {
        let trailer_at = file_len.saturating_sub(crate::TRAILER_LEN as u64);
        let placed = self.offset >= data_end
            && self
                .offset
                .checked_add(self.len())
                .is_some_and(|end| end <= trailer_at);
        if self.entries != num_blocks || !placed {
            return Err(FormatError::DigestTableMisplaced {
                offset: self.offset,
                entries: self.entries,
                num_blocks,
                data_end,
                trailer_at,
            });
        }
        Ok(())
    }

    /// Checks the table's bytes against the recorded checksum and splits them into digests.
    pub fn parse(&self, bytes: &[u8]) -> Result<Vec<BlockDigest>, FormatError> {
        let computed = crc32fast::hash(bytes);
        if bytes.len() as u64 != self.len() || computed != self.crc {
            return Err(FormatError::DigestTableCorrupt {
                offset: self.offset,
                stored: self.crc,
                computed,
            });
        }
        Ok(bytes
            .chunks_exact(BLOCK_DIGEST_LEN)
            .map(|chunk| {
                let mut digest = [0u8; BLOCK_DIGEST_LEN];
                digest.copy_from_slice(chunk);
                digest
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_block_hashes_as_padded() {
        let mut full = vec![7u8; 100];
        full.resize(10_000, 0);
        assert_eq!(
            block_digest(&[7u8; 100], 10_000),
            block_digest(&full, 10_000)
        );
        assert_ne!(
            block_digest(&[7u8; 100], 10_000),
            block_digest(&[7u8; 100], 512)
        );
        let whole = Sha256::digest(&full);
        assert_eq!(block_digest(&full, 10_000)[..], whole[..16]);
    }

    #[test]
    fn encodings_round_trip_through_their_codes() {
        let mut all = vec![BlockEncoding::Best];
        for codec in CodecKind::ALL {
            all.push(BlockEncoding::Fixed { codec, level: 9 });
        }
        for encoding in all {
            let (code, level) = encoding.code();
            assert_eq!(BlockEncoding::from_code(code, level), Some(encoding));
        }
        assert_eq!(BlockEncoding::from_code(0, 0), None);
        assert_eq!(BlockEncoding::from_code(200, 0), None);
    }

    /// The numbers docs/FORMAT.md §12.4 gives; they are on disk and must never change.
    #[test]
    fn codec_codes_are_the_documented_ones() {
        let code = |codec| BlockEncoding::Fixed { codec, level: 3 }.code();
        assert_eq!(code(CodecKind::Zlib), (1, 3));
        assert_eq!(code(CodecKind::None), (2, 3));
        assert_eq!(code(CodecKind::Xz), (3, 3));
        assert_eq!(code(CodecKind::Lz4), (4, 3));
        assert_eq!(code(CodecKind::Lzo), (5, 3));
        assert_eq!(code(CodecKind::Zstd), (6, 3));
        assert_eq!(BlockEncoding::Best.code(), (255, 0));
    }

    #[test]
    fn a_table_is_checked_by_place_and_checksum() {
        let digests = [block_digest(b"a", 512), block_digest(b"b", 512)];
        let bytes = digests.concat();
        let table = DigestTableRef::for_table(1000, &bytes);
        assert_eq!(table.len(), 32);
        assert_eq!(table.parse(&bytes).unwrap(), digests);
        table.check_place(1000, 2, 1000 + 32 + 136).unwrap();
        for (data_end, blocks, file_len) in [(1001, 2, 2000), (1000, 3, 2000), (1000, 2, 1100)] {
            assert!(matches!(
                table.check_place(data_end, blocks, file_len),
                Err(FormatError::DigestTableMisplaced { .. })
            ));
        }
        let mut damaged = bytes.clone();
        damaged[5] ^= 1;
        assert!(matches!(
            table.parse(&damaged),
            Err(FormatError::DigestTableCorrupt { offset: 1000, .. })
        ));
        assert!(table.parse(&bytes[..16]).is_err());
    }
}
