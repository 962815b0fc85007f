//! Cheap detection of all-zero buffers.

/// Whether every byte of `data` is zero.
///
/// Works in 256-byte chunks whose bytes are OR-ed together (the compiler vectorises the fold)
/// and stops at the first chunk with a set bit, so a data block usually costs one chunk.
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
        assert!(is_zero(&[0; 13]));
        assert!(is_zero(&[0; 65536]));
        for at in [0, 1, 63, 64, 255, 256, 4095, 65535] {
            let mut block = vec![0u8; 65536];
            block[at] = 0x10;
            assert!(!is_zero(&block), "byte {at}");
        }
        let mut odd = vec![0u8; 70];
        assert!(is_zero(&odd));
        odd[69] = 9;
        assert!(!is_zero(&odd));
    }
}
