//! Deterministic test inputs (pseudo-random, text-like, mixed) and their digests.

use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes (xorshift64*), incompressible for every codec.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic pseudo-random numbers (xorshift64) for choosing offsets, lengths and bytes
/// to damage, so every run of a test does the same. The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Numbered text lines starting at line `seed`, compressible.
pub fn text_lines(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = seed;
    while out.len() < len {
        out.extend_from_slice(
            format!("{line:08} the quick brown fox jumps over the lazy cloop\n").as_bytes(),
        );
        line += 1;
    }
    out.truncate(len);
    out
}

/// Input of `blocks` blocks of `bs` bytes mixing what real images hold, block by block: zeros,
/// text, random bytes, copies of block 1 (dedup candidates), 0xFF fill; minus `short_by` bytes at
/// the end (a partial final block).
pub fn sample(blocks: usize, bs: usize, short_by: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * bs);
    for i in 0..blocks {
        let block = match i % 7 {
            0 | 3 => vec![0u8; bs],
            1 | 4 => text_lines(bs, 1),
            2 => random(bs, i as u64),
            5 => vec![0xFF; bs],
            _ => {
                let mut t = text_lines(bs, i as u64 * 1000);
                for (k, r) in random(16, i as u64).into_iter().enumerate() {
                    let at = (usize::from(r) * 131 + k * 977) % bs;
                    t[at] = r;
                }
                t
            }
        };
        out.extend_from_slice(&block);
    }
    out.truncate(out.len().saturating_sub(short_by));
    out
}

/// SHA-256 of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
