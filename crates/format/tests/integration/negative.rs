//! Hand-made broken images: each violates one rule and must give its own error.

use mkmodule_format::{parse_image, CodecKind, Dialect, FormatError, Header, Trailer, TRAILER_LEN};

/// A header-first image of `dialect` whose index holds `entries` verbatim (n = len - 1), followed
/// by `data_len` bytes of filler.
fn image(dialect: Dialect, block_size: u32, entries: &[u64], data_len: usize) -> Vec<u8> {
    let num_blocks = entries.len() as u32 - 1;
    let mut out = Header {
        block_size,
        num_blocks,
    }
    .encode(dialect)
    .to_vec();
    for e in entries {
        out.extend_from_slice(&e.to_be_bytes());
    }
    out.resize(out.len() + data_len, 0x78);
    out
}

/// Offset of block 0 in a header-first image with `n` blocks.
fn start(n: u64) -> u64 {
    136 + 8 * (n + 1)
}

#[test]
fn a_valid_image_parses() {
    let s = start(2);
    let img = image(Dialect::LinuxV2, 4096, &[s, s + 10, s + 30], 30);
    let parsed = parse_image(&img).unwrap();
    assert_eq!(parsed.index.len(), 2);
    assert_eq!(parsed.index.get(1).unwrap().len, 20);
    assert_eq!(parsed.index.data_end(), s + 30);
}

#[test]
fn truncated_index() {
    let s = start(3);
    let mut img = image(Dialect::LinuxV2, 4096, &[s, s + 10, s + 20, s + 30], 0);
    img.truncate(136 + 20);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::IndexPastEof {
            num_blocks: 3,
            index_bytes: 32,
            available: 20,
            file_len: 156
        })
    );
}

#[test]
fn count_of_four_billion_in_200_bytes() {
    let mut img = Header {
        block_size: 65536,
        num_blocks: u32::MAX,
    }
    .encode(Dialect::LinuxV2)
    .to_vec();
    img.resize(200, 0);
    assert!(matches!(
        parse_image(&img),
        Err(FormatError::IndexPastEof {
            num_blocks: u32::MAX,
            file_len: 200,
            ..
        })
    ));
}

#[test]
fn block_size_1000() {
    let s = start(1);
    let img = image(Dialect::LinuxV2, 1000, &[s, s + 10], 10);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::BlockSizeNotMultiple { block_size: 1000 })
    );
}

#[test]
fn block_size_zero_and_too_large() {
    let s = start(1);
    assert_eq!(
        parse_image(&image(Dialect::LinuxV2, 0, &[s, s + 10], 10)),
        Err(FormatError::BlockSizeZero)
    );
    assert_eq!(
        parse_image(&image(Dialect::LinuxV2, 128 << 20, &[s, s + 10], 10)),
        Err(FormatError::BlockSizeTooLarge {
            block_size: 128 << 20,
            max: 64 << 20
        })
    );
}

#[test]
fn offset_past_eof() {
    let s = start(2);
    let img = image(Dialect::LinuxV2, 4096, &[s, s + 1000, s + 1010], 20);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::OffsetPastEnd {
            block: 1,
            offset: s + 1000,
            limit: s + 20
        })
    );
}

#[test]
fn end_entry_past_eof_means_truncated() {
    let s = start(2);
    let img = image(Dialect::LinuxV2, 4096, &[s, s + 10, s + 50], 20);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::IndexEndPastEof {
            end: s + 50,
            file_len: s + 20
        })
    );
}

#[test]
fn decreasing_offset() {
    let s = start(3);
    let img = image(Dialect::LinuxV2, 4096, &[s, s + 20, s + 10, s + 30], 30);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::DecreasingOffset {
            block: 2,
            offset: s + 10,
            previous: s + 20
        })
    );
}

#[test]
fn end_entry_before_last_block() {
    let s = start(2);
    let img = image(Dialect::LinuxV2, 4096, &[s, s + 20, s + 10], 30);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::IndexEndBeforeLastBlock {
            end: s + 10,
            last_start: s + 20
        })
    );
}

