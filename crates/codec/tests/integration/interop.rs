//! The blocks have the exact shape other readers expect, and other tools' output decodes.

use crate::common;

use std::io::{Read, Write};

use common::{compress, decompress, random, text};
use mkmodule_codec::{BlockDecompressor, CodecError, CodecKind, CodecSpec, ZSTD_WINDOW_LOG_MAX};
use mkmodule_testkit::tools::pipe;

fn spec(text: &str) -> CodecSpec {
    text.parse().unwrap()
}

#[test]
fn zlib_is_an_rfc1950_stream_that_flate2_inflates() {
    for level in ["zlib:0", "zlib:1", "zlib:9", "zlib:12"] {
        for data in [text(65536), random(4096, 1), vec![0; 512]] {
            let block = compress(spec(level), &data);
            let (cmf, flg) = (block[0], block[1]);
            assert_eq!(cmf & 0x0F, 8, "{level}: CM = deflate");
            assert!(cmf >> 4 <= 7, "{level}: CINFO <= 7 (32 KiB window)");
            assert_eq!(
                (u16::from(cmf) << 8 | u16::from(flg)) % 31,
                0,
                "{level}: FCHECK"
            );
            assert_eq!(flg & 0x20, 0, "{level}: no preset dictionary");
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(&block[..])
                .read_to_end(&mut inflated)
                .unwrap();
            assert!(inflated == data, "{level}");
        }
    }
}

#[test]
fn flate2_zlib_streams_decode_with_slack_after_them() {
    let data = text(65536);
    for level in [0, 6, 9] {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
        enc.write_all(&data).unwrap();
        let mut block = enc.finish().unwrap();
        assert!(decompress(CodecKind::Zlib, &block, data.len()) == data);
        // qemu and cloop ignore bytes after the stream's end inside the block range.
        block.extend_from_slice(&[0u8; 100]);
        block.extend_from_slice(&random(37, 5));
        assert!(decompress(CodecKind::Zlib, &block, data.len()) == data);
    }
}

/// Reads an xz multibyte integer at `pos`, returning it and the position after it.
fn xz_varint(buf: &[u8], mut pos: usize) -> (u64, usize) {
    let mut value = 0u64;
    for shift in (0..63).step_by(7) {
        let b = buf[pos];
        pos += 1;
        value |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    (value, pos)
}

#[test]
fn xz_is_one_crc32_lzma2_stream_that_xz_decodes() {
    for level in ["xz:0", "xz:6", "xz:9"] {
        let data = text(65536);
        let block = compress(spec(level), &data);
        // Stream header: magic, flags 00 01 (check = CRC32).
        assert_eq!(&block[..6], b"\xFD7zXZ\0", "{level}: magic");
        assert_eq!(&block[6..8], &[0x00, 0x01], "{level}: CRC32 check");
        // Stream footer: backward size, same flags, "YZ".
        let n = block.len();
        assert_eq!(&block[n - 2..], b"YZ", "{level}: footer magic");
        assert_eq!(&block[n - 4..n - 2], &[0x00, 0x01], "{level}: footer flags");
        // Block header at 12: one filter, LZMA2 (0x21), no BCJ.
        let flags = block[13];
        assert_eq!(flags & 0x03, 0, "{level}: exactly one filter");
        let mut pos = 14;
        if flags & 0x40 != 0 {
            pos = xz_varint(&block, pos).1;
        }
        if flags & 0x80 != 0 {
            pos = xz_varint(&block, pos).1;
        }
        let (filter, _) = xz_varint(&block, pos);
        assert_eq!(filter, 0x21, "{level}: LZMA2 filter");
        let out = pipe("xz", &["-d", "-c"], &block);
        assert!(out == data, "{level}: xz -d output");
    }
}

#[test]
fn xz_cli_streams_decode_including_crc64_and_preset_9() {
    let data = text(65536);
    for args in [
        &["-z", "-c", "--check=crc32", "-6"][..],
        &["-z", "-c", "-9"],
        &["-z", "-c", "--check=sha256", "-0"],
        &["-z", "-c", "--check=none", "-1"],
    ] {
        let block = pipe("xz", args, &data);
        assert!(
            decompress(CodecKind::Xz, &block, data.len()) == data,
            "{args:?}"
        );
        // Bytes after the stream footer are ignored, like slack after a zlib stream.
        let mut padded = block.clone();
        padded.extend_from_slice(&[0u8; 64]);
        assert!(
            decompress(CodecKind::Xz, &padded, data.len()) == data,
            "{args:?}"
        );
    }
}

#[test]
fn zstd_frame_has_checksum_and_content_size() {
    for level in ["zstd:1", "zstd:9", "zstd:19"] {
        for data in [text(65536), random(4096, 2), vec![0; 1 << 20]] {
            let block = compress(spec(level), &data);
            assert_eq!(&block[..4], &[0x28, 0xB5, 0x2F, 0xFD], "{level}: magic");
            let fhd = block[4];
            assert_ne!(fhd & 0x04, 0, "{level}: content checksum flag");
            let single_segment = fhd & 0x20 != 0;
            let fcs_flag = fhd >> 6;
            assert!(
                single_segment || fcs_flag != 0,
                "{level}: content size field"
            );
            assert_eq!(fhd & 0x03, 0, "{level}: no dictionary id");
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&block).unwrap(),
                Some(data.len() as u64),
                "{level}"
            );
            let plain = zstd::bulk::decompress(&block, data.len()).unwrap();
            assert!(plain == data, "{level}: zstd crate");
            let out = pipe("zstd", &["-d", "-c", "-q"], &block);
            assert!(out == data, "{level}: zstd -d output");
        }
    }
}

