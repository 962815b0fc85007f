//! Helpers for mkmodule's criterion benchmarks (`cargo bench -p mkmodule-benches`): test data
//! that compresses like a filesystem image, and read offsets (the NBD client is the testkit's).
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
