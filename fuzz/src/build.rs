//! A small, deterministic writer of cloop-family images in every dialect, for fuzz seeds and for
//! the `read_mutated` target (which builds a valid image, then damages it).
//!
//! It depends only on `mkmodule-format` and `mkmodule-codec`, so `cargo xtask fuzz-seeds` shares
//! it (`#[path]`) without pulling in the fuzz crate.

use std::collections::HashMap;

use mkmodule_codec::{BlockCompressor, CodecKind, CodecSpec};
use mkmodule_format::{
    encode_index, is_header_first, Dialect, DigestAlgorithm, Header, IndexEntry, Trailer,
};

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

/// The fastest level of `codec`, so that building an image per fuzz input stays cheap.
fn fast_spec(codec: CodecKind) -> CodecSpec {
    match codec {
        CodecKind::Zlib | CodecKind::Zstd | CodecKind::Lzo => {
            CodecSpec::new(codec, 1).unwrap_or(CodecSpec::with_default_level(codec))
        }
        CodecKind::Xz => CodecSpec::new(codec, 0).unwrap_or(CodecSpec::with_default_level(codec)),
        _ => CodecSpec::with_default_level(codec),
    }
}

/// Writes `data` as an image of `spec`. Returns `None` only when a codec refuses a block
/// (which no valid input should cause).
pub fn build_image(data: &[u8], spec: &ImageSpec) -> Option<Vec<u8>> {
    let dialect = spec.dialect;
    let quirks = dialect.spec();
    let bs = spec.block_size as usize;
    let mut blocks: Vec<Vec<u8>> = data.chunks(bs).map(<[u8]>::to_vec).collect();
    if spec.pad_final || !quirks.short_final_block {
        if let Some(last) = blocks.last_mut() {
            last.resize(bs, 0);
        }
    }
    let n = blocks.len();
    let mut compressors: HashMap<CodecKind, BlockCompressor> = HashMap::new();
    let mut payloads: Vec<(CodecKind, Option<Vec<u8>>)> = Vec::with_capacity(n);
    for (i, block) in blocks.iter().enumerate() {
        let wanted = spec.codecs[i % spec.codecs.len().max(1)];
        let codec = if dialect.allows_codec(wanted) {
            wanted
        } else {
            dialect.default_codec()
        };
        if spec.zero_length && quirks.zero_length_blocks && block.iter().all(|&b| b == 0) {
            payloads.push((codec, None));
            continue;
        }
        let compressor = match compressors.entry(codec) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(BlockCompressor::new(fast_spec(codec)).ok()?)
            }
        };
        let mut out = Vec::new();
        compressor.compress(block, &mut out).ok()?;
        payloads.push((codec, Some(out)));
    }

    let footer = !is_header_first(dialect);
    let data_start = if footer {
        128
    } else {
        136 + 8 * (n as u64 + 1)
    };
    let mut body = Vec::new();
    let mut entries = Vec::with_capacity(n);
    let mut seen: HashMap<(CodecKind, Vec<u8>), u64> = HashMap::new();
    let mut last_normal: Option<u64> = None;
    for (codec, payload) in payloads {
        let here = data_start + body.len() as u64;
        let offset = match payload {
            None => here,
            Some(bytes) => {
                let key = (codec, bytes);
                match seen.get(&key) {
                    Some(&earlier)
                        if spec.dedup && quirks.back_references && Some(earlier) != last_normal =>
                    {
                        earlier
                    }
                    _ => {
                        body.extend_from_slice(&key.1);
                        seen.entry(key).or_insert(here);
                        last_normal = Some(here);
                        here
                    }
                }
            }
        };
        entries.push(IndexEntry { offset, codec });
    }
    let data_end = data_start + body.len() as u64;
    let header = Header {
        block_size: spec.block_size,
        num_blocks: n as u32,
    };
    let index = encode_index(dialect, header, &entries, data_end).ok()?;

    let mut image = Vec::with_capacity(data_end as usize + 512);
    if footer {
        image.extend_from_slice(&Dialect::footer_lead_in());
        image.extend_from_slice(&body);
        image.extend_from_slice(&index);
        image.extend_from_slice(&header.encode(dialect));
    } else {
        image.extend_from_slice(&header.encode(dialect));
        image.extend_from_slice(&index);
        image.extend_from_slice(&body);
        if spec.trailer {
            let trailer = Trailer {
                original_len: data.len() as u64,
                digest_algorithm: DigestAlgorithm::None,
                digest: Vec::new(),
                data_end,
                tool: "mkmodule fuzz".into(),
            };
            image.resize(image.len() + Trailer::padding_before(data_end) as usize, 0);
            image.extend_from_slice(&trailer.encode());
        } else if quirks.zero_length_blocks {
            // mkuzip pads its images to 512 bytes.
            image.resize(image.len().div_ceil(512) * 512, 0);
        }
    }
    Some(image)
}

/// What an image of `data` written by [`build_image`] reads back as: every block, the final one
/// zero-filled to the block size.
pub fn expected_device(data: &[u8], block_size: u32) -> Vec<u8> {
    let bs = block_size as usize;
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(bs) * bs, 0);
    out
}
