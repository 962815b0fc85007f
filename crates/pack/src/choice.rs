//! Choosing codec and dialect: `--codec` and `--format` values, and the dialect that can express
//! them, refused with one sentence naming what would work.

use std::fmt;
use std::str::FromStr;

use mkmodule_codec::{codec_syntax, CodecError, CodecKind, CodecSpec};
use mkmodule_format::{or_list, Dialect, Family, PORTABLE};

use crate::OptionsError;

/// zlib level (libdeflate) used when `zlib` is given without a level.
///
/// The fastest libdeflate level whose images are no larger than `create_compressed_fs -L 9
/// -B 64K` (stock zlib -9), measured on the benchmark corpus (a Debian root filesystem in ext4,
/// 829 MB: level 5 is 0.15% smaller than zlib -9, level 4 1.7% larger; an ISO of shared
/// libraries, 861 MB: level 5 is 0.03% smaller, level 4 1.6% larger). Level 6 is 0.5% smaller
/// on both and costs 10-15% more CPU.
pub const DEFAULT_ZLIB_LEVEL: i32 = 5;

/// zstd level used when `zstd` is given without a level.
///
/// The fastest level whose 64 KiB-block images are no larger than `qemu-img convert -c -O qcow2
/// -o compression_type=zstd` (64 KiB clusters): on the benchmark corpus level 3 is 0.5% (ext4)
/// and 0.8% (ISO) smaller, level 2 is 1.1% larger (ext4).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The codecs `--codec` accepts for writing, in the order texts list them. `none` is written as
/// level-0 zlib; lzo is read only ([`crate::PackOptions::plan`] refuses it).
pub const ACCEPTED_CODECS: [CodecKind; 5] = [
    CodecKind::Zlib,
    CodecKind::Zstd,
    CodecKind::Xz,
    CodecKind::Lz4,
    CodecKind::None,
];

/// What a codec choice may be, generated from [`ACCEPTED_CODECS`] and each codec's level range:
/// `zlib[:0-12], zstd[:1-22], xz[:0-9], lz4, none or best (lzo: read only)`. The parse error
/// of [`CodecChoice`] and the `--codec` help of every command use this one text.
pub fn codec_choices() -> String {
    let mut choices: Vec<String> = ACCEPTED_CODECS.iter().map(|&k| codec_syntax(k)).collect();
    choices.push("best".to_string());
    let read_only: Vec<&str> = CodecKind::ALL
        .iter()
        .filter(|kind| !ACCEPTED_CODECS.contains(kind))
        .map(|kind| kind.name())
        .collect();
    let mut text = or_list(choices);
    if !read_only.is_empty() {
        text.push_str(&format!(" ({}: read only)", read_only.join(", ")));
    }
    text
}

/// Which codec the blocks are compressed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    /// One codec at one level for every block.
    Fixed(CodecSpec),
    /// Per block, the smallest result among the codecs the dialect allows, each at its highest
    /// level (V4: zlib, xz and lz4; every other dialect: its one codec).
    Best,
}

impl CodecChoice {
    /// `kind` at mkmodule's default level for it ([`DEFAULT_ZLIB_LEVEL`], [`DEFAULT_ZSTD_LEVEL`],
    /// otherwise the codec crate's default).
    pub fn default_for(kind: CodecKind) -> CodecChoice {
        let spec = match kind {
            CodecKind::Zlib => CodecSpec::new(kind, DEFAULT_ZLIB_LEVEL),
            CodecKind::Zstd => CodecSpec::new(kind, DEFAULT_ZSTD_LEVEL),
            _ => Ok(CodecSpec::with_default_level(kind)),
        };
        CodecChoice::Fixed(spec.unwrap_or_else(|_| CodecSpec::with_default_level(kind)))
    }

    /// The fixed codec, or `None` for [`CodecChoice::Best`].
    pub fn kind(&self) -> Option<CodecKind> {
        match self {
            CodecChoice::Fixed(spec) => Some(spec.kind()),
            CodecChoice::Best => None,
        }
    }
}

