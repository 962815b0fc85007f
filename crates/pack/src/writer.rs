//! The in-order writer: places each block's bytes, decides zero-length blocks and dedup
//! back-references, and keeps the index (8 bytes per block) until the end.

use std::collections::HashMap;
use std::io::Write;

use mkmodule_codec::CodecKind;
use mkmodule_format::{blake3_table_digest, encode_entry, stored_check, IndexEntry, OFFSET_MASK};

use crate::block::{DedupKey, Done, Encoded, Reused, ZeroBlock};
use crate::encode::Encoding;
use crate::error::{ImagePart, PackError};
use crate::options::Plan;
use crate::verity::DigestSink;

/// Counts for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Blocks written.
    pub blocks: u64,
    /// All-zero input blocks.
    pub zero_blocks: u64,
    /// Dedup back-references.
    pub shared_blocks: u64,
    /// Blocks that did not shrink.
    pub incompressible_blocks: u64,
    /// Stored blocks per codec, in [`CodecKind::ALL`] order.
    pub per_codec: [u64; CodecKind::ALL.len()],
    /// Real input bytes (before padding).
    pub input_bytes: u64,
    /// Blocks copied from an older image.
    pub reused_blocks: u64,
    /// Blocks an older image offered but whose bytes did not check out (compressed instead).
    pub rejected_blocks: u64,
}

/// Builds the block area and the index, block by block, in order.
pub(crate) struct ImageBuilder<'p> {
    plan: &'p Plan,
    zero: ZeroBlock,
    /// `(codec position << 60) | offset relative to the first block's start`.
    entries: Vec<u64>,
    /// Relative offset where the next block's bytes go.
    pos: u64,
    /// Relative offset of the latest normally placed entry: a back-reference to it would read as
    /// a zero-length block (docs/FORMAT.md §6.5), so it is never referenced.
    last_normal: Option<u64>,
    seen: HashMap<DedupKey, u64>,
    counts: Counts,
    /// Receives each block's dm-verity hashes, in order (only with a hash tree).
    verity: Option<&'p mut dyn DigestSink>,
    /// The block-digest table (16 bytes per block), kept for the trailer.
    digest_table: Vec<u8>,
    /// The stored-check table (4 bytes per block), kept for the trailer.
    stored_checks: Vec<u8>,
}

fn codec_code(kind: CodecKind) -> u64 {
    CodecKind::ALL.iter().position(|&k| k == kind).unwrap_or(0) as u64
}

