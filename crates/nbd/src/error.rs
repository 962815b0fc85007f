//! Library error type and the mapping from I/O errors to NBD error numbers.

use std::io;

use mkmodule_blockdev::ErrorKind;

/// Errors returned by the library API (configuration, listeners, server start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server configuration is unusable.
    #[error("invalid NBD server configuration: {0}")]
    Config(ConfigError),
    /// Binding or preparing a listener failed.
    #[error("cannot listen on {what}")]
    Listen {
        /// Which address or path.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An inherited file descriptor is not a listening TCP or Unix socket.
    #[error("inherited file descriptor is not a usable listening socket")]
    NotASocket(#[source] io::Error),
    /// A thread could not be started.
    #[error("cannot start a server thread")]
    Thread(#[source] io::Error),
    /// TLS credentials could not be loaded.
    #[error("cannot load the TLS credentials")]
    Tls(#[from] crate::tls::TlsError),
}

impl Error {
    /// What kind of failure this is: a bad setting, or the operating system refusing a
    /// listener or thread.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::NotASocket(_) => ErrorKind::Config,
            Error::Listen { .. } | Error::Thread(_) => ErrorKind::Io,
            Error::Tls(tls) => tls.kind(),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(problem: ConfigError) -> Self {
        Error::Config(problem)
    }
}

/// What is wrong with a server configuration (see [`crate::ServerConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration has no exports.
    #[error("no exports configured")]
    NoExports,
    /// The server was started without a listener.
    #[error("no listeners given")]
    NoListeners,
    /// An export name too long for the protocol, or one with a NUL byte.
    #[error("export name {name:?} is longer than {max} bytes or contains NUL")]
    ExportName {
        /// The export name.
        name: String,
        /// The longest name the protocol carries.
        max: usize,
    },
    /// An export description too long for the protocol, or one with a NUL byte.
    #[error("description of export {name:?} is longer than {max} bytes or contains NUL")]
    ExportDescription {
        /// The export's name.
        name: String,
        /// The longest description the protocol carries.
        max: usize,
    },
    /// Two exports with the same name.
    #[error("export name {name:?} is used twice")]
    DuplicateExport {
        /// The name.
        name: String,
    },
    /// The default export names no configured export.
    #[error("default export {name:?} is not among the exports")]
    UnknownDefaultExport {
        /// The name given as the default.
        name: String,
    },
    /// A limit that must be at least 1 is 0.
    #[error("{setting} must be at least 1")]
    ZeroLimit {
        /// The setting's name (`max_connections`, `workers`, ...).
        setting: &'static str,
    },
    /// The handshake timeout is zero.
    #[error("handshake_timeout must not be zero")]
    ZeroHandshakeTimeout,
    /// TLS is switched on but no certificates were given.
    #[error("TLS is on or required but no certificates are configured")]
    TlsWithoutCertificates,
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
    ///
    /// An operating-system error keeps its errno where NBD has one. Otherwise the I/O kind
    /// decides, and it follows [`ErrorKind::io_kind`] of the library error behind it: out of
    /// range and bad settings are `EINVAL`, read-only `EPERM`, unsupported `ENOTSUP`, damage
    /// and I/O failures `EIO`.
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

    /// The errno a client sees for each kind of library error, as the error contract says.
    fn errno_of(kind: ErrorKind) -> NbdErrno {
        let cause = io::Error::other("simulated failure");
        NbdErrno::from_io(&mkmodule_blockdev::io_error(kind, &cause))
    }

    #[test]
    fn each_error_kind_reaches_the_client_as_its_errno() {
        assert_eq!(errno_of(ErrorKind::OutOfRange), NbdErrno::Inval);
        assert_eq!(errno_of(ErrorKind::Config), NbdErrno::Inval);
        assert_eq!(errno_of(ErrorKind::Corrupt), NbdErrno::Io);
        assert_eq!(errno_of(ErrorKind::Io), NbdErrno::Io);
        assert_eq!(errno_of(ErrorKind::ReadOnly), NbdErrno::Perm);
        assert_eq!(errno_of(ErrorKind::Unsupported), NbdErrno::NotSup);
    }

    #[test]
    fn operating_system_errors_keep_their_errno() {
        assert_eq!(
            NbdErrno::from_io(&io::Error::from_raw_os_error(5)),
            NbdErrno::Io
        );
        assert_eq!(
            NbdErrno::from_io(&io::Error::from_raw_os_error(30)),
            NbdErrno::Perm
        );
        assert_eq!(
            NbdErrno::from_io(&io::Error::from_raw_os_error(22)),
            NbdErrno::Inval
        );
    }

    #[test]
    fn library_errors_report_their_kind_and_print_each_cause_once() {
        let listen = Error::Listen {
            what: "127.0.0.1:10809".into(),
            source: io::Error::from_raw_os_error(98),
        };
        assert_eq!(listen.kind(), ErrorKind::Io);
        let text = mkmodule_blockdev::chain_text(&listen);
        assert!(
            text.starts_with("cannot listen on 127.0.0.1:10809: "),
            "{text}"
        );
        assert_eq!(text.matches("cannot listen").count(), 1, "{text}");
        let config = Error::from(ConfigError::DuplicateExport { name: "a".into() });
        assert_eq!(config.kind(), ErrorKind::Config);
        assert_eq!(
            mkmodule_blockdev::chain_text(&config),
            "invalid NBD server configuration: export name \"a\" is used twice"
        );
    }
}
