//! mkmodule's metadata trailer (docs/FORMAT.md §12): original length, digest, tool version.
//!
//! It sits after `index[n]` in header-first files, where no reader looks, and ends the file so
//! it can be found from the last 136 bytes. Its magic puts `AILE` at relative offset 11, so a
//! footer-probing reader (which looks for `V2.0`/`V4.0` there) never takes it for a header.
//!
//! Layout (136 bytes, integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | magic `MKMODULE-TRAILER` |
//! | 16 | 2 | layout version (1) |
//! | 18 | 1 | digest algorithm (0 none, 1 SHA-256, 2 blake3-blocks) |
//! | 19 | 1 | digest length |
//! | 20 | 64 | digest of the original input, zero padded; with a digest of at most 32 bytes, bytes 52..84 hold the extension below |
//! | 84 | 8 | original input length |
//! | 92 | 8 | `index[n]` when written (ties the trailer to its index) |
//! | 100 | 32 | tool version text, NUL padded |
//! | 132 | 4 | CRC32 of bytes 0..132 |
//!
//! The extension (docs/FORMAT.md §12.4) sits in the half of the digest field that a 32-byte digest leaves
//! zero, so readers of the first layout see a valid trailer and ignore it; all zero means none:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 52 | 1 | block-digest table algorithm (0 no table, 1 SHA-256, 2 BLAKE3, cut to 16 bytes) |
//! | 53 | 1 | bytes per table entry (16) |
//! | 54 | 1 | block codec (0 unrecorded, 1 + position in `CodecKind::ALL`, 255 best) |
//! | 55 | 1 | block codec level |
//! | 56 | 8 | table offset |
//! | 64 | 4 | table entries (the block count) |
//! | 68 | 4 | CRC32 of the table |
//! | 72 | 1 | stored-check table algorithm (0 none, 1 CRC32 of each block's stored bytes) |
//! | 73 | 1 | bytes per stored check (4) |
//! | 74 | 2 | zero |
//! | 76 | 4 | CRC32 of the stored-check table (which ends where the block-digest table starts) |
//! | 80 | 4 | zero |

use crate::block_digest::{BlockDigestAlgorithm, BlockEncoding, DigestTableRef, BLOCK_DIGEST_LEN};
use crate::stored_check::{StoredChecksRef, CHECK_CRC32, STORED_CHECK_LEN};
use crate::FormatError;

/// Length of the trailer.
pub const TRAILER_LEN: usize = 136;
/// The magic at the trailer's start.
pub const TRAILER_MAGIC: &[u8; 16] = b"MKMODULE-TRAILER";
const LAYOUT_VERSION: u16 = 1;
const CRC_AT: usize = 132;
/// Where the extension starts: the second half of the digest field.
const EXTENSION_AT: usize = 52;
/// The longest digest that leaves the extension room.
const MAX_DIGEST_WITH_EXTENSION: usize = EXTENSION_AT - 20;

/// What a trailer records beyond the input: the encoder of the blocks, the block-digest table
/// and the stored-check table (docs/FORMAT.md §12.4). Empty in trailers of earlier mkmodule
/// releases; without the stored-check table in those of the releases before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrailerExtension {
    /// How the blocks were compressed.
    pub encoding: Option<BlockEncoding>,
    /// The block-digest table, when written.
    pub digest_table: Option<DigestTableRef>,
    /// The stored-check table, when written (only ever with a block-digest table, right before
    /// it).
    pub stored_checks: Option<StoredChecksRef>,
}

impl TrailerExtension {
    fn encode(&self, out: &mut [u8]) {
        if let Some(table) = &self.digest_table {
            out[0] = table.algorithm.code();
            out[1] = BLOCK_DIGEST_LEN as u8;
            out[4..12].copy_from_slice(&table.offset.to_be_bytes());
            out[12..16].copy_from_slice(&table.entries.to_be_bytes());
            out[16..20].copy_from_slice(&table.crc.to_be_bytes());
            if let Some(checks) = &self.stored_checks {
                out[20] = CHECK_CRC32;
                out[21] = STORED_CHECK_LEN as u8;
                out[24..28].copy_from_slice(&checks.crc.to_be_bytes());
            }
        }
        if let Some(encoding) = self.encoding {
            (out[2], out[3]) = encoding.code();
        }
    }

