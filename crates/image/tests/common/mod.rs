//! Test support: builds cloop-family images by hand in every dialect and with every quirk other
//! tools write (docs/FORMAT.md §5), and reads the reference fixtures' manifest.
//!
//! Also included by the `mkmodule` CLI tests (`crates/mkmodule/tests/common_read`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use mkmodule_codec::{BlockCompressor, CodecKind, CodecSpec};
use mkmodule_format::{
    encode_index, BlockIndex, Dialect, DigestAlgorithm, Header, HeaderPosition, IndexEntry, Trailer,
};
use sha2::{Digest, Sha256};

/// How to build an image.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The dialect written.
    pub dialect: Dialect,
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// Codec of block `i` is `codecs[i % codecs.len()]`.
    pub codecs: Vec<CodecKind>,
    /// Zero-pad the final block before compressing it (Linux writers); else it is short.
    pub pad_final: bool,
    /// Write all-zero blocks as zero-length entries (mkuzip).
    pub zero_length: bool,
    /// Identical compressed blocks become back-references (mkuzip -d).
    pub dedup: bool,
    /// Append mkmodule's trailer (original length and SHA-256).
    pub trailer: bool,
    /// Zero-pad the file to a multiple of this many bytes (1: none).
    pub align: usize,
    /// Write `index[n]` as 0 (old mkuzip when the data ends on a 512-byte boundary).
    pub end_zero: bool,
    /// Append an all-zero block when the input fills its last block (Knoppix classic).
    pub extra_zero_block: bool,
    /// Junk bytes appended after each stream inside its block's range.
    pub slack: usize,
}

impl Spec {
    /// What a writer of `dialect` typically produces, at `block_size`.
    pub fn new(dialect: Dialect, block_size: u32) -> Spec {
        let quirks = dialect.spec();
        Spec {
            dialect,
            block_size,
            codecs: vec![dialect.default_codec()],
            pad_final: !quirks.short_final_block,
            zero_length: quirks.zero_length_blocks,
            dedup: quirks.back_references,
            trailer: false,
            align: if quirks.zero_length_blocks { 512 } else { 1 },
            end_zero: false,
            extra_zero_block: false,
            slack: 0,
        }
    }

    /// The same spec with other codecs.
    pub fn codecs(mut self, codecs: &[CodecKind]) -> Spec {
        self.codecs = codecs.to_vec();
        self
    }
}

/// A built image and what it must read back as.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image file's bytes.
    pub image: Vec<u8>,
    /// The exposed device: every block, the final one zero-filled, `n × bs` bytes.
    pub expected: Vec<u8>,
    /// The input length.
    pub original_len: u64,
    /// Number of blocks.
    pub num_blocks: u32,
}

impl Built {
    /// The parsed index of the image (for offsets in assertions).
    pub fn index(&self) -> BlockIndex {
        mkmodule_format::parse_image(&self.image)
            .expect("built image parses")
            .index
    }
}

