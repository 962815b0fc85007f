//! `Image::read_at` of random 4 KiB pieces: with a warm cache (every block decoded already)
//! and with caching off (every read decodes its block), for zlib and zstd images of 64 KiB
//! blocks (`cargo bench -p mkmodule-benches --bench read`).

// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mkmodule_benches::{filesystem_like, random_offsets};
use mkmodule_image::{Image, OpenOptions};
use mkmodule_pack::{choose_dialect, pack, FormatChoice, PackOptions, Sink};

const INPUT: usize = 16 << 20;
const READ: usize = 4096;

fn make_image(dir: &Path, codec: &str, data: &[u8]) -> std::path::PathBuf {
    let (dialect, codec) = choose_dialect(
        FormatChoice::Auto,
        codec.parse().expect("codec"),
        false,
        false,
    )
    .expect("dialect");
    let options = PackOptions {
        dialect,
        codec,
        block_size: 64 << 10,
        input_len: Some(data.len() as u64),
        ..PackOptions::portable()
    };
    let path = dir.join(format!("{}.img", codec.to_string().replace(':', "")));
    let mut file = File::create(&path).expect("image file");
    pack(data, Sink::Seekable(&mut file), &options, &|_| {}).expect("pack");
    path
}

fn read_at(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = filesystem_like(INPUT);
    let offsets = random_offsets(INPUT as u64, READ as u64, 4096, 7);
    let mut group = c.benchmark_group("read_at 4K random");
    group.throughput(Throughput::Bytes(READ as u64));
    for codec in ["zlib", "zstd"] {
        let path = make_image(dir.path(), codec, &data);
        for (mode, cache_bytes) in [("cached", 64u64 << 20), ("uncached", 0)] {
            let options = OpenOptions {
                cache_bytes,
                ..OpenOptions::default()
            };
            let image = Image::open_with(&path, &options).expect("open");
            let mut buf = vec![0u8; READ];
            if cache_bytes > 0 {
                // Warm: decode every block once.
                let mut at = 0;
                while at < image.size() {
                    image.read_at(&mut buf, at).expect("read");
                    at += 64 << 10;
                }
            }
            let mut k = 0usize;
            group.bench_function(BenchmarkId::new(codec, mode), |b| {
                b.iter(|| {
                    k = (k + 1) % offsets.len();
                    image.read_at(&mut buf, offsets[k]).expect("read")
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = read_at
}
criterion_main!(benches);
