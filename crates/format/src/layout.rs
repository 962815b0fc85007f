//! The 136-byte header, where it and the index sit in a file, and dialect detection.

use crate::content::identify;
use crate::dialect::{HeaderPosition, PREAMBLE_LEN, SIGNATURE_OFFSET};
use crate::{Dialect, FormatError};

/// Length of preamble + block size + block count.
pub const HEADER_LEN: u64 = 136;
/// Size of one index entry.
pub const ENTRY_LEN: u64 = 8;
/// Smallest block size of any dialect.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size our reader accepts (qemu's limit; Linux stops at 1 MiB).
pub const MAX_READ_BLOCK_SIZE: u32 = 64 << 20;
/// Largest block size our writer produces (Linux cloop.ko cannot attach larger blocks).
pub const MAX_WRITE_BLOCK_SIZE: u32 = 1 << 20;
/// Mask of the 60 offset bits of an index entry (bits 63..60 carry V4 codec flags).
pub const OFFSET_MASK: u64 = (1 << 60) - 1;

/// Block size and block count, the two numbers after the preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u32,
}

impl Header {
    /// Checks a block size against the format's rules and an upper limit.
    pub fn check_block_size(block_size: u32, max: u32) -> Result<(), FormatError> {
        if block_size == 0 {
            return Err(FormatError::BlockSizeZero);
        }
        if block_size % MIN_BLOCK_SIZE != 0 {
            return Err(FormatError::BlockSizeNotMultiple { block_size });
        }
        if block_size > max {
            return Err(FormatError::BlockSizeTooLarge { block_size, max });
        }
        Ok(())
    }

    /// Bytes of the index: 8 × (n + 1).
    pub const fn index_len(&self) -> u64 {
        (self.num_blocks as u64 + 1) * ENTRY_LEN
    }

    /// Bytes of the exposed device: n × block size.
    pub const fn device_size(&self) -> u64 {
        self.num_blocks as u64 * self.block_size as u64
    }

    /// The 136 header bytes for `dialect`: its preamble, then block size and count, big-endian.
    pub fn encode(&self, dialect: Dialect) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..PREAMBLE_LEN].copy_from_slice(&dialect.preamble());
        out[PREAMBLE_LEN..PREAMBLE_LEN + 4].copy_from_slice(&self.block_size.to_be_bytes());
        out[PREAMBLE_LEN + 4..].copy_from_slice(&self.num_blocks.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Header {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Header {
            block_size: word(PREAMBLE_LEN),
            num_blocks: word(PREAMBLE_LEN + 4),
        }
    }
}

/// Where everything sits in one image file, as detected from its first and last bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The detected dialect.
    pub dialect: Dialect,
    /// Block size and count.
    pub header: Header,
    /// The version digit after the codec letter (`2` in `V2.0`); uzip's rules depend on it.
    pub version: u8,
    /// Length of the whole file.
    pub file_len: u64,
    /// File offset of the 136-byte header.
    pub header_offset: u64,
    /// File offset of index entry 0.
    pub index_offset: u64,
}

impl Layout {
    /// Bytes of the index.
    pub const fn index_len(&self) -> u64 {
        self.header.index_len()
    }

    /// The range of file offsets that blocks may occupy: `[start, end)`.
    ///
    /// Header-first files: from the end of the index to the end of the file. Footer files: from
    /// byte 1 (a block at offset 0 is invalid for cloop.ko) to the start of the index.
    pub const fn data_area(&self) -> (u64, u64) {
        match self.dialect.spec().header_position {
            HeaderPosition::Start => (self.index_offset + self.index_len(), self.file_len),
            HeaderPosition::End => (1, self.index_offset),
        }
    }

    /// Whether `index[n]` may be 0 or garbage and then stands for the end of the data area
    /// (uzip before version 4, docs/FORMAT.md §6.2).
    pub fn lenient_end(&self) -> bool {
        !self.dialect.spec().codec_flags && self.version < 4
    }
}

/// Signature bytes 11..15 of a 136-byte window, if it is long enough.
fn signature(window: &[u8]) -> Option<[u8; 4]> {
    window
        .get(SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4)
        .map(|s| [s[0], s[1], s[2], s[3]])
}

