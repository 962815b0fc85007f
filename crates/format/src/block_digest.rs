//! The block-digest table of mkmodule's trailer (docs/FORMAT.md §12.4): one short digest of
//! every block's uncompressed bytes, and the encoder that made the blocks, so that a later
//! `create --reuse` can find unchanged blocks without decoding the image.
//!
//! A block's digest is the first 16 bytes of a hash of the block as the device exposes it: its
//! bytes zero-padded to the block size (only a uzip final block is ever shorter). The table
//! records which hash: BLAKE3 in images written now, SHA-256 in those of earlier releases.

use sha2::{Digest, Sha256};

use crate::{CodecKind, FormatError};

/// Bytes of one block digest.
pub const BLOCK_DIGEST_LEN: usize = 16;

/// The first 16 bytes of the hash of a block zero-padded to the block size.
pub type BlockDigest = [u8; BLOCK_DIGEST_LEN];

/// The whole BLAKE3 hash of a block zero-padded to the block size: its table digest is the
/// first 16 bytes, and the trailer's digest of the input is made of these (docs/FORMAT.md
/// §12.6).
pub type BlockHash = [u8; 32];

/// The BLAKE3 hash of `data` zero-padded to `block_size` bytes.
pub fn blake3_block_hash(data: &[u8], block_size: u32) -> BlockHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(data);
    feed_zeros((block_size as usize).saturating_sub(data.len()), |zeros| {
        hasher.update(zeros);
    });
    *hasher.finalize().as_bytes()
}

/// The table digest of a block whose BLAKE3 hash is `hash` (its first 16 bytes).
pub fn blake3_table_digest(hash: &BlockHash) -> BlockDigest {
    let mut digest = [0u8; BLOCK_DIGEST_LEN];
    digest.copy_from_slice(&hash[..BLOCK_DIGEST_LEN]);
    digest
}

/// Zeros fed to the hash for the padding of a short block, a piece at a time.
const ZEROS: [u8; 4096] = [0; 4096];

/// The hash behind a block-digest table (its table algorithm, docs/FORMAT.md §12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockDigestAlgorithm {
    /// SHA-256 cut to 16 bytes (table algorithm 1, written by earlier releases).
    Sha256,
    /// BLAKE3 cut to 16 bytes (table algorithm 2, written now).
    Blake3,
}

impl BlockDigestAlgorithm {
    /// The algorithm this release writes.
    pub const WRITTEN: BlockDigestAlgorithm = BlockDigestAlgorithm::Blake3;

    /// The table algorithm byte of the trailer.
    pub(crate) const fn code(self) -> u8 {
        match self {
            BlockDigestAlgorithm::Sha256 => 1,
            BlockDigestAlgorithm::Blake3 => 2,
        }
    }

    /// The algorithm of table algorithm byte `code`; `None` for one this release does not know.
    pub(crate) const fn from_code(code: u8) -> Option<BlockDigestAlgorithm> {
        match code {
            1 => Some(BlockDigestAlgorithm::Sha256),
            2 => Some(BlockDigestAlgorithm::Blake3),
            _ => None,
        }
    }

    /// Lower-case name, as `info` and `verify` show it.
    pub const fn name(self) -> &'static str {
        match self {
            BlockDigestAlgorithm::Sha256 => "sha256-128",
            BlockDigestAlgorithm::Blake3 => "blake3-128",
        }
    }

    /// The digest of `data`, taken from `blake3`, its BLAKE3 block hash when one was already
    /// computed, if this is the BLAKE3 algorithm; computed otherwise.
    pub fn digest_reusing(
        self,
        data: &[u8],
        block_size: u32,
        blake3: Option<&BlockHash>,
    ) -> BlockDigest {
        match (self, blake3) {
            (BlockDigestAlgorithm::Blake3, Some(hash)) => blake3_table_digest(hash),
            _ => self.digest(data, block_size),
        }
    }

    /// The digest of `data` zero-padded to `block_size` bytes (no padding when it is not
    /// shorter).
    pub fn digest(self, data: &[u8], block_size: u32) -> BlockDigest {
        match self {
            BlockDigestAlgorithm::Sha256 => {
                let mut hasher = Sha256::new();
                hasher.update(data);
                let missing = (block_size as usize).saturating_sub(data.len());
                feed_zeros(missing, |zeros| hasher.update(zeros));
                let mut digest = [0u8; BLOCK_DIGEST_LEN];
                digest.copy_from_slice(&hasher.finalize()[..BLOCK_DIGEST_LEN]);
                digest
            }
            BlockDigestAlgorithm::Blake3 => {
                blake3_table_digest(&blake3_block_hash(data, block_size))
            }
        }
    }
}

