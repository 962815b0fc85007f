//! The one error type of this crate.

use mkmodule_blockdev::ErrorKind;
use mkmodule_format::{CodecKind, UnknownCodec};

/// Why a block could not be compressed or decompressed, or a codec spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The compressed block is malformed: bad header, failed checksum, truncated, trailing garbage.
    #[error("corrupt {codec} block: {detail}")]
    Corrupt {
        /// Codec the block was decoded with.
        codec: CodecKind,
        /// What the decoder objected to.
        detail: String,
    },
    /// The compressed block is zero bytes long; no codec decodes an empty block.
    #[error("empty {codec} block (0 bytes)")]
    Empty {
        /// Codec the block was decoded with.
        codec: CodecKind,
    },
    /// The block decodes to more bytes than the output buffer holds.
    #[error("{codec} block decodes to more than {limit} bytes")]
    OutputTooLarge {
        /// Codec the block was decoded with.
        codec: CodecKind,
        /// Size of the output buffer in bytes.
        limit: usize,
    },
    /// The block decoded correctly but not to the expected number of bytes.
    #[error("{codec} block decoded to {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// Codec the block was decoded with.
        codec: CodecKind,
        /// Bytes the caller expected (the block size).
        expected: usize,
        /// Bytes the block produced.
        actual: usize,
    },
    /// The decoder would need more memory than this crate allows it.
    #[error("{codec} block needs more than the {limit}-byte decoder memory limit")]
    MemoryLimit {
        /// Codec the block was decoded with.
        codec: CodecKind,
        /// The limit in bytes.
        limit: u64,
    },
    /// A compression level outside the codec's range.
    #[error("{codec} level {level} is out of range {min}..={max}")]
    InvalidLevel {
        /// Codec the level was given for.
        codec: CodecKind,
        /// The level asked for.
        level: i32,
        /// Lowest accepted level.
        min: i32,
        /// Highest accepted level.
        max: i32,
    },
    /// A level was given for a codec that has none (lz4, none).
    #[error("{codec} takes no compression level (got {level})")]
    NoLevel {
        /// Codec the level was given for.
        codec: CodecKind,
        /// The level asked for.
        level: i32,
    },
    /// A codec spec whose level part is not an integer (e.g. `zlib:x`).
    #[error("invalid codec spec {spec:?}: level {level:?} is not an integer")]
    InvalidSpec {
        /// The text as given.
        spec: String,
        /// The level part of it, after the colon.
        level: String,
    },
    /// A codec name that is not one of ours.
    #[error(transparent)]
    UnknownCodec(#[from] UnknownCodec),
    /// The codec is known but this build cannot handle it (lzo without the `lzo` feature).
    #[error("{codec} is not supported by this build of mkmodule")]
    Unsupported {
        /// The codec asked for.
        codec: CodecKind,
    },
    /// The codec library failed for a reason other than the data (allocation, bad parameters).
    #[error("{codec} library error: {detail}")]
    Backend {
        /// Codec whose library failed.
        codec: CodecKind,
        /// The library's message.
        detail: String,
    },
}

impl CodecError {
    /// What kind of failure this is: damaged data, a bad setting, a codec this build leaves
    /// out, or the codec library failing.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CodecError::Corrupt { .. }
            | CodecError::Empty { .. }
            | CodecError::OutputTooLarge { .. }
            | CodecError::SizeMismatch { .. }
            | CodecError::MemoryLimit { .. } => ErrorKind::Corrupt,
            CodecError::InvalidLevel { .. }
            | CodecError::NoLevel { .. }
            | CodecError::InvalidSpec { .. }
            | CodecError::UnknownCodec(_) => ErrorKind::Config,
            CodecError::Unsupported { .. } => ErrorKind::Unsupported,
            CodecError::Backend { .. } => ErrorKind::Io,
        }
    }

    /// Shorthand for [`CodecError::Corrupt`].
    pub(crate) fn corrupt(codec: CodecKind, detail: impl Into<String>) -> Self {
        CodecError::Corrupt {
            codec,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`CodecError::Backend`].
    pub(crate) fn backend(codec: CodecKind, detail: impl ToString) -> Self {
        CodecError::Backend {
            codec,
            detail: detail.to_string(),
        }
    }
}
