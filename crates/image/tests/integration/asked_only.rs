//! A source that wants asked-for reads only (`ImageSource::asked_only`, a remote origin): the
//! reader reads exactly the blocks its readers ask for, the blocks of one read together, and
//! nothing ahead; a local source keeps its read-ahead.

use crate::common;

use std::io;
use std::sync::{Arc, Mutex};

use common::{build, random, Spec};
use mkmodule_format::Dialect;
use mkmodule_image::{Image, ImageSource, OpenOptions};

const BS: u32 = 4096;
const BLOCKS: usize = 64;

/// The calls a reader made: each is the ranges `(offset, len)` of one `read_exact_at` or
/// `read_many_at` call (what a remote source fetches with one request when adjacent).
type Calls = Arc<Mutex<Vec<Vec<(u64, usize)>>>>;

/// An image in memory that records its reads and says whether it wants asked-for reads only.
struct Recording {
    bytes: Vec<u8>,
    asked_only: bool,
    calls: Calls,
}

impl ImageSource for Recording {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.calls.lock().unwrap().push(vec![(offset, buf.len())]);
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    fn read_many_at(&self, reads: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        let call = reads.iter().map(|(o, b)| (*o, b.len())).collect();
        self.calls.lock().unwrap().push(call);
        for (offset, buf) in reads.iter_mut() {
            let at = *offset as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        }
        Ok(())
    }

    fn asked_only(&self) -> bool {
        self.asked_only
    }
}

/// An image of incompressible blocks (no zero block), opened over a recording source with
/// read-ahead on; the calls made while opening are forgotten.
fn open(asked_only: bool) -> (Image, Calls, Vec<u8>) {
    let data = random(BLOCKS * BS as usize, 7);
    let built = build(&data, &Spec::new(Dialect::LinuxV2, BS));
    let calls = Calls::default();
    let source = Recording {
        bytes: built.image.clone(),
        asked_only,
        calls: Arc::clone(&calls),
    };
    let options = OpenOptions {
        readahead: 16 * u64::from(BS),
        readahead_threads: 2,
        ..OpenOptions::default()
    };
    let image = Image::open_source(Box::new(source), "recorded", &options).unwrap();
    calls.lock().unwrap().clear();
    (image, calls, built.expected)
}

/// The stored range of each block.
fn ranges(image: &Image, blocks: std::ops::RangeInclusive<u32>) -> Vec<(u64, usize)> {
    blocks
        .map(|b| {
            let e = image.index().get(b as usize).unwrap();
            (e.offset, e.len as usize)
        })
        .collect()
}

/// Reads `len` bytes at `offset` and checks them.
fn read(image: &Image, expected: &[u8], offset: u64, len: usize) {
    let mut buf = vec![0u8; len];
    image.read_exact_at(&mut buf, offset).unwrap();
    assert!(buf == expected[offset as usize..offset as usize + len]);
}

fn taken(calls: &Calls) -> Vec<Vec<(u64, usize)>> {
    std::mem::take(&mut *calls.lock().unwrap())
}

#[test]
fn random_reads_fetch_exactly_their_blocks() {
    let (image, calls, expected) = open(true);
    assert_eq!(image.readahead_window(), 0);
    let bs = u64::from(BS);
    for block in [5u32, 40, 6, 7, 8, 9, 10, 11, 12, 13, 30, 2] {
        // Inside one block, the way a boot reads 4 KiB pages of scattered files: blocks 6 to
        // 13 come in order, which on a local file would start read-ahead.
        read(&image, &expected, u64::from(block) * bs + 100, 1000);
        assert_eq!(
            taken(&calls),
            vec![ranges(&image, block..=block)],
            "block {block}"
        );
    }
    // Read again: from the cache, nothing fetched.
    read(&image, &expected, 40 * bs, 10);
    assert!(taken(&calls).is_empty());
}

#[test]
fn the_blocks_of_one_read_are_fetched_together_and_never_a_gap() {
    let (image, calls, expected) = open(true);
    let bs = u64::from(BS);
    // A sequential run of reads of three blocks each (a kernel reading ahead within a file):
    // one call per read, holding exactly that read's blocks.
    for first in [20u32, 23, 26] {
        read(&image, &expected, u64::from(first) * bs, 3 * BS as usize);
        assert_eq!(taken(&calls), vec![ranges(&image, first..=first + 2)]);
    }
    // A read that starts and ends within blocks spans them all.
    read(&image, &expected, 50 * bs + 4000, 2 * BS as usize);
    assert_eq!(taken(&calls), vec![ranges(&image, 50..=52)]);
    // Block 61 is cached: a read of 60..=62 fetches 60 and 62 only (a remote source makes two
    // requests of them, never one spanning the cached block).
    read(&image, &expected, 61 * bs, 10);
    taken(&calls);
    read(&image, &expected, 60 * bs, 3 * BS as usize);
    let mut want = ranges(&image, 60..=60);
    want.extend(ranges(&image, 62..=62));
    assert_eq!(taken(&calls), vec![want]);
}

#[test]
fn a_local_source_still_reads_ahead() {
    let (image, calls, expected) = open(false);
    assert_eq!(image.readahead_window(), 16);
    let bs = u64::from(BS);
    for block in [10u32, 11] {
        read(&image, &expected, u64::from(block) * bs, 100);
    }
    // The second read made the reader sequential: blocks 12 to 27 are decoded ahead, by the
    // pool, in the background. Wait (bounded) until they were read.
    let ahead: Vec<(u64, usize)> = ranges(&image, 12..=27);
    let start = std::time::Instant::now();
    loop {
        let read: Vec<(u64, usize)> = calls.lock().unwrap().iter().flatten().copied().collect();
        if ahead.iter().all(|r| read.contains(r)) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "read-ahead did not read blocks 12..=27: {read:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
