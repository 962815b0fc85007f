//! Every way a header, index or trailer can be wrong, each with the numbers involved.

use mkmodule_blockdev::ErrorKind;

use crate::{CodecKind, Content, Dialect};

/// A violated rule of the cloop-family format.
///
/// Each variant names one check (docs/FORMAT.md §4, §6, §7, §12) and carries the block index,
/// byte offset and limit it concerns, so a message can say what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is shorter than the 136-byte header.
    #[error("file is {len} bytes long, shorter than the {min}-byte cloop header")]
    TooShort {
        /// File length in bytes.
        len: u64,
        /// Minimum length for the dialect.
        min: u64,
    },
    /// No known signature at byte 11 of the first or last 136 bytes.
    #[error(
        "not a cloop-family image: no V2.0, V4.0, v3.0, L3.0, l3.0, Z4.0 or z4.0 signature at \
         byte 11 of its first or last 136 bytes (found {found:?} and {tail:?}){}",
        not_cloop_hint(*looks_like)
    )]
    NotCloop {
        /// Bytes 11..15 of the file, lossily as text.
        found: String,
        /// Bytes 11..15 of the last 136 bytes, lossily as text.
        tail: String,
        /// What the file looks like instead, when its first bytes tell.
        looks_like: Option<Content>,
    },
    /// The header is all zeros and the first index entry unwritten (all ones): vndcompress was
    /// interrupted before its first checkpoint.
    #[error(
        "header is all zeros and the index unwritten: an interrupted vndcompress run left this \
         file unfinished"
    )]
    UnfinishedHeader,
    /// Block size zero.
    #[error("block size is 0")]
    BlockSizeZero,
    /// Block size not a multiple of 512.
    #[error("block size {block_size} is not a multiple of 512")]
    BlockSizeNotMultiple {
        /// The block size found.
        block_size: u32,
    },
    /// Block size above the limit this reader or writer accepts.
    #[error("block size {block_size} exceeds the limit of {max} bytes")]
    BlockSizeTooLarge {
        /// The block size found.
        block_size: u32,
        /// The largest accepted block size.
        max: u32,
    },
    /// The header's block count implies an index that does not fit in the file.
    #[error(
        "header claims {num_blocks} blocks, whose index needs {index_bytes} bytes, \
         but the file has only {available} bytes for it ({file_len} in all)"
    )]
    IndexPastEof {
        /// Block count from the header.
        num_blocks: u32,
        /// Bytes the index needs: 8 × (num_blocks + 1).
        index_bytes: u64,
        /// Bytes the file holds for header and index.
        available: u64,
        /// File length.
        file_len: u64,
    },
    /// The caller handed in an index buffer of the wrong size.
    #[error("index buffer holds {actual} bytes, expected {expected}")]
    IndexBufferSize {
        /// Bytes expected: 8 × (n + 1).
        expected: u64,
        /// Bytes supplied.
        actual: u64,
    },
    /// An index entry still holds the all-ones placeholder of an interrupted vndcompress.
    #[error("index entry {entry} is 0xffffffffffffffff: an interrupted vndcompress run left it unwritten")]
    UnwrittenEntry {
        /// Entry number (block index, or n for the end entry).
        entry: u32,
    },
    /// Flag bits 63..60 set in a dialect whose entries carry no flags.
    #[error("block {block}: index entry {entry:#018x} has flag bits set, which {dialect} does not allow")]
    FlagBitsSet {
        /// Block index.
        block: u32,
        /// The raw entry.
        entry: u64,
        /// The dialect.
        dialect: Dialect,
    },
    /// A V4 flag nibble that names no codec (5..=15).
    #[error("block {block}: codec flag {flag} is reserved (V4 defines 0..=4)")]
    UnknownCodecFlag {
        /// Block index.
        block: u32,
        /// The flag nibble.
        flag: u8,
    },
    /// A codec the dialect cannot carry.
    #[error("block {block}: codec {codec} is not allowed in {dialect}")]
    CodecNotAllowed {
        /// Block index.
        block: u32,
        /// The codec.
        codec: CodecKind,
        /// The dialect.
        dialect: Dialect,
    },
    /// A block starts inside the header or index.
    #[error("block {block} starts at offset {offset}, inside the header or index (data starts at {data_start})")]
    OffsetBeforeData {
        /// Block index.
        block: u32,
        /// Its start offset.
        offset: u64,
        /// First byte after header and index.
        data_start: u64,
    },
    /// A block starts or ends beyond the data area (the file end, or the index of a footer image).
    #[error("block {block} at offset {offset} lies past the end of the data area at {limit}")]
    OffsetPastEnd {
        /// Block index.
        block: u32,
        /// The offending offset.
        offset: u64,
        /// The end of the data area.
        limit: u64,
    },
    /// An offset smaller than the entry before it, in a dialect without back-references.
    #[error("index entry {block} is offset {offset}, below the previous entry's {previous}: offsets must not decrease")]
    DecreasingOffset {
        /// Block index (n for the end entry).
        block: u32,
        /// Its offset.
        offset: u64,
        /// The previous entry's offset.
        previous: u64,
    },
    /// A dedup back-reference that points at no earlier non-empty block.
    #[error("block {block}: back-reference to offset {offset} matches no earlier non-empty block")]
    BadBackReference {
        /// Block index.
        block: u32,
        /// The referenced offset.
        offset: u64,
    },
    /// A compressed block longer than its codec can produce for the block size.
    #[error(
        "block {block} at offset {offset}: compressed length {len} exceeds the limit {limit} \
         for {codec} with block size {block_size}"
    )]
    BlockTooLong {
        /// Block index.
        block: u32,
        /// Its start offset.
        offset: u64,
        /// Its compressed length.
        len: u64,
        /// The codec's bound.
        limit: u64,
        /// The codec.
        codec: CodecKind,
        /// The block size.
        block_size: u32,
    },
    /// The end entry `index[n]` lies beyond the file.
    #[error("index end entry {end} lies past the end of the file ({file_len} bytes): the image is truncated")]
    IndexEndPastEof {
        /// `index[n]`, masked.
        end: u64,
        /// File length (or the index start of a footer image).
        file_len: u64,
    },
    /// The end entry `index[n]` lies before the start of the last block.
    #[error("index end entry {end} lies before the start {last_start} of the last block")]
    IndexEndBeforeLastBlock {
        /// `index[n]`, masked.
        end: u64,
        /// Start of the last stored block.
        last_start: u64,
    },
    /// An offset that does not fit the 60 bits a V4 entry leaves for it.
    #[error("offset {offset} does not fit in the 60 bits of an index entry")]
    OffsetTooLarge {
        /// The offset.
        offset: u64,
    },
    /// A writer asked for more entries or blocks than the format can hold.
    #[error("{count} blocks exceed the format's limit of {max}")]
    TooManyBlocks {
        /// Blocks requested.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A writer passed a number of index entries that does not match the header.
    #[error("{actual} index entries given for {num_blocks} blocks (expected {expected})")]
    EntryCountMismatch {
        /// Header block count.
        num_blocks: u32,
        /// Expected entries (n + 1).
        expected: u64,
        /// Entries given.
        actual: u64,
    },
    /// The trailer's checksum does not match its contents.
    #[error("mkmodule trailer at offset {offset} is corrupt: CRC32 {stored:#010x} stored, {computed:#010x} computed")]
    TrailerCorrupt {
        /// File offset of the trailer.
        offset: u64,
        /// CRC32 stored in the trailer.
        stored: u32,
        /// CRC32 of the trailer bytes.
        computed: u32,
    },
    /// The block-digest table a trailer describes does not have one entry per block, or does
    /// not lie between the end of data and the trailer.
    #[error(
        "the block-digest table at offset {offset} ({entries} entries) does not fit the image: \
         {num_blocks} blocks, data end {data_end}, trailer at {trailer_at}"
    )]
    DigestTableMisplaced {
        /// File offset recorded for the table.
        offset: u64,
        /// Entries recorded for the table.
        entries: u32,
        /// Blocks in the image.
        num_blocks: u32,
        /// `index[n]`.
        data_end: u64,
        /// File offset of the trailer.
        trailer_at: u64,
    },
    /// The block-digest table's bytes do not match the checksum in the trailer.
    #[error("the block-digest table at offset {offset} is corrupt: CRC32 {stored:#010x} recorded, {computed:#010x} computed")]
    DigestTableCorrupt {
        /// File offset of the table.
        offset: u64,
        /// CRC32 recorded in the trailer.
        stored: u32,
        /// CRC32 of the table's bytes.
        computed: u32,
    },
    /// The stored-check table a trailer describes does not have one entry per block, or does
    /// not start after the end of data.
    #[error(
        "the stored-check table at offset {offset} ({entries} entries) does not fit the image: \
         {num_blocks} blocks, data end {data_end}"
    )]
    StoredChecksMisplaced {
        /// File offset of the table (just before the block-digest table).
        offset: u64,
        /// Entries recorded for the table.
        entries: u32,
        /// Blocks in the image.
        num_blocks: u32,
        /// `index[n]`.
        data_end: u64,
    },
    /// The stored-check table's bytes do not match the checksum in the trailer.
    #[error("the stored-check table at offset {offset} is corrupt: CRC32 {stored:#010x} recorded, {computed:#010x} computed")]
    StoredChecksCorrupt {
        /// File offset of the table.
        offset: u64,
        /// CRC32 recorded in the trailer.
        stored: u32,
        /// CRC32 of the table's bytes.
        computed: u32,
    },
    /// A trailer of a newer, unknown layout.
    #[error("mkmodule trailer layout {version} is newer than this build understands (1)")]
    TrailerVersion {
        /// The layout version found.
        version: u16,
    },
}

