//! The stored-check table of mkmodule's trailer (docs/FORMAT.md §12.4): a CRC32 of every
//! block's bytes as stored in the image, so that a block copied from this image into another
//! (`create --reuse`, `commit`, `convert`, `fetch --seed`) can be checked by hashing its
//! compressed bytes instead of decoding them.
//!
//! The table is `n` big-endian CRC32s back to back and lies immediately before the
//! block-digest table, whose place it shares: it has no offset of its own in the trailer.

use crate::FormatError;

/// Bytes of one stored check.
pub const STORED_CHECK_LEN: usize = 4;

/// Table algorithm code of [`stored_check`] (CRC32 of the stored bytes).
pub(crate) const CHECK_CRC32: u8 = 1;

/// The check of a block's bytes as stored: their CRC32 (zlib/IEEE polynomial). A zero-length
/// block's bytes are empty (check 0); a dedup back-reference's are those it points to.
pub fn stored_check(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Where a trailer's stored-check table is, and the checksum of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredChecksRef {
    /// File offset of the table: the block-digest table's offset minus the table's length.
    pub offset: u64,
    /// Checks in the table (the block count, as in the block-digest table).
    pub entries: u32,
    /// CRC32 (zlib polynomial) of the table's bytes.
    pub crc: u32,
}

impl StoredChecksRef {
    /// The reference to `table` (concatenated big-endian checks) placed at `offset`.
    pub fn for_table(offset: u64, table: &[u8]) -> StoredChecksRef {
        StoredChecksRef {
            offset,
            entries: (table.len() / STORED_CHECK_LEN) as u32,
            crc: crc32fast::hash(table),
        }
    }

    /// The table of `entries` checks that ends where a block-digest table at `digest_table_at`
    /// starts (offset 0 when it would start before the file: [`Self::check_place`] refuses it).
    pub fn before(digest_table_at: u64, entries: u32, crc: u32) -> StoredChecksRef {
        let len = u64::from(entries) * STORED_CHECK_LEN as u64;
        StoredChecksRef {
            offset: digest_table_at.saturating_sub(len),
            entries,
            crc,
        }
    }

    /// Length of the table in bytes.
    pub const fn len(&self) -> u64 {
        self.entries as u64 * STORED_CHECK_LEN as u64
    }

    /// Whether the table has no entries.
    pub const fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Checks that the table has one entry per block and starts at or after the end of data
    /// (it ends where the block-digest table starts, whose place is checked on its own).
    pub fn check_place(&self, data_end: u64, num_blocks: u32) -> Result<(), FormatError> {
        if self.entries != num_blocks || self.offset < data_end || self.offset == 0 {
            return Err(FormatError::StoredChecksMisplaced {
                offset: self.offset,
                entries: self.entries,
                num_blocks,
                data_end,
            });
        }
        Ok(())
    }

    /// Checks the table's bytes against the recorded checksum and splits them into checks.
    pub fn parse(&self, bytes: &[u8]) -> Result<Vec<u32>, FormatError> {
        let computed = crc32fast::hash(bytes);
        if bytes.len() as u64 != self.len() || computed != self.crc {
            return Err(FormatError::StoredChecksCorrupt {
                offset: self.offset,
                stored: self.crc,
                computed,
            });
        }
        Ok(bytes
            .chunks_exact(STORED_CHECK_LEN)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_is_the_zlib_crc32() {
        // The CRC32 check value of the zlib polynomial.
        assert_eq!(stored_check(b"123456789"), 0xcbf4_3926);
        assert_eq!(stored_check(&[]), 0);
    }

    #[test]
    fn a_table_is_checked_by_place_and_checksum() {
        let checks = [stored_check(b"a"), stored_check(b"b")];
        let bytes: Vec<u8> = checks.iter().flat_map(|c| c.to_be_bytes()).collect();
        let table = StoredChecksRef::for_table(1000, &bytes);
        assert_eq!(table, StoredChecksRef::before(1008, 2, table.crc));
        assert_eq!(table.parse(&bytes).unwrap(), checks);
        table.check_place(1000, 2).unwrap();
        for (data_end, blocks) in [(1001, 2), (1000, 3)] {
            assert!(matches!(
                table.check_place(data_end, blocks),
                Err(FormatError::StoredChecksMisplaced { .. })
            ));
        }
        assert_eq!(StoredChecksRef::before(4, 2, 0).offset, 0);
        let mut damaged = bytes.clone();
        damaged[5] ^= 1;
        assert!(matches!(
            table.parse(&damaged),
            Err(FormatError::StoredChecksCorrupt { offset: 1000, .. })
        ));
    }
}
