//! The client side of the NBD handshake: fixed newstyle negotiation ending in `NBD_OPT_GO`,
//! which leaves the socket in the transmission phase, ready for the kernel.
//!
//! Only simple replies are negotiated (no structured replies, no extended headers): the Linux
//! NBD driver reads nothing else once it owns the socket.

use std::io::{Read, Write};

use mkmodule_nbd::proto;

use crate::error::HandshakeError;

/// What the server said about the export in its `NBD_REP_INFO` replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The export's size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_HAS_FLAGS`, `READ_ONLY`, `CAN_MULTI_CONN`...).
    pub flags: u16,
    /// Minimum, preferred and maximum block size, when the server gave them.
    pub block_sizes: Option<(u32, u32, u32)>,
    /// The export's description, when the server gave one.
    pub description: Option<String>,
}

impl ExportInfo {
    /// Whether the server allows several connections to this export at once.
    pub fn can_multi_conn(&self) -> bool {
        self.flags & proto::TFLAG_CAN_MULTI_CONN != 0
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.flags & proto::TFLAG_READ_ONLY != 0
    }
}

/// Longest option reply payload accepted (a description is at most 4 KiB, names too).
const MAX_REPLY: u32 = 64 << 10;

/// Negotiates `export` on a freshly connected `stream`; on success the stream is in the
/// transmission phase.
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    export: &str,
) -> Result<ExportInfo, HandshakeError> {
    if export.len() > proto::MAX_STRING {
        return Err(HandshakeError::NameTooLong(export.len()));
    }
    let mut greeting = [0u8; proto::GREETING_LEN];
    read_exact(stream, &mut greeting, "the greeting")?;
    let magic = u64::from_be_bytes(greeting[0..8].try_into().expect("8 bytes"));
    let opt_magic = u64::from_be_bytes(greeting[8..16].try_into().expect("8 bytes"));
    if magic != proto::NBDMAGIC {
        return Err(HandshakeError::NotNbd);
    }
    if opt_magic != proto::IHAVEOPT {
        return Err(HandshakeError::OldStyle);
    }
    let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if server_flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::NotFixedNewstyle);
    }
    let mut client_flags = proto::FLAG_C_FIXED_NEWSTYLE;
    if server_flags & proto::FLAG_NO_ZEROES != 0 {
        client_flags |= proto::FLAG_C_NO_ZEROES;
    }
    write_all(stream, &client_flags.to_be_bytes(), "the handshake")?;

    // NBD_OPT_GO: name, then the information requests.
    let data = proto::InfoRequest {
        name: export.to_string(),
        requests: vec![proto::INFO_BLOCK_SIZE, proto::INFO_DESCRIPTION],
    }
    .encode();
    send_option(stream, proto::OPT_GO, &data)?;

    let mut size_flags: Option<(u64, u16)> = None;
    let mut block_sizes = None;
    let mut description = None;
    loop {
        let (reply, payload) = read_reply(stream, proto::OPT_GO)?;
        match reply {
            proto::REP_ACK => break,
            proto::REP_INFO => {
                if payload.len() < 2 {
                    return Err(HandshakeError::Malformed("an NBD_REP_INFO without a type"));
                }
                let kind = u16::from_be_bytes([payload[0], payload[1]]);
                let body = &payload[2..];
                match kind {
                    proto::INFO_EXPORT => {
                        if body.len() != 10 {
                            return Err(HandshakeError::Malformed(
                                "NBD_INFO_EXPORT of the wrong length",
                            ));
                        }
                        let size = u64::from_be_bytes(body[0..8].try_into().expect("8 bytes"));
                        let flags = u16::from_be_bytes([body[8], body[9]]);
                        size_flags = Some((size, flags));
                    }
                    proto::INFO_BLOCK_SIZE if body.len() == 12 => {
                        let at = |i: usize| {
                            u32::from_be_bytes(body[i..i + 4].try_into().expect("4 bytes"))
                        };
                        block_sizes = Some((at(0), at(4), at(8)));
                    }
                    proto::INFO_DESCRIPTION => {
                        description = Some(String::from_utf8_lossy(body).into_owned());
                    }
                    // Information the client did not ask for, or of a type it does not know.
                    _ => {}
                }
            }
            r if r & proto::REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&payload).into_owned();
                return Err(match r {
                    proto::REP_ERR_UNKNOWN => HandshakeError::UnknownExport {
                        export: export.to_string(),
                        message,
                    },
                    proto::REP_ERR_UNSUP => HandshakeError::GoUnsupported,
                    proto::REP_ERR_TLS_REQD => HandshakeError::TlsRequired,
                    _ => HandshakeError::Refused {
                        code: r & !proto::REP_FLAG_ERROR,
                        message,
                    },
                });
            }
            _ => {
                return Err(HandshakeError::Malformed(
                    "an unexpected reply to NBD_OPT_GO",
                ))
            }
        }
    }
    let (size, flags) = size_flags.ok_or(HandshakeError::Malformed(
        "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT",
    ))?;
    Ok(ExportInfo {
        size,
        flags,
        block_sizes,
        description,
    })
}

fn send_option<S: Write>(stream: &mut S, option: u32, data: &[u8]) -> Result<(), HandshakeError> {
    let header = proto::OptionHeader {
        magic: proto::IHAVEOPT,
        option,
        len: u32::try_from(data.len()).expect("short option"),
    };
    let mut message = header.encode().to_vec();
    message.extend_from_slice(data);
    write_all(stream, &message, "the handshake")
}

/// Reads one option reply to `option`: its type and payload.
fn read_reply<S: Read>(stream: &mut S, option: u32) -> Result<(u32, Vec<u8>), HandshakeError> {
    let mut header = [0u8; 20];
    read_exact(stream, &mut header, "an option reply")?;
    let magic = u64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
    let answered = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    let reply = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    if magic != proto::OPT_REPLY_MAGIC {
        return Err(HandshakeError::Malformed(
            "an option reply without its magic",
        ));
    }
    if answered != option {
        return Err(HandshakeError::Malformed(
            "a reply to an option that was not sent",
        ));
    }
    if len > MAX_REPLY {
        return Err(HandshakeError::Malformed(
            "an option reply longer than 64 KiB",
        ));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact(stream, &mut payload, "an option reply")?;
    Ok((reply, payload))
}

/// Reads exactly `buf.len()` bytes; the end of the stream, a reset or a broken pipe is
/// [`HandshakeError::Vanished`] during `what`.
pub(crate) fn read_exact<S: Read>(
    stream: &mut S,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), HandshakeError> {
    stream.read_exact(buf).map_err(|source| {
        if crate::error::is_hang_up(&source) {
            HandshakeError::Vanished { what }
        } else {
            HandshakeError::Io { what, source }
        }
    })
}

/// Writes and flushes `buf`, with the errors of [`read_exact`].
pub(crate) fn write_all<S: Write>(
    stream: &mut S,
    buf: &[u8],
    what: &'static str,
) -> Result<(), HandshakeError> {
    stream
        .write_all(buf)
        .and_then(|()| stream.flush())
        .map_err(|source| {
            if crate::error::is_hang_up(&source) {
                HandshakeError::Vanished { what }
            } else {
                HandshakeError::Io { what, source }
            }
        })
}
