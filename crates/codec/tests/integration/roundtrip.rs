//! Round trips and size bounds for every codec.

use crate::common;

use common::{compress, decompress, default_specs, level_specs, random, text};
use mkmodule_codec::{BlockCompressor, BlockDecompressor, CodecKind};

const SMALL: [usize; 3] = [1, 512, 65536];

#[test]
fn round_trip_every_codec_and_level_small_sizes() {
    for spec in level_specs() {
        for len in SMALL {
            for (name, data) in [
                ("text", text(len)),
                ("zeros", vec![0u8; len]),
                ("random", random(len, len as u64)),
            ] {
                let block = compress(spec, &data);
                let back = decompress(spec.kind(), &block, len);
                assert!(back == data, "{spec} {name} {len}");
            }
        }
    }
}

#[test]
fn round_trip_default_levels_one_mib() {
    let len = 1 << 20;
    for spec in default_specs() {
        for (name, data) in [
            ("text", text(len)),
            ("zeros", vec![0u8; len]),
            ("random", random(len, 7)),
        ] {
            let block = compress(spec, &data);
            let back = decompress(spec.kind(), &block, len);
            assert!(back == data, "{spec} {name}");
        }
    }
}

#[test]
fn compressor_reuse_replaces_output_and_keeps_capacity() {
    for spec in default_specs() {
        let mut c = BlockCompressor::new(spec).unwrap();
        let mut d = BlockDecompressor::new();
        let mut out = Vec::new();
        let mut back = vec![0u8; 65536];
        for seed in 0..4u64 {
            let data = if seed % 2 == 0 {
                random(65536, seed)
            } else {
                text(65536)
            };
            c.compress(&data, &mut out).unwrap();
            d.decompress_exact(spec.kind(), &out, &mut back).unwrap();
            assert!(back == data, "{spec} round {seed}");
        }
        let cap = out.capacity();
        c.compress(&[1, 2, 3], &mut out).unwrap();
        assert_eq!(out.capacity(), cap, "{spec}: capacity kept");
        d.decompress_exact(spec.kind(), &out, &mut back[..3])
            .unwrap();
        assert_eq!(&back[..3], &[1, 2, 3]);
    }
}

#[test]
fn empty_input_compresses_to_a_block_that_decodes_to_nothing() {
    for spec in default_specs() {
        let block = compress(spec, &[]);
        if spec.kind() == CodecKind::None {
            assert!(block.is_empty());
            continue;
        }
        assert!(!block.is_empty(), "{spec}");
        let mut out = [0u8; 16];
        let n = BlockDecompressor::new()
            .decompress(spec.kind(), &block, &mut out[..0])
            .unwrap();
        assert_eq!(n, 0, "{spec}");
    }
}

#[test]
fn short_final_block_decodes_shorter_than_the_buffer() {
    // uzip final blocks are compressed at their real length; `decompress` reports the count.
    for spec in default_specs() {
        let data = text(1000);
        let block = compress(spec, &data);
        let mut out = vec![0xAAu8; 4096];
        let n = BlockDecompressor::new()
            .decompress(spec.kind(), &block, &mut out)
            .unwrap();
        assert_eq!(n, 1000, "{spec}");
        assert_eq!(&out[..n], &data[..], "{spec}");
    }
}

#[test]
fn incompressible_blocks_stay_within_the_format_bound() {
    let mut worst = Vec::new();
    for bs in [512usize, 4096, 65536, 1 << 20] {
        let data = random(bs, bs as u64 + 1);
        for spec in level_specs() {
            // The slowest settings only at up to 64 KiB to keep debug test runs short.
            if bs > 65536 && spec != mkmodule_codec::CodecSpec::with_default_level(spec.kind()) {
                continue;
            }
            let block = compress(spec, &data);
            let bound = spec.kind().max_compressed_len(bs as u32);
            worst.push(format!(
                "{spec} bs={bs}: {} (+{}) bound {bound}",
                block.len(),
                block.len() as i64 - bs as i64
            ));
            assert!(
                block.len() as u64 <= bound,
                "{spec} bs={bs}: {} > bound {bound}",
                block.len()
            );
        }
    }
    println!("{}", worst.join("\n"));
}

#[test]
fn zlib_level_zero_is_stored_and_exactly_sized() {
    for bs in [512usize, 4096, 65536, 1 << 20] {
        let data = random(bs, 3);
        let block = compress("zlib:0".parse().unwrap(), &data);
        let stored = bs + 6 + 5 * bs.div_ceil(65535);
        assert!(block.len() <= stored, "bs {bs}: {} > {stored}", block.len());
        // Stored data appears verbatim after the 2-byte header and a 5-byte block header.
        assert_eq!(&block[7..7 + bs.min(65535)], &data[..bs.min(65535)]);
    }
}
