//! Write profiles: the dialect, codec and block size a writer uses by default.

use crate::{CodecKind, Dialect};

/// What a writer produces when told nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The dialect written.
    pub dialect: Dialect,
    /// The block codec.
    pub codec: CodecKind,
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// Zero-pad the final block to a whole block before compressing it.
    pub pad_final_block: bool,
    /// Write at least one block, even for empty input (Linux cannot attach 0 blocks).
    pub min_one_block: bool,
    /// Zero-pad the file to a multiple of this many bytes (1 = none).
    pub file_alignment: u32,
}

/// The portable profile of docs/FORMAT.md §11.1: readable by Linux cloop.ko, extract_compressed_fs,
/// qemu, FreeBSD geom_uzip and NetBSD vnd.
///
/// V2.0 header first with Debian's preamble (qemu auto-detects it), zlib, 64 KiB blocks, the
/// final block zero-padded, at least one block, contiguous blocks with no flags and no empty
/// blocks, and the file padded to a multiple of 512.
pub const PORTABLE: Profile = Profile {
    dialect: Dialect::LinuxV2,
    codec: CodecKind::Zlib,
    block_size: 64 * 1024,
    pad_final_block: true,
    min_one_block: true,
    file_alignment: 512,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reader;

    #[test]
    fn portable_is_readable_everywhere() {
        let spec = PORTABLE.dialect.spec();
        for reader in [
            Reader::LinuxCloop,
            Reader::ExtractCompressedFs,
            Reader::Qemu,
            Reader::FreeBsdGeomUzip,
            Reader::NetBsdVnd,
        ] {
            assert!(spec.readers.contains(&reader), "{}", reader.name());
        }
        assert!(PORTABLE.dialect.allows_codec(PORTABLE.codec));
        assert_eq!(PORTABLE.block_size % 512, 0);
    }
}