/// The header-first dialect a signature names, or `None`.
fn head_dialect(head: &[u8], sig: [u8; 4]) -> Option<Dialect> {
    let shebang = head.starts_with(b"#!/bin/sh\n");
    let digit = sig[1].wrapping_sub(b'0');
    let script = &head[..PREAMBLE_LEN.min(head.len())];
    let mentions_uzip = script.windows(4).any(|w| w == b"uzip");
    match &sig {
        b"V2.0" if mentions_uzip && shebang => Some(Dialect::UzipZlib),
        b"V2.0" => Some(Dialect::LinuxV2),
        b"V4.0" => Some(Dialect::LinuxV4),
        _ if !shebang || digit > 9 => None,
        [b'V', ..] if digit >= 2 => Some(Dialect::UzipZlib),
        [b'v', ..] if digit >= 2 => Some(Dialect::UzipZlibDedup),
        [b'L', ..] if digit >= 3 => Some(Dialect::UzipXz),
        [b'l', ..] if digit >= 3 => Some(Dialect::UzipXzDedup),
        [b'Z', ..] if digit >= 4 => Some(Dialect::UzipZstd),
        [b'z', ..] if digit >= 4 => Some(Dialect::UzipZstdDedup),
        _ => None,
    }
}

/// Whether `head` (the start of a file) is what an interrupted vndcompress run leaves: a header
/// of zeros followed by an index entry still holding the all-ones "unwritten" mark.
fn looks_unfinished(head: &[u8]) -> bool {
    let header = HEADER_LEN as usize;
    head.len() >= header + 8
        && head[..header].iter().all(|&b| b == 0)
        && head[header..header + 8].iter().all(|&b| b == 0xff)
}

