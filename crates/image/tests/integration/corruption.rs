//! Damaged and hostile images: every case gives an error that names what is wrong (the block and
//! its file offset where one block is at fault), and nothing panics.

use crate::common;

use std::io::Write;

use common::{build, fixtures, random, sample, Built, Spec};
use mkmodule_codec::{BlockCompressor, CodecKind, CodecSpec};
use mkmodule_format::{
    encode_index, Dialect, DigestAlgorithm, FormatError, Header, IndexEntry, Trailer,
};
use mkmodule_image::{ExposedSize, Image, ImageError, OpenOptions};

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    file
}

fn open_bytes(bytes: &[u8]) -> Result<Image, ImageError> {
    let file = write_temp(bytes);
    let options = OpenOptions {
        readahead: 0,
        ..OpenOptions::default()
    };
    Image::open_with(file.path(), &options)
}

fn format_error(bytes: &[u8]) -> FormatError {
    match open_bytes(bytes) {
        Err(ImageError::Format(e)) => e,
        Err(other) => panic!("expected a format error, got {other}"),
        Ok(_) => panic!("expected a format error, the image opened"),
    }
}

/// Flips one bit in the middle of every block in turn; reading that block must fail naming the
/// block and its offset, and every other block must still read correctly.
fn flip_each_block(label: &str, built: &Built) {
    let index = built.index();
    let bs = index.block_size() as usize;
    for (i, entry) in index.blocks().iter().enumerate() {
        if entry.len == 0 || !matches!(entry.kind, mkmodule_format::BlockKind::Stored) {
            continue;
        }
        let mut bytes = built.image.clone();
        let at = (entry.offset + u64::from(entry.len) / 2) as usize;
        bytes[at] ^= 0x10;
        let file = write_temp(&bytes);
        let options = OpenOptions {
            readahead: 0,
            scan_zero_blocks: false,
            ..OpenOptions::default()
        };
        let image = Image::open_with(file.path(), &options).unwrap();
        let error = image
            .block(i as u32)
            .expect_err(&format!("{label}: flipped block {i} decoded"));
        assert_eq!(error.block(), Some(i as u32), "{label}: {error}");
        assert_eq!(error.offset(), Some(entry.offset), "{label}: {error}");
        assert!(error.is_damage(), "{label}: {error}");
        let message = error.to_string();
        assert!(
            message.contains(&format!("block {i} at offset {}", entry.offset)),
            "{label}: {message}"
        );
        let mut buf = vec![0u8; bs];
        let err = image.read_at(&mut buf, (i * bs) as u64).unwrap_err();
        assert_eq!(err.block(), Some(i as u32));
        // Blocks sharing no bytes with the damaged one are unaffected.
        for (j, other) in index.blocks().iter().enumerate() {
            if other.offset != entry.offset {
                let block = image.block(j as u32).unwrap();
                assert!(
                    *block == built.expected[j * bs..(j + 1) * bs],
                    "{label}: block {j}"
                );
            }
        }
    }
}

#[test]
fn bit_flips_are_caught_by_every_checked_codec() {
    let bs = 4096;
    let data = sample(12, bs, 300);
    for (dialect, codecs) in [
        (Dialect::LinuxV2, vec![CodecKind::Zlib]),
        (Dialect::UzipZstd, vec![CodecKind::Zstd]),
        (Dialect::UzipXz, vec![CodecKind::Xz]),
        (Dialect::LinuxV4Footer, vec![CodecKind::Zlib, CodecKind::Xz]),
    ] {
        let built = build(&data, &Spec::new(dialect, bs as u32).codecs(&codecs));
        flip_each_block(&format!("{dialect}"), &built);
    }
}

