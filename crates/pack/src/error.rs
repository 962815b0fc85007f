//! The errors of this crate: every variant carries the numbers involved, reports an
//! [`ErrorKind`], and gives its cause either in its message or as its source, never both.

use std::fmt;
use std::io;

use mkmodule_blockdev::ErrorKind;
use mkmodule_codec::{CodecError, CodecKind};
use mkmodule_format::{Dialect, FormatError};

/// Why options were refused before any work started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The block size is not a multiple of 512 or lies outside 512..=1 MiB.
    #[error(
        "block size {block_size} is not possible: it must be a multiple of 512 from 512 to \
         {max} bytes ({nearest})"
    )]
    BlockSize {
        /// The block size asked for.
        block_size: u64,
        /// The largest block size written (Linux cloop.ko cannot attach larger ones).
        max: u32,
        /// The nearest valid block sizes.
        nearest: NearestBlockSizes,
    },
    /// The codec cannot be written in the dialect.
    #[error("{codec} blocks are not possible in {dialect} images: {hint}")]
    CodecNotInDialect {
        /// The codec asked for.
        codec: CodecKind,
        /// The dialect asked for.
        dialect: Dialect,
        /// Which formats would take the codec.
        hint: String,
    },
    /// A codec mkmodule reads but does not write.
    #[error("mkmodule does not write {codec} blocks: {hint}")]
    CodecNotWritten {
        /// The codec asked for.
        codec: CodecKind,
        /// What to use instead.
        hint: &'static str,
    },
    /// A dialect mkmodule reads but does not write.
    #[error("mkmodule does not write {dialect} images: use {instead}")]
    DialectNotWritten {
        /// The dialect asked for.
        dialect: Dialect,
        /// The dialect to use instead.
        instead: Dialect,
    },
    /// Zero-length blocks or dedup asked for in a dialect that has none.
    #[error("{option} is not possible in {dialect} images: {hint}")]
    FeatureNotInDialect {
        /// The option (`--zero-blocks`, `--dedup`).
        option: &'static str,
        /// The dialect asked for.
        dialect: Dialect,
        /// What would work.
        hint: &'static str,
    },
    /// No compressor thread.
    #[error("the number of compressor threads must be at least 1")]
    NoThreads,
    /// The announced input length needs more blocks than the dialect can hold.
    #[error(
        "an input of {input_len} bytes needs {num_blocks} blocks of {block_size} bytes, more \
         than the {max_blocks} a {dialect} image can hold ({reason}); use a larger block size"
    )]
    TooManyBlocks {
        /// The announced input length.
        input_len: u64,
        /// Blocks it needs.
        num_blocks: u64,
        /// Block size.
        block_size: u32,
        /// The most blocks the dialect's readers accept.
        max_blocks: u64,
        /// The dialect.
        dialect: Dialect,
        /// Which reader limit applies.
        reason: &'static str,
    },
}

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The options were refused before any work started.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A header-first image was to be written in place without the input length.
    #[error(
        "writing a {dialect} image in place needs the input length up front (the index comes \
         before the blocks)"
    )]
    InPlaceNeedsLength {
        /// The dialect asked for.
        dialect: Dialect,
    },
    /// A header-first image was to be written as a stream.
    #[error(
        "a {dialect} image cannot be streamed: its index comes before the blocks, so the output \
         must seek, or the blocks must be spooled"
    )]
    CannotStream {
        /// The dialect asked for.
        dialect: Dialect,
    },
    /// A header-first image of unknown length, or to an output that does not seek, with no
    /// room for a spool file.
    #[error(
        "a {dialect} image cannot go to {output} here: its index comes before the blocks, so \
         the block count must be known (give --size when reading a pipe) and the output must \
         seek (a file, not a pipe); use --format v4-footer (index at the end) or write to a \
         file with -o FILE"
    )]
    OutputCannotHold {
        /// The dialect asked for.
        dialect: Dialect,
        /// The output, as the user knows it (`standard output`, `the device /dev/sdb`).
        output: String,
    },
    /// Reading the input failed.
    #[error("reading the input at byte {offset} failed")]
    Read {
        /// Input offset of the failed read.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The input ended before the announced length.
    #[error("the input ended after {actual} bytes, but {expected} bytes were announced")]
    InputShorter {
        /// The announced length (file size or `--size`).
        expected: u64,
        /// Bytes actually read.
        actual: u64,
    },
    /// The input went on past the announced length.
    #[error("the input is longer than the {expected} bytes announced")]
    InputLonger {
        /// The announced length (file size or `--size`).
        expected: u64,
    },
    /// The input needs more blocks than the dialect can hold.
    #[error(
        "the input needs more than {max_blocks} blocks of {block_size} bytes, the most a \
         {dialect} image can hold ({reason}); use a larger block size"
    )]
    TooManyBlocks {
        /// The most blocks the dialect's readers accept.
        max_blocks: u64,
        /// Block size.
        block_size: u32,
        /// The dialect.
        dialect: Dialect,
        /// Which reader limit applies.
        reason: &'static str,
    },
    /// A block could not be compressed.
    #[error("compressing block {block} (input offset {offset}) with {codec} failed")]
    Compress {
        /// Block number.
        block: u64,
        /// Input offset of the block.
        offset: u64,
        /// The codec.
        codec: CodecKind,
        /// The codec's error.
        source: CodecError,
    },
    /// Writing the image failed (a full disk ends here).
    #[error("writing {part} at image offset {offset} failed")]
    Write {
        /// What was being written.
        part: ImagePart,
        /// Image offset of the write.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Index or header encoding failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A worker thread stopped without reporting why (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl OptionsError {
    /// What kind of failure this is: always the caller's settings.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Config
    }
}