    /// Reads the extension; a table of an unknown algorithm or entry size is left out (a later
    /// release's table: this one cannot use it), and so is a stored-check table without a
    /// block-digest table to place it.
    fn decode(bytes: &[u8]) -> TrailerExtension {
        let be32 = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let algorithm = BlockDigestAlgorithm::from_code(bytes[0])
            .filter(|_| usize::from(bytes[1]) == BLOCK_DIGEST_LEN);
        let digest_table = algorithm.map(|algorithm| {
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&bytes[4..12]);
            DigestTableRef {
                algorithm,
                offset: u64::from_be_bytes(offset),
                entries: be32(12),
                crc: be32(16),
            }
        });
        let checks_known = bytes[20] == CHECK_CRC32 && usize::from(bytes[21]) == STORED_CHECK_LEN;
        let stored_checks = digest_table
            .filter(|_| checks_known)
            .map(|table| StoredChecksRef::before(table.offset, table.entries, be32(24)));
        TrailerExtension {
            encoding: BlockEncoding::from_code(bytes[2], bytes[3]),
            digest_table,
            stored_checks,
        }
    }
}

/// The digest algorithm a trailer records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// No digest recorded.
    None,
    /// SHA-256 of the original input bytes (written by earlier releases).
    Sha256,
    /// `blake3-blocks` (32 bytes): BLAKE3 of the BLAKE3 hashes of the input's blocks, its
    /// length and the block size (docs/FORMAT.md §12.6; written now).
    Blake3Blocks,
}

impl DigestAlgorithm {
    /// The algorithm this release writes.
    pub const WRITTEN: DigestAlgorithm = DigestAlgorithm::Blake3Blocks;

    fn code(self) -> u8 {
        match self {
            DigestAlgorithm::None => 0,
            DigestAlgorithm::Sha256 => 1,
            DigestAlgorithm::Blake3Blocks => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DigestAlgorithm::None),
            1 => Some(DigestAlgorithm::Sha256),
            2 => Some(DigestAlgorithm::Blake3Blocks),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub const fn len(self) -> usize {
        match self {
            DigestAlgorithm::None => 0,
            DigestAlgorithm::Sha256 | DigestAlgorithm::Blake3Blocks => 32,
        }
    }

    /// Whether the algorithm records nothing.
    pub const fn is_empty(self) -> bool {
        matches!(self, DigestAlgorithm::None)
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::None => "none",
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Blake3Blocks => "blake3-blocks",
        }
    }
}

/// What the trailer records about the image's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// Exact length of the input before padding to whole blocks.
    pub original_len: u64,
    /// Algorithm of `digest`.
    pub digest_algorithm: DigestAlgorithm,
    /// Digest of the original input (length given by the algorithm).
    pub digest: Vec<u8>,
    /// `index[n]` of the image the trailer was written for.
    pub data_end: u64,
    /// The writing tool and its version, e.g. `mkmodule 0.1.0`.
    pub tool: String,
    /// The block encoder and the block-digest table (empty in older trailers).
    pub extension: TrailerExtension,
}