impl std::fmt::Display for BlockDigestAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Hands `missing` zero bytes to `feed`, a piece at a time.
fn feed_zeros(mut missing: usize, mut feed: impl FnMut(&[u8])) {
    while missing > 0 {
        let piece = missing.min(ZEROS.len());
        feed(&ZEROS[..piece]);
        missing -= piece;
    }
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

/// Where a trailer says its block-digest table is, its hash, and the checksum of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestTableRef {
    /// The hash of the digests.
    pub algorithm: BlockDigestAlgorithm,
    /// File offset of the table.
    pub offset: u64,
    /// Digests in the table (the image's block count).
    pub entries: u32,
    /// CRC32 (zlib polynomial) of the table's bytes.
    pub crc: u32,
}

impl DigestTableRef {
    /// The reference to `table` (concatenated digests of `algorithm`) placed at `offset`.
    pub fn for_table(algorithm: BlockDigestAlgorithm, offset: u64, table: &[u8]) -> DigestTableRef {
        DigestTableRef {
            algorithm,
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

    /// The first 16 bytes of `b3sum` of 65,536 zero bytes.
    const KNOWN_ZERO_64K_BLAKE3: &str = "3bdeaf8f8e98780b318106aafdc3ca25";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const BOTH: [BlockDigestAlgorithm; 2] =
        [BlockDigestAlgorithm::Sha256, BlockDigestAlgorithm::Blake3];

    #[test]
    fn a_short_block_hashes_as_padded() {
        let mut full = vec![7u8; 100];
        full.resize(10_000, 0);
        for algorithm in BOTH {
            let digest = |data: &[u8], bs| algorithm.digest(data, bs);
            assert_eq!(digest(&[7u8; 100], 10_000), digest(&full, 10_000));
            assert_ne!(digest(&[7u8; 100], 10_000), digest(&[7u8; 100], 512));
        }
        let sha256 = Sha256::digest(&full);
        assert_eq!(
            BlockDigestAlgorithm::Sha256.digest(&full, 10_000)[..],
            sha256[..16]
        );
        let blake3 = blake3::hash(&full);
        assert_eq!(
            BlockDigestAlgorithm::Blake3.digest(&full, 10_000)[..],
            blake3.as_bytes()[..16]
        );
    }

    /// The codes docs/FORMAT.md §12.4 gives; they are on disk and must never change.
    #[test]
    fn table_algorithm_codes_are_the_documented_ones() {
        assert_eq!(BlockDigestAlgorithm::Sha256.code(), 1);
        assert_eq!(BlockDigestAlgorithm::Blake3.code(), 2);
        for algorithm in BOTH {
            assert_eq!(
                BlockDigestAlgorithm::from_code(algorithm.code()),
                Some(algorithm)
            );
        }
        assert_eq!(BlockDigestAlgorithm::from_code(0), None);
        assert_eq!(BlockDigestAlgorithm::from_code(3), None);
        assert_eq!(BlockDigestAlgorithm::WRITTEN, BlockDigestAlgorithm::Blake3);
    }

    /// A known answer: BLAKE3 of 64 KiB of zeros, as `head -c 65536 /dev/zero | b3sum` prints it.
    #[test]
    fn the_blake3_digest_of_a_zero_block_is_b3sums() {
        let digest = BlockDigestAlgorithm::Blake3.digest(&[], 65536);
        assert_eq!(hex(&digest), KNOWN_ZERO_64K_BLAKE3);
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
        let algorithm = BlockDigestAlgorithm::WRITTEN;
        let digests = [algorithm.digest(b"a", 512), algorithm.digest(b"b", 512)];
        let bytes = digests.concat();
        let table = DigestTableRef::for_table(algorithm, 1000, &bytes);
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
