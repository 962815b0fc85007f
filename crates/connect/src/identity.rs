//! What identifies the image behind an export, so that a reconnection never hands the kernel a
//! server that serves something else.
//!
//! NBD has no identity field, so the identity is taken from the data itself, over the fresh
//! socket before the kernel gets it: the export's size and the SHA-256 of [`SAMPLES`] blocks of
//! [`SAMPLE_LEN`] bytes at evenly spaced offsets (the first block, which holds a filesystem's
//! superblock, and the last among them). Two different images of one size almost always
//! differ there; the whole check reads 64 KiB.

use std::io::{Read, Write};

use mkmodule_nbd::proto;
use sha2::{Digest, Sha256};

use crate::error::HandshakeError;
use crate::handshake::{read_exact, write_all};

/// The step named in errors.
const WHAT: &str = "the identity samples";

/// How many blocks are sampled.
pub const SAMPLES: u64 = 16;
/// Bytes per sampled block.
pub const SAMPLE_LEN: u32 = 4096;

/// The identity of an export's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The export's size in bytes.
    pub size: u64,
    /// SHA-256 over the sampled blocks, in offset order.
    pub digest: [u8; 32],
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes, samples {}",
            self.size,
            &hex::encode(self.digest)[..16]
        )
    }
}

/// The offsets sampled in an export of `size` bytes (fewer when it is small).
pub fn sample_offsets(size: u64) -> Vec<(u64, u32)> {
    let len = u64::from(SAMPLE_LEN);
    let blocks = size / len;
    if blocks == 0 {
        return if size == 0 {
            Vec::new()
        } else {
            vec![(0, u32::try_from(size).expect("under 4 KiB"))]
        };
    }
    let mut offsets: Vec<(u64, u32)> = (0..SAMPLES)
        .map(|i| (blocks - 1) * i / (SAMPLES - 1).max(1) * len)
        .map(|at| (at, SAMPLE_LEN))
        .collect();
    offsets.dedup();
    offsets
}

/// Reads the samples over `stream` (in the transmission phase, simple replies) and returns the
/// identity; the stream is left with no request outstanding.
pub fn probe<S: Read + Write>(stream: &mut S, size: u64) -> Result<Identity, HandshakeError> {
    let mut hash = Sha256::new();
    let mut data = vec![0u8; SAMPLE_LEN as usize];
    for (cookie, (offset, len)) in (1u64..).zip(sample_offsets(size)) {
        let request = proto::Request {
            magic: proto::REQUEST_MAGIC,
            flags: 0,
            cmd: proto::CMD_READ,
            cookie,
            offset,
            len,
        };
        write_all(stream, &request.encode(), WHAT)?;
        let mut reply = [0u8; proto::SIMPLE_REPLY_LEN];
        read_exact(stream, &mut reply, WHAT)?;
        let magic = u32::from_be_bytes(reply[0..4].try_into().expect("4 bytes"));
        let error = u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
        let answered = u64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
        if magic != proto::SIMPLE_REPLY_MAGIC || answered != cookie {
            return Err(HandshakeError::Malformed(
                "a bad reply to a read of the identity samples",
            ));
        }
        if error != 0 {
            return Err(HandshakeError::SampleRead {
                offset,
                errno: error,
            });
        }
        let buf = &mut data[..len as usize];
        read_exact(stream, buf, WHAT)?;
        hash.update(offset.to_be_bytes());
        hash.update(&*buf);
    }
    Ok(Identity {
        size,
        digest: hash.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_first_and_last_block_without_repeats() {
        let offsets = sample_offsets(1 << 30);
        assert_eq!(offsets.len(), 16);
        assert_eq!(offsets[0], (0, 4096));
        assert_eq!(offsets[15], ((1 << 30) - 4096, 4096));
        assert!(offsets.windows(2).all(|w| w[0].0 < w[1].0));
        // Small exports: fewer samples, never past the end.
        assert_eq!(
            sample_offsets(3 * 4096),
            vec![(0, 4096), (4096, 4096), (8192, 4096)]
        );
        assert_eq!(sample_offsets(100), vec![(0, 100)]);
        assert!(sample_offsets(0).is_empty());
        for size in [4096u64, 4097, 65536, 65537 * 3, 10 << 20] {
            for (at, len) in sample_offsets(size) {
                assert!(at + u64::from(len) <= size, "{size}: {at}+{len}");
            }
        }
    }
}
