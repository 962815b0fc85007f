//! The block index: parsing with every check of docs/FORMAT.md §6 and §7, and
//! emitting it for writers.

use crate::dialect::HeaderPosition;
use crate::layout::{Layout, ENTRY_LEN, OFFSET_MASK};
use crate::{CodecKind, Dialect, FormatError, Header};

/// How a block's bytes are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Its own compressed bytes at `offset`.
    Stored,
    /// Zero compressed length: reads as a block of zeros (mkuzip's sparse blocks).
    Zero,
    /// A dedup back-reference: the same bytes as an earlier block.
    Shared {
        /// The first block stored at that offset.
        of: u32,
    },
}

/// Where one block's compressed bytes are and how to decode them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    /// File offset of the compressed bytes.
    pub offset: u64,
    /// Compressed length (0 for zero blocks).
    pub len: u32,
    /// Codec of the bytes.
    pub codec: CodecKind,
    /// Stored, zero or shared.
    pub kind: BlockKind,
}

impl BlockEntry {
    /// File offset one past the compressed bytes.
    pub const fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// The validated index of an image: one entry per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    header: Header,
    blocks: Vec<BlockEntry>,
    data_end: u64,
}

/// Extra bytes beyond a codec's bound that a block may span before it is called corrupt.
///
/// extract_compressed_fs accepts `bs + bs/1000 + 16` and tools may leave slack after a zlib
/// stream (docs/FORMAT.md §7), so the limit is the larger of the codec bound and that cap.
pub fn block_len_limit(codec: CodecKind, block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    codec
        .max_compressed_len(block_size)
        .max(bs + bs / 1000 + 16)
}