impl Trailer {
    /// Encodes the trailer into its fixed 136 bytes. Tool text beyond 32 bytes is cut.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[..16].copy_from_slice(TRAILER_MAGIC);
        out[16..18].copy_from_slice(&LAYOUT_VERSION.to_be_bytes());
        out[18] = self.digest_algorithm.code();
        let digest_len = self.digest.len().min(64);
        out[19] = digest_len as u8;
        out[20..20 + digest_len].copy_from_slice(&self.digest[..digest_len]);
        if digest_len <= MAX_DIGEST_WITH_EXTENSION {
            self.extension.encode(&mut out[EXTENSION_AT..84]);
        }
        out[84..92].copy_from_slice(&self.original_len.to_be_bytes());
        out[92..100].copy_from_slice(&self.data_end.to_be_bytes());
        let tool = self.tool.as_bytes();
        let tool_len = tool.len().min(32);
        out[100..100 + tool_len].copy_from_slice(&tool[..tool_len]);
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Finds a trailer in the last bytes of a file of `file_len` bytes.
    ///
    /// Returns `Ok(None)` when the last 136 bytes do not start with the magic (no trailer),
    /// and an error when they do but the checksum or layout version is wrong.
    pub fn find(tail: &[u8], file_len: u64) -> Result<Option<Trailer>, FormatError> {
        if tail.len() < TRAILER_LEN || file_len < TRAILER_LEN as u64 {
            return Ok(None);
        }
        let bytes = &tail[tail.len() - TRAILER_LEN..];
        if &bytes[..16] != TRAILER_MAGIC {
            return Ok(None);
        }
        let offset = file_len - TRAILER_LEN as u64;
        let stored = u32::from_be_bytes([bytes[132], bytes[133], bytes[134], bytes[135]]);
        let computed = crc32fast::hash(&bytes[..CRC_AT]);
        if stored != computed {
            return Err(FormatError::TrailerCorrupt {
                offset,
                stored,
                computed,
            });
        }
        let version = u16::from_be_bytes([bytes[16], bytes[17]]);
        let algorithm = DigestAlgorithm::from_code(bytes[18]);
        let digest_len = usize::from(bytes[19]);
        let Some(digest_algorithm) = algorithm.filter(|a| a.len() == digest_len) else {
            return Err(FormatError::TrailerVersion { version });
        };
        if version != LAYOUT_VERSION {
            return Err(FormatError::TrailerVersion { version });
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let tool_bytes = &bytes[100..132];
        let tool_len = tool_bytes.iter().position(|&b| b == 0).unwrap_or(32);
        Ok(Some(Trailer {
            original_len: word(84),
            digest_algorithm,
            digest: bytes[20..20 + digest_len].to_vec(),
            data_end: word(92),
            tool: String::from_utf8_lossy(&tool_bytes[..tool_len]).into_owned(),
            extension: if digest_len <= MAX_DIGEST_WITH_EXTENSION {
                TrailerExtension::decode(&bytes[EXTENSION_AT..84])
            } else {
                TrailerExtension::default()
            },
        }))
    }

    /// Zero bytes to put between `index[n]` and the trailer so the file ends on a 512 boundary.
    /// With a block-digest table of `t` bytes between them, the padding is
    /// `padding_before(data_end + t)` and goes before the table.
    pub const fn padding_before(data_end: u64) -> u64 {
        let unpadded = data_end + TRAILER_LEN as u64;
        (512 - unpadded % 512) % 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::SIGNATURE_OFFSET;

    fn sample() -> Trailer {
        Trailer {
            original_len: 100_000,
            digest_algorithm: DigestAlgorithm::Blake3Blocks,
            digest: (0..32).collect(),
            data_end: 6513,
            tool: "mkmodule 0.1.0".into(),
            extension: TrailerExtension::default(),
        }
    }

    fn extended() -> Trailer {
        Trailer {
            extension: TrailerExtension {
                encoding: Some(BlockEncoding::Fixed {
                    codec: crate::CodecKind::Zlib,
                    level: 5,
                }),
                digest_table: Some(DigestTableRef {
                    algorithm: BlockDigestAlgorithm::Blake3,
                    offset: 7000,
                    entries: 3,
                    crc: 0xdead_beef,
                }),
                stored_checks: Some(StoredChecksRef {
                    offset: 7000 - 12,
                    entries: 3,
                    crc: 0x1234_5678,
                }),
            },
            ..sample()
        }
    }

    #[test]
    fn the_extension_round_trips() {
        let bytes = extended().encode();
        assert_eq!(Trailer::find(&bytes, 8192).unwrap(), Some(extended()));
        assert_eq!(&bytes[52..56], &[2, 16, 1, 5]);
        assert_eq!(&bytes[56..64], &7000u64.to_be_bytes());
        assert_eq!(&bytes[64..68], &3u32.to_be_bytes());
        assert_eq!(&bytes[68..72], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&bytes[72..76], &[1, 4, 0, 0]);
        assert_eq!(&bytes[76..80], &0x1234_5678u32.to_be_bytes());
        assert!(bytes[80..84].iter().all(|&b| b == 0));
    }

    /// A reader of the extension before the stored-check table read bytes 52..72 only: they
    /// are the same with and without it.
    #[test]
    fn the_stored_checks_leave_the_earlier_extension_alone() {
        let without = Trailer {
            extension: TrailerExtension {
                stored_checks: None,
                ..extended().extension
            },
            ..sample()
        };
        let (old, new) = (without.encode(), extended().encode());
        assert_eq!(old[..72], new[..72]);
        assert_eq!(old[84..CRC_AT], new[84..CRC_AT]);
        assert!(old[72..84].iter().all(|&b| b == 0));
        assert_eq!(Trailer::find(&old, 8192).unwrap(), Some(without));
    }

    #[test]
    fn unknown_stored_checks_are_left_out() {
        let mut bytes = extended().encode();
        bytes[73] = 8;
        let crc = crc32fast::hash(&bytes[..CRC_AT]);
        bytes[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        let found = Trailer::find(&bytes, 8192).unwrap().unwrap();
        assert_eq!(found.extension.stored_checks, None);
        assert_eq!(
            found.extension.digest_table,
            extended().extension.digest_table
        );
    }

    /// What a reader of the first layout does: it reads fields at fixed places and never looks
    /// at the unused half of the digest field, so an extended trailer reads the same to it.
    #[test]
    fn an_extended_trailer_reads_the_same_without_the_extension() {
        let plain = sample().encode();
        let bytes = extended().encode();
        assert_eq!(bytes[..52], plain[..52]);
        assert_eq!(bytes[84..CRC_AT], plain[84..CRC_AT]);
    }

    #[test]
    fn an_unknown_table_algorithm_is_left_out() {
        let mut bytes = extended().encode();
        bytes[52] = 9;
        let crc = crc32fast::hash(&bytes[..CRC_AT]);
        bytes[CRC_AT..].copy_from_slice(&crc.to_be_bytes());
        let found = Trailer::find(&bytes, 8192).unwrap().unwrap();
        assert_eq!(found.extension.digest_table, None);
        assert_eq!(found.extension.encoding, extended().extension.encoding);
    }

    /// Trailers of earlier releases (SHA-256 of the input, a SHA-256 block-digest table) still
    /// read as what they are.
    #[test]
    fn earlier_algorithms_still_read() {
        let mut earlier = extended();
        earlier.digest_algorithm = DigestAlgorithm::Sha256;
        if let Some(table) = earlier.extension.digest_table.as_mut() {
            table.algorithm = BlockDigestAlgorithm::Sha256;
        }
        let bytes = earlier.encode();
        assert_eq!((bytes[18], bytes[19], bytes[52]), (1, 32, 1));
        assert_eq!(Trailer::find(&bytes, 8192).unwrap(), Some(earlier));
        let blake3 = extended().encode();
        assert_eq!((blake3[18], blake3[19], blake3[52]), (2, 32, 2));
    }

    #[test]
    fn round_trip() {
        let bytes = sample().encode();
        assert_eq!(Trailer::find(&bytes, 7168).unwrap(), Some(sample()));
    }

    #[test]
    fn never_looks_like_a_footer_header() {
        let bytes = sample().encode();
        let sig = &bytes[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4];
        assert_ne!(sig, b"V2.0");
        assert_ne!(sig, b"V4.0");
    }

    #[test]
    fn corruption_is_reported_with_offset() {
        let mut bytes = sample().encode();
        bytes[90] ^= 1;
        assert!(matches!(
            Trailer::find(&bytes, 1000),
            Err(FormatError::TrailerCorrupt { offset: 864, .. })
        ));
    }

    #[test]
    fn absent_trailer_is_none() {
        assert_eq!(Trailer::find(&[0u8; 136], 136).unwrap(), None);
        assert_eq!(Trailer::find(&[0u8; 10], 10).unwrap(), None);
    }

    #[test]
    fn padding_ends_file_on_512() {
        for end in [0u64, 1, 375, 376, 377, 511, 512, 6513] {
            assert_eq!(
                (end + Trailer::padding_before(end) + 136) % 512,
                0,
                "end {end}"
            );
        }
    }
}
