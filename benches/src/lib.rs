//! Helpers for mkmodule's criterion benchmarks (`cargo bench -p mkmodule-benches`): test data
//! that compresses like a filesystem image, and a minimal blocking NBD client.
//!
//! The bench targets in `benches/` are:
//!
//! * `codec`: compress and decompress one block, per codec and block size;
//! * `pack`: the whole packer pipeline on in-memory data;
//! * `read`: `Image::read_at` with a warm cache and with caching off;
//! * `nbd`: reads over loopback TCP from the NBD server, from a memory export and from a
//!   cloop image export.
//!
//! Their default run time is short (small sample sizes, 1-2 s of measurement per benchmark);
//! pass criterion's own options after `--` for longer runs.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use mkmodule_nbd::proto::{
    CMD_DISC, CMD_READ, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_NO_ZEROES, IHAVEOPT,
    NBDMAGIC, OPT_EXPORT_NAME, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};

/// `len` bytes that compress roughly like a root filesystem: runs of words (text, about
/// 0.3 with zlib), runs of pseudo-random bytes (binaries that barely compress) and runs of
/// zeros (free space), in 4 KiB pieces. Deterministic.
pub fn filesystem_like(len: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 16] = [
        b"the ",
        b"usr/lib/",
        b"config ",
        b"return ",
        b"0x0000 ",
        b"static ",
        b"include ",
        b"/etc/",
        b"error: ",
        b"function ",
        b"value ",
        b"Debian ",
        b"kernel ",
        b"{\n  ",
        b"}\n",
        b"data ",
    ];
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while out.len() < len {
        let piece = 4096.min(len - out.len());
        let kind = next() % 10;
        let start = out.len();
        match kind {
            0..=5 => {
                while out.len() < start + piece {
                    let w = WORDS[(next() % 16) as usize];
                    let take = w.len().min(start + piece - out.len());
                    out.extend_from_slice(&w[..take]);
                }
            }
            6 | 7 => {
                while out.len() < start + piece {
                    let v = next().to_le_bytes();
                    let take = 8.min(start + piece - out.len());
                    out.extend_from_slice(&v[..take]);
                }
            }
            _ => out.resize(start + piece, 0),
        }
    }
    out
}

/// A blocking NBD client with just enough protocol for benchmarks: fixed newstyle handshake
/// with `NBD_OPT_EXPORT_NAME`, simple replies, `READ` and `DISC`.
pub struct NbdClient {
    stream: TcpStream,
    size: u64,
    handle: u64,
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

impl NbdClient {
    /// Connects to `addr` and selects `export`.
    pub fn connect(addr: SocketAddr, export: &str) -> io::Result<NbdClient> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        if be_u64(&greeting[0..]) != NBDMAGIC || be_u64(&greeting[8..]) != IHAVEOPT {
            return Err(io::Error::other("not an NBD fixed newstyle server"));
        }
        let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
        let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            client_flags |= FLAG_C_NO_ZEROES;
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&client_flags.to_be_bytes());
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        msg.extend_from_slice(&(export.len() as u32).to_be_bytes());
        msg.extend_from_slice(export.as_bytes());
        stream.write_all(&msg)?;
        let mut info = [0u8; 10];
        stream.read_exact(&mut info)?;
        if !no_zeroes {
            let mut zeros = [0u8; 124];
            stream.read_exact(&mut zeros)?;
        }
        Ok(NbdClient {
            stream,
            size: be_u64(&info),
            handle: 0,
        })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn send_read(&mut self, offset: u64, len: u32) -> io::Result<u64> {
        self.handle += 1;
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        req[8..16].copy_from_slice(&self.handle.to_be_bytes());
        req[16..24].copy_from_slice(&offset.to_be_bytes());
        req[24..28].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&req)?;
        Ok(self.handle)
    }

    fn receive(&mut self, buf: &mut [u8]) -> io::Result<u64> {
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        if be_u32(&reply) != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::other("unexpected reply magic"));
        }
        let error = be_u32(&reply[4..]);
        if error != 0 {
            return Err(io::Error::other(format!("server error {error}")));
        }
        self.stream.read_exact(buf)?;
        Ok(be_u64(&reply[8..]))
    }

    /// Reads `buf.len()` bytes at `offset`, one request at a time.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let handle = self.send_read(offset, buf.len() as u32)?;
        if self.receive(buf)? != handle {
            return Err(io::Error::other("reply to another request"));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at each of `offsets` with all requests in flight at once
    /// (replies may come in any order; their data all lands in `buf`, for timing only).
    pub fn read_pipelined(&mut self, offsets: &[u64], buf: &mut [u8]) -> io::Result<()> {
        for &offset in offsets {
            self.send_read(offset, buf.len() as u32)?;
        }
        for _ in offsets {
            self.receive(buf)?;
        }
        Ok(())
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.handle += 1;
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
        req[8..16].copy_from_slice(&self.handle.to_be_bytes());
        let _ = self.stream.write_all(&req);
    }
}

/// A deterministic sequence of `count` aligned offsets of `size`-byte reads inside `len`.
pub fn random_offsets(len: u64, size: u64, count: usize, seed: u64) -> Vec<u64> {
    let slots = (len / size).max(1);
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % slots) * size
        })
        .collect()
}