impl FormatError {
    /// What kind of failure this is: damaged or inconsistent data, a newer layout than this
    /// build reads, or a writer asking for more than the format can hold.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FormatError::TrailerVersion { .. } => ErrorKind::Unsupported,
            // Recognisably something else (a filesystem, a compressed stream): not an image at
            // all rather than a damaged one.
            FormatError::NotCloop {
                looks_like: Some(content),
                ..
            } if *content != Content::Zeros => ErrorKind::Unsupported,
            FormatError::IndexBufferSize { .. }
            | FormatError::OffsetTooLarge { .. }
            | FormatError::TooManyBlocks { .. }
            | FormatError::EntryCountMismatch { .. } => ErrorKind::Config,
            FormatError::TooShort { .. }
            | FormatError::NotCloop { .. }
            | FormatError::UnfinishedHeader
            | FormatError::BlockSizeZero
            | FormatError::BlockSizeNotMultiple { .. }
            | FormatError::BlockSizeTooLarge { .. }
            | FormatError::IndexPastEof { .. }
            | FormatError::UnwrittenEntry { .. }
            | FormatError::FlagBitsSet { .. }
            | FormatError::UnknownCodecFlag { .. }
            | FormatError::CodecNotAllowed { .. }
            | FormatError::OffsetBeforeData { .. }
            | FormatError::OffsetPastEnd { .. }
            | FormatError::DecreasingOffset { .. }
            | FormatError::BadBackReference { .. }
            | FormatError::BlockTooLong { .. }
            | FormatError::IndexEndPastEof { .. }
            | FormatError::IndexEndBeforeLastBlock { .. }
            | FormatError::TrailerCorrupt { .. }
            | FormatError::DigestTableMisplaced { .. }
            | FormatError::DigestTableCorrupt { .. }
            | FormatError::StoredChecksMisplaced { .. }
            | FormatError::StoredChecksCorrupt { .. } => ErrorKind::Corrupt,
        }
    }
}

/// The end of the [`FormatError::NotCloop`] message: what the file looks like and what the user
/// probably meant to do with it.
fn not_cloop_hint(looks_like: Option<Content>) -> String {
    match looks_like {
        Some(Content::Zeros) => "; it starts with nothing but zero bytes".to_string(),
        Some(content) if content.is_raw_image() => format!(
            "; it looks like {content}: to make a compressed image of it, run \
             `mkmodule create FILE -o IMAGE`"
        ),
        Some(Content::Qcow2) => "; it looks like a qcow2 disk image: convert it to a raw image \
             first (qemu-img convert -O raw), then run `mkmodule create`"
            .to_string(),
        Some(content) => format!(
            "; it looks like {content}: decompress it first, then `mkmodule create` can compress \
             it block by block"
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_corrupt_and_writer_limits_are_config() {
        assert_eq!(
            FormatError::TooShort { len: 3, min: 136 }.kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            FormatError::UnknownCodecFlag { block: 0, flag: 7 }.kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            FormatError::TrailerVersion { version: 2 }.kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            FormatError::TooManyBlocks { count: 9, max: 8 }.kind(),
            ErrorKind::Config
        );
    }
}
