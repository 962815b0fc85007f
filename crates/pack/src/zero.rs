//! Cheap detection of all-zero blocks.

/// Whether every byte of `data` is zero.
///
/// Works in 256-byte chunks whose bytes are OR-ed together (the compiler vectorises the fold)
/// and stops at the first chunk with a set bit, so data blocks usually cost one chunk.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(256)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_any_set_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 65536]));
        for at in [0, 1, 255, 256, 4095, 65535] {
            let mut block = vec![0u8; 65536];
            block[at] = 0x10;
            assert!(!is_zero(&block), "byte {at}");
        }
        assert!(!is_zero(&[0, 0, 0, 1]));
    }
}
