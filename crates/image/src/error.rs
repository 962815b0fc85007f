//! The one error type of the reader: every failure names the block and file offset it concerns.

use std::io;
use std::path::PathBuf;

use mkmodule_blockdev::ErrorKind;
use mkmodule_codec::{CodecError, CodecKind};
use mkmodule_format::FormatError;

/// Why an image could not be opened or a block could not be read.
///
/// Errors about one block carry its index and the file offset of its compressed bytes, so a
/// message reads like `block 12 at offset 53248 (301 bytes, zlib): corrupt zlib block: ...`.
/// An operating-system cause is the error's [`source`](std::error::Error::source) and is not
/// repeated in the message, so [`mkmodule_blockdev::chain_text`] prints each part once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The image file could not be opened or its size determined.
    #[error("cannot open {}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Reading the header, index or trailer failed.
    #[error("reading {len} bytes at offset {offset}")]
    Io {
        /// File offset of the read.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The operating system's error.
        source: io::Error,
    },
    /// The header, index or trailer breaks a rule of the format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A block's compressed bytes could not be read.
    #[error("block {block} at offset {offset} ({len} bytes): read failed")]
    BlockIo {
        /// Block index.
        block: u32,
        /// File offset of its compressed bytes.
        offset: u64,
        /// Its compressed length.
        len: u32,
        /// The operating system's error.
        source: io::Error,
    },
    /// A block's compressed bytes run past the end of the file (it was truncated after the
    /// index was written or after the image was opened).
    #[error(
        "block {block} at offset {offset} ({len} bytes) runs past the end of the file \
         ({file_len} bytes): the image is truncated"
    )]
    Truncated {
        /// Block index.
        block: u32,
        /// File offset of its compressed bytes.
        offset: u64,
        /// Its compressed length.
        len: u32,
        /// Length of the file.
        file_len: u64,
    },
    /// The codec rejected a block: corrupt data, failed checksum, or too much output.
    ///
    /// The codec's complaint is part of this message (it describes the damage, it is not a
    /// further cause), so it is not reported again as [`source`](std::error::Error::source).
    #[error("block {block} at offset {offset} ({len} bytes, {codec}): {problem}")]
    Decode {
        /// Block index.
        block: u32,
        /// File offset of its compressed bytes.
        offset: u64,
        /// Its compressed length.
        len: u32,
        /// The codec it was decoded with.
        codec: CodecKind,
        /// What the codec objected to.
        problem: CodecError,
    },
    /// A block other than the last decoded to fewer bytes than the block size.
    #[error(
        "block {block} at offset {offset} ({len} bytes, {codec}): decodes to {decoded} bytes, \
         expected {expected}; only the final block may be short"
    )]
    ShortBlock {
        /// Block index.
        block: u32,
        /// File offset of its compressed bytes.
        offset: u64,
        /// Its compressed length.
        len: u32,
        /// The codec it was decoded with.
        codec: CodecKind,
        /// Bytes it decoded to.
        decoded: usize,
        /// The block size.
        expected: u32,
    },
    /// A block number at or beyond the block count.
    #[error("block {block} does not exist: the image has {num_blocks} blocks")]
    NoSuchBlock {
        /// The block asked for.
        block: u64,
        /// Blocks in the image.
        num_blocks: u32,
    },
    /// mkmodule's trailer records an original length the blocks cannot hold.
    #[error(
        "the trailer records an original length of {original_len} bytes, more than the \
         {padded} bytes the image's blocks hold"
    )]
    TrailerLength {
        /// Length recorded in the trailer.
        original_len: u64,
        /// Blocks × block size.
        padded: u64,
    },
}

impl ImageError {
    /// The block this error is about, if it concerns one block.
    pub fn block(&self) -> Option<u32> {
        match self {
            ImageError::BlockIo { block, .. }
            | ImageError::Truncated { block, .. }
            | ImageError::Decode { block, .. }
            | ImageError::ShortBlock { block, .. } => Some(*block),
            _ => None,
        }
    }

    /// The same error about block `to` instead (for a dedup back-reference, which fails
    /// exactly as the block whose bytes it shares: same offset, same length, same cause).
    pub(crate) fn for_block(mut self, to: u32) -> ImageError {
        match &mut self {
            ImageError::BlockIo { block, .. }
            | ImageError::Truncated { block, .. }
            | ImageError::Decode { block, .. }
            | ImageError::ShortBlock { block, .. } => *block = to,
            _ => {}
        }
        self
    }

    /// The file offset this error is about: a block's start, or the offset of a failed read.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ImageError::BlockIo { offset, .. }
            | ImageError::Truncated { offset, .. }
            | ImageError::Decode { offset, .. }
            | ImageError::ShortBlock { offset, .. }
            | ImageError::Io { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// What kind of failure this is: damage, an operating-system error, a block that does not
    /// exist, or a codec this build leaves out.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof => {
                ErrorKind::Corrupt
            }
            ImageError::Open { .. } | ImageError::Io { .. } | ImageError::BlockIo { .. } => {
                ErrorKind::Io
            }
            ImageError::NoSuchBlock { .. } => ErrorKind::OutOfRange,
            ImageError::Decode { problem, .. } if problem.kind() == ErrorKind::Unsupported => {
                ErrorKind::Unsupported
            }
            ImageError::Format(e) if e.kind() == ErrorKind::Unsupported => ErrorKind::Unsupported,
            ImageError::Format(_)
            | ImageError::Truncated { .. }
            | ImageError::Decode { .. }
            | ImageError::ShortBlock { .. }
            | ImageError::TrailerLength { .. } => ErrorKind::Corrupt,
        }
    }

    /// Whether the error means the image itself is damaged or malformed (as opposed to the
    /// file being unreadable for an operating-system reason).
    pub fn is_damage(&self) -> bool {
        self.kind() == ErrorKind::Corrupt
    }
}

impl From<ImageError> for io::Error {
    /// The I/O kind follows [`ImageError::kind`] (damage is `InvalidData`, a block that does
    /// not exist `InvalidInput`); operating-system errors keep their own kind.
    fn from(error: ImageError) -> Self {
        let kind = match &error {
            ImageError::Open { source, .. }
            | ImageError::BlockIo { source, .. }
            | ImageError::Io { source, .. }
                if error.kind() == ErrorKind::Io =>
            {
                source.kind()
            }
            _ => error.kind().io_kind(),
        };
        io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operating_system_cause_is_the_source_and_printed_once() {
        let error = ImageError::BlockIo {
            block: 7,
            offset: 4096,
            len: 300,
            source: io::Error::other("Input/output error"),
        };
        assert_eq!(
            mkmodule_blockdev::chain_text(&error),
            "block 7 at offset 4096 (300 bytes): read failed: Input/output error"
        );
        assert_eq!(error.kind(), ErrorKind::Io);
        let io = io::Error::from(error);
        assert_eq!(
            mkmodule_blockdev::chain_text(&io),
            "block 7 at offset 4096 (300 bytes): read failed: Input/output error"
        );
    }

    #[test]
    fn a_codec_complaint_is_part_of_the_message_not_a_source() {
        let error = ImageError::Decode {
            block: 1,
            offset: 200,
            len: 10,
            codec: CodecKind::Zlib,
            problem: CodecError::Empty {
                codec: CodecKind::Zlib,
            },
        };
        assert!(std::error::Error::source(&error).is_none());
        assert_eq!(
            mkmodule_blockdev::chain_text(&error),
            "block 1 at offset 200 (10 bytes, zlib): empty zlib block (0 bytes)"
        );
        assert_eq!(error.kind(), ErrorKind::Corrupt);
    }
}
