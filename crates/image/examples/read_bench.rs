//! Read benchmarks of the image reader, run by `cargo xtask bench-read` (or by hand):
//!
//! ```text
//! read_bench random IMAGE [--cache BYTES] [--secs S] [--threads T] [--size BYTES]
//! read_bench sequential IMAGE [--cache BYTES] [--chunk BYTES]
//! ```
//!
//! `random`: T threads issue aligned reads of `--size` bytes (default 4096) at uniformly random
//! offsets through `Image::read_at` for S seconds, with a cache of `--cache` bytes (default
//! 16 MiB); prints reads per second. `sequential`: one thread reads the whole image with
//! `read_at` in chunks (default 1 MiB), read-ahead on; prints MB/s. Output is one line of
//! `key=value` pairs, for scripts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mkmodule_image::{Image, OpenOptions};

fn usage() -> ! {
    eprintln!(
        "usage: read_bench random IMAGE [--cache BYTES] [--secs S] [--threads T] [--size BYTES]\n       read_bench sequential IMAGE [--cache BYTES] [--chunk BYTES]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage();
    }
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| usage()))
            .unwrap_or(default)
    };
    let cache = flag("--cache", 16 << 20);
    let result = match args[0].as_str() {
        "random" => random(
            &args[1],
            cache,
            flag("--secs", 5),
            flag("--threads", 1) as usize,
            flag("--size", 4096) as usize,
        ),
        "sequential" => sequential(&args[1], cache, flag("--chunk", 1 << 20) as usize),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("read_bench: {e}");
        std::process::exit(1);
    }
}

fn random(
    path: &str,
    cache: u64,
    secs: u64,
    threads: usize,
    size: usize,
) -> Result<(), mkmodule_image::ImageError> {
    let options = OpenOptions {
        cache_bytes: cache,
        ..OpenOptions::default()
    };
    let image = Arc::new(Image::open_with(path, &options)?);
    let slots = image.size() / size as u64;
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (image, reads, stop) = (Arc::clone(&image), Arc::clone(&reads), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<(), mkmodule_image::ImageError> {
                let mut x =
                    0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let mut buf = vec![0u8; size];
                let mut local = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let offset = (x % slots) * size as u64;
                    image.read_at(&mut buf, offset)?;
                    local += 1;
                    if local % 256 == 0 {
                        reads.fetch_add(256, Ordering::Relaxed);
                    }
                }
                reads.fetch_add(local % 256, Ordering::Relaxed);
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("reader thread")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = reads.load(Ordering::Relaxed);
    let stats = image.cache_stats();
    println!(
        "mode=random image={path} size={} cache_bytes={cache} threads={threads} read_size={size} reads={total} secs={elapsed:.2} reads_per_sec={:.0} hit_ratio={:.3}",
        image.size(),
        total as f64 / elapsed,
        stats.hits as f64 / (stats.hits + stats.misses).max(1) as f64
    );
    Ok(())
}

fn sequential(path: &str, cache: u64, chunk: usize) -> Result<(), mkmodule_image::ImageError> {
    let options = OpenOptions {
        cache_bytes: cache,
        ..OpenOptions::default()
    };
    let image = Image::open_with(path, &options)?;
    let mut buf = vec![0u8; chunk];
    let start = Instant::now();
    let mut at = 0u64;
    loop {
        let n = image.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = image.cache_stats();
    println!(
        "mode=sequential image={path} bytes={at} chunk={chunk} secs={elapsed:.2} mb_per_sec={:.0} decoded={} prefetched={}",
        at as f64 / elapsed / 1e6,
        stats.decoded,
        stats.prefetched
    );
    Ok(())
}
