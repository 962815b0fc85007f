//! Every block codec's decoder on arbitrary bytes, and every encoder's output decoded back.
//!
//! Input: `[codec and mode, output length lo, output length hi, bytes...]`. Mode 0: decode the
//! bytes into an output of the given length (in 16-byte units, up to 1 MiB) with a fresh and a
//! long-lived decompressor, which must agree; the count returned never exceeds the output.
//! Mode 1: compress the bytes at a level from the length bytes, then decode into an output of
//! exactly their length (must give them back) and one byte shorter (must fail).
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use mkmodule_codec::{level_range, BlockCompressor, BlockDecompressor, CodecKind, CodecSpec};

static REUSED: Mutex<Option<BlockDecompressor>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let kind = CodecKind::ALL[usize::from(data[0]) % CodecKind::ALL.len()];
    let mode = (data[0] / CodecKind::ALL.len() as u8) % 2;
    let param = u16::from_le_bytes([data[1], data[2]]);
    let input = &data[3..];
    if mode == 0 {
        decode_arbitrary(kind, usize::from(param) * 16, input);
    } else {
        round_trip(kind, param, input);
    }
});

fn decode_arbitrary(kind: CodecKind, out_len: usize, input: &[u8]) {
    let mut fresh_out = vec![0u8; out_len];
    let fresh = BlockDecompressor::new().decompress(kind, input, &mut fresh_out);
    if let Ok(n) = fresh {
        assert!(
            n <= out_len,
            "{kind}: {n} bytes reported for a {out_len}-byte output"
        );
    }
    let mut guard = REUSED.lock().unwrap_or_else(|e| e.into_inner());
    let reused = guard.get_or_insert_with(BlockDecompressor::new);
    let mut reused_out = vec![0u8; out_len];
    let again = reused.decompress(kind, input, &mut reused_out);
    match (&fresh, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{kind}: a reused context decodes another length");
            assert!(
                fresh_out[..*a] == reused_out[..*b],
                "{kind}: a reused context differs"
            );
        }
        (Err(_), Err(_)) => {}
        _ => panic!("{kind}: fresh {fresh:?} but reused {again:?}"),
    }
    if let Err(e) = fresh {
        let _ = e.to_string();
    }
    let mut exact = vec![0u8; out_len];
    if let Ok(()) = reused.decompress_exact(kind, input, &mut exact) {
        assert!(matches!(again, Ok(n) if n == out_len));
    }
}

fn round_trip(kind: CodecKind, param: u16, input: &[u8]) {
    let spec = match level_range(kind) {
        Some(range) => {
            // Bounded levels: xz presets above 3 and slow zstd levels cost too much per input.
            let max = match kind {
                CodecKind::Xz => range.min.max(3).min(range.max),
                CodecKind::Zstd => range.max.min(9),
                _ => range.max,
            };
            let span = i64::from(max) - i64::from(range.min) + 1;
            let level = i64::from(range.min) + i64::from(param) % span.max(1);
            CodecSpec::new(kind, level as i32).expect("a level in range")
        }
        None => CodecSpec::with_default_level(kind),
    };
    let mut compressor = BlockCompressor::new(spec).expect("compressor");
    let mut packed = Vec::new();
    compressor.compress(input, &mut packed).expect("compress");
    let mut out = vec![0u8; input.len()];
    let mut guard = REUSED.lock().unwrap_or_else(|e| e.into_inner());
    let d = guard.get_or_insert_with(BlockDecompressor::new);
    if input.is_empty() {
        // Zero-length blocks are the format's business: the codecs refuse empty input.
        let _ = d.decompress(kind, &packed, &mut out);
        return;
    }
    d.decompress_exact(kind, &packed, &mut out)
        .unwrap_or_else(|e| panic!("{kind} ({spec:?}) does not decode its own output: {e}"));
    assert!(out == input, "{kind}: round trip differs");
    let mut short = vec![0u8; input.len() - 1];
    assert!(
        d.decompress(kind, &packed, &mut short).is_err(),
        "{kind}: decoded into a buffer one byte short"
    );
}
