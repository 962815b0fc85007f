//! Per-block digests of an image (docs/FORMAT.md §12.4): read from mkmodule's block-digest
//! table when the trailer has a valid one, computed by decoding every block otherwise; the
//! stored checks of the blocks' compressed bytes; and the compressed bytes of one block, as
//! stored.

use mkmodule_format::{BlockDigest, BlockDigestAlgorithm, BlockEntry, BlockKind, FormatError};

use crate::parallel::{Decoded, ParallelOptions};
use crate::{Image, ImageError};

/// Where [`Image::block_digests`] found the digests.
#[derive(Debug)]
pub enum DigestOrigin {
    /// Read from the block-digest table of the trailer.
    Table,
    /// Computed by decoding every block: the table holds digests of another hash (an image of
    /// an earlier release, whose table is SHA-256).
    OtherAlgorithm {
        /// The hash of the table.
        table: BlockDigestAlgorithm,
    },
    /// Computed by decoding every block: the image has no usable table (`problem` says why
    /// when it has one that is damaged or misplaced).
    Decoded {
        /// What is wrong with the table, when there is one.
        problem: Option<ImageError>,
    },
}

/// The block-digest table of an image's trailer, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestTable {
    /// The hash of the digests.
    pub algorithm: BlockDigestAlgorithm,
    /// One digest per block, in block order.
    pub digests: Vec<BlockDigest>,
}

/// The digest of every block, in block order.
#[derive(Debug)]
pub struct BlockDigests {
    /// The hash of the digests.
    pub algorithm: BlockDigestAlgorithm,
    /// One entry per block; `None` for a block that could not be decoded (only when computed).
    pub digests: Vec<Option<BlockDigest>>,
    /// Where they come from.
    pub origin: DigestOrigin,
}

impl Image {
    /// The block-digest table of the trailer, checked: `Ok(None)` when the image has none (no
    /// trailer, an unusable trailer, or one written without a table), an error when the table
    /// is misplaced, unreadable, or does not match its checksum. Reads `16 × blocks` bytes.
    pub fn digest_table(&self) -> Result<Option<DigestTable>, ImageError> {
        if self.trailer_problem().is_some() {
            return Ok(None);
        }
        let Some(table) = self.trailer().and_then(|t| t.extension.digest_table) else {
            return Ok(None);
        };
        table.check_place(self.index().data_end(), self.num_blocks(), self.file_len())?;
        // The table lies inside the file (checked above), so its length is bounded by it.
        let len = usize::try_from(table.len()).map_err(|_| {
            ImageError::Format(FormatError::DigestTableMisplaced {
                offset: table.offset,
                entries: table.entries,
                num_blocks: self.num_blocks(),
                data_end: self.index().data_end(),
                trailer_at: self.file_len(),
            })
        })?;
        let mut bytes = vec![0u8; len];
        self.core
            .source
            .read_exact_at(&mut bytes, table.offset)
            .map_err(|source| ImageError::Io {
                offset: table.offset,
                len: table.len(),
                source,
            })?;
        Ok(Some(DigestTable {
            algorithm: table.algorithm,
            digests: table.parse(&bytes)?,
        }))
    }

    /// The stored-check table of the trailer (docs/FORMAT.md §12.4), checked: `Ok(None)` when
    /// the image has none (no usable trailer, or one written before the table existed), an
    /// error when it is misplaced, unreadable, or does not match its checksum. Reads
    /// `4 × blocks` bytes. The block-digest table it sits before is not read here.
    pub fn stored_checks(&self) -> Result<Option<Vec<u32>>, ImageError> {
        if self.trailer_problem().is_some() {
            return Ok(None);
        }
        let Some(checks) = self.trailer().and_then(|t| t.extension.stored_checks) else {
            return Ok(None);
        };
        checks.check_place(self.index().data_end(), self.num_blocks())?;
        // It ends where the block-digest table starts, whose place is checked: within the file.
        let len = usize::try_from(checks.len()).map_err(|_| {
            ImageError::Format(FormatError::StoredChecksMisplaced {
                offset: checks.offset,
                entries: checks.entries,
                num_blocks: self.num_blocks(),
                data_end: self.index().data_end(),
            })
        })?;
        if let Some(table) = self.trailer().and_then(|t| t.extension.digest_table) {
            table.check_place(self.index().data_end(), self.num_blocks(), self.file_len())?;
        }
        let mut bytes = vec![0u8; len];
        self.core
            .source
            .read_exact_at(&mut bytes, checks.offset)
            .map_err(|source| ImageError::Io {
                offset: checks.offset,
                len: checks.len(),
                source,
            })?;
        Ok(Some(checks.parse(&bytes)?))
    }

    /// The `algorithm` digest of every block: from the block-digest table when it is valid and
    /// of that hash, otherwise computed by decoding every block on `threads` threads (0: one
    /// per core). A damaged table is never trusted; the reason is in [`DigestOrigin::Decoded`].
    pub fn block_digests(&self, threads: usize, algorithm: BlockDigestAlgorithm) -> BlockDigests {
        let origin = match self.digest_table() {
            Ok(Some(table)) if table.algorithm == algorithm => {
                return BlockDigests {
                    algorithm,
                    digests: table.digests.into_iter().map(Some).collect(),
                    origin: DigestOrigin::Table,
                }
            }
            Ok(Some(table)) => DigestOrigin::OtherAlgorithm {
                table: table.algorithm,
            },
            Ok(None) => DigestOrigin::Decoded { problem: None },
            Err(problem) => DigestOrigin::Decoded {
                problem: Some(problem),
            },
        };
        BlockDigests {
            algorithm,
            digests: self.decoded_digests(threads, algorithm),
            origin,
        }
    }

    /// Digests computed by decoding every block; `None` for blocks that fail to decode.
    fn decoded_digests(
        &self,
        threads: usize,
        algorithm: BlockDigestAlgorithm,
    ) -> Vec<Option<BlockDigest>> {
        let bs = self.block_size();
        let zero = algorithm.digest(&[], bs);
        let mut digests = Vec::with_capacity(self.num_blocks() as usize);
        let pass = ParallelOptions {
            threads,
            skip_zero: true,
        };
        let finished = self.par_blocks_ordered(pass, |_, decoded| {
            digests.push(match decoded {
                Ok(Decoded::Zero) => Some(zero),
                Ok(Decoded::Data(bytes)) => Some(algorithm.digest(bytes, bs)),
                Err(_) => None,
            });
            Ok::<(), ()>(())
        });
        debug_assert!(finished.is_ok(), "the sink never fails");
        digests
    }

    /// Reads the compressed bytes of block `block` as stored (a back-reference's are those of
    /// the block it points to; a zero-length block has none) into `out`, and returns its entry.
    pub fn compressed_block(
        &self,
        block: u32,
        out: &mut Vec<u8>,
    ) -> Result<BlockEntry, ImageError> {
        let entry = *self
            .index()
            .get(block as usize)
            .ok_or(ImageError::NoSuchBlock {
                block: u64::from(block),
                num_blocks: self.num_blocks(),
            })?;
        out.clear();
        if entry.kind == BlockKind::Zero {
            return Ok(entry);
        }
        out.resize(entry.len as usize, 0);
        self.core
            .source
            .read_exact_at(out, entry.offset)
            .map_err(|source| ImageError::BlockIo {
                block,
                offset: entry.offset,
                len: entry.len,
                source,
            })?;
        Ok(entry)
    }
}
