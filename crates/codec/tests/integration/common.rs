//! Shared test data and codec lists.
#![allow(dead_code)]

use mkmodule_codec::{BlockCompressor, BlockDecompressor, CodecKind, CodecSpec};

/// Every codec this build supports, at its default level.
pub fn default_specs() -> Vec<CodecSpec> {
    CodecKind::ALL
        .into_iter()
        .filter(|k| cfg!(feature = "lzo") || *k != CodecKind::Lzo)
        .map(CodecSpec::with_default_level)
        .collect()
}

/// Default specs plus the extreme levels of every codec that has levels.
pub fn level_specs() -> Vec<CodecSpec> {
    let mut specs = default_specs();
    for text in [
        "zlib:0", "zlib:1", "zlib:12", "zstd:1", "zstd:19", "zstd:22", "xz:0", "xz:9",
    ] {
        specs.push(text.parse().unwrap());
    }
    specs
}

pub use mkmodule_testkit::data::random;

/// Compressible text-like bytes with some variation.
pub fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "line {i}: the quick brown fox jumps over the lazy dog {}\n",
                i * i % 97
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Compress `data` with `spec` into a fresh buffer.
pub fn compress(spec: CodecSpec, data: &[u8]) -> Vec<u8> {
    let mut c = BlockCompressor::new(spec).unwrap();
    let mut out = Vec::new();
    c.compress(data, &mut out).unwrap();
    out
}

/// Decompress `block` of `kind` into a buffer of `len` bytes and check it is exactly `len` long.
pub fn decompress(kind: CodecKind, block: &[u8], len: usize) -> Vec<u8> {
    let mut d = BlockDecompressor::new();
    let mut out = vec![0u8; len];
    d.decompress_exact(kind, block, &mut out).unwrap();
    out
}
