//! Property tests: round trips are identities, and no input makes a decoder panic.

use crate::common;

use common::{compress, default_specs, text};
use mkmodule_codec::{BlockCompressor, BlockDecompressor, CodecKind};
use proptest::prelude::*;

/// Any codec of this build.
fn any_kind() -> impl Strategy<Value = CodecKind> {
    proptest::sample::select(
        default_specs()
            .into_iter()
            .map(|s| s.kind())
            .collect::<Vec<_>>(),
    )
}

/// Bytes that compress somewhat: runs and repeats mixed with noise.
fn blocky_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..max),
        proptest::collection::vec((any::<u8>(), 1usize..64), 1..max / 32).prop_map(move |runs| {
            let mut v: Vec<u8> = runs
                .into_iter()
                .flat_map(|(b, n)| std::iter::repeat_n(b, n))
                .collect();
            v.truncate(max);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_is_identity(kind in any_kind(), data in blocky_bytes(65536)) {
        let spec = mkmodule_codec::CodecSpec::with_default_level(kind);
        let mut c = BlockCompressor::new(spec).unwrap();
        let mut block = Vec::new();
        c.compress(&data, &mut block).unwrap();
        prop_assert!(block.len() as u64 <= kind.max_compressed_len(data.len() as u32));
        let mut out = vec![0u8; data.len()];
        BlockDecompressor::new().decompress_exact(kind, &block, &mut out).unwrap();
        prop_assert!(out == data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        kind in any_kind(),
        junk in proptest::collection::vec(any::<u8>(), 0..2048),
        out_len in 0usize..8192,
    ) {
        let mut out = vec![0u8; out_len];
        if let Ok(n) = BlockDecompressor::new().decompress(kind, &junk, &mut out) {
            prop_assert!(n <= out_len);
        }
    }

    #[test]
    fn mutated_blocks_never_panic(
        kind in any_kind(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        out_len in prop_oneof![Just(4096usize), 0usize..8192],
    ) {
        let data = text(4096);
        let mut block = compress(mkmodule_codec::CodecSpec::with_default_level(kind), &data);
        if block.is_empty() {
            return Ok(());
        }
        for (at, byte) in edits {
            let i = at.index(block.len());
            block[i] = byte;
        }
        block.truncate(cut.index(block.len()) + 1);
        let mut out = vec![0u8; out_len];
        let mut d = BlockDecompressor::new();
        if let Ok(n) = d.decompress(kind, &block, &mut out) {
            prop_assert!(n <= out_len);
        }
        let _ = d.decompress_exact(kind, &block, &mut out);
    }
}
