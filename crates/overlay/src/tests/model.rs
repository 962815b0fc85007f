//! Random operation sequences against a `Vec<u8>` model, for both stores.

use std::sync::Arc;

use mkmodule_blockdev::BlockDevice;
use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: u64, seed: u8 },
    WriteZeros { offset: u64, len: u64 },
    Trim { offset: u64, len: u64 },
    Zero { offset: u64, len: u64 },
    Read { offset: u64, len: u64 },
    Flush,
    Reopen,
}

/// Base size: 9 chunks and a short tenth.
const SIZE: u64 = 9 * CHUNK as u64 + 1234;

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE).prop_flat_map(|offset| {
        let max = SIZE - offset;
        // Mostly small ranges (partial chunks), sometimes long ones (whole chunks).
        prop_oneof![1..=max.min(600), 1..=max].prop_map(move |len| (offset, len))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        1 => range().prop_map(|(offset, len)| Op::WriteZeros { offset, len }),
        2 => range().prop_map(|(offset, len)| Op::Trim { offset, len }),
        2 => range().prop_map(|(offset, len)| Op::Zero { offset, len }),
        2 => range().prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 0x80)
        .collect()
}

/// Applies an operation to the overlay and the model; `reopen` replaces the overlay.
fn apply(o: &mut Overlay, model: &mut [u8], op: &Op, reopen: &mut dyn FnMut(Overlay) -> Overlay) {
    match *op {
        Op::Write { offset, len, seed } => {
            let data = pattern(len, seed);
            o.write_at(&data, offset).unwrap();
            model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        }
        Op::WriteZeros { offset, len } => {
            o.write_at(&vec![0; len as usize], offset).unwrap();
            model[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Trim { offset, len } => {
            o.trim(offset, len).unwrap();
            model[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Zero { offset, len } => {
            o.write_zeroes(offset, len, false).unwrap();
            model[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Read { offset, len } => {
            let mut buf = vec![0xeeu8; len as usize];
            o.read_at(&mut buf, offset).unwrap();
            assert_eq!(buf, &model[offset as usize..(offset + len) as usize]);
        }
        Op::Flush => o.flush().unwrap(),
        Op::Reopen => {
            let old = std::mem::replace(
                o,
                Overlay::in_memory(super::base(16, 0), &options()).unwrap(),
            );
            *o = reopen(old);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_overlay_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let base = super::base(SIZE as usize, 3);
        let mut model = base_contents(&base);
        let mut o = Overlay::in_memory(base.clone(), &options()).unwrap();
        // A memory overlay cannot be reopened: Reopen keeps it.
        let mut keep = |o: Overlay| o;
        for op in &ops {
            apply(&mut o, &mut model, op, &mut keep);
        }
        prop_assert_eq!(contents(&o), model.clone());
        check_extents(&o, &model);
        prop_assert_eq!(base_contents(&base), base_contents(&super::base(SIZE as usize, 3)));
        let stats = o.stats();
        let held = o.memory_bytes();
        prop_assert!(held <= stats.data_chunks * u64::from(CHUNK));
        prop_assert!(held + u64::from(CHUNK) > stats.data_chunks * u64::from(CHUNK));
    }

    #[test]
    fn file_overlay_matches_the_model_across_reopens(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.cow");
        let base = super::base(SIZE as usize, 5);
        let mut model = base_contents(&base);
        let mut o = Overlay::create(&path, base.clone(), &options()).unwrap();
        let mut reopen = |old: Overlay| {
            old.flush().unwrap();
            drop(old);
            open(&path, &base)
        };
        for op in &ops {
            apply(&mut o, &mut model, op, &mut reopen);
        }
        prop_assert_eq!(contents(&o), model.clone());
        check_extents(&o, &model);
        o.flush().unwrap();
        drop(o);
        let o = open(&path, &base);
        prop_assert_eq!(contents(&o), model.clone());
        check_extents(&o, &model);
    }
}

#[test]
fn extents_show_written_zeroed_and_base_chunks() {
    let size = 16 * CHUNK as u64;
    let base: Arc<dyn BlockDevice> = Arc::new(mkmodule_blockdev::MemoryDevice::new(vec![
            1u8;
            size as usize
        ]));
    let o = Overlay::in_memory(base, &options()).unwrap();
    let c = u64::from(CHUNK);
    o.trim(2 * c, 3 * c).unwrap();
    o.write_at(&[9; 10], 8 * c + 5).unwrap();
    o.write_zeroes(12 * c, c, true).unwrap();
    let e = o.extents(0, size).unwrap();
    let flags: Vec<(u64, bool)> = e.iter().map(|e| (e.len, e.zero)).collect();
    assert_eq!(
        flags,
        vec![
            (2 * c, false),
            (3 * c, true),
            (7 * c, false),
            (c, true),
            (3 * c, false)
        ]
    );
    assert_eq!(o.stats().zero_chunks, 4);
    assert_eq!(o.stats().data_chunks, 1);
    assert_eq!(o.memory_bytes(), c);
    // A whole-chunk write of zeros stores nothing either.
    o.write_at(&vec![0; c as usize], 8 * c).unwrap();
    assert_eq!(o.memory_bytes(), 0);
    assert_eq!(o.stats().zero_chunks, 5);
}

#[test]
fn writes_outside_the_export_are_refused_and_read_only_refuses_writes() {
    let base = super::base(10_000, 1);
    let o = Overlay::in_memory(base.clone(), &options()).unwrap();
    assert!(o.write_at(&[1; 10], 9_995).is_err());
    assert!(o.trim(u64::MAX - 1, 4).is_err());
    let ro = Overlay::in_memory(base, &options().read_only(true)).unwrap();
    assert!(ro.is_read_only() && !ro.can_trim());
    assert_eq!(
        ro.write_at(&[1], 0).unwrap_err().kind(),
        std::io::ErrorKind::PermissionDenied
    );
    assert!(crate::check_chunk_size(3000).is_err());
    assert!(Overlay::in_memory(super::base(100, 0), &options().with_chunk_size(1 << 21)).is_err());
}

#[test]
fn a_range_past_the_end_is_invalid_input_and_the_base_keeps_its_error_kinds() {
    // A served overlay's errors reach NBD clients by I/O kind: InvalidInput is EINVAL.
    let base = super::base(10_000, 1);
    let o = Overlay::in_memory(base, &options()).unwrap();
    let mut buf = [0u8; 16];
    let past = o.read_at(&mut buf, 9_990).unwrap_err();
    assert_eq!(past.kind(), std::io::ErrorKind::InvalidInput, "{past}");
    let past = o.write_at(&buf, 10_000).unwrap_err();
    assert_eq!(past.kind(), std::io::ErrorKind::InvalidInput, "{past}");
}
