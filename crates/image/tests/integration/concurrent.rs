//! Many threads reading one image at once: random positioned reads crossing block boundaries,
//! sequential readers with read-ahead, and many readers of one missing block.

use crate::common;
use mkmodule_testkit::data::Rng;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Barrier};

use common::{build, sample, Built, Spec};
use mkmodule_codec::CodecKind;
use mkmodule_format::{BlockKind, Dialect};
use mkmodule_image::{Image, OpenOptions};

fn open(built: &Built, options: &OpenOptions) -> (tempfile::NamedTempFile, Arc<Image>) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&built.image).unwrap();
    file.flush().unwrap();
    let image = Image::open_with(file.path(), options).unwrap();
    (file, Arc::new(image))
}

fn images() -> Vec<(String, Built)> {
    let bs = 4096;
    let data = sample(200, bs, 777);
    vec![
        (
            "v2 zlib".into(),
            build(&data, &Spec::new(Dialect::LinuxV2, bs as u32)),
        ),
        (
            "uzip zstd dedup".into(),
            build(&data, &Spec::new(Dialect::UzipZstdDedup, bs as u32)),
        ),
        (
            "v4 mixed".into(),
            build(
                &data,
                &Spec::new(Dialect::LinuxV4, bs as u32).codecs(&[
                    CodecKind::Zlib,
                    CodecKind::Lz4,
                    CodecKind::Xz,
                ]),
            ),
        ),
    ]
}

#[test]
fn eight_threads_of_random_reads_match_the_reference() {
    for (label, built) in images() {
        // A cache of 16 blocks for 200: constant eviction while threads race.
        let options = OpenOptions {
            cache_bytes: 16 * 4096,
            ..OpenOptions::default()
        };
        let (_file, image) = open(&built, &options);
        let expected = Arc::new(built.expected.clone());
        let size = image.size();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let image = Arc::clone(&image);
                let expected = Arc::clone(&expected);
                std::thread::spawn(move || {
                    let mut rng = Rng(0x1234_5678 + t * 7919);
                    let mut buf = vec![0u8; 3 * 4096 + 17];
                    for _ in 0..1500 {
                        let offset = rng.below(size + 100);
                        let len = rng.below(buf.len() as u64 + 1) as usize;
                        let n = image.read_at(&mut buf[..len], offset).unwrap();
                        let want = (size.saturating_sub(offset) as usize).min(len);
                        assert_eq!(n, want, "offset {offset} len {len}");
                        if n > 0 {
                            let at = offset as usize;
                            assert!(
                                buf[..n] == expected[at..at + n],
                                "offset {offset} len {len}"
                            );
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("{label}: a reader failed"));
        }
        let stats = image.cache_stats();
        assert!(stats.resident <= 16, "{label}: {stats:?}");
        assert!(stats.hits > 0 && stats.misses > 0, "{label}: {stats:?}");
    }
}

#[test]
fn sequential_readers_are_served_by_read_ahead() {
    for (label, built) in images() {
        let options = OpenOptions {
            cache_bytes: 64 * 4096,
            readahead: 16 * 4096,
            readahead_threads: 2,
            ..OpenOptions::default()
        };
        let (_file, image) = open(&built, &options);
        assert_eq!(image.readahead_window(), 16);
        let expected = Arc::new(built.expected.clone());
        let size = image.size();
        let quarter = size / 4;
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let image = Arc::clone(&image);
                let expected = Arc::clone(&expected);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1000];
                    let (start, end) = (t * quarter, ((t + 1) * quarter).min(size));
                    let mut at = start;
                    while at < end {
                        let len = buf.len().min((end - at) as usize);
                        let n = image.read_at(&mut buf[..len], at).unwrap();
                        assert_eq!(n, len);
                        assert!(buf[..n] == expected[at as usize..at as usize + n]);
                        at += n as u64;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .unwrap_or_else(|_| panic!("{label}: a reader failed"));
        }
    }
}

#[test]
fn moving_to_the_next_block_decodes_the_window_ahead() {
    for (label, built) in images() {
        let options = OpenOptions {
            cache_bytes: 64 * 4096,
            readahead: 8 * 4096,
            readahead_threads: 2,
            ..OpenOptions::default()
        };
        let (_file, image) = open(&built, &options);
        let mut buf = [0u8; 100];
        // Blocks 8 and 9 are data blocks (block i % 7 is 0 or 3 for zero blocks).
        image.read_at(&mut buf, 8 * 4096).unwrap();
        image.read_at(&mut buf, 9 * 4096).unwrap();
        // Blocks 10..=17 are queued. Zero blocks are skipped, and a back-reference shares the
        // decode of its target, so count the distinct blocks that need decoding.
        let index = built.index();
        let key = |b: u32| match index.blocks()[b as usize].kind {
            BlockKind::Shared { of } => of,
            _ => b,
        };
        let done: HashSet<u32> = [key(8), key(9)].into();
        let wanted: HashSet<u32> = (10..18)
            .filter(|&b| !image.is_zero_block(b))
            .map(key)
            .filter(|k| !done.contains(k))
            .collect();
        assert!(wanted.len() >= 3, "{label}");
        // Wait for the pool (other work may be using the cores) rather than racing it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while image.cache_stats().prefetched < wanted.len() as u64
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let stats = image.cache_stats();
        assert_eq!(stats.prefetched, wanted.len() as u64, "{label}: {stats:?}");
        assert_eq!(stats.decoded, 2, "{label}: {stats:?}");
        for block in 10..18u64 {
            let mut got = [0u8; 4096];
            image.read_at(&mut got, block * 4096).unwrap();
            let at = block as usize * 4096;
            assert!(
                got[..] == built.expected[at..at + 4096],
                "{label}: block {block}"
            );
        }
        let after = image.cache_stats();
        assert_eq!(
            after.decoded, 2,
            "{label}: read-ahead blocks were decoded again: {after:?}"
        );
    }
}

#[test]
fn concurrent_readers_of_one_missing_block_share_one_decode() {
    let (_, built) = images().remove(0);
    let options = OpenOptions {
        readahead: 0,
        ..OpenOptions::default()
    };
    let (_file, image) = open(&built, &options);
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let image = Arc::clone(&image);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                image.block(2).unwrap()
            })
        })
        .collect();
    let blocks: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(blocks.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    assert!(*blocks[0] == built.expected[2 * 4096..3 * 4096]);
    let stats = image.cache_stats();
    assert_eq!(stats.decoded, 1, "{stats:?}");
}

