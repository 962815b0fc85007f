//! Tests of the whole overlay: model-based property tests for both stores, reopening, crash
//! simulations and concurrent writers.

mod concurrency;
mod crash;
mod files;
mod model;

use std::path::Path;
use std::sync::Arc;

use mkmodule_blockdev::{BlockDevice, MemoryDevice};

use crate::{Overlay, OverlayOptions};

/// Chunk size used by most tests: the smallest, so small bases have many chunks.
pub(crate) const CHUNK: u32 = 4096;

/// A base of `size` bytes: a pattern with zero runs (reported as zero extents), so both data
/// and zero extents of the base show through.
pub(crate) fn base(size: usize, seed: u8) -> Arc<dyn BlockDevice> {
    let data: Vec<u8> = (0..size)
        .map(|i| {
            if (i / 3000) % 3 == 1 {
                0
            } else {
                (i as u8).wrapping_mul(31).wrapping_add(seed) | 1
            }
        })
        .collect();
    Arc::new(MemoryDevice::new(data).with_zero_extents(512))
}

pub(crate) fn options() -> OverlayOptions {
    OverlayOptions::default()
        .with_chunk_size(CHUNK)
        .with_label("test base")
}

pub(crate) fn open(path: &Path, base: &Arc<dyn BlockDevice>) -> Overlay {
    Overlay::open(path, base.clone(), &options()).unwrap()
}

/// The whole device as the overlay reads it.
pub(crate) fn contents(o: &Overlay) -> Vec<u8> {
    let mut buf = vec![0u8; o.size() as usize];
    o.read_at(&mut buf, 0).unwrap();
    buf
}

/// The whole base.
pub(crate) fn base_contents(b: &Arc<dyn BlockDevice>) -> Vec<u8> {
    let mut buf = vec![0u8; b.size() as usize];
    b.read_at(&mut buf, 0).unwrap();
    buf
}

/// Checks that the extents tile `[0, size)` and that every zero extent reads as zeros.
pub(crate) fn check_extents(o: &Overlay, expected: &[u8]) {
    let size = o.size();
    let extents = o.extents(0, size).unwrap();
    let mut pos = 0u64;
    for e in &extents {
        assert!(e.len > 0, "empty extent in {extents:?}");
        let end = (pos + e.len).min(size);
        if e.zero {
            assert!(
                expected[pos as usize..end as usize].iter().all(|&b| b == 0),
                "extent at {pos} length {} reported zero over data",
                e.len
            );
        }
        pos = end;
    }
    assert_eq!(pos, size, "extents {extents:?} do not cover the export");
}
