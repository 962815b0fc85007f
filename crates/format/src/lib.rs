//! The cloop-family on-disk format: dialects, header, index, trailer and their validation.
//!
//! This crate is pure: it performs no file I/O, spawns no threads, links no codec and uses no
//! `unsafe`. Callers read bytes and hand them in; every check returns a typed error carrying the
//! numbers involved.
//!
//! Reading an image takes three steps: [`detect`] the layout from the first and last 136 bytes,
//! read `layout.index_len()` bytes at `layout.index_offset`, then [`BlockIndex::parse`] them.
//! [`parse_image`] does all three on an image held in memory.

mod block_digest;
mod codec_kind;
mod content;
mod content_digest;
mod dialect;
mod error;
mod index;
mod layout;
mod profile;
mod stored_check;
mod trailer;
mod writing;

pub use block_digest::{
    blake3_block_hash, blake3_table_digest, BlockDigest, BlockDigestAlgorithm, BlockEncoding,
    BlockHash, DigestTableRef, BLOCK_DIGEST_LEN,
};
pub use codec_kind::{or_list, CodecKind, UnknownCodec};
pub use content::{identify, Content, IDENTIFY_LEN};
pub use content_digest::{blake3_blocks_digest, BlockHashChain, ContentHasher};
pub use dialect::{
    Dialect, DialectSpec, Family, HeaderPosition, Reader, UnknownDialect, WriteRules, Writing,
    DEBIAN_PREAMBLE, PREAMBLE_LEN, SIGNATURE_OFFSET,
};
pub use error::FormatError;
pub use index::{
    block_len_limit, encode_entry, encode_index, header_first_data_start, is_header_first,
    BlockEntry, BlockIndex, BlockKind, IndexEntry,
};
pub use layout::{
    detect, Header, Layout, ENTRY_LEN, HEADER_LEN, MAX_READ_BLOCK_SIZE, MAX_WRITE_BLOCK_SIZE,
    MIN_BLOCK_SIZE, OFFSET_MASK,
};
pub use profile::{Profile, PORTABLE};
pub use stored_check::{stored_check, StoredChecksRef, STORED_CHECK_LEN};
pub use trailer::{DigestAlgorithm, Trailer, TrailerExtension, TRAILER_LEN, TRAILER_MAGIC};

/// A whole image, parsed from memory: its layout, validated index and trailer (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedImage {
    /// Where header and index sit.
    pub layout: Layout,
    /// The validated index.
    pub index: BlockIndex,
    /// mkmodule's trailer, when present and matching the index.
    pub trailer: Option<Trailer>,
}

/// Bytes a reader should fetch from each end of a file before calling [`detect`].
pub const PROBE_LEN: usize = HEADER_LEN as usize;

/// Detects, parses and validates an image held entirely in memory.
pub fn parse_image(bytes: &[u8]) -> Result<ParsedImage, FormatError> {
    let file_len = bytes.len() as u64;
    let tail = &bytes[bytes.len().saturating_sub(PROBE_LEN)..];
    let layout = detect(bytes, tail, file_len)?;
    let start = layout.index_offset as usize;
    let index_bytes = &bytes[start..start + layout.index_len() as usize];
    let index = BlockIndex::parse(&layout, index_bytes)?;
    let trailer = find_trailer(&layout, &index, tail)?;
    Ok(ParsedImage {
        layout,
        index,
        trailer,
    })
}

/// Looks for mkmodule's trailer at the end of a header-first image and keeps it only when it
/// belongs to this index (its recorded `index[n]` matches and it lies after the data).
pub fn find_trailer(
    layout: &Layout,
    index: &BlockIndex,
    tail: &[u8],
) -> Result<Option<Trailer>, FormatError> {
    if !is_header_first(layout.dialect) {
        return Ok(None);
    }
    let trailer = Trailer::find(tail, layout.file_len)?;
    Ok(trailer.filter(|t| {
        t.data_end == index.data_end() && t.data_end + TRAILER_LEN as u64 <= layout.file_len
    }))
}