fn read_entry(bytes: &[u8], i: usize) -> u64 {
    let at = i * ENTRY_LEN as usize;
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

/// For each position, the index of the first later entry whose value is at least its own
/// (`values.len()` when none): the end of a normally placed uzip block skips later
/// back-references. A monotonic stack keeps it linear even for hostile indexes.
fn next_at_least(values: &[u64]) -> Vec<usize> {
    let mut next = vec![values.len(); values.len()];
    let mut stack: Vec<usize> = Vec::new();
    for (i, &v) in values.iter().enumerate().rev() {
        while let Some(&top) = stack.last() {
            if values[top] < v {
                stack.pop();
            } else {
                break;
            }
        }
        if let Some(&top) = stack.last() {
            next[i] = top;
        }
        stack.push(i);
    }
    next
}

/// Checks one block entry (not `index[n]`) of `layout`'s index and splits it into offset and
/// codec: the rules of pass 1 of [`BlockIndex::parse`].
fn block_entry(layout: &Layout, block: u32, raw: u64) -> Result<(u64, CodecKind), FormatError> {
    let dialect = layout.dialect;
    let spec = dialect.spec();
    let (data_start, data_limit) = layout.data_area();
    if raw == u64::MAX {
        return Err(FormatError::UnwrittenEntry { entry: block });
    }
    let flag = (raw >> 60) as u8;
    let codec = if spec.codec_flags {
        CodecKind::from_v4_flag(flag).ok_or(FormatError::UnknownCodecFlag { block, flag })?
    } else if flag != 0 {
        return Err(FormatError::FlagBitsSet {
            block,
            entry: raw,
            dialect,
        });
    } else {
        dialect.default_codec()
    };
    if !dialect.allows_codec(codec) {
        return Err(FormatError::CodecNotAllowed {
            block,
            codec,
            dialect,
        });
    }
    let offset = raw & OFFSET_MASK;
    if offset < data_start {
        return Err(FormatError::OffsetBeforeData {
            block,
            offset,
            data_start,
        });
    }
    if offset > data_limit {
        return Err(FormatError::OffsetPastEnd {
            block,
            offset,
            limit: data_limit,
        });
    }
    Ok((offset, codec))
}

impl BlockIndex {
    /// Parses and validates the index bytes of an image whose layout [`crate::detect`] found.
    ///
    /// `index_bytes` must be exactly `layout.index_len()` bytes read from `layout.index_offset`.
    pub fn parse(layout: &Layout, index_bytes: &[u8]) -> Result<BlockIndex, FormatError> {
        let header = layout.header;
        let n = header.num_blocks as usize;
        if index_bytes.len() as u64 != layout.index_len() {
            return Err(FormatError::IndexBufferSize {
                expected: layout.index_len(),
                actual: index_bytes.len() as u64,
            });
        }
        let dialect = layout.dialect;
        let spec = dialect.spec();
        let (data_start, data_limit) = layout.data_area();

        // Pass 1: split entries into offsets and codecs; check flags and bounds.
        let mut offsets = Vec::with_capacity(n + 1);
        let mut codecs = Vec::with_capacity(n);
        for i in 0..n {
            let (offset, codec) = block_entry(layout, i as u32, read_entry(index_bytes, i))?;
            offsets.push(offset);
            codecs.push(codec);
        }
        let (data_end, end_derived) = Self::resolve_end(layout, index_bytes, &offsets, data_limit)?;
        offsets.push(data_end);

        // Pass 2: lengths, zero blocks and back-references.
        let next = if spec.back_references {
            next_at_least(&offsets)
        } else {
            (1..=n + 1).collect()
        };
        let mut blocks: Vec<BlockEntry> = Vec::with_capacity(n);
        // Starts of non-empty normally placed blocks, increasing: targets of back-references.
        let mut stored_starts: Vec<(u64, u32)> = Vec::new();
        let mut normal_end = offsets.first().copied().unwrap_or(data_start);
        for i in 0..n {
            let block = i as u32;
            let offset = offsets[i];
            let codec = codecs[i];
            if offset < normal_end {
                if !spec.back_references {
                    return Err(FormatError::DecreasingOffset {
                        block,
                        offset,
                        previous: normal_end,
                    });
                }
                let found = stored_starts
                    .binary_search_by_key(&offset, |&(start, _)| start)
                    .map_err(|_| FormatError::BadBackReference { block, offset })?;
                let of = stored_starts[found].1;
                let len = blocks[of as usize].len;
                blocks.push(BlockEntry {
                    offset,
                    len,
                    codec,
                    kind: BlockKind::Shared { of },
                });
                continue;
            }
            let j = next[i];
            let end = if j > n { data_end } else { offsets[j] };
            if end < offset {
                // Only the end entry can be smaller here: every later block entry is checked
                // when its turn comes.
                return Err(if j >= n {
                    FormatError::IndexEndBeforeLastBlock {
                        end,
                        last_start: offset,
                    }
                } else {
                    FormatError::DecreasingOffset {
                        block: j as u32,
                        offset: end,
                        previous: offset,
                    }
                });
            }
            let mut len = end - offset;
            let limit = block_len_limit(codec, header.block_size);
            if len > limit {
                if end_derived && j >= n {
                    // uzip before version 4: the final block's range runs to the media end and
                    // carries padding; geom_uzip trims it to the codec bound.
                    len = limit;
                } else {
                    return Err(FormatError::BlockTooLong {
                        block,
                        offset,
                        len,
                        limit,
                        codec,
                        block_size: header.block_size,
                    });
                }
            }
            let kind = if len == 0 {
                BlockKind::Zero
            } else {
                BlockKind::Stored
            };
            if len > 0 {
                stored_starts.push((offset, block));
            }
            normal_end = end;
            blocks.push(BlockEntry {
                offset,
                len: len as u32,
                codec,
                kind,
            });
        }
        Ok(BlockIndex {
            header,
            blocks,
            data_end,
        })
    }

    /// Checks the block entries in `bytes`, a piece of the index starting at entry `first`,
    /// with the per-entry rules of [`BlockIndex::parse`] (flag bits, codec, offset inside the
    /// data area); the end entry `index[n]` and partial entries are left for `parse`.
    ///
    /// A reader loading a large index piece by piece calls this on each piece before reading
    /// the next, so a header claiming billions of blocks over a sparse (all-zero) index fails
    /// at the first zero entry instead of after the whole index was read into memory. Every
    /// index `parse` accepts passes this check, and the error is the one `parse` would give.
    pub fn check_entries(layout: &Layout, first: u64, bytes: &[u8]) -> Result<(), FormatError> {
        let n = u64::from(layout.header.num_blocks);
        for k in 0..bytes.len() / ENTRY_LEN as usize {
            let i = first.saturating_add(k as u64);
            if i >= n {
                break;
            }
            block_entry(layout, i as u32, read_entry(bytes, k))?;
        }
        Ok(())
    }

    /// Resolves `index[n]`, the end of the data; returns it and whether it was derived from the
    /// data area because the entry itself was 0 or garbage (uzip before version 4).
    fn resolve_end(
        layout: &Layout,
        index_bytes: &[u8],
        offsets: &[u64],
        data_limit: u64,
    ) -> Result<(u64, bool), FormatError> {
        let n = offsets.len();
        let raw = read_entry(index_bytes, n);
        if raw == u64::MAX {
            return Err(FormatError::UnwrittenEntry { entry: n as u32 });
        }
        let dialect = layout.dialect;
        let end = if dialect.spec().codec_flags {
            raw & OFFSET_MASK
        } else {
            raw
        };
        let last_start = offsets.iter().copied().max().unwrap_or(0);
        let freebsd = matches!(
            dialect,
            Dialect::UzipZlib | Dialect::UzipZlibDedup | Dialect::UzipXz | Dialect::UzipXzDedup
        );
        if layout.lenient_end() && (end == 0 || (freebsd && (end > data_limit || end < last_start)))
        {
            return Ok((data_limit, true));
        }
        if end > data_limit {
            return Err(FormatError::IndexEndPastEof {
                end,
                file_len: data_limit,
            });
        }
        if end < last_start {
            return Err(FormatError::IndexEndBeforeLastBlock { end, last_start });
        }
        Ok((end, false))
    }

    /// Block size and count.
    pub const fn header(&self) -> Header {
        self.header
    }

    /// Uncompressed bytes per block.
    pub const fn block_size(&self) -> u32 {
        self.header.block_size
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the image has no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The entry of block `i`.
    pub fn get(&self, i: usize) -> Option<&BlockEntry> {
        self.blocks.get(i)
    }

    /// All entries in block order.
    pub fn blocks(&self) -> &[BlockEntry] {
        &self.blocks
    }

    /// File offset one past the last block's data (`index[n]`, or the derived end).
    pub const fn data_end(&self) -> u64 {
        self.data_end
    }

    /// The largest compressed length of any block: the size of a buffer that holds any block.
    pub fn largest_block(&self) -> u32 {
        self.blocks.iter().map(|b| b.len).max().unwrap_or(0)
    }

    /// Total compressed bytes of stored blocks (shared blocks counted once).
    pub fn stored_bytes(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Stored)
            .map(|b| u64::from(b.len))
            .sum()
    }
}

/// One block's place in an index a writer is about to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// File offset of the block's compressed bytes.
    pub offset: u64,
    /// Its codec (must be allowed by the dialect; only V4 records it per block).
    pub codec: CodecKind,
}

