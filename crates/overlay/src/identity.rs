//! A fingerprint of the base's content, recorded in an overlay file so that reopening it over
//! another image is refused.

use mkmodule_blockdev::BlockDevice;
use sha2::{Digest, Sha256};

use crate::OverlayError;

/// Bytes read at the start and at the end of the base.
const EDGE: u64 = 1 << 20;
/// Samples taken in between, and their length.
const SAMPLES: u64 = 16;
const SAMPLE_LEN: u64 = 64 << 10;

/// SHA-256 over the base size, its first and last MiB and 16 samples of 64 KiB spread evenly
/// in between (about 3 MiB read, whatever the base size): enough to tell images apart
/// (filesystem superblocks, UUIDs and timestamps sit near the start), cheap enough to compute
/// at every open.
pub fn fingerprint(base: &dyn BlockDevice) -> Result<[u8; 32], OverlayError> {
    let size = base.size();
    let mut hash = Sha256::new();
    hash.update(b"mkmodule overlay base v1");
    hash.update(size.to_le_bytes());
    let mut ranges = vec![(0, EDGE.min(size))];
    for i in 1..=SAMPLES {
        let at = size / (SAMPLES + 1) * i;
        ranges.push((at, SAMPLE_LEN.min(size - at)));
    }
    ranges.push((size.saturating_sub(EDGE), EDGE.min(size)));
    let mut buf = Vec::new();
    for (offset, len) in ranges {
        buf.resize(len as usize, 0);
        base.read_at(&mut buf, offset)
            .map_err(|source| OverlayError::Base { offset, source })?;
        hash.update(&buf);
    }
    Ok(hash.finalize().into())
}

/// Lower-case hex of a fingerprint.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_blockdev::MemoryDevice;

    #[test]
    fn fingerprints_tell_bases_apart() {
        let a = MemoryDevice::new(vec![1u8; 3 << 20]);
        let mut other = vec![1u8; 3 << 20];
        other[10] = 2;
        let b = MemoryDevice::new(other);
        let c = MemoryDevice::new(vec![1u8; (3 << 20) + 1]);
        let fa = fingerprint(&a).unwrap();
        assert_eq!(fa, fingerprint(&a).unwrap());
        assert_ne!(fa, fingerprint(&b).unwrap());
        assert_ne!(fa, fingerprint(&c).unwrap());
        assert_eq!(hex(&fa).len(), 64);
        let empty = MemoryDevice::new(Vec::new());
        fingerprint(&empty).unwrap();
    }
}
