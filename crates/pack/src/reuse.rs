//! Copying unchanged blocks from an older image (`create --reuse OLD`).
//!
//! A block's compressed bytes depend only on its uncompressed bytes, the block size and the
//! block encoder (codec and level, or `best`, and whether the dialect falls back to stored zlib
//! for blocks that do not shrink). So when OLD was written the same way, a new block whose
//! digest (docs/FORMAT.md §12.4) equals that of a block of OLD, at any position, would compress
//! to exactly OLD's bytes for that block: they are copied instead. OLD may be of another
//! dialect when the encoder is one fixed codec that both dialects write the same way (a v2
//! image's zlib blocks are valid v4 or uzip-zlib blocks): that is what `convert` relies on.
//! Everything that depends on a block's place (zero-length blocks, dedup back-references, the
//! rule against referencing the block just before) is decided by the in-order writer from those
//! bytes as for a compressed block, so the image is byte-identical to one written without
//! reuse.
//!
//! Digests are short, and OLD may be damaged, so every block is checked before it is copied,
//! through [`CopyCheck::accepts`] as in every other copier. With [`ReuseCheck::Table`] (the
//! default), OLD's digests come from its block-digest table and the compressed bytes are checked
//! against OLD's stored-check table (a CRC32 of each block's bytes, docs/FORMAT.md §12.4); an OLD
//! written before that table has its blocks decoded and compared instead, and an OLD without a
//! digest table has them decoded once to compute the digests, which checks them. With
//! [`ReuseCheck::Decode`], OLD's bytes are always decoded and compared with the new block. A
//! mismatch (damage, or two blocks with the same 16-byte digest) or an unreadable block means the
//! block is compressed after all, and the writer reports it.
//!
//! Memory: one map entry (digest and block number) per distinct block of OLD.

use std::collections::HashMap;

use mkmodule_blockdev::{is_zero, ErrorKind};
use mkmodule_codec::CodecKind;
use mkmodule_format::{
    stored_check, BlockDigest, BlockDigestAlgorithm, BlockEncoding, BlockKind, Dialect,
};
use mkmodule_image::{CopyCheck, DigestOrigin, Image, ImageError, Wanted};

use crate::encode::BlockEncoder;
use crate::options::Plan;

/// Blocks of OLD tried by compressing them again before anything is copied.
const PROBE_BLOCKS: usize = 3;

/// Why OLD cannot give blocks to the image being written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReuseError {
    /// OLD is of a dialect whose blocks the new image's encoder would not write the same way.
    #[error("it is a {old} image, and the new one is {new}: give --format {old}")]
    Dialect {
        /// OLD's dialect.
        old: Dialect,
        /// The dialect being written.
        new: Dialect,
    },
    /// OLD has another block size.
    #[error("its blocks are {old} bytes, and the new image's {new}: give --block-size {old}")]
    BlockSize {
        /// OLD's block size.
        old: u32,
        /// The block size being written.
        new: u32,
    },
    /// OLD's trailer records another block encoder.
    #[error(
        "its blocks were compressed as {old}, and the new image's as {new}: give --codec {old}"
    )]
    Encoding {
        /// OLD's encoder.
        old: BlockEncoding,
        /// The encoder being used.
        new: BlockEncoding,
    },
    /// A block of OLD compresses to other bytes with the new image's options: another encoder
    /// (another codec or level, or another build of the codec library) wrote OLD.
    #[error(
        "its block {block} compresses to other bytes with these options: it was written with \
         other options or by another build{tool}"
    )]
    Encoder {
        /// The block tried.
        block: u32,
        /// `" (TOOL)"` when OLD's trailer names the tool that wrote it, else empty.
        tool: String,
    },
}

impl ReuseError {
    /// What kind of failure this is: always a matter of options.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Config
    }
}

/// How much a block of OLD is checked before it is copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReuseCheck {
    /// Copied when its digest matches and its compressed bytes match OLD's stored check (OLD's
    /// tables are checked by their CRC32s); decoded and compared, as with [`Self::Decode`], when
    /// OLD has no stored checks; copied on the digest alone when the digests were just computed
    /// by decoding OLD.
    #[default]
    Table,
    /// Also decoded and compared with the new block before it is copied.
    Decode,
}