#[test]
fn zstd_cli_frames_decode() {
    let data = text(65536);
    for args in [&["-c", "-q", "-19"][..], &["-c", "-q", "--no-check"]] {
        let block = pipe("zstd", args, &data);
        assert!(
            decompress(CodecKind::Zstd, &block, data.len()) == data,
            "{args:?}"
        );
    }
}

#[test]
fn lz4_is_one_raw_block() {
    for data in [text(65536), random(4096, 3), vec![0; 1 << 20], vec![7]] {
        let block = compress(CodecSpec::with_default_level(CodecKind::Lz4), &data);
        // A raw block starts with a token, not the frame magic 04 22 4D 18 or a size prefix.
        assert_ne!(&block[..block.len().min(4)], &[0x04, 0x22, 0x4D, 0x18]);
        let plain = lz4_flex::block::decompress(&block, data.len()).unwrap();
        assert!(plain == data);
    }
}

#[test]
fn zstd_refuses_frames_that_declare_a_huge_window() {
    // Frame header without single-segment flag, window descriptor 2^31, one raw block of 1 byte.
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, (31 - 10) << 3];
    frame.extend_from_slice(&[0x09, 0x00, 0x00, b'x']);
    let mut out = [0u8; 16];
    let mut d = BlockDecompressor::new();
    let err = d.decompress(CodecKind::Zstd, &frame, &mut out).unwrap_err();
    assert_eq!(
        err,
        CodecError::MemoryLimit {
            codec: CodecKind::Zstd,
            limit: 1 << ZSTD_WINDOW_LOG_MAX
        }
    );
    // 2^27 + 2^24 (mantissa 1) is just over the limit as well.
    frame[5] = ((27 - 10) << 3) | 1;
    assert!(d.decompress(CodecKind::Zstd, &frame, &mut out).is_err());
    // The same frame with a 128 MiB window (the limit) is accepted.
    frame[5] = (27 - 10) << 3;
    let n = d.decompress(CodecKind::Zstd, &frame, &mut out).unwrap();
    assert_eq!((n, out[0]), (1, b'x'));
}

/// Runs Debian's Python 3 with python3-lzo (liblzo2, the reference LZO implementation) on
/// `script`, feeding `input` on standard input.
#[cfg(feature = "lzo")]
fn liblzo2(script: &str, input: &[u8]) -> Vec<u8> {
    let program = format!("import sys, lzo; d = sys.stdin.buffer.read(); {script}");
    pipe("/usr/bin/python3", &["-c", &program], input)
}

/// Text, random bytes, zeros, a few bytes and nothing: the shapes LZO1X encodes differently.
#[cfg(feature = "lzo")]
fn lzo_samples(seed: u64) -> [Vec<u8>; 5] {
    let tiny = b"abc".to_vec();
    [
        text(65536),
        random(4096, seed),
        vec![0; 4096],
        tiny,
        Vec::new(),
    ]
}

#[test]
#[cfg(feature = "lzo")]
fn liblzo2_lzo1x_1_and_999_blocks_decode() {
    for data in lzo_samples(7) {
        // python-lzo's level 1 is lzo1x_1_compress, level 9 lzo1x_999_compress; no header.
        for level in [1, 9] {
            let script = format!("sys.stdout.buffer.write(lzo.compress(d, {level}, False))");
            let block = liblzo2(&script, &data);
            assert!(
                decompress(CodecKind::Lzo, &block, data.len()) == data,
                "level {level}, {} bytes",
                data.len()
            );
        }
    }
}

#[test]
#[cfg(feature = "lzo")]
fn lzo_blocks_decode_with_liblzo2() {
    for data in lzo_samples(8) {
        let block = compress(CodecSpec::with_default_level(CodecKind::Lzo), &data);
        let script = format!(
            "sys.stdout.buffer.write(lzo.decompress(d, False, {}))",
            data.len()
        );
        assert!(liblzo2(&script, &block) == data, "{} bytes", data.len());
    }
}
