//! Which dialect mkmodule writes for a request, derived from the write columns of the dialect
//! table (`writing` and `family` in `dialect.rs`): the written dialects in order of
//! compatibility, the codecs each one takes, and the picks of `--format auto` and
//! `--format uzip`.

use crate::dialect::{WriteRules, Writing};
use crate::{CodecKind, Dialect, Family};

impl Dialect {
    /// The dialects mkmodule writes, most compatible first (dedup variants come from
    /// [`Dialect::with_dedup`]). Choices that look for "the first dialect that can" search this
    /// list in order, and hints naming the formats that take a codec list them in this order.
    pub const WRITTEN: [Dialect; 6] = [
        Dialect::LinuxV2,
        Dialect::LinuxV4,
        Dialect::LinuxV4Footer,
        Dialect::UzipZlib,
        Dialect::UzipXz,
        Dialect::UzipZstd,
    ];

    /// The write rules, or `None` when mkmodule only reads this dialect.
    pub const fn write_rules(self) -> Option<&'static WriteRules> {
        match &self.spec().writing {
            Writing::Written(rules) => Some(rules),
            Writing::ReadOnly { .. } => None,
        }
    }

    /// Whether mkmodule writes this dialect.
    pub const fn is_written(self) -> bool {
        self.write_rules().is_some()
    }

    /// Codecs mkmodule writes in this dialect, the default first (empty when it is not written).
    pub const fn written_codecs(self) -> &'static [CodecKind] {
        match self.write_rules() {
            Some(rules) => rules.codecs,
            None => &[],
        }
    }

    /// Whether mkmodule writes blocks of `codec` in this dialect.
    pub fn writes_codec(self, codec: CodecKind) -> bool {
        self.written_codecs().contains(&codec)
    }

    /// The dialect `--format auto` picks for `codec`: the first of [`Dialect::WRITTEN`] that
    /// `auto` may pick and that writes the codec (and, when `uzip_features` asks for
    /// zero-length blocks or dedup, has zero-length blocks; failing that, the first without
    /// them, whose refusal then names the feature). `None` (`best`) stands for zlib, the codec
    /// of the most compatible dialect. `None` comes back when no dialect writes the codec.
    pub fn auto_for(codec: Option<CodecKind>, uzip_features: bool) -> Option<Dialect> {
        let codec = codec.unwrap_or(CodecKind::Zlib);
        let candidates = || {
            Dialect::WRITTEN.into_iter().filter(move |d| {
                d.write_rules().is_some_and(|rules| rules.auto) && d.writes_codec(codec)
            })
        };
        let with_features = candidates().find(|d| d.spec().zero_length_blocks);
        match with_features {
            Some(dialect) if uzip_features => Some(dialect),
            _ => candidates().next(),
        }
    }

    /// The dialect of `family` that `--format uzip` (or another family name) picks for `codec`:
    /// the first of [`Dialect::WRITTEN`] in the family that writes the codec, else the family's
    /// first written dialect (whose refusal of the codec then names what would work). `None`
    /// (`best`) stands for zlib.
    pub fn family_member_for(family: Family, codec: Option<CodecKind>) -> Option<Dialect> {
        let codec = codec.unwrap_or(CodecKind::Zlib);
        let mut members = Dialect::WRITTEN
            .into_iter()
            .filter(|d| d.spec().family == family);
        let first = members.clone().next();
        members.find(|d| d.writes_codec(codec)).or(first)
    }

    /// The written dialect to use when this one is asked for: itself when mkmodule writes it,
    /// otherwise the one its row names.
    pub const fn written_instead(self) -> Dialect {
        match self.spec().writing {
            Writing::Written(_) => self,
            Writing::ReadOnly { instead } => instead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lists_every_written_dialect_without_back_references() {
        let from_rows: Vec<Dialect> = Dialect::ALL
            .into_iter()
            .filter(|d| d.is_written() && !d.spec().back_references)
            .collect();
        assert_eq!(from_rows.len(), Dialect::WRITTEN.len());
        for dialect in from_rows {
            assert!(Dialect::WRITTEN.contains(&dialect), "{dialect}");
        }
    }

    #[test]
    fn written_codecs_are_allowed_and_never_none_or_lzo() {
        for dialect in Dialect::ALL {
            for &codec in dialect.written_codecs() {
                assert!(dialect.allows_codec(codec), "{dialect} {codec}");
                assert!(!matches!(codec, CodecKind::None | CodecKind::Lzo));
            }
            if dialect.is_written() {
                assert!(!dialect.written_codecs().is_empty(), "{dialect}");
                assert_eq!(dialect.written_codecs()[0], dialect.default_codec());
            }
        }
        assert_eq!(
            Dialect::LinuxV4.written_codecs(),
            &[CodecKind::Zlib, CodecKind::Xz, CodecKind::Lz4]
        );
    }

    #[test]
    fn dedup_variants_are_written_when_their_base_is() {
        for dialect in Dialect::ALL {
            if let Some(dedup) = dialect.with_dedup() {
                assert!(dedup.is_written(), "{dedup}");
                assert_eq!(dedup.written_codecs(), dialect.written_codecs());
                assert_eq!(dedup.with_dedup(), Some(dedup));
            }
        }
    }

    #[test]
    fn read_only_dialects_name_a_written_one() {
        assert!(!Dialect::LinuxV2Footer.is_written());
        assert_eq!(
            Dialect::LinuxV2Footer.written_instead(),
            Dialect::LinuxV4Footer
        );
        for dialect in Dialect::ALL {
            assert!(dialect.written_instead().is_written(), "{dialect}");
        }
    }

    #[test]
    fn auto_picks_the_most_compatible_dialect() {
        use CodecKind::{Lz4, Xz, Zlib, Zstd};
        let cases = [
            (Some(Zlib), false, Some(Dialect::LinuxV2)),
            (None, false, Some(Dialect::LinuxV2)),
            (Some(Xz), false, Some(Dialect::LinuxV4)),
            (Some(Lz4), false, Some(Dialect::LinuxV4)),
            (Some(Zstd), false, Some(Dialect::UzipZstd)),
            (Some(Zlib), true, Some(Dialect::UzipZlib)),
            (None, true, Some(Dialect::UzipZlib)),
            (Some(Xz), true, Some(Dialect::UzipXz)),
            (Some(Zstd), true, Some(Dialect::UzipZstd)),
            // No uzip dialect writes lz4: v4, which then refuses the feature.
            (Some(Lz4), true, Some(Dialect::LinuxV4)),
            (Some(CodecKind::Lzo), false, None),
        ];
        for (codec, features, want) in cases {
            assert_eq!(
                Dialect::auto_for(codec, features),
                want,
                "{codec:?} {features}"
            );
        }
    }

    #[test]
    fn uzip_picks_the_codecs_signature() {
        use CodecKind::{Lz4, Xz, Zlib, Zstd};
        let cases = [
            (Some(Zlib), Dialect::UzipZlib),
            (None, Dialect::UzipZlib),
            (Some(Xz), Dialect::UzipXz),
            (Some(Zstd), Dialect::UzipZstd),
            (Some(Lz4), Dialect::UzipZlib),
        ];
        for (codec, want) in cases {
            assert_eq!(
                Dialect::family_member_for(Family::FreeBsdUzip, codec),
                Some(want),
                "{codec:?}"
            );
        }
        assert_eq!(
            Dialect::family_member_for(Family::LinuxCloop, Some(Xz)),
            Some(Dialect::LinuxV4)
        );
    }
}
