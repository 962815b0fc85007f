//! The dialects of the cloop family, as data: signature, preamble, header position, codecs,
//! quirks, readers, file name extension and how mkmodule writes it. Adding a dialect means adding
//! a row here (and listing it in [`Dialect::ALL`], and in [`Dialect::WRITTEN`] when written).

use std::fmt;
use std::str::FromStr;

use crate::CodecKind;

/// Size of the preamble (shell script text, NUL padded).
pub const PREAMBLE_LEN: usize = 128;
/// Offset of the 4-byte signature inside the preamble.
pub const SIGNATURE_OFFSET: usize = 11;

/// Debian `create_compressed_fs` preamble text (docs/FORMAT.md §3); qemu detects only this one.
pub const DEBIAN_PREAMBLE: &[u8] = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n";
/// The Debian preamble with the V4.0 signature: FreeBSD reads it as zlib version 4.
pub const V4_PREAMBLE: &[u8] = b"#!/bin/sh\n#V4.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n";
/// FreeBSD mkuzip zlib preamble (docs/FORMAT.md §3).
pub const UZIP_ZLIB_PREAMBLE: &[u8] = b"#!/bin/sh\n#V2.0 Format\n(kldstat -qm g_uzip||kldload geom_uzip)>&-&&mount_cd9660 /dev/`mdconfig -af $0`.uzip $1\nexit $?\n";
/// FreeBSD mkuzip zlib + dedup preamble.
pub const UZIP_ZLIB_DEDUP_PREAMBLE: &[u8] = b"#!/bin/sh\n#v3.0 Format\n(kldstat -qm g_uzip||kldload geom_uzip)>&-&&mount_cd9660 /dev/`mdconfig -af $0`.uzip $1\nexit $?\n";
/// FreeBSD mkuzip zstd preamble.
pub const UZIP_ZSTD_PREAMBLE: &[u8] = b"#!/bin/sh\n#Z4.0 Format\n(kldstat -qm g_uzip||kldload geom_uzip)>&-&&mount_cd9660 /dev/`mdconfig -af $0`.uzip $1\nexit $?\n";
/// FreeBSD mkuzip zstd + dedup preamble.
pub const UZIP_ZSTD_DEDUP_PREAMBLE: &[u8] = b"#!/bin/sh\n#z4.0 Format\n(kldstat -qm g_uzip||kldload geom_uzip)>&-&&mount_cd9660 /dev/`mdconfig -af $0`.uzip $1\nexit $?\n";
/// FreeBSD mkuzip xz (lzma) preamble.
pub const UZIP_XZ_PREAMBLE: &[u8] = b"#!/bin/sh\n#L3.0\n";
/// FreeBSD mkuzip xz (lzma) + dedup preamble.
pub const UZIP_XZ_DEDUP_PREAMBLE: &[u8] = b"#!/bin/sh\n#l3.0\n";

/// What a footer image writes before block 0: cloop.ko rejects a block at offset 0, and it
/// probes the start of the file first, so these bytes must not carry a signature at offset 11.
pub const FOOTER_LEAD_IN: &[u8] = b"#!/bin/sh\n#cloop image, header in the last 136 bytes\n";

/// Where the 136-byte header sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderPosition {
    /// At offset 0; the index follows at 136.
    Start,
    /// The last 136 bytes of the file; the index precedes it.
    End,
}

/// A reader program that opens some dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Linux `cloop.ko`.
    LinuxCloop,
    /// Debian `extract_compressed_fs`.
    ExtractCompressedFs,
    /// qemu's `cloop` block driver (qemu-img, qemu-nbd).
    Qemu,
    /// FreeBSD `geom_uzip`.
    FreeBsdGeomUzip,
    /// NetBSD `vnd(4)` and `vnduncompress`.
    NetBsdVnd,
}

impl Reader {
    /// Every reader.
    pub const ALL: [Reader; 5] = [
        Reader::LinuxCloop,
        Reader::ExtractCompressedFs,
        Reader::Qemu,
        Reader::FreeBsdGeomUzip,
        Reader::NetBsdVnd,
    ];

