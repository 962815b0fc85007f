//! Images of every dialect and codec, with every quirk other writers produce, built by hand and
//! read back through every path.

use crate::common;

use std::io::Write;

use common::{build, sample, Built, Spec};
use mkmodule_codec::CodecKind;
use mkmodule_format::{BlockKind, Dialect};
use mkmodule_image::{Decoded, ExposedSize, Image, OpenOptions, ParallelOptions};

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    file
}

/// Reads `built` back through read_at, block(), both passes, with pread and mmap, and checks the
/// zero map is sound.
fn check(label: &str, built: &Built) {
    let file = write_temp(&built.image);
    for mmap in [false, true] {
        let options = OpenOptions {
            mmap,
            cache_bytes: 64 << 10,
            ..OpenOptions::default()
        };
        let image = Image::open_with(file.path(), &options)
            .unwrap_or_else(|e| panic!("{label}: open failed: {e}"));
        assert_eq!(image.num_blocks(), built.num_blocks, "{label}");
        assert_eq!(image.size(), built.expected.len() as u64, "{label}");

        let mut all = vec![0u8; built.expected.len()];
        assert_eq!(image.read_at(&mut all, 0).unwrap(), all.len(), "{label}");
        assert!(
            all == built.expected,
            "{label} mmap={mmap}: read_at differs"
        );

        let bs = image.block_size() as usize;
        for i in 0..image.num_blocks() {
            let block = image
                .block(i)
                .unwrap_or_else(|e| panic!("{label}: block {i}: {e}"));
            let at = i as usize * bs;
            assert!(*block == built.expected[at..at + bs], "{label}: block {i}");
            if image.is_zero_block(i) {
                assert!(
                    block.iter().all(|&b| b == 0),
                    "{label}: block {i} is not zero"
                );
            }
        }

        let mut ordered = Vec::new();
        image
            .par_blocks_ordered(ParallelOptions::default(), |i, decoded| {
                match decoded.unwrap_or_else(|e| panic!("{label}: block {i}: {e}")) {
                    Decoded::Zero => ordered.resize(ordered.len() + bs, 0),
                    Decoded::Data(data) => ordered.extend_from_slice(data),
                }
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!(ordered == built.expected, "{label}: ordered pass differs");
    }
}

const DATA_BLOCKS: usize = 23;

#[test]
fn linux_v2_as_create_compressed_fs_writes_it() {
    for bs in [512, 4096, 65536] {
        let data = sample(DATA_BLOCKS, bs, bs / 3);
        check(
            &format!("v2 bs {bs}"),
            &build(&data, &Spec::new(Dialect::LinuxV2, bs as u32)),
        );
    }
}

#[test]
fn linux_v2_with_the_quirks_of_other_writers() {
    let bs = 4096;
    let data = sample(DATA_BLOCKS, bs, 1000);
    let base = Spec::new(Dialect::LinuxV2, bs as u32);

    // vndcompress / mkuzip: final block compressed short, file padded to 512.
    let vnd = Spec {
        pad_final: false,
        align: 512,
        ..base.clone()
    };
    check("v2 short final block", &build(&data, &vnd));

    // Slack after each zlib stream inside its range (docs/FORMAT.md §7, §8).
    let slack = Spec {
        slack: 7,
        ..base.clone()
    };
    check("v2 slack", &build(&data, &slack));

    // Knoppix classic: aligned input gets an extra all-zero block.
    let aligned = sample(DATA_BLOCKS, bs, 0);
    let knoppix = Spec {
        extra_zero_block: true,
        ..base.clone()
    };
    let built = build(&aligned, &knoppix);
    assert_eq!(built.num_blocks as usize, DATA_BLOCKS + 1);
    check("v2 knoppix extra block", &built);

    // Header in the last 136 bytes (cloop.ko accepts V2 there too).
    check(
        "v2 footer",
        &build(&data, &Spec::new(Dialect::LinuxV2Footer, bs as u32)),
    );

    // Zero-length blocks, which only geom_uzip reads, are zeros for us as well.
    let sparse = Spec {
        zero_length: true,
        ..base
    };
    check("v2 zero-length blocks", &build(&data, &sparse));
}

#[test]
fn linux_v4_with_mixed_codecs_header_first_and_last() {
    let codecs = [
        CodecKind::Zlib,
        CodecKind::Xz,
        CodecKind::Lz4,
        CodecKind::None,
        CodecKind::Lzo,
    ];
    for dialect in [Dialect::LinuxV4, Dialect::LinuxV4Footer] {
        for bs in [4096usize, 65536] {
            let data = sample(DATA_BLOCKS, bs, bs / 2);
            let spec = Spec::new(dialect, bs as u32).codecs(&codecs);
            let built = build(&data, &spec);
            let used: std::collections::BTreeSet<_> =
                built.index().blocks().iter().map(|b| b.codec).collect();
            assert_eq!(used.len(), codecs.len());
            check(&format!("{dialect} bs {bs}"), &built);
        }
    }
}

#[test]
fn uzip_every_codec_with_zero_length_blocks_and_a_short_final_block() {
    for dialect in [Dialect::UzipZlib, Dialect::UzipXz, Dialect::UzipZstd] {
        for bs in [512usize, 16384] {
            let data = sample(DATA_BLOCKS, bs, bs / 3 + 1);
            let built = build(&data, &Spec::new(dialect, bs as u32));
            let index = built.index();
            let zero_len = index
                .blocks()
                .iter()
                .filter(|b| b.kind == BlockKind::Zero)
                .count();
            assert!(zero_len >= 6, "{dialect}: expected zero-length blocks");
            assert!(built.image.len() % 512 == 0);
            check(&format!("{dialect} bs {bs}"), &built);

            let file = write_temp(&built.image);
            let image = Image::open(file.path()).unwrap();
            for (i, entry) in index.blocks().iter().enumerate() {
                if entry.kind == BlockKind::Zero {
                    assert!(image.is_zero_block(i as u32), "{dialect}: block {i}");
                }
            }
        }
    }
}

#[test]
fn uzip_dedup_back_references_are_followed() {
    for dialect in [
        Dialect::UzipZlibDedup,
        Dialect::UzipXzDedup,
        Dialect::UzipZstdDedup,
    ] {
        let bs = 4096;
        let data = sample(DATA_BLOCKS, bs, 100);
        let built = build(&data, &Spec::new(dialect, bs as u32));
        let shared = built
            .index()
            .blocks()
            .iter()
            .filter(|b| matches!(b.kind, BlockKind::Shared { .. }))
            .count();
        assert!(
            shared >= 3,
            "{dialect}: expected back-references, got {shared}"
        );
        check(&format!("{dialect}"), &built);
    }
    // Dedup without zero-length blocks: the compressed zero blocks are shared too, and known zero.
    let spec = Spec {
        zero_length: false,
        ..Spec::new(Dialect::UzipZlibDedup, 4096)
    };
    let built = build(&sample(DATA_BLOCKS, 4096, 0), &spec);
    check("uzip-zlib-dedup without zero-length blocks", &built);
    let file = write_temp(&built.image);
    let image = Image::open(file.path()).unwrap();
    let zero_blocks = built
        .expected
        .chunks(4096)
        .filter(|b| b.iter().all(|&x| x == 0))
        .count() as u64;
    assert_eq!(image.zero_blocks(), zero_blocks);
}

#[test]
fn old_uzip_index_end_of_zero_is_derived_from_the_file() {
    for dialect in [Dialect::UzipZlib, Dialect::UzipXz] {
        // Old mkuzip: index[n] left 0, the file zero-padded to 512; the final block's range then
        // runs to the end of the file, padding included.
        let bs = 512;
        let data = sample(DATA_BLOCKS, bs, 0);
        let spec = Spec {
            end_zero: true,
            ..Spec::new(dialect, bs as u32)
        };
        let built = build(&data, &spec);
        assert_eq!(&built.image[136 + 8 * DATA_BLOCKS..][..8], &[0u8; 8]);
        check(&format!("{dialect} index[n] = 0"), &built);
    }
}

#[test]
fn trailing_padding_after_the_data_is_ignored() {
    let bs = 4096;
    let data = sample(DATA_BLOCKS, bs, 0);
    let mut built = build(&data, &Spec::new(Dialect::LinuxV2, bs as u32));
    built.image.extend(std::iter::repeat_n(0u8, 3000));
    check("v2 with 3000 trailing zeros", &built);
}

#[test]
fn our_trailer_gives_the_original_length() {
    for dialect in [Dialect::LinuxV2, Dialect::LinuxV4, Dialect::UzipZstd] {
        let bs = 4096;
        let data = sample(DATA_BLOCKS, bs, 1234);
        let spec = Spec {
            trailer: true,
            ..Spec::new(dialect, bs as u32)
        };
        let built = build(&data, &spec);
        check(&format!("{dialect} with trailer"), &built);
        let file = write_temp(&built.image);

        let padded = Image::open(file.path()).unwrap();
        assert_eq!(padded.size(), (DATA_BLOCKS * bs) as u64);
        assert_eq!(padded.original_size(), Some(data.len() as u64));
        let trailer = padded.trailer().unwrap();
        assert_eq!(trailer.digest, common::sha256_bytes(&data));
        assert!(padded.trailer_problem().is_none());

        let options = OpenOptions {
            exposed_size: ExposedSize::Original,
            ..OpenOptions::default()
        };
        let original = Image::open_with(file.path(), &options).unwrap();
        assert_eq!(original.size(), data.len() as u64);
        let mut all = vec![0u8; data.len() + 100];
        assert_eq!(original.read_at(&mut all, 0).unwrap(), data.len());
        assert!(all[..data.len()] == data[..]);
        let covered: u64 = original.extents(0, u64::MAX).iter().map(|e| e.len).sum();
        assert_eq!(covered, data.len() as u64);
    }
}

#[test]
fn single_block_and_exact_multiple_images() {
    for (blocks, short_by) in [(1, 0), (1, 100), (2, 0), (7, 0)] {
        for dialect in [Dialect::LinuxV2, Dialect::UzipZstd, Dialect::LinuxV4Footer] {
            let data = sample(blocks, 4096, short_by);
            check(
                &format!("{dialect} {blocks} blocks short by {short_by}"),
                &build(&data, &Spec::new(dialect, 4096)),
            );
        }
    }
}

#[test]
fn a_zero_block_stored_once_and_shared_is_known_zero_everywhere() {
    // mkuzip -d -Z: no zero-length blocks; the one stored zero block is shared by the others.
    let bs = 4096;
    let mut data = Vec::new();
    for i in 0..12u64 {
        if i % 2 == 0 {
            data.extend(std::iter::repeat_n(0u8, bs));
        } else {
            data.extend(common::random(bs, i));
        }
    }
    let spec = Spec {
        zero_length: false,
        ..Spec::new(Dialect::UzipZstdDedup, bs as u32)
    };
    let built = build(&data, &spec);
    let index = built.index();
    let stored_zero = index
        .blocks()
        .iter()
        .enumerate()
        .filter(|(i, b)| i % 2 == 0 && b.kind == BlockKind::Stored)
        .count();
    assert_eq!(stored_zero, 1);
    check("uzip-zstd-dedup, zero block stored once", &built);
    let file = write_temp(&built.image);
    let image = Image::open(file.path()).unwrap();
    assert_eq!(image.zero_blocks(), 6);
    assert!((0..12).all(|i| image.is_zero_block(i) == (i % 2 == 0)));
}

#[test]
fn passes_stop_at_the_first_sink_error_and_report_bad_blocks_in_order() {
    let bs = 512;
    let built = build(
        &sample(3000, bs, 0),
        &Spec::new(Dialect::LinuxV2, bs as u32),
    );
    let entry = built.index().blocks()[2500];
    let mut bytes = built.image.clone();
    bytes[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x20;
    let file = write_temp(&bytes);
    let image = Image::open(file.path()).unwrap();

    // Ordered: blocks arrive in order across chunk boundaries (2048 blocks of 512 bytes).
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    image
        .par_blocks_ordered(ParallelOptions::default(), |i, decoded| {
            seen.push(i);
            if let Err(e) = decoded {
                bad.push((e.block(), e.offset()));
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    assert!(seen.iter().copied().eq(0..3000));
    assert_eq!(bad, vec![(Some(2500), Some(entry.offset))]);

    // A sink error ends both passes early, with that error.
    let mut calls = 0;
    let stopped = image.par_blocks_ordered(ParallelOptions::default(), |i, _| {
        calls += 1;
        if i == 2100 {
            Err(i)
        } else {
            Ok(())
        }
    });
    assert_eq!(stopped, Err(2100));
    assert_eq!(calls, 2101);
    let calls = std::sync::atomic::AtomicU32::new(0);
    let stopped = image.par_blocks(ParallelOptions::default(), |i, decoded| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        decoded.map(drop).map_err(|e| (i, e.block()))
    });
    assert_eq!(stopped, Err((2500, Some(2500))));
    assert!(
        calls.into_inner() < 3000,
        "the unordered pass did not stop early"
    );
}
