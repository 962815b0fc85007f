//! Wire constants and hand-written big-endian encoders/decoders for NBD messages.
//!
//! Numbers follow the NBD protocol specification (`doc/proto.md` of the NBD project).

/// `NBDMAGIC`, first 8 bytes of the greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second 8 bytes of the greeting and the magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after `EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle understood.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes after `EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option: legacy export selection (no error reporting possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort the handshake.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: withdrawn `PEEK_EXPORT`.
pub const OPT_PEEK_EXPORT: u32 = 4;
/// Option: start TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Option: query an export.
pub const OPT_INFO: u32 = 6;
/// Option: select an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: enable structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: experimental 64-bit headers.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: final acknowledgement.
pub const REP_ACK: u32 = 1;
/// Option reply: one export in a `LIST` answer.
pub const REP_SERVER: u32 = 2;
/// Option reply: one `NBD_INFO_*` item.
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option error bit.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option error: unknown option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Option error: refused by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Option error: malformed option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Option error: not available on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// Option error: TLS required first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// Option error: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Option error: server shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Option error: block size negotiation required.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Option error: request or answer too big.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Info type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info type: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Info type: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: flags field is valid (always set).
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `CMD_FLUSH` accepted.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `CMD_FLAG_FUA` accepted.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: rotational medium hint.
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: `CMD_TRIM` accepted.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `CMD_WRITE_ZEROES` accepted.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: `CMD_FLAG_DF` accepted (structured replies only).
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: all connections see one coherent image.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `CMD_CACHE` understood.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag: `CMD_FLAG_FAST_ZERO` understood.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (payload follows the header).
pub const CMD_WRITE: u16 = 1;
/// Command: soft disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim (discard hint).
pub const CMD_TRIM: u16 = 4;
/// Command: prefetch hint.
pub const CMD_CACHE: u16 = 5;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: write zeroes must not punch holes.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: don't fragment a structured read.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: block status with one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail write zeroes unless fast.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type: no payload, success.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Chunk type: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type: zeroes at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type: block status extents for one context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk type: generic error.
pub const REPLY_TYPE_ERROR: u16 = 0x8001;
/// Chunk type: error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = 0x8002;

/// Block status flag: unallocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// Block status flag: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// The `base:allocation` flags of an extent: [`STATE_HOLE`] and [`STATE_ZERO`] as it says.
pub fn extent_flags(extent: &mkmodule_blockdev::Extent) -> u32 {
    (if extent.hole { STATE_HOLE } else { 0 }) | (if extent.zero { STATE_ZERO } else { 0 })
}

/// The only metadata context this server offers.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// Context id we assign to `base:allocation`.
pub const CONTEXT_ID_BASE_ALLOCATION: u32 = 1;

/// Largest READ/WRITE payload accepted (32 MiB).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload kept in memory; longer options are treated as abuse.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Largest string (export name, description, query) allowed by the spec.
pub const MAX_STRING: usize = 4096;

/// Length of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Length of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// Build the 18-byte fixed-newstyle greeting.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// A parsed option header sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Magic (must be `IHAVEOPT`).
    pub magic: u64,
    /// Option number.
    pub option: u32,
    /// Payload length.
    pub len: u32,
}

impl OptionHeader {
    /// Decode an option header.
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> Self {
        OptionHeader {
            magic: be_u64(&b[0..8]),
            option: be_u32(&b[8..12]),
            len: be_u32(&b[12..16]),
        }
    }

