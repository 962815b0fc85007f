//! Simulated crashes: dropping without a flush, and torn or garbled log records. After
//! reopening, every chunk must read as it did at the last flush or as it read at some point
//! after it (unflushed writes may or may not survive, in any combination, as on a disk);
//! never anything else: no stale, foreign or unwritten bytes.

use std::os::unix::fs::FileExt;

use mkmodule_blockdev::BlockDevice;
use proptest::prelude::*;

use super::*;

const SIZE: u64 = 12 * CHUNK as u64 + 700;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: u64, seed: u8 },
    Zero { offset: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|offset| {
        prop_oneof![1..=(SIZE - offset).min(900), 1..=(SIZE - offset)]
            .prop_map(move |len| (offset, len))
    });
    prop_oneof![
        3 => (range.clone(), any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        1 => range.prop_map(|(offset, len)| Op::Zero { offset, len }),
    ]
}

/// Runs `ops`, appending the model after each one to `history`.
fn run(o: &Overlay, model: &mut [u8], ops: &[Op], history: &mut Vec<Vec<u8>>) {
    for op in ops {
        match *op {
            Op::Write { offset, len, seed } => {
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed | 0x40).collect();
                o.write_at(&data, offset).unwrap();
                model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            }
            Op::Zero { offset, len } => {
                o.trim(offset, len).unwrap();
                model[offset as usize..(offset + len) as usize].fill(0);
            }
        }
        history.push(model.to_vec());
    }
}

/// Every chunk of `got` equals that chunk of one of `allowed`.
fn each_chunk_is_one_of(got: &[u8], allowed: &[Vec<u8>]) -> Result<(), TestCaseError> {
    for (i, chunk) in got.chunks(CHUNK as usize).enumerate() {
        let start = i * CHUNK as usize;
        let ok = allowed
            .iter()
            .any(|m| &m[start..start + chunk.len()] == chunk);
        prop_assert!(
            ok,
            "chunk {} reads neither its flushed content nor a later one",
            i
        );
    }
    Ok(())
}

/// How a crash damages the last log record.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The record was cut at this fraction of its length (the rest never reached the disk).
    Torn(f64),
    /// A byte at this fraction of the record was garbled.
    Flipped(f64),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Flush, write more, crash without flushing: the flushed state survives, later writes
    /// may or may not, and nothing else appears.
    #[test]
    fn crash_without_flush(
        before in proptest::collection::vec(op(), 0..15),
        after in proptest::collection::vec(op(), 0..15),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.cow");
        let base = super::base(SIZE as usize, 9);
        let mut model = base_contents(&base);
        let o = Overlay::create(&path, base.clone(), &options()).unwrap();
        run(&o, &mut model, &before, &mut Vec::new());
        o.flush().unwrap();
        let mut history = vec![model.clone()];
        run(&o, &mut model, &after, &mut history);
        o.crash();
        let o = open(&path, &base);
        each_chunk_is_one_of(&contents(&o), &history)?;
        // Written-then-flushed data is all there after a second reopen with a flush.
        o.flush().unwrap();
        let now = contents(&o);
        drop(o);
        prop_assert_eq!(contents(&open(&path, &base)), now);
    }

    /// Two flushes, then the second flush's record is torn or garbled (as a crash in the middle
    /// of writing it would leave it): the overlay opens, and each chunk reads as after the
    /// first flush or as at some point up to the second.
    #[test]
    fn torn_last_record(
        first in proptest::collection::vec(op(), 1..12),
        second in proptest::collection::vec(op(), 1..12),
        damage in prop_oneof![
            (0.0..1.0f64).prop_map(Damage::Torn),
            (0.0..1.0f64).prop_map(Damage::Flipped),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.cow");
        let base = super::base(SIZE as usize, 11);
        let mut model = base_contents(&base);
        let o = Overlay::create(&path, base.clone(), &options()).unwrap();
        run(&o, &mut model, &first, &mut Vec::new());
        o.flush().unwrap();
        let mut history = vec![model.clone()];
        let r1 = o.file_store().unwrap().last_record();
        run(&o, &mut model, &second, &mut history);
        o.flush().unwrap();
        let r2 = o.file_store().unwrap().last_record();
        o.crash();
        if let Some((at, len)) = r2.filter(|_| r2 != r1) {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            match damage {
                Damage::Torn(x) => {
                    let cut = ((len as f64 * x) as u64).min(len - 1);
                    f.write_all_at(&vec![0u8; (len - cut) as usize], at + cut).unwrap();
                }
                Damage::Flipped(x) => {
                    let i = ((len as f64 * x) as u64).min(len - 1);
                    let mut b = [0u8];
                    f.read_at(&mut b, at + i).unwrap();
                    f.write_all_at(&[b[0] ^ 0x5a], at + i).unwrap();
                }
            }
        }
        let o = open(&path, &base);
        each_chunk_is_one_of(&contents(&o), &history)?;
    }
}

/// A damaged checkpoint falls back to the other region; two damaged ones are an error.
#[test]
fn damaged_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let base = super::base(SIZE as usize, 1);
    let o = Overlay::create(&path, base.clone(), &options()).unwrap();
    o.write_at(&[7; 100], 5000).unwrap();
    o.flush().unwrap();
    drop(o);
    drop(open(&path, &base));
    // Reopening wrote a checkpoint of generation 3 in one region; the other holds generation
    // 2 and its log with the write. Damage the newer one: the older one and its log still
    // give the same state.
    let layout = crate::journal::Layout::new(u64::from(CHUNK), SIZE).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let generation = |region: u64| {
        let mut b = [0u8; 16];
        f.read_exact_at(&mut b, region).unwrap();
        u64::from_le_bytes(b[8..16].try_into().unwrap())
    };
    let newer = if generation(layout.regions[0]) > generation(layout.regions[1]) {
        layout.regions[0]
    } else {
        layout.regions[1]
    };
    f.write_all_at(&[0xff; 8], newer + 8).unwrap();
    let o = open(&path, &base);
    let mut b = [0u8; 100];
    o.read_at(&mut b, 5000).unwrap();
    assert_eq!(b, [7; 100]);
    o.crash();
    for region in layout.regions {
        f.write_all_at(&[0xff; 8], region + 8).unwrap();
    }
    let err = Overlay::open(&path, base, &options()).unwrap_err();
    assert!(matches!(err, crate::OverlayError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("both metadata checkpoints"),
        "{err}"
    );
}
