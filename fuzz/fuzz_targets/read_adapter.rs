//! The reader's `Read + Seek` adapter and its parallel passes on arbitrary images: a script of
//! reads and seeks through `Image::reader`, then `par_blocks` and `par_blocks_ordered` (one or
//! two threads, zero blocks skipped or not, optionally stopped by the sink at some block).
//!
//! Input: `[flags, op count, ops (5 bytes each)..., image]`. Flags: 1 exposed size is the
//! original length, 2 zero-block scan, 4 skip zero blocks in the passes, 8 two threads, 16 the
//! sinks stop with an error at block `stop` (the first op's byte). Op: `[kind, a lo, a hi, b lo,
//! b hi]`; kind (mod 4): 0 read `b % (3 × block size) + 1` bytes, 1 seek to `a / 65536` of the
//! size (plus `b`), 2 seek by `a - 32768` from the current position, 3 seek `b` back from the
//! end.
//!
//! Checks: a read returns what `read_at` returns at the same position (bytes, or an error
//! where it errs), never runs past the end and moves the position by its count; seeks land where
//! they say or fail leaving the position alone; the passes hand every block exactly once (the
//! ordered one in order, on the calling thread), each block as `Image::block` decodes it (a
//! skipped zero block only when it is zero), and a sink's error stops the pass and comes back.
#![no_main]

use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use mkmodule_image::{Decoded, Image, ParallelOptions};

/// Decoded bytes one input may cost in the passes and the reference decode.
const DECODE_BUDGET: u64 = 8 << 20;
/// Largest block size the read script runs on (each read may touch three blocks).
const MAX_SCRIPT_BLOCK: u64 = 1 << 20;

/// What a block decoded to, for comparisons: its bytes or its error text.
type Outcome = Result<Vec<u8>, String>;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let op_count = usize::from(data[1] % 32);
    let ops_end = (2 + 5 * op_count).min(data.len());
    let ops = &data[2..ops_end];
    let options = mkmodule_fuzz::reader_options(flags & 1 != 0, flags & 2 != 0);
    let Ok(image) = Image::from_bytes(data[ops_end..].to_vec(), &options) else {
        return;
    };
    let bs = u64::from(image.block_size());
    let n = image.num_blocks();
    let size = image.size();
    if bs <= MAX_SCRIPT_BLOCK {
        run_script(&image, ops);
    }
    if u64::from(n) * bs > DECODE_BUDGET {
        return;
    }
    let reference: Vec<Outcome> = (0..n)
        .map(|i| {
            image
                .block(i)
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        })
        .collect();
    assert!(size <= u64::from(n) * bs);
    let pass = ParallelOptions {
        threads: 1 + usize::from(flags & 8 != 0),
        skip_zero: flags & 4 != 0,
    };
    // A stop at some block (an image of no block has none to stop at).
    let stop = (flags & 16 != 0 && n > 0).then(|| u32::from(ops.first().copied().unwrap_or(0)) % n);
    unordered(&image, pass, &reference, stop);
    ordered(&image, pass, &reference, stop);
});

/// Checks one block a pass handed over against the reference decode.
fn check_block(
    i: u32,
    decoded: Result<Decoded<'_>, mkmodule_image::ImageError>,
    reference: &[Outcome],
) {
    let expected = &reference[i as usize];
    match (decoded, expected) {
        (Ok(Decoded::Data(data)), Ok(want)) => {
            assert!(data == &want[..], "block {i}: the pass decoded other bytes")
        }
        (Ok(Decoded::Zero), Ok(want)) => {
            assert!(
                want.iter().all(|&b| b == 0),
                "block {i} skipped as zero but is not"
            )
        }
        (Err(e), Err(want)) => assert_eq!(&e.to_string(), want, "block {i}: another error"),
        (Ok(_), Err(want)) => panic!("block {i}: the pass decoded what block() refused: {want}"),
        (Err(e), Ok(_)) => panic!("block {i}: the pass failed where block() decoded: {e}"),
    }
}