#[test]
fn offset_inside_header() {
    let s = start(1);
    let img = image(Dialect::LinuxV2, 4096, &[100, s + 10], 10);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::OffsetBeforeData {
            block: 0,
            offset: 100,
            data_start: s
        })
    );
}

#[test]
fn block_longer_than_its_codec_allows() {
    let s = start(1);
    let len = 9 << 20;
    let img = image(Dialect::LinuxV2, 65536, &[s, s + len], len as usize);
    match parse_image(&img) {
        Err(FormatError::BlockTooLong {
            block: 0,
            len: l,
            limit,
            codec: CodecKind::Zlib,
            block_size: 65536,
            ..
        }) => {
            assert_eq!(l, len);
            assert!(limit < 70_000, "limit {limit}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn flag_bits_in_v2() {
    let s = start(1);
    let img = image(Dialect::LinuxV2, 4096, &[s | 2 << 60, s + 10], 10);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::FlagBitsSet {
            block: 0,
            entry: s | 2 << 60,
            dialect: Dialect::LinuxV2
        })
    );
}

#[test]
fn reserved_v4_flag() {
    let s = start(1);
    let img = image(Dialect::LinuxV4, 4096, &[s | 7 << 60, s + 10], 10);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::UnknownCodecFlag { block: 0, flag: 7 })
    );
}

#[test]
fn v4_flags_select_codecs() {
    let s = start(3);
    let img = image(
        Dialect::LinuxV4,
        4096,
        &[
            s,
            (s + 10) | (2 << 60),
            (s + 20) | (3 << 60),
            (s + 30) | (5 << 60),
        ],
        30,
    );
    let parsed = parse_image(&img).unwrap();
    let codecs: Vec<_> = parsed.index.blocks().iter().map(|b| b.codec).collect();
    assert_eq!(codecs, [CodecKind::Zlib, CodecKind::Xz, CodecKind::Lz4]);
    // The flags of index[n] are ignored.
    assert_eq!(parsed.index.data_end(), s + 30);
}

#[test]
fn unwritten_vndcompress_entry() {
    let s = start(2);
    let img = image(Dialect::LinuxV2, 4096, &[s, u64::MAX, u64::MAX], 30);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::UnwrittenEntry { entry: 1 })
    );
}

#[test]
fn unfinished_vndcompress_header() {
    // A zero header over entries still holding vndcompress's "unwritten" mark.
    let mut unfinished = [0xffu8; 1024];
    unfinished[..136].fill(0);
    assert_eq!(parse_image(&unfinished), Err(FormatError::UnfinishedHeader));
    // Zeros alone are not taken for vndcompress: they start every ext4 image.
    assert!(matches!(
        parse_image(&[0u8; 1024]),
        Err(FormatError::NotCloop {
            looks_like: Some(mkmodule_format::Content::Zeros),
            ..
        })
    ));
}

#[test]
fn not_cloop_and_too_short() {
    assert!(matches!(
        parse_image(&[b'A'; 4096]),
        Err(FormatError::NotCloop { .. })
    ));
    assert_eq!(
        parse_image(&[0u8; 135]),
        Err(FormatError::TooShort { len: 135, min: 136 })
    );
    assert_eq!(
        parse_image(&[]),
        Err(FormatError::TooShort { len: 0, min: 136 })
    );
}

#[test]
fn zero_length_blocks_read_as_zeros() {
    let s = start(3);
    let img = image(Dialect::UzipZlib, 4096, &[s, s, s + 10, s + 20], 20);
    let parsed = parse_image(&img).unwrap();
    let kinds: Vec<_> = parsed
        .index
        .blocks()
        .iter()
        .map(|b| (b.kind, b.len))
        .collect();
    use mkmodule_format::BlockKind::*;
    assert_eq!(kinds, [(Zero, 0), (Stored, 10), (Stored, 10)]);
}

