//! Library error type and the mapping from I/O errors to NBD error numbers.

use std::io;

/// Errors returned by the library API (configuration, listeners, server start).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server configuration is unusable.
    #[error("invalid NBD server configuration: {0}")]
    Config(String),
    /// Binding or preparing a listener failed.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// Which address or path.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An inherited file descriptor is not a listening TCP or Unix socket.
    #[error("inherited file descriptor is not a usable listening socket: {0}")]
    NotASocket(io::Error),
    /// A thread could not be started.
    #[error("cannot start a server thread: {0}")]
    Thread(io::Error),
    /// TLS credentials could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Convenience alias for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Error numbers as sent on the wire (independent of the host's errno values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum NbdErrno {
    /// Operation not permitted (write to a read-only export).
    Perm = 1,
    /// Input/output error.
    Io = 5,
    /// Out of memory.
    NoMem = 12,
    /// Invalid argument (bad range, unknown command or flag).
    Inval = 22,
    /// No space left (write past the end).
    NoSpc = 28,
    /// Value too large (DF read too big).
    Overflow = 75,
    /// Operation not supported (fast zero not possible).
    NotSup = 95,
    /// Server shutting down.
    Shutdown = 108,
}

impl NbdErrno {
    /// The numeric value sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Map an I/O error from an export to the closest NBD error number.
    pub fn from_io(e: &io::Error) -> NbdErrno {
        // Linux errno values for the cases ErrorKind cannot express.
        #[cfg(target_os = "linux")]
        if let Some(code) = e.raw_os_error() {
            match code {
                1 | 13 | 30 => return NbdErrno::Perm, // EPERM, EACCES, EROFS
                5 => return NbdErrno::Io,
                12 => return NbdErrno::NoMem,
                22 => return NbdErrno::Inval,
                27 | 28 | 122 => return NbdErrno::NoSpc, // EFBIG, ENOSPC, EDQUOT
                75 => return NbdErrno::Overflow,
                95 => return NbdErrno::NotSup,
                108 => return NbdErrno::Shutdown,
                _ => {}
            }
        }
        match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => NbdErrno::Perm,
            io::ErrorKind::InvalidInput => NbdErrno::Inval,
            io::ErrorKind::OutOfMemory => NbdErrno::NoMem,
            io::ErrorKind::StorageFull
            | io::ErrorKind::FileTooLarge
            | io::ErrorKind::QuotaExceeded => NbdErrno::NoSpc,
            io::ErrorKind::Unsupported => NbdErrno::NotSup,
            _ => NbdErrno::Io,
        }
    }

    /// Short symbolic name (for logs).
    pub fn name(self) -> &'static str {
        match self {
            NbdErrno::Perm => "EPERM",
            NbdErrno::Io => "EIO",
            NbdErrno::NoMem => "ENOMEM",
            NbdErrno::Inval => "EINVAL",
            NbdErrno::NoSpc => "ENOSPC",
            NbdErrno::Overflow => "EOVERFLOW",
            NbdErrno::NotSup => "ENOTSUP",
            NbdErrno::Shutdown => "ESHUTDOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_mapping() {
        assert_eq!(
            NbdErrno::from_io(&mkmodule_blockdev::read_only("write")),
            NbdErrno::Perm
        );
        assert_eq!(
            NbdErrno::from_io(&io::Error::new(io::ErrorKind::InvalidInput, "x")),
            NbdErrno::Inval
        );
        assert_eq!(
            NbdErrno::from_io(&io::Error::new(io::ErrorKind::UnexpectedEof, "x")),
            NbdErrno::Io
        );
        assert_eq!(
            NbdErrno::from_io(&io::Error::from_raw_os_error(28)),
            NbdErrno::NoSpc
        );
        assert_eq!(NbdErrno::Inval.code(), 22);
        assert_eq!(NbdErrno::Shutdown.name(), "ESHUTDOWN");
    }
}
