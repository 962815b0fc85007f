//! Compress and decompress one block, per codec and block size (`cargo bench -p
//! mkmodule-benches --bench codec`). Throughput is bytes of uncompressed block per second.

// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mkmodule_benches::filesystem_like;
use mkmodule_codec::{BlockCompressor, BlockDecompressor, CodecSpec};

const CODECS: [&str; 6] = ["zlib:6", "zlib:9", "zstd:3", "zstd:19", "xz:6", "lz4"];
const BLOCK_SIZES: [usize; 4] = [16 << 10, 64 << 10, 256 << 10, 1 << 20];

fn label(bs: usize) -> String {
    if bs >= 1 << 20 {
        format!("{}M", bs >> 20)
    } else {
        format!("{}K", bs >> 10)
    }
}

fn codecs(c: &mut Criterion) {
    let data = filesystem_like(1 << 20);
    for codec in CODECS {
        let spec: CodecSpec = codec.parse().expect("valid codec spec");
        let mut compress = c.benchmark_group(format!("compress/{codec}"));
        for bs in BLOCK_SIZES {
            let block = &data[..bs];
            compress.throughput(Throughput::Bytes(bs as u64));
            let mut compressor = BlockCompressor::new(spec).expect("compressor");
            let mut out = Vec::new();
            compress.bench_with_input(BenchmarkId::from_parameter(label(bs)), block, |b, block| {
                b.iter(|| compressor.compress(block, &mut out).expect("compress"))
            });
        }
        compress.finish();

        let mut decompress = c.benchmark_group(format!("decompress/{codec}"));
        for bs in BLOCK_SIZES {
            let block = &data[..bs];
            let mut compressor = BlockCompressor::new(spec).expect("compressor");
            let mut packed = Vec::new();
            compressor.compress(block, &mut packed).expect("compress");
            let mut decompressor = BlockDecompressor::new();
            let mut out = vec![0u8; bs];
            decompress.throughput(Throughput::Bytes(bs as u64));
            decompress.bench_with_input(
                BenchmarkId::from_parameter(label(bs)),
                &packed,
                |b, packed| {
                    b.iter(|| {
                        let n = decompressor
                            .decompress(spec.kind(), packed, &mut out)
                            .expect("decompress");
                        assert_eq!(n, bs);
                    })
                },
            );
        }
        decompress.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    targets = codecs
}
criterion_main!(benches);
