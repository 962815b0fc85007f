//! A codec plus its compression level, parsed from `codec[:level]` (e.g. `zlib:9`, `lz4`).

use std::fmt;
use std::str::FromStr;

use mkmodule_format::{CodecKind, UnknownCodec};

use crate::CodecError;

/// The levels a codec accepts and the one used when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelRange {
    /// Lowest accepted level.
    pub min: i32,
    /// Highest accepted level.
    pub max: i32,
    /// Level used when the spec names none.
    pub default: i32,
}

/// The level range of `kind`, or `None` for codecs without levels (lz4, lzo, none).
///
/// * zlib (libdeflate): 0..=12, default 9 (0 = stored blocks, 12 = best).
/// * zstd: 1..=22, default 9 (FreeBSD mkuzip's default).
/// * xz: presets 0..=9, default 6 (xz's and mkuzip's default).
///
/// LZO has a single encoder (`lzokay`, a hash-chain LZO1X encoder); it is only used to make test
/// images, as mkmodule reads LZO blocks but never writes them.
pub const fn level_range(kind: CodecKind) -> Option<LevelRange> {
    let (min, max, default) = match kind {
        CodecKind::Zlib => (0, 12, 9),
        CodecKind::Zstd => (1, 22, 9),
        CodecKind::Xz => (0, 9, 6),
        CodecKind::Lz4 | CodecKind::Lzo | CodecKind::None => return None,
    };
    Some(LevelRange { min, max, default })
}

/// How `kind` is written in a codec spec: its name, followed by `[:MIN-MAX]` when it takes a
/// level (`zlib[:0-12]`, `lz4`). Help and error texts list codecs this way.
pub fn codec_syntax(kind: CodecKind) -> String {
    match level_range(kind) {
        Some(r) => format!("{}[:{}-{}]", kind.name(), r.min, r.max),
        None => kind.name().to_string(),
    }
}

/// The codecs `kinds` as [`codec_syntax`] writes them, joined as one list
/// (`zlib[:0-12], xz[:0-9] or lz4`).
pub fn codec_list(kinds: &[CodecKind]) -> String {
    mkmodule_format::or_list(kinds.iter().map(|&kind| codec_syntax(kind)))
}

/// Codecs in the order texts list them: the usual ones first.
const LISTED_ORDER: [CodecKind; 6] = [
    CodecKind::Zlib,
    CodecKind::Zstd,
    CodecKind::Xz,
    CodecKind::Lz4,
    CodecKind::Lzo,
    CodecKind::None,
];

/// A codec and the compression level a writer uses with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecSpec {
    kind: CodecKind,
    level: Option<i32>,
}

impl CodecSpec {
    /// A spec for `kind` at `level`, checked against [`level_range`].
    pub fn new(kind: CodecKind, level: i32) -> Result<Self, CodecError> {
        match level_range(kind) {
            None => Err(CodecError::NoLevel { codec: kind, level }),
            Some(r) if level < r.min || level > r.max => Err(CodecError::InvalidLevel {
                codec: kind,
                level,
                min: r.min,
                max: r.max,
            }),
            Some(_) => Ok(CodecSpec {
                kind,
                level: Some(level),
            }),
        }
    }

    /// A spec for `kind` at its default level (no level for lz4 and none).
    pub const fn with_default_level(kind: CodecKind) -> Self {
        let level = match level_range(kind) {
            Some(r) => Some(r.default),
            None => None,
        };
        CodecSpec { kind, level }
    }

    /// The codec.
    pub const fn kind(&self) -> CodecKind {
        self.kind
    }

    /// The compression level, `None` for codecs without levels.
    pub const fn level(&self) -> Option<i32> {
        self.level
    }
}

impl From<CodecKind> for CodecSpec {
    fn from(kind: CodecKind) -> Self {
        CodecSpec::with_default_level(kind)
    }
}

impl FromStr for CodecSpec {
    type Err = CodecError;