    /// Human name of the reader.
    pub const fn name(self) -> &'static str {
        match self {
            Reader::LinuxCloop => "Linux cloop.ko",
            Reader::ExtractCompressedFs => "extract_compressed_fs",
            Reader::Qemu => "qemu",
            Reader::FreeBsdGeomUzip => "FreeBSD geom_uzip",
            Reader::NetBsdVnd => "NetBSD vnd",
        }
    }
}

/// The branch of the cloop family a dialect belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Linux cloop (Knoppix, Debian; also read by qemu and NetBSD): final blocks padded.
    LinuxCloop,
    /// FreeBSD mkuzip/geom_uzip: final blocks short, optional zero-length blocks and dedup.
    FreeBsdUzip,
}

/// One variant of the cloop family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Linux cloop V2.0, header first (Knoppix, Debian, NetBSD vndcompress).
    LinuxV2,
    /// Linux cloop V2.0 with the header in the last 136 bytes (cloop.ko accepts it; read only).
    LinuxV2Footer,
    /// Linux cloop V4.0, header first, per-block codec flags.
    LinuxV4,
    /// Linux cloop V4.0 with the header in the last 136 bytes (streamable).
    LinuxV4Footer,
    /// FreeBSD uzip, zlib (`V2.0`).
    UzipZlib,
    /// FreeBSD uzip, zlib with dedup back-references (`v3.0`).
    UzipZlibDedup,
    /// FreeBSD uzip, xz (`L3.0`).
    UzipXz,
    /// FreeBSD uzip, xz with dedup (`l3.0`).
    UzipXzDedup,
    /// FreeBSD uzip, zstd (`Z4.0`).
    UzipZstd,
    /// FreeBSD uzip, zstd with dedup (`z4.0`).
    UzipZstdDedup,
}

/// Whether mkmodule writes a dialect, and with which rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writing {
    /// mkmodule writes it.
    Written(WriteRules),
    /// mkmodule only reads it; asked to write it, it names `instead`.
    ReadOnly {
        /// The written dialect closest to it.
        instead: Dialect,
    },
}

/// The rules mkmodule follows when writing one dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRules {
    /// Codecs mkmodule writes in its blocks, the default first. A subset of the dialect's codecs:
    /// never V4's flag 1 (`none`, which cloop.ko cannot read) nor lzo (mkmodule only reads it).
    pub codecs: &'static [CodecKind],
    /// `--format auto` may pick it. Footer dialects are written only when named, and dedup
    /// variants are reached from their base dialect through [`Dialect::with_dedup`].
    pub auto: bool,
}

/// Everything a dialect fixes, as one table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialectSpec {
    /// Short name (`v2`, `v4-footer`, `uzip-zstd-dedup`, ...).
    pub name: &'static str,
    /// The 4 signature bytes at offset 11.
    pub signature: [u8; 4],
    /// The preamble text a writer puts before the NUL padding.
    pub preamble: &'static [u8],
    /// Where the header sits.
    pub header_position: HeaderPosition,
    /// Codecs its blocks may use; the first is the default.
    pub codecs: &'static [CodecKind],
    /// Index entries carry the V4 codec flag nibble in bits 63..60.
    pub codec_flags: bool,
    /// Blocks with zero compressed length read as zeros (mkuzip's sparse blocks).
    pub zero_length_blocks: bool,
    /// Entries may point back at an earlier block's bytes (mkuzip `-d`).
    pub back_references: bool,
    /// The final block is written unpadded and may decode short.
    pub short_final_block: bool,
    /// Readers that open images of this dialect.
    pub readers: &'static [Reader],
    /// The branch of the family it belongs to.
    pub family: Family,
    /// File name extension of its images, without the dot (`cloop`, `uzip`).
    pub extension: &'static str,
    /// The same dialect with dedup back-references, if there is one (itself for a dedup
    /// dialect).
    pub dedup_variant: Option<Dialect>,
    /// Whether and how mkmodule writes it.
    pub writing: Writing,
}

