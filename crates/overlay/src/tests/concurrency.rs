//! Several threads writing, zeroing, reading and flushing one overlay at once, inside the same
//! chunks: no update may be lost (the read-modify-write of a chunk is atomic).

use std::sync::Arc;

use mkmodule_blockdev::BlockDevice;

use super::*;

const THREADS: u64 = 4;
const CHUNKS: u64 = 24;
/// Each thread owns a quarter of every chunk.
const SLICE: u64 = CHUNK as u64 / THREADS;

fn hammer(o: Arc<Overlay>, flusher: bool) {
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let o = o.clone();
            s.spawn(move || {
                let mut expect = vec![None::<u8>; CHUNKS as usize];
                for round in 0..60u64 {
                    let c = (round * 7 + t * 5) % CHUNKS;
                    let at = c * u64::from(CHUNK) + t * SLICE;
                    let value = if (round + t) % 5 == 0 {
                        o.write_zeroes(at, SLICE, true).unwrap();
                        0
                    } else {
                        let v = (t as u8 + 1) * 16 + (round % 16) as u8;
                        o.write_at(&vec![v; SLICE as usize], at).unwrap();
                        v
                    };
                    expect[c as usize] = Some(value);
                    let mut b = vec![0u8; SLICE as usize];
                    o.read_at(&mut b, at).unwrap();
                    assert!(b.iter().all(|&x| x == value), "thread {t} chunk {c}");
                }
                for (c, v) in expect.iter().enumerate() {
                    if let Some(v) = v {
                        let mut b = vec![0u8; SLICE as usize];
                        o.read_at(&mut b, c as u64 * u64::from(CHUNK) + t * SLICE)
                            .unwrap();
                        assert!(b.iter().all(|x| x == v), "thread {t} chunk {c} at the end");
                    }
                }
            });
        }
        if flusher {
            let o = o.clone();
            s.spawn(move || {
                for _ in 0..30 {
                    o.flush().unwrap();
                    std::thread::yield_now();
                }
            });
        }
    });
}

#[test]
fn concurrent_writers_in_memory() {
    let base = super::base((CHUNKS * u64::from(CHUNK)) as usize, 4);
    let o = Arc::new(Overlay::in_memory(base, &options()).unwrap());
    hammer(o, false);
}

#[test]
fn concurrent_writers_and_flushes_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let base = super::base((CHUNKS * u64::from(CHUNK)) as usize, 4);
    let o = Arc::new(Overlay::create(&path, base.clone(), &options()).unwrap());
    hammer(o.clone(), true);
    o.flush().unwrap();
    let want = contents(&o);
    drop(o);
    assert_eq!(contents(&open(&path, &base)), want);
}