    /// Parses `codec` or `codec:level`; codec names are case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, level) = match s.split_once(':') {
            Some((name, level)) => (name, Some(level)),
            None => (s, None),
        };
        let kind: CodecKind = name
            .trim()
            .parse()
            .map_err(|e: UnknownCodec| e.expecting(codec_list(&LISTED_ORDER)))?;
        match level {
            None => Ok(CodecSpec::with_default_level(kind)),
            Some(text) => {
                let level = text
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| CodecError::InvalidSpec {
                        spec: s.to_string(),
                        level: text.to_string(),
                    })?;
                CodecSpec::new(kind, level)
            }
        }
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Some(level) => write!(f, "{}:{level}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_levels() {
        let cases = [
            ("zlib", CodecKind::Zlib, Some(9)),
            ("zlib:0", CodecKind::Zlib, Some(0)),
            ("zlib:12", CodecKind::Zlib, Some(12)),
            ("ZSTD:19", CodecKind::Zstd, Some(19)),
            ("zstd", CodecKind::Zstd, Some(9)),
            ("xz:6", CodecKind::Xz, Some(6)),
            ("xz", CodecKind::Xz, Some(6)),
            ("lz4", CodecKind::Lz4, None),
            ("none", CodecKind::None, None),
            ("lzo", CodecKind::Lzo, None),
        ];
        for (text, kind, level) in cases {
            let spec: CodecSpec = text.parse().unwrap();
            assert_eq!((spec.kind(), spec.level()), (kind, level), "{text}");
            assert_eq!(spec.to_string().parse::<CodecSpec>().unwrap(), spec);
        }
        assert_eq!("zlib:9".parse::<CodecSpec>().unwrap().to_string(), "zlib:9");
        assert_eq!("lz4".parse::<CodecSpec>().unwrap().to_string(), "lz4");
    }

    #[test]
    fn rejects_bad_specs_with_numbers() {
        assert_eq!(
            "zlib:13".parse::<CodecSpec>(),
            Err(CodecError::InvalidLevel {
                codec: CodecKind::Zlib,
                level: 13,
                min: 0,
                max: 12
            })
        );
        assert!(matches!(
            "zstd:0".parse::<CodecSpec>(),
            Err(CodecError::InvalidLevel {
                min: 1,
                max: 22,
                ..
            })
        ));
        assert!(matches!(
            "zstd:23".parse::<CodecSpec>(),
            Err(CodecError::InvalidLevel { level: 23, .. })
        ));
        assert!(matches!(
            "xz:10".parse::<CodecSpec>(),
            Err(CodecError::InvalidLevel { min: 0, max: 9, .. })
        ));
        assert!(matches!(
            "xz:-1".parse::<CodecSpec>(),
            Err(CodecError::InvalidLevel { level: -1, .. })
        ));
        assert_eq!(
            "lz4:1".parse::<CodecSpec>(),
            Err(CodecError::NoLevel {
                codec: CodecKind::Lz4,
                level: 1
            })
        );
        assert!(matches!(
            "none:0".parse::<CodecSpec>(),
            Err(CodecError::NoLevel { .. })
        ));
        assert!(matches!(
            "zlib:".parse::<CodecSpec>(),
            Err(CodecError::InvalidSpec { .. })
        ));
        assert!(matches!(
            "zlib:nine".parse::<CodecSpec>(),
            Err(CodecError::InvalidSpec { .. })
        ));
        assert!(matches!(
            "gzip:9".parse::<CodecSpec>(),
            Err(CodecError::UnknownCodec(_))
        ));
        assert_eq!(
            "gzip".parse::<CodecSpec>().unwrap_err().to_string(),
            "unknown codec \"gzip\": expected zlib[:0-12], zstd[:1-22], xz[:0-9], lz4, \
             lzo or none"
        );
        let msg = "zlib:13".parse::<CodecSpec>().unwrap_err().to_string();
        assert_eq!(msg, "zlib level 13 is out of range 0..=12");
    }

    #[test]
    fn defaults_lie_in_range() {
        for kind in CodecKind::ALL {
            if let Some(r) = level_range(kind) {
                assert!(r.min <= r.default && r.default <= r.max, "{kind}");
                assert!(CodecSpec::new(kind, r.default).is_ok());
            }
        }
    }
}
