//! The error kinds shared by every mkmodule library, and their mapping to I/O errors.
//!
//! # The error contract
//!
//! Every library error type of mkmodule follows these rules:
//!
//! 1. It is a `thiserror` enum marked `#[non_exhaustive]` (or a small struct) with a
//!    `kind(&self) -> ErrorKind`, so callers decide by kind and never by matching message text
//!    or another crate's variants.
//! 2. A cause is given **either** in the message **or** as [`Error::source`], never both: a
//!    variant with a `#[source]`, `#[from]` or `source` field does not print that field
//!    (`#[error(transparent)]` is fine). [`chain_text`] then prints every cause exactly once.
//! 3. Structured problems are typed fields, not strings built with `format!`; only text that
//!    comes from a third-party library is kept as a string.
//! 4. A block device that wraps a library error reports it as an [`io::Error`] of the kind's
//!    [`ErrorKind::io_kind`] (see [`io_error`]), which the NBD server turns into the errno a
//!    client sees.

use std::error::Error;
use std::io;

/// What kind of failure an error is, whatever library reported it.
///
/// Every library error type in mkmodule has a `kind()` returning one of these. The CLI uses it
/// for exit codes and wording; a block device uses [`ErrorKind::io_kind`] to pick the
/// [`io::ErrorKind`] it returns, which the NBD server turns into the errno a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system refused or failed an operation (open, read, write, sync, bind).
    Io,
    /// Stored data is damaged or inconsistent (a bad header, index, block or checksum).
    Corrupt,
    /// A request reaches outside what exists (a byte range past the end, a block number).
    OutOfRange,
    /// Valid data that this build cannot handle (a codec left out, an unknown dialect flag).
    Unsupported,
    /// The caller's settings or arguments are unusable.
    Config,
    /// A write to something that is read-only.
    ReadOnly,
}

impl ErrorKind {
    /// The [`io::ErrorKind`] a block device reports for an error of this kind.
    ///
    /// The NBD server maps these to `EINVAL` (out of range, config), `EPERM` (read-only),
    /// `ENOTSUP` (unsupported) and `EIO` (everything else).
    pub fn io_kind(self) -> io::ErrorKind {
        match self {
            ErrorKind::OutOfRange | ErrorKind::Config => io::ErrorKind::InvalidInput,
            ErrorKind::ReadOnly => io::ErrorKind::PermissionDenied,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::Corrupt => io::ErrorKind::InvalidData,
            ErrorKind::Io => io::ErrorKind::Other,
        }
    }
}

/// The error and each of its causes on one line, joined by `": "`.
///
/// mkmodule's errors give a cause either in their message or as `source()`, never both, so
/// this prints every cause exactly once.
pub fn chain_text(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// An [`io::Error`] of `kind`'s I/O kind whose message is `error`'s whole chain.
///
/// For block devices that wrap a richer library error: the client-facing errno follows the
/// kind, the server log keeps every cause.
pub fn io_error(kind: ErrorKind, error: &(dyn Error + 'static)) -> io::Error {
    io::Error::new(kind.io_kind(), chain_text(error))
}

/// The error for a write-like operation (`what`) on a read-only device.
pub fn read_only(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{what} not permitted: the device is read-only"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading block 3")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_names_each_cause_once() {
        let error = Outer(io::Error::other("Input/output error"));
        assert_eq!(chain_text(&error), "reading block 3: Input/output error");
        let io = io_error(ErrorKind::Corrupt, &error);
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        assert_eq!(io.to_string(), "reading block 3: Input/output error");
    }

    #[test]
    fn kinds_map_to_client_visible_io_kinds() {
        assert_eq!(ErrorKind::OutOfRange.io_kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            ErrorKind::ReadOnly.io_kind(),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(read_only("write").kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(ErrorKind::Corrupt.io_kind(), io::ErrorKind::InvalidData);
        assert_eq!(ErrorKind::Io.io_kind(), io::ErrorKind::Other);
    }
}
