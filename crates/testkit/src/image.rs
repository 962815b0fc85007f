//! Builds cloop-family images in memory, in every dialect and with every quirk other writers
//! have (docs/FORMAT.md §5), for tests, fuzz seeds and benchmarks.
//!
//! The layout rules come from the format crate (header encoding, preamble or footer lead-in,
//! index entry encoding, trailer) and the blocks from the codec crate; this module only decides
//! what goes where. Malformed images are made from a valid one: [`Built::set_index_word`]
//! overwrites an index entry with any raw value, and `Built::image` is plain bytes to damage.

use std::collections::HashMap;

use mkmodule_codec::{BlockCompressor, BlockDecompressor, CodecKind, CodecSpec};
use mkmodule_format::{
    encode_index, header_first_data_start, is_header_first, parse_image, BlockIndex, BlockKind,
    Dialect, DigestAlgorithm, Header, IndexEntry, ParsedImage, Trailer, ENTRY_LEN, HEADER_LEN,
    PREAMBLE_LEN,
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
    /// Compress at each codec's fastest level instead of its default one (cheap fuzz inputs).
    pub fastest_levels: bool,
    /// Zero-pad the final block before compressing it (Linux writers); else it is short.
    pub pad_final: bool,
    /// Write all-zero blocks as zero-length entries (mkuzip).
    pub zero_length: bool,
    /// Identical compressed blocks become back-references (mkuzip -d).
    pub dedup: bool,
    /// Append mkmodule's trailer (original length and a digest of the input).
    pub trailer: bool,
    /// The trailer's digest of the input.
    pub trailer_digest: DigestAlgorithm,
    /// The trailer's tool name.
    pub trailer_tool: &'static str,
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
            fastest_levels: false,
            pad_final: !quirks.short_final_block,
            zero_length: quirks.zero_length_blocks,
            dedup: quirks.back_references,
            trailer: false,
            trailer_digest: DigestAlgorithm::Sha256,
            trailer_tool: "mkmodule tests",
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

    /// The same spec with only what the dialect can carry: codecs it does not allow become its
    /// default codec, a final block it cannot leave short is padded, and zero-length blocks and
    /// back-references are dropped where it has none.
    pub fn within_dialect(mut self) -> Spec {
        let dialect = self.dialect;
        let quirks = dialect.spec();
        for codec in &mut self.codecs {
            if !dialect.allows_codec(*codec) {
                *codec = dialect.default_codec();
            }
        }
        self.pad_final |= !quirks.short_final_block;
        self.zero_length &= quirks.zero_length_blocks;
        self.dedup &= quirks.back_references;
        self.trailer &= is_header_first(dialect);
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
    /// The dialect written.
    pub dialect: Dialect,
}

impl Built {
    /// The parsed index of the image (for offsets in assertions).
    pub fn index(&self) -> BlockIndex {
        mkmodule_format::parse_image(&self.image)
            .expect("built image parses")
            .index
    }

    /// File offset of index entry `i` (entry `num_blocks` is the end of the data).
    pub fn index_word_offset(&self, i: u32) -> usize {
        let index_len = (u64::from(self.num_blocks) + 1) * ENTRY_LEN;
        let start = if is_header_first(self.dialect) {
            HEADER_LEN
        } else {
            self.image.len() as u64 - HEADER_LEN - index_len
        };
        (start + u64::from(i) * ENTRY_LEN) as usize
    }

    /// Overwrites index entry `i` with the raw big-endian `word` (to make a malformed image).
    pub fn set_index_word(&mut self, i: u32, word: u64) {
        let at = self.index_word_offset(i);
        self.image[at..at + 8].copy_from_slice(&word.to_be_bytes());
    }
}

/// Builds an image of `data` as `spec` says; panics if a codec or the index encoder refuses.
pub fn build(data: &[u8], spec: &Spec) -> Built {
    try_build(data, spec).expect("the codecs and the index encoder accept the test image")
}

/// Builds an image of `data` as `spec` says; `None` when a codec refuses a block or the index
/// cannot be encoded (which no valid spec should cause).
pub fn try_build(data: &[u8], spec: &Spec) -> Option<Built> {
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

    let payloads = compress_blocks(&blocks, spec)?;
    let footer = !is_header_first(spec.dialect);
    let data_start = if footer {
        PREAMBLE_LEN as u64
    } else {
        header_first_data_start(n as u32)
    };
    let (body, entries) = place_blocks(payloads, data_start, spec);
    let data_end = data_start + body.len() as u64;
    let header = Header {
        block_size: spec.block_size,
        num_blocks: n as u32,
    };
    let end_entry = if spec.end_zero { 0 } else { data_end };
    let index = encode_index(spec.dialect, header, &entries, end_entry).ok()?;

    let mut image = Vec::with_capacity(data_end as usize + 512);
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
            let digest = match spec.trailer_digest {
                DigestAlgorithm::Sha256 => Sha256::digest(data).to_vec(),
                _ => Vec::new(),
            };
            let trailer = Trailer {
                original_len: data.len() as u64,
                digest_algorithm: spec.trailer_digest,
                digest,
                data_end,
                tool: spec.trailer_tool.into(),
                extension: Default::default(),
            };
            image.resize(image.len() + Trailer::padding_before(data_end) as usize, 0);
            image.extend_from_slice(&trailer.encode());
        } else if spec.align > 1 {
            image.resize(image.len().div_ceil(spec.align) * spec.align, 0);
        }
    }
    Some(Built {
        image,
        expected,
        original_len: data.len() as u64,
        num_blocks: n as u32,
        dialect: spec.dialect,
    })
}