const ALL_READERS: &[Reader] = &Reader::ALL;
const LINUX_ONLY: &[Reader] = &[Reader::LinuxCloop];
const FREEBSD_ONLY: &[Reader] = &[Reader::FreeBsdGeomUzip];

/// The codecs mkmodule writes in V4 images (not `none`: cloop.ko cannot read flag 1).
const V4_WRITTEN: &[CodecKind] = &[CodecKind::Zlib, CodecKind::Xz, CodecKind::Lz4];

impl Dialect {
    /// Every dialect, header-first ones before footer ones.
    pub const ALL: [Dialect; 10] = [
        Dialect::LinuxV2,
        Dialect::LinuxV4,
        Dialect::UzipZlib,
        Dialect::UzipZlibDedup,
        Dialect::UzipXz,
        Dialect::UzipXzDedup,
        Dialect::UzipZstd,
        Dialect::UzipZstdDedup,
        Dialect::LinuxV2Footer,
        Dialect::LinuxV4Footer,
    ];

    /// The table row for this dialect.
    pub const fn spec(self) -> &'static DialectSpec {
        match self {
            Dialect::LinuxV2 => &DialectSpec {
                name: "v2",
                signature: [b'V', b'2', b'.', b'0'],
                preamble: DEBIAN_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Zlib],
                codec_flags: false,
                zero_length_blocks: false,
                back_references: false,
                short_final_block: false,
                readers: ALL_READERS,
                family: Family::LinuxCloop,
                extension: "cloop",
                dedup_variant: None,
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Zlib],
                    auto: true,
                }),
            },
            Dialect::LinuxV2Footer => &DialectSpec {
                name: "v2-footer",
                signature: [b'V', b'2', b'.', b'0'],
                preamble: DEBIAN_PREAMBLE,
                header_position: HeaderPosition::End,
                codecs: &[CodecKind::Zlib],
                codec_flags: false,
                zero_length_blocks: false,
                back_references: false,
                short_final_block: false,
                readers: LINUX_ONLY,
                family: Family::LinuxCloop,
                extension: "cloop",
                dedup_variant: None,
                writing: Writing::ReadOnly {
                    instead: Dialect::LinuxV4Footer,
                },
            },
            Dialect::LinuxV4 => &DialectSpec {
                name: "v4",
                signature: [b'V', b'4', b'.', b'0'],
                preamble: V4_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[
                    CodecKind::Zlib,
                    CodecKind::Xz,
                    CodecKind::Lz4,
                    CodecKind::None,
                    CodecKind::Lzo,
                ],
                codec_flags: true,
                zero_length_blocks: false,
                back_references: false,
                short_final_block: false,
                readers: LINUX_ONLY,
                family: Family::LinuxCloop,
                extension: "cloop",
                dedup_variant: None,
                writing: Writing::Written(WriteRules {
                    codecs: V4_WRITTEN,
                    auto: true,
                }),
            },
            Dialect::LinuxV4Footer => &DialectSpec {
                name: "v4-footer",
                signature: [b'V', b'4', b'.', b'0'],
                preamble: V4_PREAMBLE,
                header_position: HeaderPosition::End,
                codecs: &[
                    CodecKind::Zlib,
                    CodecKind::Xz,
                    CodecKind::Lz4,
                    CodecKind::None,
                    CodecKind::Lzo,
                ],
                codec_flags: true,
                zero_length_blocks: false,
                back_references: false,
                short_final_block: false,
                readers: LINUX_ONLY,
                family: Family::LinuxCloop,
                extension: "cloop",
                dedup_variant: None,
                writing: Writing::Written(WriteRules {
                    codecs: V4_WRITTEN,
                    auto: false,
                }),
            },
            Dialect::UzipZlib => &DialectSpec {
                name: "uzip-zlib",
                signature: [b'V', b'2', b'.', b'0'],
                preamble: UZIP_ZLIB_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Zlib],
                codec_flags: false,
                zero_length_blocks: true,
                back_references: false,
                short_final_block: true,
                readers: FREEBSD_ONLY,
                family: Family::FreeBsdUzip,
                extension: "uzip",
                dedup_variant: Some(Dialect::UzipZlibDedup),
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Zlib],
                    auto: true,
                }),
            },
            Dialect::UzipZlibDedup => &DialectSpec {
                name: "uzip-zlib-dedup",
                signature: [b'v', b'3', b'.', b'0'],
                preamble: UZIP_ZLIB_DEDUP_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Zlib],
                codec_flags: false,
                zero_length_blocks: true,
                back_references: true,
                short_final_block: true,
                readers: FREEBSD_ONLY,
                family: Family::FreeBsdUzip,
                extension: "uzip",
                dedup_variant: Some(Dialect::UzipZlibDedup),
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Zlib],
                    auto: false,
                }),
            },
            Dialect::UzipXz => &DialectSpec {
                name: "uzip-xz",
                signature: [b'L', b'3', b'.', b'0'],
                preamble: UZIP_XZ_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Xz],
                codec_flags: false,
                zero_length_blocks: true,
                back_references: false,
                short_final_block: true,
                readers: FREEBSD_ONLY,
                family: Family::FreeBsdUzip,
                extension: "uzip",
                dedup_variant: Some(Dialect::UzipXzDedup),
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Xz],
                    auto: true,
                }),
            },
            Dialect::UzipXzDedup => &DialectSpec {
                name: "uzip-xz-dedup",
                signature: [b'l', b'3', b'.', b'0'],
                preamble: UZIP_XZ_DEDUP_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Xz],
                codec_flags: false,
                zero_length_blocks: true,
                back_references: true,
                short_final_block: true,
                readers: FREEBSD_ONLY,
                family: Family::FreeBsdUzip,
                extension: "uzip",
                dedup_variant: Some(Dialect::UzipXzDedup),
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Xz],
                    auto: false,
                }),
            },
            Dialect::UzipZstd => &DialectSpec {
                name: "uzip-zstd",
                signature: [b'Z', b'4', b'.', b'0'],
                preamble: UZIP_ZSTD_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Zstd],
                codec_flags: false,
                zero_length_blocks: true,
                back_references: false,
                short_final_block: true,
                readers: FREEBSD_ONLY,
                family: Family::FreeBsdUzip,
                extension: "uzip",
                dedup_variant: Some(Dialect::UzipZstdDedup),
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Zstd],
                    auto: true,
                }),
            },
            Dialect::UzipZstdDedup => &DialectSpec {
                name: "uzip-zstd-dedup",
                signature: [b'z', b'4', b'.', b'0'],
                preamble: UZIP_ZSTD_DEDUP_PREAMBLE,
                header_position: HeaderPosition::Start,
                codecs: &[CodecKind::Zstd],
                codec_flags: false,
                zero_length_blocks: true,
                back_references: true,
                short_final_block: true,
                readers: FREEBSD_ONLY,
                family: Family::FreeBsdUzip,
                extension: "uzip",
                dedup_variant: Some(Dialect::UzipZstdDedup),
                writing: Writing::Written(WriteRules {
                    codecs: &[CodecKind::Zstd],
                    auto: false,
                }),
            },
        }
    }

    /// Short name (`v2`, `uzip-xz`, ...).
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether blocks of this dialect may use `codec`.
    pub fn allows_codec(self, codec: CodecKind) -> bool {
        self.spec().codecs.contains(&codec)
    }

    /// The codec a block uses when the index carries no flag.
    pub const fn default_codec(self) -> CodecKind {
        self.spec().codecs[0]
    }

    /// The 128-byte preamble: the dialect's script text, NUL padded.
    pub fn preamble(self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        let text = self.spec().preamble;
        out[..text.len()].copy_from_slice(text);
        out
    }

    /// The 128 bytes a footer image starts with (see [`FOOTER_LEAD_IN`]).
    pub fn footer_lead_in() -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..FOOTER_LEAD_IN.len()].copy_from_slice(FOOTER_LEAD_IN);
        out
    }

    /// The same dialect with dedup back-references, if the dialect has such a variant.
    pub const fn with_dedup(self) -> Option<Dialect> {
        self.spec().dedup_variant
    }

    /// File name extension of its images, without the dot (`cloop`, `uzip`).
    pub const fn extension(self) -> &'static str {
        self.spec().extension
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a dialect name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}: expected one of v2, v4, v4-footer, uzip-zlib, uzip-xz, uzip-zstd (with -dedup)")]
pub struct UnknownDialect(pub String);

