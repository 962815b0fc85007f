//! The NBD server over loopback TCP (`cargo bench -p mkmodule-benches --bench nbd`): one
//! 4 KiB read at a time (round-trip latency), 32 random 4 KiB reads in flight, and 1 MiB
//! sequential reads, from an in-memory export and from a cloop image export (zlib, 64 KiB
//! blocks, the reader's default cache).

// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mkmodule_benches::{filesystem_like, random_offsets};
use mkmodule_blockdev::{BlockDevice, MemoryDevice};
use mkmodule_image::Image;
use mkmodule_nbd::{null_logger, Listener, Server, ServerConfig, ServerHandle};
use mkmodule_pack::{pack, PackOptions, Sink};
use mkmodule_testkit::nbd::NbdClient;

const INPUT: usize = 32 << 20;

/// A cloop image as an export, as `mkmodule serve` adapts it.
struct ImageDevice(Image);

impl BlockDevice for ImageDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn preferred_block_size(&self) -> u32 {
        self.0.block_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0
            .read_exact_at(buf, offset)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

fn start(exports: Vec<(&str, Arc<dyn BlockDevice>)>) -> (ServerHandle, SocketAddr) {
    let mut config = ServerConfig::new().with_logger(null_logger());
    for (name, export) in exports {
        config = config.with_export(name, name, export);
    }
    let listener = Listener::bind_tcp("127.0.0.1:0".parse().expect("address")).expect("bind");
    let server = Server::start(config, [listener]).expect("server starts");
    let addr = server.local_addr().expect("a TCP address");
    (server, addr)
}

fn serve(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = filesystem_like(INPUT);
    let image_path = dir.path().join("image.cloop");
    let options = PackOptions {
        input_len: Some(INPUT as u64),
        ..PackOptions::portable()
    };
    let mut file = File::create(&image_path).expect("image file");
    pack(&data[..], Sink::Seekable(&mut file), &options, &|_| {}).expect("pack");
    let image = Image::open(&image_path).expect("open image");
    let (server, addr) = start(vec![
        ("mem", Arc::new(MemoryDevice::new(data))),
        ("cloop", Arc::new(ImageDevice(image))),
    ]);
    let offsets = random_offsets(INPUT as u64, 4096, 1 << 14, 11);

    for export in ["mem", "cloop"] {
        let mut client = NbdClient::connect(addr, export).expect("connect");
        assert_eq!(client.size, INPUT as u64);
        let mut group = c.benchmark_group(format!("nbd/{export}"));

        group.throughput(Throughput::Bytes(4096));
        let mut buf = vec![0u8; 4096];
        let mut k = 0;
        group.bench_function(BenchmarkId::new("read 4K random", "qd1"), |b| {
            b.iter(|| {
                k = (k + 1) % offsets.len();
                client.read_into(offsets[k], &mut buf).expect("read")
            })
        });

        group.throughput(Throughput::Bytes(32 * 4096));
        let mut batch = 0;
        group.bench_function(BenchmarkId::new("read 4K random", "qd32"), |b| {
            b.iter(|| {
                batch = (batch + 32) % (offsets.len() - 32);
                client
                    .read_pipelined(&offsets[batch..batch + 32], &mut buf)
                    .expect("reads")
            })
        });

        group.throughput(Throughput::Bytes(1 << 20));
        let mut big = vec![0u8; 1 << 20];
        let mut at = 0u64;
        group.bench_function(BenchmarkId::new("read 1M sequential", "qd1"), |b| {
            b.iter(|| {
                client.read_into(at, &mut big).expect("read");
                at = (at + (1 << 20)) % INPUT as u64;
            })
        });
        group.finish();
        client.hang_up();
    }
    server.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = serve
}
criterion_main!(benches);