/// What [`Reuse::fetch`] found for a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    /// No block of OLD has this digest.
    Miss,
    /// OLD's bytes were copied into the output buffer.
    Copied {
        /// Their codec.
        codec: CodecKind,
        /// Their stored check.
        check: u32,
    },
    /// OLD's block `old_block` has the digest but not the bytes (damage or a collision), or
    /// could not be read: compress the block.
    Rejected {
        /// The block of OLD.
        old_block: u32,
    },
}

/// How the bytes of a block of OLD are checked before they are copied.
#[derive(Debug)]
enum Checks {
    /// Against OLD's stored-check table.
    Stored(Vec<u32>),
    /// By decoding them.
    Decode,
    /// Not at all: OLD's digests were computed by decoding these very bytes.
    Decoded,
}

/// The blocks of an older image that the image being written may copy.
pub struct Reuse<'a> {
    old: &'a Image,
    by_digest: HashMap<BlockDigest, u32>,
    from_table: bool,
    table_problem: Option<ImageError>,
    checks: Checks,
    checks_problem: Option<ImageError>,
}

impl std::fmt::Debug for Reuse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reuse")
            .field("old", &self.old.path())
            .field("blocks", &self.by_digest.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Reuse<'a> {
    /// Prepares to copy blocks of `old` into images written by `plan`: refuses an image of
    /// another dialect, block size or encoder, then reads OLD's block digests (from its table,
    /// or by decoding it on `threads` threads when it has no valid one).
    pub fn new(old: &'a Image, plan: &Plan, threads: usize) -> Result<Reuse<'a>, ReuseError> {
        check_options(old, plan)?;
        let digests = old.block_digests(threads, BlockDigestAlgorithm::WRITTEN);
        let (from_table, table_problem) = match digests.origin {
            DigestOrigin::Table => (true, None),
            DigestOrigin::Decoded { problem } => (false, problem),
            DigestOrigin::OtherAlgorithm { .. } => (false, None),
        };
        let short_final = old.dialect().spec().short_final_block;
        let last = digests.digests.len().saturating_sub(1);
        let mut by_digest = HashMap::new();
        for (block, digest) in digests.digests.into_iter().enumerate() {
            let stored = old
                .index()
                .get(block)
                .is_some_and(|e| e.kind != BlockKind::Zero);
            // A uzip final block may have been compressed short: its bytes are not those of
            // a whole block.
            let whole = !(short_final && block == last);
            if let (Some(digest), true, true) = (digest, stored, whole) {
                by_digest.entry(digest).or_insert(block as u32);
            }
        }
        // A damaged stored-check table is not trusted: the blocks are decoded instead.
        let (checks, checks_problem) = match (from_table, old.stored_checks()) {
            (false, _) => (Checks::Decoded, None),
            (true, Ok(Some(checks))) => (Checks::Stored(checks), None),
            (true, Ok(None)) => (Checks::Decode, None),
            (true, Err(problem)) => (Checks::Decode, Some(problem)),
        };
        Ok(Reuse {
            old,
            by_digest,
            from_table,
            table_problem,
            checks,
            checks_problem,
        })
    }

    /// The same, checking blocks as `check` says before they are copied.
    pub fn with_check(self, check: ReuseCheck) -> Reuse<'a> {
        match check {
            ReuseCheck::Table => self,
            ReuseCheck::Decode => Reuse {
                checks: Checks::Decode,
                ..self
            },
        }
    }

    /// What is wrong with OLD's stored-check table, when it has one that was not used (its
    /// blocks are then decoded before they are copied).
    pub fn checks_problem(&self) -> Option<&ImageError> {
        self.checks_problem.as_ref()
    }

    /// Whether blocks are checked against OLD's stored checks (else they are decoded, or were
    /// decoded already to compute OLD's digests).
    pub fn stored_checks(&self) -> bool {
        matches!(self.checks, Checks::Stored(_))
    }

    /// The older image.
    pub fn old(&self) -> &Image {
        self.old
    }

    /// Distinct block contents OLD offers.
    pub fn distinct_blocks(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether OLD's digests came from its block-digest table (else they were computed by
    /// decoding it).
    pub fn from_table(&self) -> bool {
        self.from_table
    }

    /// What is wrong with OLD's block-digest table, when it has one that was not used.
    pub fn table_problem(&self) -> Option<&ImageError> {
        self.table_problem.as_ref()
    }

    /// Copies OLD's compressed bytes for a whole block `data` of digest `digest` into `out`,
    /// once [`CopyCheck::accepts`] them.
    pub(crate) fn fetch(
        &self,
        digest: &BlockDigest,
        data: &[u8],
        out: &mut Vec<u8>,
        checker: &mut CopyCheck,
    ) -> Fetch {
        let Some(&old_block) = self.by_digest.get(digest) else {
            return Fetch::Miss;
        };
        let Ok(entry) = self.old.compressed_block(old_block, out) else {
            return Fetch::Rejected { old_block };
        };
        let stored = match &self.checks {
            Checks::Stored(checks) => checks.get(old_block as usize).copied(),
            Checks::Decode => None,
            Checks::Decoded => {
                return match out.is_empty() {
                    true => Fetch::Rejected { old_block },
                    false => Fetch::Copied {
                        codec: entry.codec,
                        check: stored_check(out),
                    },
                }
            }
        };
        if !checker.accepts(entry.codec, out, stored, Wanted::Data(data)) {
            return Fetch::Rejected { old_block };
        }
        Fetch::Copied {
            codec: entry.codec,
            check: stored.unwrap_or_else(|| stored_check(out)),
        }
    }
}

/// Whether blocks written for `old`'s dialect with `plan`'s encoder are the bytes `plan` writes:
/// the same dialect, or one fixed codec both dialects allow, with the same stored-zlib fallback
/// for blocks that do not shrink.
fn same_block_bytes(old: Dialect, plan: &Plan) -> bool {
    if old == plan.dialect {
        return true;
    }
    match plan.encoding {
        // The fallback to stored zlib depends only on the codec and on whether the dialect
        // has zlib.
        BlockEncoding::Fixed { codec, .. } => {
            old.allows_codec(codec)
                && plan.dialect.allows_codec(codec)
                && old.allows_codec(CodecKind::Zlib) == plan.dialect.allows_codec(CodecKind::Zlib)
        }
        BlockEncoding::Best => false,
    }
}

/// Refuses an OLD whose blocks would not be the new image's: another block size, a dialect
/// that writes blocks differently, another recorded encoder, or blocks that compress
/// differently when tried.
fn check_options(old: &Image, plan: &Plan) -> Result<(), ReuseError> {
    if !same_block_bytes(old.dialect(), plan) {
        return Err(ReuseError::Dialect {
            old: old.dialect(),
            new: plan.dialect,
        });
    }
    if old.block_size() != plan.block_size {
        return Err(ReuseError::BlockSize {
            old: old.block_size(),
            new: plan.block_size,
        });
    }
    let trailer = old.trailer().filter(|_| old.trailer_problem().is_none());
    if let Some(recorded) = trailer.and_then(|t| t.extension.encoding) {
        if recorded != plan.encoding {
            return Err(ReuseError::Encoding {
                old: recorded,
                new: plan.encoding,
            });
        }
    }
    probe(old, plan).map_err(|block| ReuseError::Encoder {
        block,
        tool: trailer
            .map(|t| format!(" ({})", t.tool))
            .unwrap_or_default(),
    })
}

/// Compresses the first few non-zero whole blocks of OLD again with the plan's encoder;
/// returns the first block whose bytes differ. Blocks that cannot be read or decoded are
/// skipped: they are never copied anyway.
fn probe(old: &Image, plan: &Plan) -> Result<(), u32> {
    let Ok(mut encoder) = BlockEncoder::new(plan) else {
        return Ok(());
    };
    let bs = plan.block_size as usize;
    let mut checker = CopyCheck::new(plan.block_size);
    let (mut stored, mut again, mut decoded) = (Vec::new(), Vec::new(), vec![0u8; bs]);
    let short_final = plan.dialect.spec().short_final_block;
    let candidates = (0..old.num_blocks()).filter(|&block| {
        let whole = !(short_final && block + 1 == old.num_blocks());
        whole && old.index().get(block as usize).map(|e| e.kind) == Some(BlockKind::Stored)
    });
    let mut tried = 0;
    for block in candidates {
        if tried == PROBE_BLOCKS {
            break;
        }
        let Ok(entry) = old.compressed_block(block, &mut stored) else {
            continue;
        };
        let Ok(()) = checker
            .decompressor()
            .decompress_exact(entry.codec, &stored, &mut decoded)
        else {
            continue;
        };
        if is_zero(&decoded) {
            continue;
        }
        tried += 1;
        match encoder.encode(&decoded, &mut again) {
            Ok(encoding) if encoding.codec == entry.codec && again == stored => {}
            _ => return Err(block),
        }
    }
    Ok(())
}