impl UnknownDialect {
    /// What kind of failure this is: always a bad setting ([`ErrorKind::Config`]).
    ///
    /// [`ErrorKind::Config`]: mkmodule_blockdev::ErrorKind::Config
    pub fn kind(&self) -> mkmodule_blockdev::ErrorKind {
        mkmodule_blockdev::ErrorKind::Config
    }
}

impl FromStr for Dialect {
    type Err = UnknownDialect;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDialect(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sha2::{Digest, Sha256};

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn signatures_sit_at_offset_11() {
        for dialect in Dialect::ALL {
            let pre = dialect.preamble();
            assert_eq!(
                &pre[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4],
                &dialect.spec().signature,
                "{dialect}"
            );
            assert!(pre.starts_with(b"#!/bin/sh\n"), "{dialect}");
        }
    }

    #[test]
    fn debian_preamble_matches_formats_md() {
        // docs/FORMAT.md §3: 91 bytes of text, then 37 NULs; qemu probes the first 83 bytes.
        assert_eq!(DEBIAN_PREAMBLE.len(), 91);
        assert_eq!(UZIP_ZLIB_PREAMBLE.len(), 119);
        assert_eq!(UZIP_XZ_PREAMBLE.len(), 16);
        // SHA-256 of the full 128-byte preambles as docs/FORMAT.md §3.1 gives them.
        let expected = [
            (
                Dialect::LinuxV2,
                "037c2ca4b8ea0bbf4906033cb2cebed580be784bc18503bc6af21c595b55c4c5",
            ),
            (
                Dialect::UzipZlib,
                "3728da9055718bab8f99d068fdc8aadc09c4c376f8a1eb8b12f9180fae7b6b9d",
            ),
            (
                Dialect::UzipZstd,
                "3299fa81993184c80b6ab9f99ce527b447e733a82ad5a54aee70ba613929c381",
            ),
            (
                Dialect::UzipXz,
                "0ca8d42ebc1173acea231c06933032463c387a7881affa8700e60afaef56c206",
            ),
        ];
        for (dialect, sum) in expected {
            assert_eq!(sha256_hex(&dialect.preamble()), sum, "{dialect}");
        }
    }

    #[test]
    fn dialect_names_parse_back() {
        for dialect in Dialect::ALL {
            assert_eq!(dialect.name().parse::<Dialect>().unwrap(), dialect);
            assert!(dialect.allows_codec(dialect.default_codec()));
        }
    }

    #[test]
    fn every_written_dialect_has_its_familys_extension() {
        for dialect in Dialect::ALL {
            let spec = dialect.spec();
            let want = match spec.family {
                Family::LinuxCloop => "cloop",
                Family::FreeBsdUzip => "uzip",
            };
            assert_eq!(dialect.extension(), want, "{dialect}");
            assert!(dialect.extension().chars().all(|c| c.is_ascii_lowercase()));
        }
    }

    #[test]
    fn families_follow_the_quirks() {
        for dialect in Dialect::ALL {
            let spec = dialect.spec();
            let uzip = spec.family == Family::FreeBsdUzip;
            assert_eq!(spec.short_final_block, uzip, "{dialect}");
            assert_eq!(spec.zero_length_blocks, uzip, "{dialect}");
            assert_eq!(spec.dedup_variant.is_some(), uzip, "{dialect}");
            assert_eq!(spec.readers == FREEBSD_ONLY, uzip, "{dialect}");
        }
    }

    #[test]
    fn dedup_variants_lower_case_the_codec_letter() {
        for dialect in Dialect::ALL {
            if let Some(dedup) = dialect.with_dedup() {
                let a = dialect.spec().signature[0];
                let b = dedup.spec().signature[0];
                assert_eq!(a.to_ascii_lowercase(), b);
                assert!(dedup.spec().back_references);
            }
        }
    }
}