#[test]
fn back_references_follow_geom_uzip() {
    use mkmodule_format::BlockKind::*;
    let s = start(5);
    // Blocks: A at s (10), B at s+10 (10), back-ref to A, C at s+20 (5), back-ref to B. (mkuzip
    // never refers back to the block written just before: that would read as a zero block.)
    let img = image(
        Dialect::UzipZlibDedup,
        4096,
        &[s, s + 10, s, s + 20, s + 10, s + 25],
        25,
    );
    let parsed = parse_image(&img).unwrap();
    let got: Vec<_> = parsed
        .index
        .blocks()
        .iter()
        .map(|b| (b.offset, b.len, b.kind))
        .collect();
    assert_eq!(
        got,
        [
            (s, 10, Stored),
            (s + 10, 10, Stored),
            (s, 10, Shared { of: 0 }),
            (s + 20, 5, Stored),
            (s + 10, 10, Shared { of: 1 }),
        ]
    );
    // The same index without dedup is a decreasing offset.
    let mut plain = img.clone();
    plain[11] = b'V';
    plain[12] = b'2';
    assert!(matches!(
        parse_image(&plain),
        Err(FormatError::DecreasingOffset { block: 2, .. })
    ));
}

#[test]
fn back_reference_to_nothing() {
    let s = start(3);
    let img = image(
        Dialect::UzipZlibDedup,
        4096,
        &[s, s + 10, s + 3, s + 20],
        20,
    );
    assert_eq!(
        parse_image(&img),
        Err(FormatError::BadBackReference {
            block: 2,
            offset: s + 3
        })
    );
}

#[test]
fn old_uzip_end_entry_zero_means_media_end() {
    let s = start(2);
    let mut img = image(Dialect::UzipZlib, 4096, &[s, s + 10, 0], 20);
    img.resize(512, 0);
    let parsed = parse_image(&img).unwrap();
    assert_eq!(parsed.index.data_end(), 512);
    assert_eq!(parsed.index.get(1).unwrap().len as u64, 512 - (s + 10));
}

#[test]
fn zstd_uzip_end_entry_is_checked() {
    let s = start(1);
    let img = image(Dialect::UzipZstd, 4096, &[s, s + 4000], 20);
    assert_eq!(
        parse_image(&img),
        Err(FormatError::IndexEndPastEof {
            end: s + 4000,
            file_len: s + 20
        })
    );
}

#[test]
fn footer_image_parses_and_block_at_zero_is_refused() {
    // Blocks occupy [1, 21); index at 21; header in the last 136 bytes.
    let mut img = vec![0u8; 21];
    for e in [1u64, 11, 21] {
        img.extend_from_slice(&e.to_be_bytes());
    }
    img.extend_from_slice(
        &Header {
            block_size: 512,
            num_blocks: 2,
        }
        .encode(Dialect::LinuxV4Footer),
    );
    let parsed = parse_image(&img).unwrap();
    assert_eq!(parsed.layout.dialect, Dialect::LinuxV4Footer);
    assert_eq!(parsed.index.data_end(), 21);
    img[21..29].copy_from_slice(&0u64.to_be_bytes());
    assert_eq!(
        parse_image(&img),
        Err(FormatError::OffsetBeforeData {
            block: 0,
            offset: 0,
            data_start: 1
        })
    );
}

#[test]
fn trailer_is_found_and_corruption_named() {
    let s = start(1);
    let mut img = image(Dialect::LinuxV2, 4096, &[s, s + 10], 10);
    let end = s + 10;
    img.resize((end + Trailer::padding_before(end)) as usize, 0);
    let trailer = Trailer {
        original_len: 3000,
        digest_algorithm: mkmodule_format::DigestAlgorithm::None,
        digest: vec![],
        data_end: end,
        tool: "mkmodule test".into(),
        extension: Default::default(),
    };
    img.extend_from_slice(&trailer.encode());
    assert_eq!(img.len() % 512, 0);
    assert_eq!(parse_image(&img).unwrap().trailer, Some(trailer));
    let at = img.len() - TRAILER_LEN + 40;
    img[at] ^= 0xff;
    assert!(matches!(
        parse_image(&img),
        Err(FormatError::TrailerCorrupt { .. })
    ));
}
