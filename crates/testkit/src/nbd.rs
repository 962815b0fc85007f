//! A raw NBD client for tests, written from the protocol specification rather than with the
//! server's own encoders: fixed newstyle handshake, options, `NBD_OPT_GO` or
//! `NBD_OPT_EXPORT_NAME`, simple and structured replies, and the socket itself for tests that
//! send malformed bytes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// "NBDMAGIC", the first word of the greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT", the magic of the greeting's second word and of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Server handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Server handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 2;
/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// The bit that marks an option reply as an error.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// Error number `EPERM` as it travels on the wire.
pub const EPERM: u32 = 1;
/// Error number `EIO`.
pub const EIO: u32 = 5;
/// Error number `EINVAL`.
pub const EINVAL: u32 = 22;
/// Structured reply flag: the last chunk of its reply.
pub const REPLY_FLAG_DONE: u16 = 1;

/// How long a test waits for the server before a read fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn be_u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}

fn be_u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be_u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Connects and reads the 18-byte fixed-newstyle greeting; `Ok(None)` when the server closes
/// the connection without greeting (what it does above its connection cap).
pub fn greeted(addr: SocketAddr) -> io::Result<Option<TcpStream>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut greeting = [0u8; 18];
    let mut got = 0;
    while got < greeting.len() {
        match s.read(&mut greeting[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT", "greeting");
    assert_eq!(greeting[17] & 1, 1, "the server must offer fixed newstyle");
    Ok(Some(s))
}

/// The bytes of one option request: `IHAVEOPT`, the option, the payload's length and payload.
pub fn option_request(option: u32, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16 + payload.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(payload);
    msg
}

/// The payload of `NBD_OPT_GO` (and `NBD_OPT_INFO`) for `export`, asking for no information.
pub fn go_payload(export: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(export.len() as u32).to_be_bytes());
    payload.extend_from_slice(export.as_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload
}

/// Reads one option reply: (option, reply type, payload). Checks the reply magic.
pub fn read_option_reply(s: &mut TcpStream) -> io::Result<(u32, u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    assert_eq!(be_u64_at(&h, 0), OPT_REPLY_MAGIC, "option reply magic");
    let mut payload = vec![0u8; be_u32_at(&h, 16) as usize];
    s.read_exact(&mut payload)?;
    Ok((be_u32_at(&h, 8), be_u32_at(&h, 12), payload))
}

/// Sends an option during the haggling phase and reads its replies up to the final one (an
/// ACK or an error); returns (reply type, payload) of each.
pub fn haggle(s: &mut TcpStream, option: u32, payload: &[u8]) -> io::Result<Vec<(u32, Vec<u8>)>> {
    s.write_all(&option_request(option, payload))?;
    let mut replies = Vec::new();
    // An answer is a handful of replies (a list, at most a few hundred exports): bounded.
    for _ in 0..4096 {
        let (_, rtype, payload) = read_option_reply(s)?;
        let last = rtype == REP_ACK || rtype & REP_FLAG_ERROR != 0;
        replies.push((rtype, payload));
        if last {
            return Ok(replies);
        }
    }
    Err(io::Error::other("option: no final reply"))
}

/// The 28-byte request header.
pub fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    request_with_flags(0, cmd, cookie, offset, len)
}

/// The 28-byte request header with command flags.
pub fn request_with_flags(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// One chunk of a structured reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Chunk flags (`REPLY_FLAG_DONE` on the last one).
    pub flags: u16,
    /// Chunk type (`NONE`, `OFFSET_DATA`, `OFFSET_HOLE`, `BLOCK_STATUS`, errors).
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// The chunk's payload.
    pub payload: Vec<u8>,
}

impl Chunk {
    /// Whether this is the last chunk of its reply.
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// A raw NBD connection in the transmission phase.
pub struct NbdClient {
    /// The socket (tests write raw bytes to it).
    pub s: TcpStream,
    /// Device size from `NBD_INFO_EXPORT` (or the `EXPORT_NAME` answer).
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
}

impl NbdClient {
    /// Connects, then [`NbdClient::go`]; an error if the server refused the connection.
    pub fn connect(addr: SocketAddr, export: &str) -> io::Result<NbdClient> {
        match greeted(addr)? {
            Some(s) => NbdClient::go(s, export),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "closed without a greeting",
            )),
        }
    }

    /// Sends the client flags FIXED_NEWSTYLE | NO_ZEROES on a greeted stream.
    pub fn send_client_flags(s: &mut TcpStream) -> io::Result<()> {
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
    }

    /// Completes the handshake on a greeted stream: client flags FIXED_NEWSTYLE | NO_ZEROES,
    /// then `NBD_OPT_GO` for `export` (simple replies, as the Linux kernel uses it).
    pub fn go(mut s: TcpStream, export: &str) -> io::Result<NbdClient> {
        s.set_nodelay(true)?;
        Self::send_client_flags(&mut s)?;
        Self::go_after_options(s, export)
    }

    /// Connects and negotiates structured replies before `NBD_OPT_GO` for `export`.
    pub fn connect_structured(addr: SocketAddr, export: &str) -> io::Result<NbdClient> {
        let mut s = greeted(addr)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "closed without a greeting",
            )
        })?;
        s.set_nodelay(true)?;
        Self::send_client_flags(&mut s)?;
        let replies = haggle(&mut s, OPT_STRUCTURED_REPLY, &[])?;
        if replies.last().map(|r| r.0) != Some(REP_ACK) {
            return Err(io::Error::other("structured replies refused"));
        }
        Self::go_after_options(s, export)
    }

    /// Sends `NBD_OPT_GO` for `export` on a stream whose client flags (and any other options)
    /// were already sent, and reads the answer.
    pub fn go_after_options(mut s: TcpStream, export: &str) -> io::Result<NbdClient> {
        s.write_all(&option_request(OPT_GO, &go_payload(export)))?;
        let mut size = None;
        let mut flags = 0;
        // A GO answer is a handful of replies: bounded.
        for _ in 0..64 {
            let (_, rtype, p) = read_option_reply(&mut s)?;
            if rtype == REP_INFO && p.len() >= 12 && be_u16_at(&p, 0) == 0 {
                size = Some(be_u64_at(&p, 2));
                flags = be_u16_at(&p, 10);
            } else if rtype == REP_ACK {
                let size = size.ok_or_else(|| io::Error::other("GO without INFO_EXPORT"))?;
                return Ok(NbdClient { s, size, flags });
            } else if rtype & REP_FLAG_ERROR != 0 {
                return Err(io::Error::other(format!(
                    "NBD_OPT_GO refused: reply type {rtype:#x}"
                )));
            }
        }
        Err(io::Error::other("NBD_OPT_GO: no final reply"))
    }

    /// Connects with the oldest way into transmission, `NBD_OPT_EXPORT_NAME` (the client flags
    /// follow what the server offers).
    pub fn connect_export_name(addr: SocketAddr, export: &str) -> io::Result<NbdClient> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting)?;
        if be_u64_at(&greeting, 0) != NBDMAGIC || be_u64_at(&greeting, 8) != IHAVEOPT {
            return Err(io::Error::other("not an NBD fixed newstyle server"));
        }
        let no_zeroes = be_u16_at(&greeting, 16) & FLAG_NO_ZEROES != 0;
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        let mut msg = client_flags.to_be_bytes().to_vec();
        msg.extend_from_slice(&option_request(OPT_EXPORT_NAME, export.as_bytes()));
        s.write_all(&msg)?;
        let mut info = [0u8; 10];
        s.read_exact(&mut info)?;
        if !no_zeroes {
            let mut zeros = [0u8; 124];
            s.read_exact(&mut zeros)?;
        }
        Ok(NbdClient {
            s,
            size: be_u64_at(&info, 0),
            flags: be_u16_at(&info, 8),
        })
    }

    /// The 28-byte request header (see [`request`]).
    pub fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
        request(cmd, cookie, offset, len)
    }

    /// Sends one request header.
    pub fn send(&mut self, cmd: u16, cookie: u64, offset: u64, len: u32) -> io::Result<()> {
        self.s.write_all(&request(cmd, cookie, offset, len))
    }

    /// Reads one simple reply: (error, cookie, data), where a successful reply carries
    /// `data_len(cookie)` bytes of data.
    pub fn recv(&mut self, data_len: impl Fn(u64) -> usize) -> io::Result<(u32, u64, Vec<u8>)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        assert_eq!(be_u32_at(&h, 0), SIMPLE_REPLY_MAGIC, "simple reply magic");
        let (error, cookie) = (be_u32_at(&h, 4), be_u64_at(&h, 8));
        let mut data = Vec::new();
        if error == 0 {
            data.resize(data_len(cookie), 0);
            self.s.read_exact(&mut data)?;
        }
        Ok((error, cookie, data))
    }

    /// Reads one chunk of a structured reply.
    pub fn recv_chunk(&mut self) -> io::Result<Chunk> {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h)?;
        assert_eq!(
            be_u32_at(&h, 0),
            STRUCTURED_REPLY_MAGIC,
            "structured reply magic"
        );
        let mut payload = vec![0u8; be_u32_at(&h, 16) as usize];
        self.s.read_exact(&mut payload)?;
        Ok(Chunk {
            flags: be_u16_at(&h, 4),
            kind: be_u16_at(&h, 6),
            cookie: be_u64_at(&h, 8),
            payload,
        })
    }

    /// Reads the chunks of one structured reply, up to the one flagged done.
    pub fn recv_structured(&mut self) -> io::Result<Vec<Chunk>> {
        let mut chunks = Vec::new();
        loop {
            let chunk = self.recv_chunk()?;
            let done = chunk.done();
            chunks.push(chunk);
            if done {
                return Ok(chunks);
            }
        }
    }

    /// One READ with simple replies: the data, or the NBD error number the server answered.
    pub fn read_reply(&mut self, offset: u64, len: u32) -> io::Result<Result<Vec<u8>, u32>> {
        let cookie = offset ^ 0x5eed_0000_0000_0000;
        self.send(CMD_READ, cookie, offset, len)?;
        let (error, got, data) = self.recv(|_| len as usize)?;
        assert_eq!(got, cookie, "reply cookie");
        Ok(if error == 0 { Ok(data) } else { Err(error) })
    }

    /// One READ with simple replies; an NBD error becomes an `io::Error` naming its number.
    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        self.read_reply(offset, len)?
            .map_err(|errno| io::Error::other(format!("NBD error {errno}")))
    }

    /// Reads `buf.len()` bytes at `offset` into `buf` with simple replies (for benchmarks: no
    /// allocation).
    pub fn read_into(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cookie = offset ^ 0x5eed_0000_0000_0000;
        self.send(CMD_READ, cookie, offset, buf.len() as u32)?;
        if self.recv_into(buf)? != cookie {
            return Err(io::Error::other("reply to another request"));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at each of `offsets` with all requests in flight at once
    /// (replies may come in any order; their data all lands in `buf`, for timing only).
    pub fn read_pipelined(&mut self, offsets: &[u64], buf: &mut [u8]) -> io::Result<()> {
        for (i, &offset) in offsets.iter().enumerate() {
            self.send(CMD_READ, i as u64, offset, buf.len() as u32)?;
        }
        for _ in offsets {
            self.recv_into(buf)?;
        }
        Ok(())
    }

    /// Reads a simple reply whose data fills `buf`; returns its cookie, or the NBD error as an
    /// `io::Error`.
    fn recv_into(&mut self, buf: &mut [u8]) -> io::Result<u64> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if be_u32_at(&h, 0) != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::other("unexpected reply magic"));
        }
        let error = be_u32_at(&h, 4);
        if error != 0 {
            return Err(io::Error::other(format!("server error {error}")));
        }
        self.s.read_exact(buf)?;
        Ok(be_u64_at(&h, 8))
    }

    /// `NBD_CMD_DISC`, then waits (bounded by the read timeout) for the server to close, and
    /// checks it sent nothing more.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.send(CMD_DISC, 0, 0, 0)?;
        let mut rest = Vec::new();
        self.s.read_to_end(&mut rest)?;
        assert!(rest.is_empty(), "bytes after NBD_CMD_DISC: {}", rest.len());
        Ok(())
    }

    /// `NBD_CMD_DISC` and a bounded wait for the close, ignoring errors (the server may have
    /// closed the connection already).
    pub fn hang_up(mut self) {
        let _ = self.send(CMD_DISC, 0, 0, 0);
        let mut b = [0u8; 1];
        let _ = self.s.read(&mut b);
    }
}