#[test]
fn a_cache_of_zero_bytes_still_reads_correctly() {
    let (_, built) = images().remove(1);
    let options = OpenOptions {
        cache_bytes: 0,
        ..OpenOptions::default()
    };
    let (_file, image) = open(&built, &options);
    assert_eq!(image.cache_capacity(), 0);
    assert_eq!(image.readahead_window(), 0);
    let mut all = vec![0u8; built.expected.len()];
    image.read_at(&mut all, 0).unwrap();
    assert!(all == built.expected);
}

#[test]
fn a_prefetch_hint_decodes_in_the_background() {
    let (label, built) = images().remove(0);
    let options = OpenOptions {
        cache_bytes: 64 * 4096,
        readahead: 8 * 4096,
        ..OpenOptions::default()
    };
    let (_file, image) = open(&built, &options);
    // Blocks 40..=47 (one window): 42 and 45 are zero blocks and need no decoding.
    image.prefetch(40 * 4096 + 10, 100 * 4096);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while image.cache_stats().prefetched < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = image.cache_stats();
    assert_eq!(stats.prefetched, 6, "{label}: {stats:?}");
    let mut got = vec![0u8; 8 * 4096];
    image.read_at(&mut got, 40 * 4096).unwrap();
    assert!(got[..] == built.expected[40 * 4096..48 * 4096]);
    assert_eq!(
        image.cache_stats().decoded,
        0,
        "{label}: prefetched blocks decoded again"
    );
}