/// Each block's codec and compressed bytes (`None`: a zero-length block).
fn compress_blocks(blocks: &[Vec<u8>], spec: &Spec) -> Option<Vec<(CodecKind, Option<Vec<u8>>)>> {
    let mut compressors: HashMap<CodecKind, BlockCompressor> = HashMap::new();
    let mut payloads = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let codec = spec.codecs[i % spec.codecs.len()];
        if spec.zero_length && block.iter().all(|&b| b == 0) {
            payloads.push((codec, None));
            continue;
        }
        let compressor = match compressors.entry(codec) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let level = if spec.fastest_levels {
                    fastest_level(codec)
                } else {
                    CodecSpec::with_default_level(codec)
                };
                v.insert(BlockCompressor::new(level).ok()?)
            }
        };
        let mut out = Vec::new();
        compressor.compress(block, &mut out).ok()?;
        payloads.push((codec, Some(out)));
    }
    Some(payloads)
}

/// Lays the compressed blocks out from `data_start`: the body and one index entry per block,
/// with back-references (dedup) and slack where the spec asks for them.
fn place_blocks(
    payloads: Vec<(CodecKind, Option<Vec<u8>>)>,
    data_start: u64,
    spec: &Spec,
) -> (Vec<u8>, Vec<IndexEntry>) {
    let mut body = Vec::new();
    let mut entries = Vec::with_capacity(payloads.len());
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
    (body, entries)
}

/// The fastest level of `codec`.
fn fastest_level(codec: CodecKind) -> CodecSpec {
    let level = match codec {
        CodecKind::Zlib | CodecKind::Zstd => 1,
        CodecKind::Xz => 0,
        _ => return CodecSpec::with_default_level(codec),
    };
    CodecSpec::new(codec, level).unwrap_or(CodecSpec::with_default_level(codec))
}

/// What an image of `data` without an extra zero block reads back as: every block, the final
/// one zero-filled to the block size.
pub fn expected_device(data: &[u8], block_size: u32) -> Vec<u8> {
    let bs = block_size as usize;
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(bs) * bs, 0);
    out
}

/// Decodes an image with the format and codec crates only (not the reader) to its device bytes
/// (n × block size; short final blocks zero-filled), checking that each block decodes to the
/// block size where the dialect requires it.
pub fn decode(image: &[u8]) -> (ParsedImage, Vec<u8>) {
    let parsed = parse_image(image).expect("the image parses");
    let bs = parsed.index.block_size() as usize;
    let n = parsed.index.len();
    let short_ok = parsed.layout.dialect.spec().short_final_block;
    let mut dec = BlockDecompressor::new();
    let mut out = vec![0u8; n * bs];
    for (i, entry) in parsed.index.blocks().iter().enumerate() {
        if entry.kind == BlockKind::Zero {
            continue;
        }
        let dst = &mut out[i * bs..(i + 1) * bs];
        let src = &image[entry.offset as usize..entry.end() as usize];
        let got = dec
            .decompress(entry.codec, src, dst)
            .unwrap_or_else(|e| panic!("block {i}: {e}"));
        // zstd may use the unused end of the buffer as scratch: zero what the block left.
        dst[got..].fill(0);
        if !(short_ok && i + 1 == n) {
            assert_eq!(got, bs, "block {i} decodes to {got} bytes, not {bs}");
        }
    }
    (parsed, out)
}
