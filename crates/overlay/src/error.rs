//! Typed errors of opening and creating overlays.

use std::io;
use std::path::PathBuf;

use mkmodule_blockdev::ErrorKind;

/// Why an overlay could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// An I/O operation on the overlay file failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done ("opening", "reading the header of", ...).
        what: &'static str,
        /// The overlay file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the base export failed (while fingerprinting it).
    #[error("reading the base at offset {offset}")]
    Base {
        /// Byte offset in the base.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the overlay signature.
    #[error("{} is not a mkmodule overlay file (no MKMODCOW signature at offset 0)", path.display())]
    NotOverlay {
        /// The file.
        path: PathBuf,
    },
    /// The file is an overlay of a format version this build does not read.
    #[error(
        "{} is a version {found} overlay; this mkmodule reads version {supported}",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },
    /// The header or metadata of the file is damaged.
    #[error("{} is damaged: {damage}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with numbers.
        damage: Damage,
    },
    /// The overlay was made for another base image.
    #[error(
        "{} was made for another base: {expected_label:?} of {expected_size} bytes \
         (fingerprint {expected_fingerprint}), but this base has {actual_size} bytes \
         (fingerprint {actual_fingerprint})",
        path.display()
    )]
    BaseMismatch {
        /// The overlay file.
        path: PathBuf,
        /// The base's label recorded at creation (usually its path).
        expected_label: String,
        /// Base size recorded at creation.
        expected_size: u64,
        /// Base fingerprint recorded at creation (hex).
        expected_fingerprint: String,
        /// Size of the base given now.
        actual_size: u64,
        /// Fingerprint of the base given now (hex).
        actual_fingerprint: String,
    },
    /// Another process holds the overlay file.
    #[error(
        "{} is in use by another process (a running mkmodule serve?): stop it first",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The chunk size is not a power of two in the allowed range.
    #[error(
        "chunk size {0} is not possible: it must be a power of two from {min} to {max} bytes",
        min = crate::MIN_CHUNK_SIZE,
        max = crate::MAX_CHUNK_SIZE
    )]
    ChunkSize(u64),
    /// The base is larger than an overlay file can cover.
    #[error("a base of {base_size} bytes is too large for an overlay file")]
    BaseTooLarge {
        /// Size of the base in bytes.
        base_size: u64,
    },
    /// The overlay file exists already (from [`crate::Overlay::create`]).
    #[error("{} exists already", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// What is damaged in an overlay file's header or metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// The header's CRC32 does not match its bytes.
    #[error("header checksum {stored:#010x} does not match its content ({computed:#010x})")]
    HeaderChecksum {
        /// CRC32 stored in the header.
        stored: u32,
        /// CRC32 of the header's bytes.
        computed: u32,
    },
    /// The header records a chunk size that is not a power of two in the allowed range.
    #[error("chunk size {chunk_size} in the header is not possible")]
    ChunkSize {
        /// The recorded chunk size.
        chunk_size: u32,
    },
    /// The header records a base size no overlay file can cover.
    #[error("base size {base_size} in the header is too large for an overlay file")]
    BaseSize {
        /// The recorded base size.
        base_size: u64,
    },
    /// The header's layout fields differ from what its chunk size and base size imply.
    #[error(
        "header layout {recorded:?} differs from the one chunk size {chunk_size} and \
         base size {base_size} give ({expected:?})"
    )]
    Layout {
        /// The recorded chunk size.
        chunk_size: u32,
        /// The recorded base size.
        base_size: u64,
        /// Chunk count, data offset, both region offsets and log capacity as recorded.
        recorded: [u64; 5],
        /// The same fields as the chunk size and base size imply.
        expected: [u64; 5],
    },
    /// The file is shorter than its layout needs.
    #[error(
        "the file is {file_len} bytes, shorter than the {needed} its layout needs (truncated?)"
    )]
    Truncated {
        /// Length of the file.
        file_len: u64,
        /// Length its layout needs.
        needed: u64,
    },
    /// Neither metadata checkpoint is intact.
    #[error("both metadata checkpoints (at offsets {first} and {second}) are damaged")]
    Checkpoints {
        /// File offset of the first checkpoint region.
        first: u64,
        /// File offset of the second checkpoint region.
        second: u64,
    },
}

impl OverlayError {
    /// What kind of failure this is: the operating system failing, a damaged overlay file, an
    /// overlay of a newer version, or settings that do not fit (wrong base, chunk size, an
    /// existing file).
    pub fn kind(&self) -> ErrorKind {
        match self {
            OverlayError::Io { .. } | OverlayError::Locked { .. } => ErrorKind::Io,
            OverlayError::Base { source, .. } => match source.kind() {
                io::ErrorKind::InvalidData => ErrorKind::Corrupt,
                io::ErrorKind::InvalidInput => ErrorKind::OutOfRange,
                _ => ErrorKind::Io,
            },
            OverlayError::NotOverlay { .. } | OverlayError::Corrupt { .. } => ErrorKind::Corrupt,
            OverlayError::Version { .. } => ErrorKind::Unsupported,
            OverlayError::BaseMismatch { .. }
            | OverlayError::ChunkSize(_)
            | OverlayError::BaseTooLarge { .. }
            | OverlayError::Exists { .. } => ErrorKind::Config,
        }
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        OverlayError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, damage: Damage) -> Self {
        OverlayError::Corrupt {
            path: path.to_path_buf(),
            damage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once_and_the_kind_follows_the_failure() {
        let error = OverlayError::io(
            "opening",
            std::path::Path::new("cow.img"),
            io::Error::other("Input/output error"),
        );
        assert_eq!(
            mkmodule_blockdev::chain_text(&error),
            "opening cow.img: Input/output error"
        );
        assert_eq!(error.kind(), ErrorKind::Io);
        let damaged = OverlayError::corrupt(
            std::path::Path::new("cow.img"),
            Damage::Checkpoints {
                first: 4096,
                second: 8192,
            },
        );
        assert_eq!(damaged.kind(), ErrorKind::Corrupt);
        assert!(damaged.to_string().contains("both metadata checkpoints"));
        assert_eq!(OverlayError::ChunkSize(3).kind(), ErrorKind::Config);
    }
}