    /// Encode an option header (used by tests and clients).
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&self.magic.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Encode one option reply (header and payload) into a new buffer.
pub fn option_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(20 + payload.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply_type.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// Payload of an `NBD_REP_SERVER` reply: name length, name, description.
pub fn rep_server_payload(name: &str, description: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len() + description.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(description.as_bytes());
    b
}

/// Payload of `NBD_INFO_EXPORT`: type, size, transmission flags.
pub fn info_export_payload(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// Payload of `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`: type then text.
pub fn info_string_payload(info_type: u16, text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + text.len());
    b.extend_from_slice(&info_type.to_be_bytes());
    b.extend_from_slice(text.as_bytes());
    b
}

/// Payload of `NBD_INFO_BLOCK_SIZE`: type, minimum, preferred, maximum.
pub fn info_block_size_payload(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// Payload of `NBD_REP_META_CONTEXT`: context id then name.
pub fn meta_context_payload(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// Reply to `NBD_OPT_EXPORT_NAME`: size, flags and optionally 124 zero bytes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(b.len() + 124, 0);
    }
    b
}

/// Why an option payload could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// A cursor over an option payload that never reads past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if n > self.remaining() {
            return Err(Malformed(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        self.take(2, what).map(be_u16)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        self.take(4, what).map(be_u32)
    }
    fn string(&mut self, n: usize, what: &'static str) -> Result<String, Malformed> {
        if n > MAX_STRING {
            return Err(Malformed("string longer than 4096 bytes"));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("string is not UTF-8"))
    }
}

/// Parsed payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Requested export name (empty = default export).
    pub name: String,
    /// Requested `NBD_INFO_*` types.
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Parse an INFO/GO payload, validating every length against the payload.
    pub fn decode(payload: &[u8]) -> Result<Self, Malformed> {
        let mut c = Cursor::new(payload);
        let n = c.u32("name length missing")? as usize;
        if n > c.remaining().saturating_sub(2) {
            return Err(Malformed("export name length exceeds the option payload"));
        }
        let name = c.string(n, "export name truncated")?;
        let count = c.u16("information request count missing")? as usize;
        if count * 2 != c.remaining() {
            return Err(Malformed(
                "information request count does not match the payload",
            ));
        }
        let mut requests = Vec::with_capacity(count);
        for _ in 0..count {
            requests.push(c.u16("information request truncated")?);
        }
        Ok(InfoRequest { name, requests })
    }

    /// Encode an INFO/GO payload (used by tests and `mkmodule connect`).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for r in &self.requests {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }
}

/// Parsed payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// BlockDevice name the contexts apply to.
    pub name: String,
    /// Context queries (`namespace:leaf`).
    pub queries: Vec<String>,
}

impl MetaRequest {
    /// Parse a meta-context payload; counts and lengths are checked before use.
    pub fn decode(payload: &[u8]) -> Result<Self, Malformed> {
        let mut c = Cursor::new(payload);
        let n = c.u32("name length missing")? as usize;
        if n > c.remaining() {
            return Err(Malformed("export name length exceeds the option payload"));
        }
        let name = c.string(n, "export name truncated")?;
        let count = c.u32("query count missing")? as usize;
        // Each query needs at least its 4-byte length: refuse impossible counts
        // before allocating anything.
        if count > c.remaining() / 4 {
            return Err(Malformed("query count exceeds the option payload"));
        }
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            let qn = c.u32("query length missing")? as usize;
            if qn > c.remaining() {
                return Err(Malformed("query length exceeds the option payload"));
            }
            queries.push(c.string(qn, "query truncated")?);
        }
        if c.remaining() != 0 {
            return Err(Malformed("trailing bytes after the queries"));
        }
        Ok(MetaRequest { name, queries })
    }

    /// Encode a meta-context payload (used by tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            b.extend_from_slice(&(q.len() as u32).to_be_bytes());
            b.extend_from_slice(q.as_bytes());
        }
        b
    }
}

/// A parsed transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Magic (must be `REQUEST_MAGIC`).
    pub magic: u32,
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub cmd: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Request {
    /// Decode a 28-byte request header.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Self {
        Request {
            magic: be_u32(&b[0..4]),
            flags: be_u16(&b[4..6]),
            cmd: be_u16(&b[6..8]),
            cookie: be_u64(&b[8..16]),
            offset: be_u64(&b[16..24]),
            len: be_u32(&b[24..28]),
        }
    }

    /// Encode a 28-byte request header (used by tests and `mkmodule connect`).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&self.magic.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.cmd.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Append a simple reply header.