impl<'p> ImageBuilder<'p> {
    /// A builder for `plan`, given the precomputed all-zero block.
    pub fn new(plan: &'p Plan, zero: ZeroBlock) -> ImageBuilder<'p> {
        ImageBuilder {
            plan,
            zero,
            entries: Vec::new(),
            pos: 0,
            last_normal: None,
            seen: HashMap::new(),
            counts: Counts::default(),
            verity: None,
            digest_table: Vec::new(),
            stored_checks: Vec::new(),
        }
    }

    /// Hands every block's dm-verity hashes to `sink` as the block is placed.
    pub fn with_verity(self, sink: &'p mut dyn DigestSink) -> ImageBuilder<'p> {
        ImageBuilder {
            verity: Some(sink),
            ..self
        }
    }

    /// Bytes of block data written so far.
    pub fn data_len(&self) -> u64 {
        self.pos
    }

    /// The counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The digests of the blocks so far, concatenated (empty without a trailer).
    pub fn digest_table(&self) -> &[u8] {
        &self.digest_table
    }

    /// The stored checks of the blocks so far, concatenated (empty without a trailer).
    pub fn stored_checks(&self) -> &[u8] {
        &self.stored_checks
    }

    /// Number of blocks so far.
    pub fn num_blocks(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Places the next block. `base` is the image offset of relative offset 0 (for messages;
    /// `None` while the blocks go to a spool).
    pub fn push(
        &mut self,
        done: &Done,
        body: &mut dyn Write,
        base: Option<u64>,
    ) -> Result<(), PackError> {
        self.counts.blocks += 1;
        self.counts.input_bytes += done.real_len as u64;
        if let Some(sink) = self.verity.as_mut() {
            sink.push_digests(&done.slot.leaves);
        }
        if self.plan.trailer {
            let digest = done.digest.ok_or(PackError::Internal(
                "a block reached the writer without its digest",
            ))?;
            self.digest_table
                .extend_from_slice(&blake3_table_digest(&digest));
            let check = match done.encoded {
                Encoded::Zero if self.plan.zero_length => stored_check(&[]),
                Encoded::Zero => self.zero.check,
                Encoded::Data(_) => done.stored_check,
            };
            self.stored_checks.extend_from_slice(&check.to_be_bytes());
        }
        match done.reused {
            Reused::No => {}
            Reused::Copied => self.counts.reused_blocks += 1,
            Reused::Rejected { .. } => self.counts.rejected_blocks += 1,
        }
        match done.encoded {
            Encoded::Zero if self.plan.zero_length => {
                self.counts.zero_blocks += 1;
                let codec = self.plan.dialect.default_codec();
                self.entries.push(codec_code(codec) << 60 | self.pos);
                self.last_normal = Some(self.pos);
                Ok(())
            }
            Encoded::Zero => {
                self.counts.zero_blocks += 1;
                let zero = std::mem::take(&mut self.zero.bytes);
                let (encoding, key) = (self.zero.encoding, self.zero.key);
                let result = self.place(done.block, &zero, encoding, key, body, base);
                self.zero.bytes = zero;
                result
            }
            Encoded::Data(encoding) => {
                let bytes = &done.slot.output;
                self.place(done.block, bytes, encoding, done.key, body, base)
            }
        }
    }

    fn place(
        &mut self,
        block: u64,
        bytes: &[u8],
        encoding: Encoding,
        key: Option<DedupKey>,
        body: &mut dyn Write,
        base: Option<u64>,
    ) -> Result<(), PackError> {
        let code = codec_code(encoding.codec);
        if encoding.incompressible {
            self.counts.incompressible_blocks += 1;
        }
        if let (true, Some(key)) = (self.plan.dedup, key) {
            if let Some(&at) = self.seen.get(&key) {
                if Some(at) != self.last_normal {
                    self.counts.shared_blocks += 1;
                    self.entries.push(code << 60 | at);
                    return Ok(());
                }
            } else {
                self.seen.insert(key, self.pos);
            }
        }
        body.write_all(bytes).map_err(|e| {
            let part = match base {
                Some(_) => ImagePart::Block(block),
                None => ImagePart::SpooledBlock {
                    block,
                    at: self.pos,
                },
            };
            PackError::write(part, base.unwrap_or(0) + self.pos, e)
        })?;
        self.counts.per_codec[code as usize] += 1;
        self.entries.push(code << 60 | self.pos);
        self.last_normal = Some(self.pos);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index (`n + 1` entries) with the blocks' data starting at image offset `base`;
    /// `at` is the image offset of the index (for messages).
    pub fn write_index(&self, base: u64, at: u64, out: &mut dyn Write) -> Result<(), PackError> {
        let dialect = self.plan.dialect;
        let mut chunk = Vec::with_capacity(64 * 1024);
        for &packed in &self.entries {
            let entry = IndexEntry {
                offset: base + (packed & OFFSET_MASK),
                codec: CodecKind::ALL[(packed >> 60) as usize],
            };
            chunk.extend_from_slice(&encode_entry(dialect, entry)?.to_be_bytes());
            if chunk.len() >= 64 * 1024 {
                out.write_all(&chunk)
                    .map_err(|e| PackError::write(ImagePart::Index, at, e))?;
                chunk.clear();
            }
        }
        let end = base + self.pos;
        if end > OFFSET_MASK {
            return Err(mkmodule_format::FormatError::OffsetTooLarge { offset: end }.into());
        }
        chunk.extend_from_slice(&end.to_be_bytes());
        out.write_all(&chunk)
            .map_err(|e| PackError::write(ImagePart::Index, at, e))
    }
}