/// Encodes one index entry for `dialect`: the offset, with the codec flag nibble in V4.
pub fn encode_entry(dialect: Dialect, entry: IndexEntry) -> Result<u64, FormatError> {
    if entry.offset > OFFSET_MASK {
        return Err(FormatError::OffsetTooLarge {
            offset: entry.offset,
        });
    }
    if !dialect.allows_codec(entry.codec) {
        return Err(FormatError::CodecNotAllowed {
            block: 0,
            codec: entry.codec,
            dialect,
        });
    }
    let flag = if dialect.spec().codec_flags {
        entry.codec.v4_flag().map_or(0, u64::from)
    } else {
        0
    };
    Ok((flag << 60) | entry.offset)
}

/// Encodes a whole index: one entry per block, then `data_end` as `index[n]`.
pub fn encode_index(
    dialect: Dialect,
    header: Header,
    entries: &[IndexEntry],
    data_end: u64,
) -> Result<Vec<u8>, FormatError> {
    if entries.len() as u64 != u64::from(header.num_blocks) {
        return Err(FormatError::EntryCountMismatch {
            num_blocks: header.num_blocks,
            expected: u64::from(header.num_blocks) + 1,
            actual: entries.len() as u64 + 1,
        });
    }
    if data_end > OFFSET_MASK {
        return Err(FormatError::OffsetTooLarge { offset: data_end });
    }
    let mut out = Vec::with_capacity(entries.len() * 8 + 8);
    for (i, &entry) in entries.iter().enumerate() {
        let word = encode_entry(dialect, entry).map_err(|e| match e {
            FormatError::CodecNotAllowed { codec, dialect, .. } => FormatError::CodecNotAllowed {
                block: i as u32,
                codec,
                dialect,
            },
            other => other,
        })?;
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(&data_end.to_be_bytes());
    Ok(out)
}

/// Where the index and the first block go in a header-first file with `num_blocks` blocks.
pub const fn header_first_data_start(num_blocks: u32) -> u64 {
    crate::layout::HEADER_LEN + (num_blocks as u64 + 1) * ENTRY_LEN
}

/// Whether the header of `dialect` comes first in the file.
pub fn is_header_first(dialect: Dialect) -> bool {
    dialect.spec().header_position == HeaderPosition::Start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect;

    /// A header-first image of `dialect` with `entries` as its index and `data` filler bytes.
    fn image(dialect: Dialect, entries: &[u64], data: usize) -> Vec<u8> {
        let header = Header {
            block_size: 4096,
            num_blocks: entries.len() as u32 - 1,
        };
        let mut out = header.encode(dialect).to_vec();
        for e in entries {
            out.extend_from_slice(&e.to_be_bytes());
        }
        out.resize(out.len() + data, 0x78);
        out
    }

    fn layout(bytes: &[u8]) -> Layout {
        detect(bytes, bytes, bytes.len() as u64).unwrap()
    }

    #[test]
    fn check_entries_agrees_with_parse_piece_by_piece() {
        let s = 136 + 8 * 4;
        let good = image(Dialect::LinuxV2, &[s, s + 10, s + 20, s + 30], 30);
        let l = layout(&good);
        let index = &good[136..136 + 32];
        assert!(BlockIndex::parse(&l, index).is_ok());
        // Whole, in single entries, and with a piece cut mid-entry: all accepted.
        assert_eq!(BlockIndex::check_entries(&l, 0, index), Ok(()));
        for i in 0..4 {
            assert_eq!(
                BlockIndex::check_entries(&l, i, &index[8 * i as usize..][..8]),
                Ok(())
            );
        }
        assert_eq!(BlockIndex::check_entries(&l, 1, &index[8..21]), Ok(()));
        // index[n] is not a block entry: garbage there is left for parse.
        assert_eq!(BlockIndex::check_entries(&l, 3, &[0; 8]), Ok(()));
    }

    #[test]
    fn check_entries_stops_a_zero_entry_with_parses_error() {
        let s = 136 + 8 * 4;
        let bad = image(Dialect::LinuxV2, &[s, s + 10, 0, s + 30], 30);
        let l = layout(&bad);
        let index = &bad[136..136 + 32];
        let parsed = BlockIndex::parse(&l, index).unwrap_err();
        assert_eq!(
            parsed,
            FormatError::OffsetBeforeData {
                block: 2,
                offset: 0,
                data_start: s
            }
        );
        assert_eq!(BlockIndex::check_entries(&l, 0, index), Err(parsed.clone()));
        assert_eq!(
            BlockIndex::check_entries(&l, 2, &index[16..24]),
            Err(parsed)
        );
        assert_eq!(
            BlockIndex::check_entries(&l, 0, &u64::MAX.to_be_bytes()),
            Err(FormatError::UnwrittenEntry { entry: 0 })
        );
    }
}
