//! The one error type of this crate: every variant carries the numbers involved.

use std::io;

use mkmodule_codec::{CodecError, CodecKind};
use mkmodule_format::{Dialect, FormatError};

/// Why options were refused before any work started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The block size is not a multiple of 512 or lies outside 512..=1 MiB.
    #[error(
        "block size {block_size} is not possible: it must be a multiple of 512 from 512 to \
         {max} bytes ({suggestion})"
    )]
    BlockSize {
        /// The block size asked for.
        block_size: u64,
        /// The largest block size written (Linux cloop.ko cannot attach larger ones).
        max: u32,
        /// The nearest valid block sizes, e.g. `try 512 or 1024`.
        suggestion: String,
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
    /// The output cannot hold this dialect's layout.
    #[error("{0}")]
    Sink(String),
    /// Reading the input failed.
    #[error("reading the input at byte {offset} failed: {source}")]
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
    #[error("compressing block {block} (input offset {offset}) with {codec} failed: {source}")]
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
    #[error("writing {what} at image offset {offset} failed: {source}")]
    Write {
        /// What was being written (`block 12`, `the index`, ...).
        what: String,
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

impl PackError {
    pub(crate) fn write(what: impl Into<String>, offset: u64, source: io::Error) -> PackError {
        PackError::Write {
            what: what.into(),
            offset,
            source,
        }
    }
}
