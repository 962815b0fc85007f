//! Corrupt, truncated, empty, hostile and oversized blocks fail cleanly for every codec.

use crate::common;

use common::{compress, default_specs, random, text};
use mkmodule_codec::{BlockDecompressor, CodecError, CodecKind, CodecSpec, XZ_MEMLIMIT};

/// Codecs whose blocks carry an integrity check, so every alteration must be detected.
fn checked(kind: CodecKind) -> bool {
    matches!(kind, CodecKind::Zlib | CodecKind::Zstd | CodecKind::Xz)
}

/// Decodes into a window of a larger buffer and checks nothing outside the window changed.
fn decode_guarded(
    d: &mut BlockDecompressor,
    kind: CodecKind,
    block: &[u8],
    len: usize,
    exact: bool,
) -> Result<usize, CodecError> {
    const GUARD: usize = 64;
    let mut buf = vec![0x5Au8; len + 2 * GUARD];
    let out = &mut buf[GUARD..GUARD + len];
    let res = if exact {
        d.decompress_exact(kind, block, out).map(|()| len)
    } else {
        d.decompress(kind, block, out)
    };
    assert!(
        buf[..GUARD].iter().all(|&b| b == 0x5A),
        "{kind}: wrote before"
    );
    assert!(
        buf[GUARD + len..].iter().all(|&b| b == 0x5A),
        "{kind}: wrote past"
    );
    if let Ok(n) = res {
        assert!(n <= len, "{kind}: reported {n} > {len}");
    }
    res
}

#[test]
fn empty_input_is_an_error_for_every_codec() {
    let mut d = BlockDecompressor::new();
    for kind in CodecKind::ALL {
        for len in [0, 512] {
            let mut out = vec![0u8; len];
            let err = d.decompress(kind, &[], &mut out).unwrap_err();
            assert!(
                matches!(err, CodecError::Empty { codec } if codec == kind)
                    || (!cfg!(feature = "lzo") && kind == CodecKind::Lzo),
                "{kind}: {err}"
            );
        }
    }
}

#[test]
fn truncated_blocks_fail() {
    let mut d = BlockDecompressor::new();
    for spec in default_specs() {
        for data in [text(65536), random(4096, 9)] {
            let block = compress(spec, &data);
            let mut cuts: Vec<usize> = (1..block.len().min(64)).collect();
            cuts.extend((0..block.len()).step_by(block.len() / 50 + 1));
            cuts.extend(block.len().saturating_sub(16)..block.len());
            for cut in cuts {
                let res = decode_guarded(&mut d, spec.kind(), &block[..cut], data.len(), true);
                assert!(
                    res.is_err(),
                    "{spec}: cut at {cut} of {} decoded",
                    block.len()
                );
            }
        }
    }
}

#[test]
fn flipped_bytes_fail_checked_codecs_and_never_panic() {
    let mut d = BlockDecompressor::new();
    let mut harmless = Vec::new();
    for spec in default_specs() {
        let data = text(4096);
        let block = compress(spec, &data);
        for pos in 0..block.len() {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut bad = block.clone();
                bad[pos] ^= mask;
                let mut out = vec![0u8; data.len()];
                let res = d.decompress_exact(spec.kind(), &bad, &mut out);
                if checked(spec.kind()) && res.is_ok() {
                    // Only a flip the format cannot see (e.g. deflate padding bits) may pass.
                    assert!(
                        out == data,
                        "{spec}: flip {mask:#x} at {pos} gave wrong data"
                    );
                    harmless.push(format!("{spec}: {mask:#x} at {pos}/{}", block.len()));
                }
                let _ = decode_guarded(&mut d, spec.kind(), &bad, data.len(), true);
                // Non-exact decoding of the same bytes is bounded too.
                let _ = decode_guarded(&mut d, spec.kind(), &bad, data.len(), false);
            }
        }
    }
    println!("undetectable flips that decoded correctly: {harmless:?}");
}

#[test]
fn garbage_fails_checked_codecs_and_never_panics() {
    let mut d = BlockDecompressor::new();
    for kind in CodecKind::ALL {
        for len in [1usize, 2, 3, 5, 8, 13, 100, 4096] {
            for seed in 0..8 {
                let junk = random(len, seed * 1000 + len as u64);
                for out_len in [0usize, 1, 512, 65536] {
                    let res = decode_guarded(&mut d, kind, &junk, out_len, false);
                    if checked(kind) {
                        assert!(res.is_err(), "{kind}: garbage {len}/{seed} decoded");
                    }
                }
            }
        }
    }
}

#[test]
fn blocks_larger_than_the_buffer_are_refused() {
    let mut d = BlockDecompressor::new();
    for spec in default_specs() {
        for data in [text(8192), random(8192, 4), vec![0u8; 8192]] {
            let block = compress(spec, &data);
            for out_len in [0usize, 1, 4096, 8191] {
                let err = decode_guarded(&mut d, spec.kind(), &block, out_len, false).unwrap_err();
                match (spec.kind(), &err) {
                    (_, CodecError::OutputTooLarge { limit, .. }) => assert_eq!(*limit, out_len),
                    _ => panic!("{spec} into {out_len}: {err}"),
                }
            }
        }
    }
}

