//! Errors of the handshake, of the kernel's NBD netlink interface, and of parsing servers.

use std::io;

use mkmodule_blockdev::ErrorKind;

/// Whether an I/O error means the peer closed the connection (end of stream, reset, broken pipe).
pub(crate) fn is_hang_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// A failed NBD handshake or identity probe with one server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server closed the connection.
    #[error("the server closed the connection during {what}")]
    Vanished {
        /// Which step.
        what: &'static str,
    },
    /// Reading or writing the socket failed.
    #[error("I/O error during {what}")]
    Io {
        /// Which step.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The peer does not speak NBD.
    #[error("the server does not speak NBD (no NBDMAGIC in its greeting)")]
    NotNbd,
    /// The server speaks the old-style handshake, which has no export names.
    #[error("the server uses the old-style handshake (no export names)")]
    OldStyle,
    /// The server does not offer fixed newstyle negotiation.
    #[error("the server does not offer fixed newstyle negotiation")]
    NotFixedNewstyle,
    /// The export name is longer than the protocol allows.
    #[error("export name of {0} bytes is longer than 4096")]
    NameTooLong(usize),
    /// The server has no such export.
    #[error("the server has no export {export:?}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    UnknownExport {
        /// The name asked for.
        export: String,
        /// The server's message, if any.
        message: String,
    },
    /// The server does not know `NBD_OPT_GO` (older than the 2016 protocol).
    #[error("the server does not support NBD_OPT_GO")]
    GoUnsupported,
    /// The server demands TLS, which the kernel's client cannot speak.
    #[error("the server requires TLS, which the kernel's NBD client cannot use")]
    TlsRequired,
    /// Another refusal.
    #[error("the server refused the export (error {code}){}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Refused {
        /// The NBD_REP_ERR_* number without the error bit.
        code: u32,
        /// The server's message, if any.
        message: String,
    },
    /// A reply that breaks the protocol.
    #[error("protocol error: {0}")]
    Malformed(&'static str),
    /// Reading a sample of the identity failed on the server.
    #[error("the server failed a read at offset {offset} (NBD error {errno})")]
    SampleRead {
        /// Where.
        offset: u64,
        /// The NBD error number.
        errno: u32,
    },
}

impl HandshakeError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::Vanished { .. }
            | HandshakeError::Io { .. }
            | HandshakeError::SampleRead { .. } => ErrorKind::Io,
            HandshakeError::UnknownExport { .. } | HandshakeError::NameTooLong(_) => {
                ErrorKind::Config
            }
            _ => ErrorKind::Unsupported,
        }
    }
}

/// A failure of the kernel's NBD netlink interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The generic netlink family "nbd" is not registered.
    #[error("the kernel has no NBD netlink interface (load the nbd module: modprobe nbd)")]
    NoFamily,
    /// The netlink socket could not be opened or used.
    #[error("netlink: {0}")]
    Socket(String),
    /// The kernel refused a command.
    #[error("the kernel refused {command}: {}", io::Error::from_raw_os_error(*errno))]
    Refused {
        /// Which command.
        command: &'static str,
        /// The errno the kernel returned.
        errno: i32,
    },
    /// The device is already connected.
    #[error("/dev/nbd{0} is already in use")]
    InUse(u32),
    /// A reply without what it should carry.
    #[error("netlink: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetlinkError::NoFamily => ErrorKind::Unsupported,
            NetlinkError::InUse(_) => ErrorKind::Config,
            _ => ErrorKind::Io,
        }
    }
}

/// A server address that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Empty text.
    #[error("empty server address")]
    Empty,
    /// A port that is not a number from 1 to 65535.
    #[error("bad port in {0:?}")]
    Port(String),
    /// An unclosed `[`.
    #[error("bad IPv6 address in {0:?}: use [ADDRESS]:PORT")]
    Bracket(String),
}

impl AddressError {
    /// Always a bad setting.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Config
    }
}