impl fmt::Display for CodecChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecChoice::Fixed(spec) => write!(f, "{spec}"),
            CodecChoice::Best => f.write_str("best"),
        }
    }
}

impl FromStr for CodecChoice {
    type Err = CodecError;

    /// Parses `best`, `codec` (mkmodule's default level) or `codec:level`. An unknown name is
    /// answered with [`codec_choices`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("best") {
            return Ok(CodecChoice::Best);
        }
        let parsed = if s.contains(':') {
            s.parse().map(CodecChoice::Fixed)
        } else {
            s.parse::<CodecKind>()
                .map(CodecChoice::default_for)
                .map_err(CodecError::from)
        };
        parsed.map_err(|error| match error {
            CodecError::UnknownCodec(unknown) => {
                CodecError::UnknownCodec(unknown.expecting(codec_choices()))
            }
            other => other,
        })
    }
}

/// What `--format` asked for: a family, or one dialect by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    /// The most compatible dialect that can express the other options.
    Auto,
    /// Linux cloop V2.0 (the portable profile).
    V2,
    /// Linux cloop V4.0, header first.
    V4,
    /// Linux cloop V4.0, header in the last 136 bytes (streamable).
    V4Footer,
    /// FreeBSD uzip with the codec's signature (zlib, xz or zstd).
    Uzip,
    /// One dialect by its full name (`uzip-zstd`, `uzip-zlib-dedup`, ...).
    Dialect(Dialect),
}

impl FromStr for FormatChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => FormatChoice::Auto,
            "v2" => FormatChoice::V2,
            "v4" => FormatChoice::V4,
            "v4-footer" => FormatChoice::V4Footer,
            "uzip" => FormatChoice::Uzip,
            other => FormatChoice::Dialect(other.parse::<Dialect>().map_err(|_| {
                format!(
                    "unknown format {s:?}: expected auto, v2, v4, v4-footer or uzip \
                     (or uzip-zlib, uzip-xz, uzip-zstd)"
                )
            })?),
        })
    }
}

/// The dialects mkmodule writes, most compatible first (dedup variants come from
/// [`Dialect::with_dedup`]); the list lives in the dialect table as [`Dialect::WRITTEN`].
pub const WRITTEN_DIALECTS: [Dialect; 6] = Dialect::WRITTEN;

/// Codecs `best` tries and `--codec` accepts in a dialect, from the dialect table (never V4's
/// flag 1, which Linux cannot read, nor lzo, which mkmodule only reads).
pub(crate) fn written_codecs(dialect: Dialect) -> impl Iterator<Item = CodecKind> {
    dialect.written_codecs().iter().copied()
}

pub(crate) fn codec_hint(codec: CodecKind) -> String {
    let names: Vec<&str> = WRITTEN_DIALECTS
        .iter()
        .filter(|d| d.allows_codec(codec))
        .map(|d| d.name())
        .collect();
    match names.as_slice() {
        [] => "no format takes them".into(),
        [one] => format!("use --format {one}"),
        [init @ .., last] => format!("use --format {} or {last}", init.join(", ")),
    }
}

