//! Block codecs as the format names them, and the V4 flag nibble that selects them.
//!
//! This is the one place where a codec is mapped to and from its on-disk flag.

use std::fmt;
use std::str::FromStr;

/// A block codec that a cloop-family image can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodecKind {
    /// RFC 1950 zlib stream (deflate with zlib header and Adler-32).
    Zlib,
    /// Raw, uncompressed bytes.
    None,
    /// A complete `.xz` stream: LZMA2 with a CRC32 (or no) integrity check.
    Xz,
    /// One raw LZ4 block, no frame header and no size prefix.
    Lz4,
    /// One raw LZO1X block (read-only: cloop.ko V4 accepts it).
    Lzo,
    /// One zstd frame, content checksum enabled (FreeBSD `Z4.0`).
    Zstd,
}

impl CodecKind {
    /// Every codec, in a stable order.
    pub const ALL: [CodecKind; 6] = [
        CodecKind::Zlib,
        CodecKind::None,
        CodecKind::Xz,
        CodecKind::Lz4,
        CodecKind::Lzo,
        CodecKind::Zstd,
    ];

    /// The flag nibble (bits 63..60 of an index entry) that selects this codec in Linux V4.
    ///
    /// zstd has no V4 flag: only FreeBSD's `Z4.0` dialect carries it.
    pub const fn v4_flag(self) -> Option<u8> {
        match self {
            CodecKind::Zlib => Some(0),
            CodecKind::None => Some(1),
            CodecKind::Xz => Some(2),
            CodecKind::Lz4 => Some(3),
            CodecKind::Lzo => Some(4),
            CodecKind::Zstd => None,
        }
    }

    /// The codec a V4 flag nibble selects, or `None` for the reserved values 5..=15.
    pub const fn from_v4_flag(flag: u8) -> Option<CodecKind> {
        match flag {
            0 => Some(CodecKind::Zlib),
            1 => Some(CodecKind::None),
            2 => Some(CodecKind::Xz),
            3 => Some(CodecKind::Lz4),
            4 => Some(CodecKind::Lzo),
            _ => None,
        }
    }

    /// Short lower-case name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            CodecKind::Zlib => "zlib",
            CodecKind::None => "none",
            CodecKind::Xz => "xz",
            CodecKind::Lz4 => "lz4",
            CodecKind::Lzo => "lzo",
            CodecKind::Zstd => "zstd",
        }
    }

    /// The largest compressed length a correct writer can produce for one block of `block_size`
    /// bytes with this codec (the worst case for incompressible data, plus framing).
    ///
    /// Readers use it to bound allocations and to reject absurd index entries. The figures follow
    /// the codecs' own bound functions (zlib `compressBound`, `ZSTD_compressBound`,
    /// `LZ4_compressBound`, the xz stream overhead and LZO1X's documented worst case).
    pub const fn max_compressed_len(self, block_size: u32) -> u64 {
        let bs = block_size as u64;
        match self {
            // compressBound(bs) = bs + bs/4096 + bs/16384 + bs/2^25 + 13. A stored zlib stream
            // (bs + 6 + 5 * ceil(bs / 65535)) is always below it.
            CodecKind::Zlib => bs + bs / 4096 + bs / 16384 + bs / 33_554_432 + 13,
            CodecKind::None => bs,
            // Stream header and footer (24), block header (<= 1024 by the spec, 16 in practice),
            // index (<= 24 for one block), CRC32 (4), block padding (3), and 3 bytes of header per
            // 64 KiB uncompressed LZMA2 chunk plus the end marker.
            CodecKind::Xz => bs + 3 * bs.div_ceil(65536) + 1 + 24 + 1024 + 24 + 4 + 3,
            CodecKind::Lz4 => bs + bs / 255 + 16,
            CodecKind::Lzo => bs + bs / 16 + 64 + 3,
            // ZSTD_compressBound: bs + bs/256 + (bs < 128 KiB ? (128 KiB - bs) / 2048 : 0), plus
            // the 4-byte content checksum FreeBSD enables.
            CodecKind::Zstd => {
                let small = if bs < 131_072 {
                    (131_072 - bs) / 2048
                } else {
                    0
                };
                bs + bs / 256 + small + 4
            }
        }
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a codec name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec {name:?}: expected {expected}")]
pub struct UnknownCodec {
    /// The name as given.
    pub name: String,
    /// What would have been accepted, as a list for the message (e.g. `zlib, xz or none`).
    pub expected: String,
}

impl UnknownCodec {
    /// The error for `name`, expecting any codec of [`CodecKind::ALL`] by name.
    pub fn new(name: &str) -> UnknownCodec {
        UnknownCodec {
            name: name.to_string(),
            expected: or_list(CodecKind::ALL.iter().map(|codec| codec.name().to_string())),
        }
    }

    /// The same error expecting `expected` instead: what a caller that accepts more (levels,
    /// `best`) or less (only the codecs it writes) tells the user.
    pub fn expecting(self, expected: String) -> UnknownCodec {
        UnknownCodec { expected, ..self }
    }

    /// What kind of failure this is: always a bad setting ([`ErrorKind::Config`]).
    ///
    /// [`ErrorKind::Config`]: mkmodule_blockdev::ErrorKind::Config
    pub fn kind(&self) -> mkmodule_blockdev::ErrorKind {
        mkmodule_blockdev::ErrorKind::Config
    }
}

impl FromStr for CodecKind {
    type Err = UnknownCodec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CodecKind::ALL
            .into_iter()
            .find(|codec| codec.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownCodec::new(s))
    }
}