pub fn put_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Append a structured chunk header.
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, chunk_type: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&chunk_type.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Append a complete `ERROR` chunk (with DONE) carrying a message.
pub fn put_error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = truncate_utf8(message, MAX_STRING);
    put_chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// Append an `OFFSET_HOLE` chunk.
pub fn put_hole_chunk(out: &mut Vec<u8>, flags: u16, cookie: u64, offset: u64, len: u32) {
    put_chunk_header(out, flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Cut a string to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Read a big-endian u16 from exactly two bytes.
pub fn be_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_be_bytes(a)
}

/// Read a big-endian u32 from exactly four bytes.
pub fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// Read a big-endian u64 from exactly eight bytes.
pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Human-readable name of an option number (for tracing).
pub fn option_name(opt: u32) -> &'static str {
    match opt {
        OPT_EXPORT_NAME => "EXPORT_NAME",
        OPT_ABORT => "ABORT",
        OPT_LIST => "LIST",
        OPT_PEEK_EXPORT => "PEEK_EXPORT",
        OPT_STARTTLS => "STARTTLS",
        OPT_INFO => "INFO",
        OPT_GO => "GO",
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "EXTENDED_HEADERS",
        _ => "unknown",
    }
}

/// Human-readable name of a command number (for tracing).
pub fn command_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_DISC => "DISC",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_CACHE => "CACHE",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes() {
        let g = greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn option_header_roundtrip() {
        let h = OptionHeader {
            magic: IHAVEOPT,
            option: OPT_GO,
            len: 0x0102_0304,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"IHAVEOPT");
        assert_eq!(&b[8..16], &[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(OptionHeader::decode(&b), h);
    }

    #[test]
    fn option_reply_layout() {
        let r = option_reply(OPT_LIST, REP_ERR_UNSUP, b"hi");
        assert_eq!(r.len(), 22);
        assert_eq!(&r[0..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&r[8..12], &[0, 0, 0, 3]);
        assert_eq!(&r[12..16], &[0x80, 0, 0, 1]);
        assert_eq!(&r[16..20], &[0, 0, 0, 2]);
        assert_eq!(&r[20..], b"hi");
    }

    #[test]
    fn info_payloads() {
        let e = info_export_payload(0x1122, TFLAG_HAS_FLAGS | TFLAG_READ_ONLY);
        assert_eq!(e, vec![0, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0, 3]);
        let bs = info_block_size_payload(1, 4096, MAX_PAYLOAD);
        assert_eq!(bs.len(), 14);
        assert_eq!(&bs[0..2], &[0, 3]);
        assert_eq!(&bs[2..6], &[0, 0, 0, 1]);
        assert_eq!(&bs[6..10], &[0, 0, 0x10, 0]);
        assert_eq!(&bs[10..14], &[2, 0, 0, 0]);
        assert_eq!(info_string_payload(INFO_NAME, "ab"), vec![0, 1, b'a', b'b']);
        assert_eq!(
            rep_server_payload("x", "desc"),
            vec![0, 0, 0, 1, b'x', b'd', b'e', b's', b'c']
        );
        assert_eq!(meta_context_payload(1, "a:b")[..4], [0, 0, 0, 1]);
    }

    #[test]
    fn export_name_reply_zeroes() {
        assert_eq!(export_name_reply(5, 3, true).len(), 10);
        let r = export_name_reply(5, 3, false);
        assert_eq!(r.len(), 134);
        assert!(r[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn info_request_roundtrip_and_errors() {
        let r = InfoRequest {
            name: "disk".into(),
            requests: vec![INFO_NAME, INFO_BLOCK_SIZE],
        };
        assert_eq!(InfoRequest::decode(&r.encode()), Ok(r.clone()));
        // empty name, no requests
        assert_eq!(
            InfoRequest::decode(&[0, 0, 0, 0, 0, 0]),
            Ok(InfoRequest {
                name: String::new(),
                requests: vec![]
            })
        );
        // name length larger than the payload
        let mut bad = vec![0, 0, 0x03, 0xe8];
        bad.extend_from_slice(b"abcdef");
        assert!(InfoRequest::decode(&bad).is_err());
        // count does not match
        let mut bad = r.encode();
        bad.pop();
        assert!(InfoRequest::decode(&bad).is_err());
        let mut bad = r.encode();
        bad.push(0);
        assert!(InfoRequest::decode(&bad).is_err());
        assert!(InfoRequest::decode(&[]).is_err());
        assert!(InfoRequest::decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        // non UTF-8 name
        assert!(InfoRequest::decode(&[0, 0, 0, 1, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn meta_request_roundtrip_and_errors() {
        let m = MetaRequest {
            name: "".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty".into()],
        };
        assert_eq!(MetaRequest::decode(&m.encode()), Ok(m.clone()));
        // huge count with no data must not allocate or loop long
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(MetaRequest::decode(&b).is_err());
        // query length past the end
        let mut b = vec![0, 0, 0, 0, 0, 0, 0, 1];
        b.extend_from_slice(&100u32.to_be_bytes());
        b.extend_from_slice(b"base:");
        assert!(MetaRequest::decode(&b).is_err());
        // trailing garbage
        let mut b = m.encode();
        b.push(1);
        assert!(MetaRequest::decode(&b).is_err());
        // name length past the end
        assert!(MetaRequest::decode(&[0, 0, 0, 9, b'a']).is_err());
    }

    #[test]
    fn request_roundtrip() {
        let r = Request {
            magic: REQUEST_MAGIC,
            flags: CMD_FLAG_DF,
            cmd: CMD_READ,
            cookie: 0xdead_beef_0102_0304,
            offset: 1 << 40,
            len: 4096,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b), r);
    }

    #[test]
    fn reply_headers() {
        let mut out = Vec::new();
        put_simple_reply(&mut out, 22, 7);
        assert_eq!(out.len(), SIMPLE_REPLY_LEN);
        assert_eq!(&out[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&out[4..8], &[0, 0, 0, 22]);
        assert_eq!(&out[8..16], &7u64.to_be_bytes());

        let mut out = Vec::new();
        put_error_chunk(&mut out, 9, 22, "bad");
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 6 + 3);
        assert_eq!(&out[0..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&out[4..6], &[0, 1]);
        assert_eq!(&out[6..8], &[0x80, 0x01]);
        assert_eq!(&out[16..20], &[0, 0, 0, 9]);
        assert_eq!(&out[20..24], &[0, 0, 0, 22]);
        assert_eq!(&out[24..26], &[0, 3]);
        assert_eq!(&out[26..], b"bad");

        let mut out = Vec::new();
        put_hole_chunk(&mut out, 0, 1, 512, 4096);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 12);
        assert_eq!(&out[6..8], &[0, 2]);
    }

    #[test]
    fn truncate_on_char_boundary() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

    proptest::proptest! {
        #[test]
        fn option_parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = InfoRequest::decode(&bytes);
            let _ = MetaRequest::decode(&bytes);
        }

        #[test]
        fn info_request_roundtrips(name in "[a-z0-9/._-]{0,40}", reqs in proptest::collection::vec(0u16..8, 0..10)) {
            let r = InfoRequest { name, requests: reqs };
            proptest::prop_assert_eq!(InfoRequest::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn meta_request_roundtrips(name in "[a-z]{0,10}", queries in proptest::collection::vec("[a-z:]{0,30}", 0..8)) {
            let m = MetaRequest { name, queries };
            proptest::prop_assert_eq!(MetaRequest::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn request_roundtrips(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) {
            let r = Request { magic: REQUEST_MAGIC, flags, cmd, cookie, offset, len };
            proptest::prop_assert_eq!(Request::decode(&r.encode()), r);
        }
    }
}