#[test]
fn zstd_frame_without_content_size_is_bounded_by_the_buffer() {
    use zstd::zstd_safe::CParameter;
    let data = text(8192);
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.set_parameter(CParameter::ContentSizeFlag(false)).unwrap();
    let block = c.compress(&data).unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&block).unwrap(),
        None
    );
    let mut d = BlockDecompressor::new();
    let err = decode_guarded(&mut d, CodecKind::Zstd, &block, 4096, false).unwrap_err();
    assert!(
        matches!(err, CodecError::OutputTooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert_eq!(
        decode_guarded(&mut d, CodecKind::Zstd, &block, 8192, true).unwrap(),
        8192
    );
}

#[test]
fn decompress_exact_reports_short_blocks_with_numbers() {
    let mut d = BlockDecompressor::new();
    for spec in default_specs() {
        let block = compress(spec, &text(1000));
        let mut out = vec![0u8; 4096];
        let err = d
            .decompress_exact(spec.kind(), &block, &mut out)
            .unwrap_err();
        match err {
            CodecError::SizeMismatch {
                codec,
                expected,
                actual,
            } => {
                assert_eq!((codec, expected, actual), (spec.kind(), 4096, 1000));
                assert_eq!(
                    err.to_string(),
                    format!("{codec} block decoded to 1000 bytes, expected 4096")
                );
            }
            other => panic!("{spec}: {other}"),
        }
    }
}

#[test]
fn trailing_bytes_after_a_stream_are_ignored_where_the_format_ends_itself() {
    let mut d = BlockDecompressor::new();
    for kind in [CodecKind::Zlib, CodecKind::Zstd, CodecKind::Xz] {
        let data = text(65536);
        let mut block = compress(CodecSpec::with_default_level(kind), &data);
        block.extend_from_slice(&[0u8; 40]);
        block.extend_from_slice(&random(40, 1));
        let mut out = vec![0u8; data.len()];
        d.decompress_exact(kind, &block, &mut out).unwrap();
        assert!(out == data, "{kind}");
    }
}

/// Rewrites the LZMA2 dictionary-size byte of an xz block header and fixes the header CRC32.
fn set_xz_dict_byte(block: &mut [u8], dict: u8) {
    let header_len = (usize::from(block[12]) + 1) * 4;
    let header = &mut block[12..12 + header_len];
    // Size, flags (no optional sizes), filter id 0x21, properties size 1, dictionary byte.
    assert_eq!(header[1], 0, "no compressed/uncompressed size fields");
    assert_eq!(&header[2..4], &[0x21, 0x01]);
    header[4] = dict;
    let crc = libdeflater::crc32(&header[..header_len - 4]);
    header[header_len - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn xz_memory_is_bounded() {
    let data = text(4096);
    let mut block = compress("xz:6".parse().unwrap(), &data);
    let mut d = BlockDecompressor::new();
    let mut out = vec![0u8; data.len()];
    // A dictionary of 64 MiB (xz -9) is within the limit.
    set_xz_dict_byte(&mut block, 26);
    d.decompress_exact(CodecKind::Xz, &block, &mut out).unwrap();
    assert!(out == data);
    // 3 GiB and 4 GiB dictionaries are refused before anything is allocated.
    for dict in [38u8, 40] {
        set_xz_dict_byte(&mut block, dict);
        let err = d
            .decompress_exact(CodecKind::Xz, &block, &mut out)
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::MemoryLimit {
                codec: CodecKind::Xz,
                limit: XZ_MEMLIMIT
            }
        );
    }
}

#[test]
fn xz_with_a_broken_check_fails() {
    let data = text(4096);
    let block = compress("xz:6".parse().unwrap(), &data);
    // The CRC32 of the data sits right before the index; find it via the known layout: the
    // last 12 bytes are the footer, the index precedes it. Flip every byte in the last 40.
    let mut d = BlockDecompressor::new();
    let mut out = vec![0u8; data.len()];
    for pos in block.len() - 40..block.len() {
        let mut bad = block.clone();
        bad[pos] ^= 0x10;
        assert!(
            d.decompress_exact(CodecKind::Xz, &bad, &mut out).is_err(),
            "pos {pos}"
        );
    }
}

#[cfg(not(feature = "lzo"))]
#[test]
fn lzo_is_unsupported_without_the_feature() {
    let err = mkmodule_codec::BlockCompressor::new(CodecSpec::with_default_level(CodecKind::Lzo))
        .unwrap_err();
    assert_eq!(
        err,
        CodecError::Unsupported {
            codec: CodecKind::Lzo
        }
    );
}