/// Joins `items` as an English list: `a`, `a or b`, `a, b or c`.
pub fn or_list(items: impl IntoIterator<Item = String>) -> String {
    let mut items: Vec<String> = items.into_iter().collect();
    match items.pop() {
        None => String::new(),
        Some(last) if items.is_empty() => last,
        Some(last) => format!("{} or {last}", items.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_flags_round_trip() {
        for codec in CodecKind::ALL {
            if let Some(flag) = codec.v4_flag() {
                assert_eq!(CodecKind::from_v4_flag(flag), Some(codec));
            }
        }
        for flag in 5..=15 {
            assert_eq!(CodecKind::from_v4_flag(flag), None);
        }
    }

    #[test]
    fn names_parse_back() {
        for codec in CodecKind::ALL {
            assert_eq!(codec.name().parse::<CodecKind>().unwrap(), codec);
        }
        let err = "gzip".parse::<CodecKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown codec \"gzip\": expected zlib, none, xz, lz4, lzo or zstd"
        );
        assert_eq!(
            err.expecting("zlib or xz".into()).to_string(),
            "unknown codec \"gzip\": expected zlib or xz"
        );
    }

    #[test]
    fn lists_read_as_english() {
        let list = |items: &[&str]| or_list(items.iter().map(|s| s.to_string()));
        assert_eq!(list(&[]), "");
        assert_eq!(list(&["a"]), "a");
        assert_eq!(list(&["a", "b"]), "a or b");
        assert_eq!(list(&["a", "b", "c"]), "a, b or c");
    }

    #[test]
    fn zlib_bound_covers_observed_expansion() {
        // Incompressible data, stock zlib -9: 65 562 bytes for a 64 KiB block, 16 397 for 16 KiB.
        assert!(CodecKind::Zlib.max_compressed_len(65536) >= 65562);
        assert!(CodecKind::Zlib.max_compressed_len(16384) >= 16397);
        // Stored zlib: bs + 6 + 5 * ceil(bs / 65535).
        for bs in [512u32, 4096, 65536, 1 << 20] {
            let stored = u64::from(bs) + 6 + 5 * u64::from(bs).div_ceil(65535);
            assert!(CodecKind::Zlib.max_compressed_len(bs) >= stored, "bs {bs}");
        }
    }
}