fn unordered(image: &Image, pass: ParallelOptions, reference: &[Outcome], stop: Option<u32>) {
    let n = image.num_blocks();
    let seen = Mutex::new(vec![0u32; n as usize]);
    let result = image.par_blocks(pass, |i, decoded| {
        assert!(i < n, "block {i} of {n}");
        check_block(i, decoded, reference);
        seen.lock().unwrap()[i as usize] += 1;
        if Some(i) == stop {
            return Err(i);
        }
        Ok(())
    });
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.iter().all(|&c| c <= 1),
        "a block was handed over twice"
    );
    match stop {
        None => {
            assert_eq!(result, Ok(()));
            assert!(
                seen.iter().all(|&c| c == 1),
                "a block was never handed over"
            );
        }
        Some(s) => {
            assert_eq!(result, Err(s), "the sink's error did not come back");
            assert_eq!(seen[s as usize], 1);
        }
    }
}

fn ordered(image: &Image, pass: ParallelOptions, reference: &[Outcome], stop: Option<u32>) {
    let n = image.num_blocks();
    let caller = std::thread::current().id();
    let mut next = 0u32;
    let result = image.par_blocks_ordered(pass, |i, decoded| {
        assert_eq!(
            std::thread::current().id(),
            caller,
            "not on the calling thread"
        );
        assert_eq!(i, next, "blocks out of order");
        next += 1;
        check_block(i, decoded, reference);
        if Some(i) == stop {
            return Err(i);
        }
        Ok(())
    });
    match stop {
        None => {
            assert_eq!(result, Ok(()));
            assert_eq!(next, n, "the ordered pass ended early");
        }
        Some(s) => {
            assert_eq!(result, Err(s));
            assert_eq!(
                next,
                s + 1,
                "the ordered pass went on after the sink's error"
            );
        }
    }
}

/// Runs the read and seek script through the adapter, checking it against `read_at`.
fn run_script(image: &Image, ops: &[u8]) {
    let size = image.size();
    let bs = u64::from(image.block_size());
    let mut reader = image.reader();
    let mut pos = 0u64;
    let mut budget = DECODE_BUDGET;
    for op in ops.chunks_exact(5) {
        let a = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let b = u64::from(u16::from_le_bytes([op[3], op[4]]));
        match op[0] % 4 {
            0 => {
                let len = (b % (3 * bs) + 1) as usize;
                if budget < 4 * bs {
                    continue;
                }
                budget -= 4 * bs;
                let mut got = vec![0u8; len];
                let mut want = vec![0u8; len];
                let r = reader.read(&mut got);
                let w = image.read_at(&mut want, pos);
                match (r, w) {
                    (Ok(k), Ok(_)) => {
                        assert!(k <= len);
                        assert!(pos + k as u64 <= size.max(pos), "read past the end");
                        if pos < size {
                            assert!(k > 0, "a read inside the image returned nothing");
                        } else {
                            assert_eq!(k, 0, "a read at or past the end returned bytes");
                        }
                        assert!(got[..k] == want[..k], "read differs from read_at at {pos}");
                        pos += k as u64;
                    }
                    (Err(_), Err(_)) => {}
                    (Ok(k), Err(e)) => {
                        // The adapter reads within one block; read_at may reach a bad one
                        // further on. Whatever the adapter returned must be right.
                        let mut one = vec![0u8; k];
                        match image.read_at(&mut one, pos) {
                            Ok(_) => assert!(got[..k] == one[..], "read differs at {pos}"),
                            Err(e2) => panic!("read succeeded where read_at fails: {e} / {e2}"),
                        }
                        pos += k as u64;
                    }
                    (Err(e), Ok(_)) => panic!("read failed where read_at succeeds at {pos}: {e}"),
                }
            }
            1 => {
                let to = (a as u128 * u128::from(size) / 65536) as u64 + b;
                assert_eq!(reader.seek(SeekFrom::Start(to)).unwrap(), to);
                pos = to;
            }
            2 => {
                let delta = a as i64 - 32768;
                match pos.checked_add_signed(delta) {
                    Some(to) => {
                        assert_eq!(reader.seek(SeekFrom::Current(delta)).unwrap(), to);
                        pos = to;
                    }
                    None => assert!(reader.seek(SeekFrom::Current(delta)).is_err()),
                }
            }
            _ => {
                let back = -(b as i64);
                match size.checked_add_signed(back) {
                    Some(to) => {
                        assert_eq!(reader.seek(SeekFrom::End(back)).unwrap(), to);
                        pos = to;
                    }
                    None => assert!(reader.seek(SeekFrom::End(back)).is_err()),
                }
            }
        }
        assert_eq!(reader.position(), pos, "position drifted");
    }
}