impl PackError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PackError::Options(error) => error.kind(),
            PackError::InPlaceNeedsLength { .. }
            | PackError::CannotStream { .. }
            | PackError::OutputCannotHold { .. }
            | PackError::InputShorter { .. }
            | PackError::InputLonger { .. }
            | PackError::TooManyBlocks { .. } => ErrorKind::Config,
            PackError::Read { .. } | PackError::Write { .. } | PackError::Internal(_) => {
                ErrorKind::Io
            }
            PackError::Compress { source, .. } => match source.kind() {
                kind @ (ErrorKind::Unsupported | ErrorKind::Config) => kind,
                _ => ErrorKind::Io,
            },
            // Encoding the index or header fails only when the image outgrows what the
            // dialect's fields can express.
            PackError::Format(_) => ErrorKind::OutOfRange,
        }
    }

    pub(crate) fn write(part: ImagePart, offset: u64, source: io::Error) -> PackError {
        PackError::Write {
            part,
            offset,
            source,
        }
    }
}

/// The part of an image a failed write was writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImagePart {
    /// One block, in place.
    Block(u64),
    /// One block on its way to the spool file, at this byte of the spool file.
    SpooledBlock {
        /// Block number.
        block: u64,
        /// Byte offset in the spool file.
        at: u64,
    },
    /// The start of the spool file.
    SpoolStart,
    /// The buffered last blocks.
    LastBlocks,
    /// The buffered last blocks, to the spool file.
    LastSpooledBlocks,
    /// The blocks, copied back from the spool file.
    BlocksFromSpool,
    /// The lead-in of a footer image.
    LeadIn,
    /// The header.
    Header,
    /// The index.
    Index,
    /// The padding and trailer after the blocks.
    Trailer,
    /// The last buffered bytes of the image.
    End,
}

impl fmt::Display for ImagePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImagePart::Block(block) => write!(f, "block {block}"),
            ImagePart::SpooledBlock { block, at } => {
                write!(f, "block {block} to the spool file at its byte {at}")
            }
            ImagePart::SpoolStart => f.write_str("block 0 to the spool file"),
            ImagePart::LastBlocks => f.write_str("the last blocks"),
            ImagePart::LastSpooledBlocks => f.write_str("the last blocks to the spool file"),
            ImagePart::BlocksFromSpool => f.write_str("the blocks from the spool file"),
            ImagePart::LeadIn => f.write_str("the lead-in"),
            ImagePart::Header => f.write_str("the header"),
            ImagePart::Index => f.write_str("the index"),
            ImagePart::Trailer => f.write_str("the trailer"),
            ImagePart::End => f.write_str("the end of the image"),
        }
    }
}

/// The valid block sizes nearest to a refused one: `try 4096`, or `try 4096 or 4608`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearestBlockSizes {
    /// The nearest valid size at or below the one asked for.
    pub below: u64,
    /// The nearest valid size at or above the one asked for.
    pub above: u64,
}

impl fmt::Display for NearestBlockSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.below == self.above {
            write!(f, "try {}", self.below)
        } else {
            write!(f, "try {} or {}", self.below, self.above)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn causes_are_sources_not_part_of_the_message() {
        let error = PackError::write(
            ImagePart::Index,
            4096,
            io::Error::new(io::ErrorKind::StorageFull, "No space left on device"),
        );
        assert_eq!(
            error.to_string(),
            "writing the index at image offset 4096 failed"
        );
        assert_eq!(
            error.source().map(|s| s.to_string()).as_deref(),
            Some("No space left on device")
        );
        assert_eq!(error.kind(), ErrorKind::Io);
        let read = PackError::Read {
            offset: 7,
            source: io::Error::other("EIO"),
        };
        assert!(!read.to_string().contains("EIO"));
    }

    #[test]
    fn refusals_are_configuration_errors() {
        let error = PackError::CannotStream {
            dialect: Dialect::LinuxV2,
        };
        assert_eq!(error.kind(), ErrorKind::Config);
        assert_eq!(
            PackError::from(OptionsError::NoThreads).kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn nearest_block_sizes_read_as_a_suggestion() {
        let one = NearestBlockSizes {
            below: 512,
            above: 512,
        };
        assert_eq!(one.to_string(), "try 512");
        let two = NearestBlockSizes {
            below: 512,
            above: 1024,
        };
        assert_eq!(two.to_string(), "try 512 or 1024");
    }
}
