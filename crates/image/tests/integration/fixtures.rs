//! The reference images from Debian's create_compressed_fs read back to their manifest's
//! SHA-256, through every read path.

use crate::common;

use std::io::Read;

use common::{fixtures, sha256_hex};
use mkmodule_format::Dialect;
use mkmodule_image::{Decoded, ExposedSize, Image, OpenOptions, ParallelOptions};

fn read_all_at(image: &Image, step: usize) -> Vec<u8> {
    let mut out = vec![0u8; image.size() as usize];
    let mut at = 0;
    while at < out.len() {
        let end = (at + step).min(out.len());
        let n = image.read_at(&mut out[at..end], at as u64).unwrap();
        assert_eq!(n, end - at);
        at = end;
    }
    out
}

#[test]
fn every_fixture_reads_back_to_its_raw_sha256() {
    for fixture in fixtures() {
        for mmap in [false, true] {
            let options = OpenOptions {
                mmap,
                ..OpenOptions::default()
            };
            let image = Image::open_with(&fixture.path, &options).unwrap();
            let name = &fixture.name;
            assert_eq!(image.dialect(), Dialect::LinuxV2, "{name}");
            assert_eq!(image.block_size(), fixture.block_size, "{name}");
            assert_eq!(image.num_blocks(), fixture.num_blocks, "{name}");
            assert_eq!(image.size(), fixture.raw_len, "{name}");
            assert!(image.trailer().is_none(), "{name}");
            let data = read_all_at(&image, 10_007);
            assert_eq!(sha256_hex(&data), fixture.raw_sha256, "{name} mmap={mmap}");
        }
    }
}

#[test]
fn every_fixture_reads_back_through_reader_blocks_and_passes() {
    for fixture in fixtures() {
        let name = &fixture.name;
        let image = Image::open(&fixture.path).unwrap();

        let mut via_reader = Vec::new();
        image.reader().read_to_end(&mut via_reader).unwrap();
        assert_eq!(sha256_hex(&via_reader), fixture.raw_sha256, "{name} reader");

        let mut via_blocks = Vec::new();
        for i in 0..image.num_blocks() {
            let block = image.block(i).unwrap();
            assert_eq!(block.len(), fixture.block_size as usize);
            via_blocks.extend_from_slice(&block);
        }
        assert_eq!(sha256_hex(&via_blocks), fixture.raw_sha256, "{name} blocks");

        let mut ordered = Vec::new();
        let bs = image.block_size() as usize;
        image
            .par_blocks_ordered(ParallelOptions::default(), |_, decoded| {
                match decoded.unwrap() {
                    Decoded::Zero => ordered.resize(ordered.len() + bs, 0),
                    Decoded::Data(data) => ordered.extend_from_slice(data),
                }
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(
            sha256_hex(&ordered),
            fixture.raw_sha256,
            "{name} ordered pass"
        );

        let unordered = std::sync::Mutex::new(vec![0u8; image.size() as usize]);
        image
            .par_blocks(
                ParallelOptions {
                    threads: 3,
                    skip_zero: false,
                },
                |i, decoded| {
                    let Decoded::Data(data) = decoded.unwrap() else {
                        panic!("zero blocks were not to be skipped");
                    };
                    let at = i as usize * bs;
                    unordered.lock().unwrap()[at..at + bs].copy_from_slice(data);
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
        let unordered = unordered.into_inner().unwrap();
        assert_eq!(sha256_hex(&unordered), fixture.raw_sha256, "{name} pass");
    }
}

#[test]
fn original_size_without_a_trailer_is_the_padded_size() {
    for fixture in fixtures() {
        let options = OpenOptions {
            exposed_size: ExposedSize::Original,
            ..OpenOptions::default()
        };
        let image = Image::open_with(&fixture.path, &options).unwrap();
        assert_eq!(image.size(), fixture.raw_len, "{}", fixture.name);
        assert_eq!(image.original_size(), None);
    }
}

#[test]
fn zero_blocks_of_create_compressed_fs_are_found() {
    // f02: 16 KiB of zeros, then text, 0xFF and text, at bs 512: blocks 0..32 are zero.
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f02"))
        .unwrap();
    let image = Image::open(&fixture.path).unwrap();
    assert_eq!(image.zero_blocks(), 32);
    assert!((0..32).all(|i| image.is_zero_block(i)));
    assert!((32..128).all(|i| !image.is_zero_block(i)));
    assert_eq!(image.zero_extents(), vec![0..16384]);
    // Extents run on from the asked offset: (offset, len, zero) of each.
    let runs = |offset: u64, len: u64| -> Vec<(u64, u64, bool)> {
        let mut at = offset;
        image
            .extents(offset, len)
            .iter()
            .map(|e| {
                at += e.len;
                (at - e.len, e.len, e.zero)
            })
            .collect()
    };
    let extents = runs(0, image.size());
    assert_eq!(extents.len(), 2);
    assert!(extents[0].2 && extents[0].1 == 16384);
    assert!(!extents[1].2 && extents[1].0 == 16384 && extents[1].1 == 65536 - 16384);
    let inside = runs(100, 1000);
    assert_eq!(inside.len(), 1);
    assert_eq!(inside[0], (100, 1000, true));
    let across = runs(16000, 1000);
    assert_eq!(across.len(), 2);
    assert_eq!(across[0], (16000, 384, true));
    assert_eq!(across[1], (16384, 616, false));
    assert!(image.extents(65536, 10).is_empty());
    assert_eq!(image.extents(65000, 10_000).last().unwrap().len, 536);

    let unscanned = OpenOptions {
        scan_zero_blocks: false,
        ..OpenOptions::default()
    };
    let image = Image::open_with(&fixture.path, &unscanned).unwrap();
    assert_eq!(image.zero_blocks(), 0);
}

#[test]
fn the_empty_image_has_no_bytes() {
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f10"))
        .unwrap();
    let image = Image::open(&fixture.path).unwrap();
    assert_eq!((image.num_blocks(), image.size()), (0, 0));
    let mut buf = [7u8; 16];
    assert_eq!(image.read_at(&mut buf, 0).unwrap(), 0);
    assert!(image.block(0).is_err());
    assert!(image.extents(0, 100).is_empty());
    image
        .par_blocks_ordered(ParallelOptions::default(), |_, _| Err("no blocks expected"))
        .unwrap();
}
