//! Telling what a file that is not a cloop-family image looks like, from its first bytes.
//!
//! Used only to word the error for a wrong input: someone who hands `extract` or `serve` a raw
//! filesystem image most likely wanted `create`. Each check is a magic number at a fixed place
//! (docs/FORMAT.md §4).

use std::fmt;

/// How many leading bytes [`identify`] looks at (an ISO 9660 volume descriptor lies at 32 KiB).
pub const IDENTIFY_LEN: usize = ISO9660_MAGIC_AT + ISO9660_MAGIC.len();

/// Offset and bytes of the ext2/3/4 superblock magic (0xEF53, little-endian).
const EXT_MAGIC_AT: usize = 1024 + 56;
const EXT_MAGIC: &[u8] = &[0x53, 0xEF];
/// Offset and bytes of the first ISO 9660 volume descriptor's identifier.
const ISO9660_MAGIC_AT: usize = 32768 + 1;
const ISO9660_MAGIC: &[u8] = b"CD001";

/// A kind of content that is not a cloop-family image but is easy to recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// An ext2, ext3 or ext4 filesystem.
    ExtFilesystem,
    /// An ISO 9660 filesystem (a CD or DVD image).
    Iso9660,
    /// A squashfs filesystem.
    Squashfs,
    /// A disk image with an MBR or GPT partition table.
    PartitionedDisk,
    /// A qcow2 virtual disk.
    Qcow2,
    /// A gzip stream.
    Gzip,
    /// An xz stream.
    Xz,
    /// A zstd frame.
    Zstd,
    /// A bzip2 stream.
    Bzip2,
    /// Nothing but zero bytes (as far as was looked).
    Zeros,
}

impl Content {
    /// Whether this is a disk or filesystem image that `create` would compress as it is.
    pub fn is_raw_image(self) -> bool {
        matches!(
            self,
            Content::ExtFilesystem
                | Content::Iso9660
                | Content::Squashfs
                | Content::PartitionedDisk
        )
    }
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Content::ExtFilesystem => "an ext2/3/4 filesystem image",
            Content::Iso9660 => "an ISO 9660 (CD/DVD) image",
            Content::Squashfs => "a squashfs filesystem",
            Content::PartitionedDisk => "a partitioned disk image",
            Content::Qcow2 => "a qcow2 disk image",
            Content::Gzip => "a gzip-compressed file",
            Content::Xz => "an xz-compressed file",
            Content::Zstd => "a zstd-compressed file",
            Content::Bzip2 => "a bzip2-compressed file",
            Content::Zeros => "nothing but zero bytes",
        })
    }
}

/// What `head` (the first bytes of a file, up to [`IDENTIFY_LEN`]) looks like, when a magic
/// number says so; `None` when nothing is recognised.
pub fn identify(head: &[u8]) -> Option<Content> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"hsqs") || at(0, b"sqsh") {
        Some(Content::Squashfs)
    } else if at(0, b"QFI\xfb") {
        Some(Content::Qcow2)
    } else if at(0, &[0x1f, 0x8b]) {
        Some(Content::Gzip)
    } else if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Content::Xz)
    } else if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Content::Zstd)
    } else if at(0, b"BZh") {
        Some(Content::Bzip2)
    } else if at(ISO9660_MAGIC_AT, ISO9660_MAGIC) {
        // Checked before the partition table: hybrid ISO images carry both.
        Some(Content::Iso9660)
    } else if at(EXT_MAGIC_AT, EXT_MAGIC) {
        Some(Content::ExtFilesystem)
    } else if at(510, &[0x55, 0xaa]) || at(512, b"EFI PART") {
        Some(Content::PartitionedDisk)
    } else if !head.is_empty() && head.iter().all(|&b| b == 0) {
        Some(Content::Zeros)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; IDENTIFY_LEN];
        head[offset..offset + magic.len()].copy_from_slice(magic);
        head
    }

    #[test]
    fn recognises_each_kind_by_its_magic() {
        assert_eq!(
            identify(&with(1080, &[0x53, 0xef])),
            Some(Content::ExtFilesystem)
        );
        assert_eq!(identify(&with(32769, b"CD001")), Some(Content::Iso9660));
        assert_eq!(identify(&with(0, b"hsqs")), Some(Content::Squashfs));
        assert_eq!(
            identify(&with(510, &[0x55, 0xaa])),
            Some(Content::PartitionedDisk)
        );
        assert_eq!(identify(&with(0, b"QFI\xfb")), Some(Content::Qcow2));
        assert_eq!(identify(&with(0, &[0x1f, 0x8b, 8])), Some(Content::Gzip));
        assert_eq!(
            identify(&with(0, &[0x28, 0xb5, 0x2f, 0xfd])),
            Some(Content::Zstd)
        );
        assert_eq!(identify(&vec![0u8; 4096]), Some(Content::Zeros));
        assert_eq!(identify(b"hello, world"), None);
        assert_eq!(identify(&[]), None);
        let mut hybrid = with(32769, b"CD001");
        hybrid[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(identify(&hybrid), Some(Content::Iso9660));
    }

    #[test]
    fn a_short_head_is_never_read_past_its_end() {
        assert_eq!(identify(&[0x53, 0xef]), None);
        assert_eq!(identify(&vec![1u8; 1081]), None);
    }
}
