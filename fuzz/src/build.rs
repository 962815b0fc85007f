//! Small, deterministic images in every dialect, for fuzz seeds and for the `read_mutated` target
//! (which builds a valid image, then damages it): the fuzz inputs' view of the testkit's image
//! builder.
//!
//! It depends only on `mkmodule-format`, `mkmodule-codec` and `mkmodule-testkit`, so
//! `cargo xtask fuzz-seeds` shares it (`#[path]`) without pulling in the fuzz crate.

use mkmodule_codec::CodecKind;
use mkmodule_format::{Dialect, DigestAlgorithm};
use mkmodule_testkit::image::{try_build, Spec};

/// How to write an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The dialect written.
    pub dialect: Dialect,
    /// Uncompressed bytes per block (a multiple of 512).
    pub block_size: u32,
    /// Block `i` uses `codecs[i % codecs.len()]`, replaced by the dialect's default codec where
    /// the dialect does not allow it.
    pub codecs: Vec<CodecKind>,
    /// Zero-pad the final block to the block size before compressing it (Linux writers).
    pub pad_final: bool,
    /// All-zero blocks become zero-length entries (uzip dialects only).
    pub zero_length: bool,
    /// Identical compressed blocks become back-references (uzip dedup dialects only).
    pub dedup: bool,
    /// Append mkmodule's trailer (header-first dialects only; no digest).
    pub trailer: bool,
}

impl ImageSpec {
    /// What a writer of `dialect` typically produces.
    pub fn new(dialect: Dialect, block_size: u32) -> ImageSpec {
        let quirks = dialect.spec();
        ImageSpec {
            dialect,
            block_size,
            codecs: vec![dialect.default_codec()],
            pad_final: !quirks.short_final_block,
            zero_length: quirks.zero_length_blocks,
            dedup: quirks.back_references,
            trailer: false,
        }
    }
}

/// Writes `data` as an image of `spec` with the testkit's builder, within what the dialect
/// can carry, at the fastest codec levels. Returns `None` only when a codec refuses a block
/// (which no valid input should cause).
pub fn build_image(data: &[u8], spec: &ImageSpec) -> Option<Vec<u8>> {
    let mut testkit_spec = Spec::new(spec.dialect, spec.block_size);
    testkit_spec.codecs = spec.codecs.clone();
    testkit_spec.fastest_levels = true;
    testkit_spec.pad_final = spec.pad_final;
    testkit_spec.zero_length = spec.zero_length;
    testkit_spec.dedup = spec.dedup;
    testkit_spec.trailer = spec.trailer;
    testkit_spec.trailer_digest = DigestAlgorithm::None;
    testkit_spec.trailer_tool = "mkmodule fuzz";
    try_build(data, &testkit_spec.within_dialect()).map(|built| built.image)
}

/// What an image of `data` written by [`build_image`] reads back as: every block, the final one
/// zero-filled to the block size.
pub fn expected_device(data: &[u8], block_size: u32) -> Vec<u8> {
    mkmodule_testkit::image::expected_device(data, block_size)
}
