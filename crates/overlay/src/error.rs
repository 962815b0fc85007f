//! Typed errors of opening and creating overlays.

use std::io;
use std::path::PathBuf;

/// Why an overlay could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// An I/O operation on the overlay file failed.
    #[error("{what} {}: {source}", path.display())]
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
    #[error("reading the base at offset {offset}: {source}")]
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
    #[error("{} is damaged: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with numbers.
        what: String,
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
    /// The overlay file exists already (from [`crate::Overlay::create`]).
    #[error("{} exists already", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

impl OverlayError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        OverlayError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, what: impl Into<String>) -> Self {
        OverlayError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}