/// Builds an image of `data` as `spec` says.
pub fn build(data: &[u8], spec: &Spec) -> Built {
    let bs = spec.block_size as usize;
    let mut blocks: Vec<Vec<u8>> = data.chunks(bs).map(<[u8]>::to_vec).collect();
    if spec.pad_final {
        if let Some(last) = blocks.last_mut() {
            last.resize(bs, 0);
        }
    }
    if spec.extra_zero_block && data.len() % bs == 0 {
        blocks.push(vec![0; bs]);
    }
    let n = blocks.len();
    let mut expected = Vec::with_capacity(n * bs);
    for block in &blocks {
        expected.extend_from_slice(block);
        expected.resize(expected.len().div_ceil(bs) * bs, 0);
    }

    let mut compressors: HashMap<CodecKind, BlockCompressor> = HashMap::new();
    let payloads: Vec<(CodecKind, Option<Vec<u8>>)> = blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let codec = spec.codecs[i % spec.codecs.len()];
            if spec.zero_length && block.iter().all(|&b| b == 0) {
                return (codec, None);
            }
            let compressor = compressors.entry(codec).or_insert_with(|| {
                BlockCompressor::new(CodecSpec::with_default_level(codec)).unwrap()
            });
            let mut out = Vec::new();
            compressor.compress(block, &mut out).unwrap();
            (codec, Some(out))
        })
        .collect();

    let footer = spec.dialect.spec().header_position == HeaderPosition::End;
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
                    Some(&earlier) if spec.dedup && Some(earlier) != last_normal => earlier,
                    _ => {
                        body.extend_from_slice(&key.1);
                        // Only self-delimiting streams may carry slack after their end.
                        if matches!(codec, CodecKind::Zlib | CodecKind::Zstd | CodecKind::Xz) {
                            body.extend(std::iter::repeat_n(0xA5u8, spec.slack));
                        }
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
    let end_entry = if spec.end_zero { 0 } else { data_end };
    let index = encode_index(spec.dialect, header, &entries, end_entry).unwrap();

    let mut image = Vec::new();
    if footer {
        image.extend_from_slice(&Dialect::footer_lead_in());
        image.extend_from_slice(&body);
        image.extend_from_slice(&index);
        image.extend_from_slice(&header.encode(spec.dialect));
    } else {
        image.extend_from_slice(&header.encode(spec.dialect));
        image.extend_from_slice(&index);
        image.extend_from_slice(&body);
        if spec.trailer {
            let trailer = Trailer {
                original_len: data.len() as u64,
                digest_algorithm: DigestAlgorithm::Sha256,
                digest: Sha256::digest(data).to_vec(),
                data_end,
                tool: "mkmodule tests".into(),
            };
            image.resize(image.len() + Trailer::padding_before(data_end) as usize, 0);
            image.extend_from_slice(&trailer.encode());
        } else if spec.align > 1 {
            image.resize(image.len().div_ceil(spec.align) * spec.align, 0);
        }
    }
    Built {
        image,
        expected,
        original_len: data.len() as u64,
        num_blocks: n as u32,
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Numbered text lines, compressible.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = seed;
    while out.len() < len {
        out.extend_from_slice(
            format!("{line:08} the quick brown fox jumps over the lazy cloop\n").as_bytes(),
        );
        line += 1;
    }
    out.truncate(len);
    out
}

/// Input of `blocks` blocks of `bs` bytes mixing what real images hold, block by block: zeros,
/// text, random bytes, copies of block 1 (dedup candidates), 0xFF fill; minus `short_by` bytes at
/// the end (a partial final block).
pub fn sample(blocks: usize, bs: usize, short_by: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * bs);
    for i in 0..blocks {
        let block = match i % 7 {
            0 | 3 => vec![0u8; bs],
            1 | 4 => text(bs, 1),
            2 => random(bs, i as u64),
            5 => vec![0xFF; bs],
            _ => {
                let mut t = text(bs, i as u64 * 1000);
                for (k, r) in random(16, i as u64).into_iter().enumerate() {
                    let at = (usize::from(r) * 131 + k * 977) % bs;
                    t[at] = r;
                }
                t
            }
        };
        out.extend_from_slice(&block);
    }
    out.truncate(out.len().saturating_sub(short_by));
    out
}

/// SHA-256 bytes.
pub fn sha256_bytes(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// SHA-256 in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The reference fixtures directory (`testdata/cloop-utils`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/cloop-utils")
}

/// One fixture as the manifest describes it.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Path of the image.
    pub path: PathBuf,
    /// File name.
    pub name: String,
    /// Block size.
    pub block_size: u32,
    /// Block count.
    pub num_blocks: u32,
    /// Input length.
    pub input_len: u64,
    /// Length of the decoded device (n × bs).
    pub raw_len: u64,
    /// SHA-256 of the decoded device.
    pub raw_sha256: String,
}

/// Every fixture in the manifest.
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest parses");
    let list = manifest.as_array().expect("manifest is a list");
    assert!(list.len() >= 10, "expected the ten reference fixtures");
    list.iter()
        .map(|entry| {
            let name = entry["name"].as_str().unwrap().to_string();
            Fixture {
                path: dir.join(&name),
                name,
                block_size: entry["block_size"].as_u64().unwrap() as u32,
                num_blocks: entry["num_blocks"].as_u64().unwrap() as u32,
                input_len: entry["input_len"].as_u64().unwrap(),
                raw_len: entry["raw_len"].as_u64().unwrap(),
                raw_sha256: entry["raw_sha256"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}