#[test]
fn bit_flips_in_reference_fixtures_are_caught() {
    for fixture in fixtures()
        .iter()
        .filter(|f| f.num_blocks > 0 && f.block_size <= 16384)
    {
        let image = std::fs::read(&fixture.path).unwrap();
        let parsed = mkmodule_format::parse_image(&image).unwrap();
        let reference = Image::open(&fixture.path).unwrap();
        let mut expected = vec![0u8; reference.size() as usize];
        reference.read_at(&mut expected, 0).unwrap();
        let built = Built {
            image,
            expected,
            original_len: fixture.input_len,
            num_blocks: parsed.index.len() as u32,
            dialect: parsed.layout.dialect,
        };
        flip_each_block(&fixture.name, &built);
    }
}

#[test]
fn a_short_block_other_than_the_last_is_corruption() {
    let bs = 4096u32;
    let header = Header {
        block_size: bs,
        num_blocks: 3,
    };
    let mut compressor =
        BlockCompressor::new(CodecSpec::with_default_level(CodecKind::Zlib)).unwrap();
    let mut blocks = Vec::new();
    for len in [bs as usize, bs as usize / 2, 100] {
        let mut out = Vec::new();
        compressor
            .compress(&common::text(len, 9), &mut out)
            .unwrap();
        blocks.push(out);
    }
    let start = 136 + 8 * 4;
    let mut entries = Vec::new();
    let mut at = start;
    for block in &blocks {
        entries.push(IndexEntry {
            offset: at,
            codec: CodecKind::Zlib,
        });
        at += block.len() as u64;
    }
    let mut image = header.encode(Dialect::LinuxV2).to_vec();
    image.extend(encode_index(Dialect::LinuxV2, header, &entries, at).unwrap());
    for block in &blocks {
        image.extend_from_slice(block);
    }
    let opened = open_bytes(&image).unwrap();
    let error = opened.block(1).unwrap_err();
    assert!(
        matches!(
            error,
            ImageError::ShortBlock {
                block: 1,
                decoded: 2048,
                expected: 4096,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.offset(), Some(entries[1].offset));
    // The final block may be short: it reads zero-filled.
    let last = opened.block(2).unwrap();
    assert!(last[..100] == common::text(100, 9)[..] && last[100..].iter().all(|&b| b == 0));
    assert!(opened.block(0).is_ok());
}

#[test]
fn a_block_decoding_to_more_than_the_block_size_is_corruption() {
    let bs = 4096u32;
    let header = Header {
        block_size: bs,
        num_blocks: 1,
    };
    let mut out = Vec::new();
    BlockCompressor::new(CodecSpec::with_default_level(CodecKind::Zlib))
        .unwrap()
        .compress(&vec![0u8; 2 * bs as usize], &mut out)
        .unwrap();
    let start = 136 + 16;
    let mut image = header.encode(Dialect::LinuxV2).to_vec();
    let entries = [IndexEntry {
        offset: start,
        codec: CodecKind::Zlib,
    }];
    image.extend(
        encode_index(Dialect::LinuxV2, header, &entries, start + out.len() as u64).unwrap(),
    );
    image.extend_from_slice(&out);
    let error = open_bytes(&image).unwrap().block(0).unwrap_err();
    assert!(
        matches!(error, ImageError::Decode { block: 0, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("more than 4096 bytes"),
        "{error}"
    );
}

#[test]
fn truncated_files_are_refused_with_numbers() {
    let built = build(&sample(12, 4096, 0), &Spec::new(Dialect::LinuxV2, 4096));
    let len = built.image.len();
    assert!(matches!(
        format_error(&built.image[..100]),
        FormatError::TooShort { len: 100, .. }
    ));
    assert!(matches!(
        format_error(&built.image[..150]),
        FormatError::IndexPastEof { num_blocks: 12, .. }
    ));
    assert!(matches!(
        format_error(&built.image[..len - 10]),
        FormatError::IndexEndPastEof { .. }
    ));
    let cut = built.index().blocks()[6].offset as usize;
    let error = format_error(&built.image[..cut]);
    assert!(
        matches!(
            error,
            FormatError::OffsetPastEnd { block: 7, .. } | FormatError::IndexEndPastEof { .. }
        ),
        "{error}"
    );
}

#[test]
fn a_file_truncated_after_opening_gives_a_truncation_error() {
    let built = build(&sample(12, 4096, 0), &Spec::new(Dialect::LinuxV2, 4096));
    let file = write_temp(&built.image);
    let options = OpenOptions {
        readahead: 0,
        ..OpenOptions::default()
    };
    let image = Image::open_with(file.path(), &options).unwrap();
    let last = built.index().blocks()[11];
    file.as_file().set_len(last.offset + 1).unwrap();
    let error = image.block(11).unwrap_err();
    assert!(
        matches!(error, ImageError::Truncated { block: 11, offset, file_len, .. }
            if offset == last.offset && file_len == last.offset + 1),
        "{error}"
    );
    assert!(error.to_string().contains("truncated"));
    assert!(image.block(2).is_ok());
}

#[test]
fn a_truncated_old_uzip_image_fails_on_its_last_block() {
    // uzip before version 4 ignores index[n], so a cut image opens (as geom_uzip's would) and
    // the damage shows when the last block is read.
    let built = build(&sample(12, 4096, 100), &Spec::new(Dialect::UzipZlib, 4096));
    let last = built.index().blocks()[11];
    let cut = (last.offset + u64::from(last.len) / 2) as usize;
    let image = open_bytes(&built.image[..cut]).unwrap();
    let error = image.block(11).unwrap_err();
    assert_eq!(error.block(), Some(11), "{error}");
    assert_eq!(error.offset(), Some(last.offset));
    assert!(image.block(10).is_ok());
}

#[test]
fn hostile_headers_are_refused() {
    let mut base = Header {
        block_size: 65536,
        num_blocks: 2,
    }
    .encode(Dialect::LinuxV2)
    .to_vec();
    base.resize(4096, 0);
    let with = |block_size: u32, num_blocks: u32| {
        let mut bytes = base.clone();
        bytes[128..132].copy_from_slice(&block_size.to_be_bytes());
        bytes[132..136].copy_from_slice(&num_blocks.to_be_bytes());
        bytes
    };
    assert_eq!(format_error(&with(0, 2)), FormatError::BlockSizeZero);
    assert_eq!(
        format_error(&with(1000, 2)),
        FormatError::BlockSizeNotMultiple { block_size: 1000 }
    );
    assert!(matches!(
        format_error(&with(1 << 30, 2)),
        FormatError::BlockSizeTooLarge { .. }
    ));
    assert!(matches!(
        format_error(&with(65536, u32::MAX)),
        FormatError::IndexPastEof {
            num_blocks: u32::MAX,
            ..
        }
    ));
    let mut unfinished = [0xffu8; 4096];
    unfinished[..136].fill(0);
    assert_eq!(format_error(&unfinished), FormatError::UnfinishedHeader);
    assert!(matches!(
        format_error(&[0u8; 4096]),
        FormatError::NotCloop { .. }
    ));
    assert!(matches!(
        format_error(&[b'x'; 4096]),
        FormatError::NotCloop { .. }
    ));

    // Index entries: offset inside the index, past the end, decreasing, all ones, V2 flag bits.
    let entry = |bytes: &mut Vec<u8>, i: usize, value: u64| {
        bytes[136 + 8 * i..144 + 8 * i].copy_from_slice(&value.to_be_bytes());
    };
    let mut bytes = with(65536, 2);
    entry(&mut bytes, 0, 100);
    assert!(matches!(
        format_error(&bytes),
        FormatError::OffsetBeforeData {
            block: 0,
            offset: 100,
            ..
        }
    ));
    let mut bytes = with(65536, 2);
    entry(&mut bytes, 0, 200);
    entry(&mut bytes, 1, 1 << 40);
    assert!(matches!(
        format_error(&bytes),
        FormatError::OffsetPastEnd { block: 1, .. }
    ));
    let mut bytes = with(65536, 2);
    entry(&mut bytes, 0, 300);
    entry(&mut bytes, 1, 200);
    entry(&mut bytes, 2, 400);
    assert!(matches!(
        format_error(&bytes),
        FormatError::DecreasingOffset { block: 1, .. }
    ));
    let mut bytes = with(65536, 2);
    entry(&mut bytes, 0, 200);
    entry(&mut bytes, 1, u64::MAX);
    assert!(matches!(
        format_error(&bytes),
        FormatError::UnwrittenEntry { entry: 1 }
    ));
    let mut bytes = with(65536, 2);
    entry(&mut bytes, 0, (2 << 60) | 200);
    assert!(matches!(
        format_error(&bytes),
        FormatError::FlagBitsSet { block: 0, .. }
    ));
    // A block longer than its codec can produce for the block size.
    let mut bytes = with(512, 2);
    entry(&mut bytes, 0, 200);
    entry(&mut bytes, 1, 1200);
    entry(&mut bytes, 2, 1300);
    assert!(matches!(
        format_error(&bytes),
        FormatError::BlockTooLong {
            block: 0,
            len: 1000,
            ..
        }
    ));

    // V4: reserved codec flags.
    let mut v4 = Header {
        block_size: 4096,
        num_blocks: 1,
    }
    .encode(Dialect::LinuxV4)
    .to_vec();
    v4.resize(1024, 0);
    v4[136..144].copy_from_slice(&((7u64 << 60) | 200).to_be_bytes());
    v4[144..152].copy_from_slice(&300u64.to_be_bytes());
    assert!(matches!(
        format_error(&v4),
        FormatError::UnknownCodecFlag { block: 0, flag: 7 }
    ));
}

#[test]
fn garbage_in_a_block_of_each_codec_is_an_error_not_a_panic() {
    let bs = 4096u32;
    for codec in [
        CodecKind::Zlib,
        CodecKind::Xz,
        CodecKind::Lz4,
        CodecKind::Lzo,
        CodecKind::None,
    ] {
        for (seed, len) in [(1u64, 1usize), (2, 17), (3, 900), (4, 4096), (5, 4200)] {
            let header = Header {
                block_size: bs,
                num_blocks: 2,
            };
            let garbage = random(len, seed);
            let start = 136 + 24;
            let entries = [
                IndexEntry {
                    offset: start,
                    codec,
                },
                IndexEntry {
                    offset: start + len as u64,
                    codec,
                },
            ];
            let end = start + 2 * len as u64;
            let mut image = header.encode(Dialect::LinuxV4).to_vec();
            image.extend(encode_index(Dialect::LinuxV4, header, &entries, end).unwrap());
            image.extend_from_slice(&garbage);
            image.extend_from_slice(&garbage);
            let opened = match open_bytes(&image) {
                Ok(image) => image,
                Err(e) => {
                    // Too long for the codec's bound: refused at open, with the block named.
                    assert!(
                        matches!(
                            e,
                            ImageError::Format(FormatError::BlockTooLong { block: 0, .. })
                        ),
                        "{e}"
                    );
                    continue;
                }
            };
            // `none` and lz4 have no checksum: garbage may decode. Whatever happens, no panic,
            // and an error names block 0.
            if let Err(e) = opened.block(0) {
                assert_eq!(e.block(), Some(0), "{codec}: {e}");
            }
            let _ = opened.block(1);
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let bs = 1024;
    let data = sample(10, bs, 200);
    let images = [
        build(&data, &Spec::new(Dialect::UzipZlibDedup, bs as u32)),
        build(
            &data,
            &Spec::new(Dialect::LinuxV4Footer, bs as u32)
                .codecs(&[CodecKind::Lz4, CodecKind::Zlib]),
        ),
        build(&data, &Spec::new(Dialect::UzipZstd, bs as u32)),
    ];
    let mut x = 0x9E37_79B9u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for built in &images {
        for _ in 0..150 {
            let mut bytes = built.image.clone();
            for _ in 0..(next() % 4 + 1) {
                // Mostly the header and index, sometimes anywhere.
                let span = if next() % 3 == 0 {
                    bytes.len()
                } else {
                    400.min(bytes.len())
                };
                let at = if next() % 2 == 0 {
                    (next() as usize) % span
                } else {
                    bytes.len() - 1 - (next() as usize) % span
                };
                bytes[at] = next() as u8;
            }
            if let Ok(image) = open_bytes(&bytes) {
                // A mutated header may claim huge blocks: read a bounded sample of every block.
                let mut buf = vec![0u8; 3000];
                let bs = u64::from(image.block_size());
                for block in 0..u64::from(image.num_blocks()).min(64) {
                    let _ = image.read_at(&mut buf, block * bs + bs / 2);
                }
                let _ = image.read_at(&mut buf, image.size().saturating_sub(10));
                let _ = image.zero_extents();
            }
        }
    }
}

#[test]
fn a_damaged_trailer_is_reported_and_ignored() {
    let data = sample(5, 4096, 10);
    let spec = Spec {
        trailer: true,
        ..Spec::new(Dialect::LinuxV2, 4096)
    };
    let built = build(&data, &spec);
    let mut bytes = built.image.clone();
    let at = bytes.len() - 50;
    bytes[at] ^= 1;
    let file = write_temp(&bytes);
    let options = OpenOptions {
        exposed_size: ExposedSize::Original,
        ..OpenOptions::default()
    };
    let image = Image::open_with(file.path(), &options).unwrap();
    assert!(matches!(
        image.trailer_problem(),
        Some(ImageError::Format(FormatError::TrailerCorrupt { .. }))
    ));
    assert_eq!(image.size(), 5 * 4096, "falls back to the padded size");
    assert_eq!(image.original_size(), None);

    // A trailer whose original length the blocks cannot hold.
    let mut bytes = built.image.clone();
    let trailer_at = bytes.len() - 136;
    let liar = Trailer {
        original_len: 5 * 4096 + 1,
        digest_algorithm: DigestAlgorithm::None,
        digest: Vec::new(),
        data_end: built.index().data_end(),
        tool: "liar".into(),
        extension: Default::default(),
    };
    bytes[trailer_at..].copy_from_slice(&liar.encode());
    let file = write_temp(&bytes);
    let image = Image::open_with(file.path(), &options).unwrap();
    assert!(matches!(
        image.trailer_problem(),
        Some(ImageError::TrailerLength {
            original_len: 20481,
            padded: 20480
        })
    ));
    assert_eq!(image.size(), 20480);
}

/// Found by the read_adapter fuzz target: the final block of a dedup image is a back-reference
/// to a block whose bytes are not a valid block. `Image::block` decodes it as the block it
/// points to (strictly: that block is not the final one); a parallel pass decoded it as the
/// final block and took the final block's leniency, so `verify` and reads disagreed.
#[test]
fn a_shared_final_block_decodes_the_same_in_reads_and_passes() {
    let input = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/read_adapter/final-block-shared-decodes-as-its-target"
    ))
    .unwrap();
    // The fuzz input: flags, an op count, 5 bytes per op, then the image.
    let image_at = 2 + 5 * usize::from(input[1] % 32);
    let image = open_bytes(&input[image_at..]).unwrap();
    let last = image.num_blocks() - 1;
    assert!(matches!(
        image.index().get(last as usize).map(|e| e.kind),
        Some(mkmodule_format::BlockKind::Shared { .. })
    ));
    let read = image
        .block(last)
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string());
    for threads in [1, 2] {
        let pass = mkmodule_image::ParallelOptions {
            threads,
            skip_zero: false,
        };
        let _ = image.par_blocks(pass, |i, decoded| -> Result<(), ()> {
            if i == last {
                let got = decoded.map(|d| match d {
                    mkmodule_image::Decoded::Data(b) => b.to_vec(),
                    mkmodule_image::Decoded::Zero => vec![0; image.block_size() as usize],
                });
                assert_eq!(got.map_err(|e| e.to_string()), read);
            }
            Ok(())
        });
    }
}