/// Detects the dialect and layout of a file from its first and last bytes.
///
/// `head` is the start of the file and `tail` its end; each should hold at least 136 bytes
/// (all of the file when it is shorter). A longer `head` (up to [`crate::IDENTIFY_LEN`]) lets
/// the error for a file that is not an image say what it looks like instead. The order follows cloop.ko (docs/FORMAT.md §4): a
/// signature at the start wins; otherwise `V4.0` or `V2.0` in the last 136 bytes means the
/// header sits at the end. Returns the layout once block size and block count have been checked
/// against the file length, so the index can be read without trusting the count further.
pub fn detect(head: &[u8], tail: &[u8], file_len: u64) -> Result<Layout, FormatError> {
    if file_len < HEADER_LEN || (head.len() as u64) < HEADER_LEN || (tail.len() as u64) < HEADER_LEN
    {
        return Err(FormatError::TooShort {
            len: file_len.min(head.len() as u64),
            min: HEADER_LEN,
        });
    }
    let full_head = head;
    let head = &head[..HEADER_LEN as usize];
    let tail = &tail[tail.len() - HEADER_LEN as usize..];
    let head_sig = signature(head).unwrap_or_default();
    let tail_sig = signature(tail).unwrap_or_default();
    let (dialect, window, header_offset) = if let Some(d) = head_dialect(head, head_sig) {
        (d, head, 0)
    } else if &tail_sig == b"V4.0" {
        (Dialect::LinuxV4Footer, tail, file_len - HEADER_LEN)
    } else if &tail_sig == b"V2.0" {
        (Dialect::LinuxV2Footer, tail, file_len - HEADER_LEN)
    } else if looks_unfinished(full_head) {
        return Err(FormatError::UnfinishedHeader);
    } else {
        return Err(FormatError::NotCloop {
            found: String::from_utf8_lossy(&head_sig).into_owned(),
            tail: String::from_utf8_lossy(&tail_sig).into_owned(),
            looks_like: identify(full_head),
        });
    };
    let header = Header::decode(window);
    Header::check_block_size(header.block_size, MAX_READ_BLOCK_SIZE)?;
    let sig = signature(window).unwrap_or_default();
    let version = sig[1].wrapping_sub(b'0');
    let available = file_len - HEADER_LEN;
    if header.index_len() > available {
        return Err(FormatError::IndexPastEof {
            num_blocks: header.num_blocks,
            index_bytes: header.index_len(),
            available,
            file_len,
        });
    }
    let index_offset = match dialect.spec().header_position {
        HeaderPosition::Start => HEADER_LEN,
        HeaderPosition::End => header_offset - header.index_len(),
    };
    Ok(Layout {
        dialect,
        header,
        version,
        file_len,
        header_offset,
        index_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_head(dialect: Dialect, block_size: u32, num_blocks: u32) -> Vec<u8> {
        Header {
            block_size,
            num_blocks,
        }
        .encode(dialect)
        .to_vec()
    }

    fn detect_bytes(bytes: &[u8]) -> Result<Layout, FormatError> {
        detect(bytes, bytes, bytes.len() as u64)
    }

    #[test]
    fn detects_every_header_first_dialect() {
        for dialect in Dialect::ALL {
            if dialect.spec().header_position != HeaderPosition::Start {
                continue;
            }
            let mut bytes = image_head(dialect, 4096, 2);
            bytes.resize(bytes.len() + 24 + 100, 0);
            let layout = detect_bytes(&bytes).unwrap();
            assert_eq!(layout.dialect, dialect);
            assert_eq!(layout.index_offset, 136);
            assert_eq!(layout.data_area(), (136 + 24, bytes.len() as u64));
        }
    }

    #[test]
    fn detects_footer_headers() {
        for dialect in [Dialect::LinuxV4Footer, Dialect::LinuxV2Footer] {
            let mut bytes = vec![0x55u8; 300];
            bytes.extend_from_slice(&[0; 24]);
            bytes.extend_from_slice(&image_head(dialect, 512, 2));
            let layout = detect_bytes(&bytes).unwrap();
            assert_eq!(layout.dialect, dialect);
            assert_eq!(layout.header_offset, 324);
            assert_eq!(layout.index_offset, 300);
            assert_eq!(layout.data_area(), (1, 300));
        }
    }

    #[test]
    fn rejects_what_is_not_cloop() {
        let bytes = vec![b'x'; 512];
        assert!(matches!(
            detect_bytes(&bytes),
            Err(FormatError::NotCloop { .. })
        ));
        let zeros = vec![0u8; 512];
        assert!(matches!(
            detect_bytes(&zeros),
            Err(FormatError::NotCloop {
                looks_like: Some(crate::Content::Zeros),
                ..
            })
        ));
        // What vndcompress leaves before its first checkpoint: a zero header, unwritten entries.
        let mut unfinished = vec![0xffu8; 512];
        unfinished[..136].fill(0);
        assert_eq!(
            detect_bytes(&unfinished),
            Err(FormatError::UnfinishedHeader)
        );
        assert!(matches!(
            detect_bytes(&[0u8; 100]),
            Err(FormatError::TooShort { len: 100, .. })
        ));
    }

    #[test]
    fn block_size_checks() {
        let mut bytes = image_head(Dialect::LinuxV2, 1000, 1);
        bytes.resize(400, 0);
        assert_eq!(
            detect_bytes(&bytes),
            Err(FormatError::BlockSizeNotMultiple { block_size: 1000 })
        );
        let mut bytes = image_head(Dialect::LinuxV2, 0, 1);
        bytes.resize(400, 0);
        assert_eq!(detect_bytes(&bytes), Err(FormatError::BlockSizeZero));
        let mut bytes = image_head(Dialect::LinuxV2, 128 << 20, 1);
        bytes.resize(400, 0);
        assert!(matches!(
            detect_bytes(&bytes),
            Err(FormatError::BlockSizeTooLarge { .. })
        ));
    }

    #[test]
    fn huge_count_in_small_file_is_refused_before_reading_the_index() {
        let mut bytes = image_head(Dialect::LinuxV2, 65536, u32::MAX);
        bytes.resize(200, 0);
        assert_eq!(
            detect_bytes(&bytes),
            Err(FormatError::IndexPastEof {
                num_blocks: u32::MAX,
                index_bytes: (u64::from(u32::MAX) + 1) * 8,
                available: 64,
                file_len: 200,
            })
        );
    }

    #[test]
    fn uzip_version_digits() {
        let mut bytes = image_head(Dialect::UzipZstd, 512, 1);
        bytes[12] = b'3'; // Z3.0: zstd needs version >= 4
        bytes.resize(400, 0);
        assert!(matches!(
            detect_bytes(&bytes),
            Err(FormatError::NotCloop { .. })
        ));
        let mut bytes = image_head(Dialect::UzipZlib, 512, 1);
        bytes[12] = b'5';
        bytes.resize(400, 0);
        let layout = detect_bytes(&bytes).unwrap();
        assert_eq!((layout.dialect, layout.version), (Dialect::UzipZlib, 5));
    }
}
