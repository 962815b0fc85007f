//! The whole packer pipeline (reader thread, compressor threads, in-order writer) on 32 MiB
//! held in memory, written to memory (`cargo bench -p mkmodule-benches --bench pack`).

// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use std::io::Cursor;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mkmodule_benches::filesystem_like;
use mkmodule_pack::{choose_dialect, pack, FormatChoice, PackOptions, Sink};

const INPUT: usize = 32 << 20;

fn pipeline(c: &mut Criterion) {
    let data = filesystem_like(INPUT);
    let mut group = c.benchmark_group("pack");
    group.throughput(Throughput::Bytes(INPUT as u64));
    for (codec, block_size) in [("zlib", 64 << 10), ("zstd", 64 << 10), ("lz4", 64 << 10)] {
        let (dialect, codec_choice) = choose_dialect(
            FormatChoice::Auto,
            codec.parse().expect("valid codec"),
            false,
            false,
        )
        .expect("a dialect for the codec");
        let options = PackOptions {
            dialect,
            codec: codec_choice,
            block_size,
            input_len: Some(INPUT as u64),
            ..PackOptions::portable()
        };
        let id = BenchmarkId::new(
            format!("{codec_choice}"),
            format!("{}K x{} threads", block_size >> 10, options.threads),
        );
        let mut out = Cursor::new(Vec::with_capacity(INPUT));
        group.bench_function(id, |b| {
            b.iter(|| {
                out.set_position(0);
                out.get_mut().clear();
                pack(&data[..], Sink::Seekable(&mut out), &options, &|_| {}).expect("pack")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = pipeline
}
criterion_main!(benches);