/// Picks the dialect for `format`, `codec` and the uzip-only options, refusing impossible
/// combinations with one sentence that names what would work.
///
/// `none` becomes level-0 zlib (stored deflate in a zlib wrapper, the only uncompressed encoding
/// every reader decodes; V4's flag 1 is broken in cloop.ko). `auto` picks v2 for zlib and best,
/// v4 for xz and lz4, uzip-zstd for zstd, and the uzip dialect of the codec when zero-length
/// blocks or dedup are asked for (the write columns of the dialect table decide, see
/// [`Dialect::auto_for`] and [`Dialect::family_member_for`]).
pub fn choose_dialect(
    format: FormatChoice,
    codec: CodecChoice,
    zero_blocks: bool,
    dedup: bool,
) -> Result<(Dialect, CodecChoice), OptionsError> {
    let codec = match codec {
        CodecChoice::Fixed(spec) if spec.kind() == CodecKind::None => {
            CodecChoice::Fixed(CodecSpec::new(CodecKind::Zlib, 0).expect("zlib level 0 is valid"))
        }
        other => other,
    };
    if codec.kind() == Some(CodecKind::Lzo) {
        return Err(OptionsError::CodecNotWritten {
            codec: CodecKind::Lzo,
            hint: "use lz4 for a fast codec in v4 images",
        });
    }
    let base = match format {
        FormatChoice::Auto => Dialect::auto_for(codec.kind(), zero_blocks || dedup),
        FormatChoice::V2 => Some(Dialect::LinuxV2),
        FormatChoice::V4 => Some(Dialect::LinuxV4),
        FormatChoice::V4Footer => Some(Dialect::LinuxV4Footer),
        FormatChoice::Uzip => Dialect::family_member_for(Family::FreeBsdUzip, codec.kind()),
        FormatChoice::Dialect(d) => Some(d),
    };
    // No dialect of the table writes the codec: the portable dialect refuses it below, saying
    // that no format takes it.
    let base = base.unwrap_or(PORTABLE.dialect);
    if !base.is_written() {
        return Err(OptionsError::DialectNotWritten {
            dialect: base,
            instead: base.written_instead(),
        });
    }
    if let Some(kind) = codec.kind() {
        if !base.allows_codec(kind) {
            return Err(OptionsError::CodecNotInDialect {
                codec: kind,
                dialect: base,
                hint: codec_hint(kind),
            });
        }
    }
    let dialect = if dedup {
        base.with_dedup().ok_or(OptionsError::FeatureNotInDialect {
            option: "--dedup",
            dialect: base,
            hint: "back-references exist only in FreeBSD uzip images (--format uzip with zlib, \
                   xz or zstd)",
        })?
    } else {
        base
    };
    if zero_blocks && !dialect.spec().zero_length_blocks {
        return Err(OptionsError::FeatureNotInDialect {
            option: "--zero-blocks",
            dialect,
            hint: "zero-length blocks exist only in FreeBSD uzip images (--format uzip with \
                   zlib, xz or zstd); without the option all-zero blocks are still compressed \
                   only once",
        });
    }
    Ok((dialect, codec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codecs_are_answered_with_the_accepted_choices() {
        assert_eq!(
            codec_choices(),
            "zlib[:0-12], zstd[:1-22], xz[:0-9], lz4, none or best (lzo: read only)"
        );
        for text in ["foo", "foo:3"] {
            let err = text.parse::<CodecChoice>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("unknown codec \"foo\": expected {}", codec_choices())
            );
        }
        assert_eq!("best".parse::<CodecChoice>(), Ok(CodecChoice::Best));
        assert!("zlib:13".parse::<CodecChoice>().is_err());
    }

    fn fixed(text: &str) -> CodecChoice {
        text.parse().unwrap()
    }

    #[test]
    fn auto_picks_the_most_compatible_dialect() {
        let cases = [
            ("zlib", false, false, Dialect::LinuxV2),
            ("best", false, false, Dialect::LinuxV2),
            ("none", false, false, Dialect::LinuxV2),
            ("xz", false, false, Dialect::LinuxV4),
            ("lz4", false, false, Dialect::LinuxV4),
            ("zstd", false, false, Dialect::UzipZstd),
            ("zlib", true, false, Dialect::UzipZlib),
            ("xz", true, false, Dialect::UzipXz),
            ("zlib", false, true, Dialect::UzipZlibDedup),
            ("zstd", true, true, Dialect::UzipZstdDedup),
        ];
        for (codec, zero, dedup, want) in cases {
            let (dialect, _) = choose_dialect(FormatChoice::Auto, fixed(codec), zero, dedup)
                .unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(dialect, want, "{codec} zero={zero} dedup={dedup}");
        }
    }

    #[test]
    fn named_formats_pick_what_they_did() {
        let cases = [
            (FormatChoice::V2, "best", Dialect::LinuxV2),
            (FormatChoice::V4, "lz4", Dialect::LinuxV4),
            (FormatChoice::V4Footer, "xz", Dialect::LinuxV4Footer),
            (FormatChoice::Uzip, "zlib", Dialect::UzipZlib),
            (FormatChoice::Uzip, "best", Dialect::UzipZlib),
            (FormatChoice::Uzip, "none", Dialect::UzipZlib),
            (FormatChoice::Uzip, "xz", Dialect::UzipXz),
            (FormatChoice::Uzip, "zstd", Dialect::UzipZstd),
            (
                FormatChoice::Dialect(Dialect::UzipXzDedup),
                "xz",
                Dialect::UzipXzDedup,
            ),
        ];
        for (format, codec, want) in cases {
            let (dialect, _) = choose_dialect(format, fixed(codec), false, false)
                .unwrap_or_else(|e| panic!("{format:?} {codec}: {e}"));
            assert_eq!(dialect, want, "{format:?} {codec}");
        }
        let (dialect, _) = choose_dialect(FormatChoice::Uzip, fixed("xz"), false, true).unwrap();
        assert_eq!(dialect, Dialect::UzipXzDedup);
    }

    #[test]
    fn read_only_and_read_only_codecs_are_refused_as_before() {
        let v2_footer = FormatChoice::Dialect(Dialect::LinuxV2Footer);
        let err = choose_dialect(v2_footer, fixed("zlib"), false, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mkmodule does not write v2-footer images: use v4-footer"
        );
        let err = choose_dialect(FormatChoice::Auto, fixed("lzo"), false, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mkmodule does not write lzo blocks: use lz4 for a fast codec in v4 images"
        );
        let err = choose_dialect(FormatChoice::Auto, fixed("lz4"), true, false).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--zero-blocks is not possible in v4 images"));
        let err = choose_dialect(FormatChoice::Auto, fixed("lz4"), false, true).unwrap_err();
        assert!(err.to_string().starts_with("--dedup is not possible in v4"));
    }

    #[test]
    fn hints_list_the_written_formats_in_order() {
        assert_eq!(
            codec_hint(CodecKind::Xz),
            "use --format v4, v4-footer or uzip-xz"
        );
        assert_eq!(
            codec_hint(CodecKind::Zlib),
            "use --format v2, v4, v4-footer or uzip-zlib"
        );
        assert_eq!(codec_hint(CodecKind::Zstd), "use --format uzip-zstd");
    }

    #[test]
    fn none_becomes_stored_zlib() {
        let (_, codec) = choose_dialect(FormatChoice::V4, fixed("none"), false, false).unwrap();
        assert_eq!(codec.to_string(), "zlib:0");
    }

    #[test]
    fn impossible_combinations_name_what_works() {
        let err = choose_dialect(FormatChoice::V2, fixed("zstd"), false, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "zstd blocks are not possible in v2 images: use --format uzip-zstd"
        );
        let err = choose_dialect(FormatChoice::Uzip, fixed("lz4"), false, false).unwrap_err();
        assert!(err.to_string().contains("v4 or v4-footer"), "{err}");
        let err = choose_dialect(FormatChoice::V2, fixed("zlib"), true, false).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--zero-blocks is not possible in v2"));
        let err = choose_dialect(FormatChoice::V4, fixed("zlib"), false, true).unwrap_err();
        assert!(err.to_string().starts_with("--dedup is not possible in v4"));
        assert!(choose_dialect(FormatChoice::Auto, fixed("lz4"), true, false).is_err());
        assert!(choose_dialect(FormatChoice::Auto, fixed("lzo"), false, false).is_err());
    }
}
