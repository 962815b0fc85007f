//! Round trips through `pack`: every written dialect and codec, several sizes and kinds of data,
//! every sink; decoded with the format and codec crates only.

use std::io::{self, Cursor, Read, Write};

use mkmodule_codec::CodecKind;
use mkmodule_format::{parse_image, BlockKind, Dialect, DigestAlgorithm, HeaderPosition};
use mkmodule_pack::{pack, CodecChoice, PackError, PackOptions, PackSummary, ProgressEvent, Sink};

const BS: u32 = 4096;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i}: the quick brown fox {}\n", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Mixed content: text, a zero stretch, random bytes, a repeat of the first block.
fn mixed(len: usize) -> Vec<u8> {
    let mut out = text(len / 4);
    out.resize(len / 2, 0);
    out.extend_from_slice(&random(len / 4, 7));
    let mut head = out[..out.len().min(BS as usize)].to_vec();
    head.push(b'!');
    while out.len() < len {
        out.extend_from_slice(&head);
    }
    out.truncate(len);
    out
}

fn options(dialect: Dialect, codec: &str) -> PackOptions {
    PackOptions {
        dialect,
        codec: codec.parse().unwrap(),
        block_size: BS,
        threads: 2,
        ..PackOptions::portable()
    }
}

/// Packs `input` with the sink a CLI would pick: in place when the length is given, spooled
/// otherwise, streamed for footer dialects.
fn pack_bytes(input: &[u8], options: &PackOptions) -> Result<(Vec<u8>, PackSummary), PackError> {
    let mut out = Cursor::new(Vec::new());
    let summary = if options.dialect.spec().header_position == HeaderPosition::End {
        pack(input, Sink::Stream(&mut out), options, &|_| {})?
    } else if options.input_len.is_some() {
        pack(input, Sink::Seekable(&mut out), options, &|_| {})?
    } else {
        let mut spool = Cursor::new(Vec::new());
        pack(
            input,
            Sink::Spooled {
                output: &mut out,
                spool: &mut spool,
            },
            options,
            &|_| {},
        )?
    };
    Ok((out.into_inner(), summary))
}

/// Decodes an image to its device bytes with the format and codec crates only.
fn decode(image: &[u8]) -> Vec<u8> {
    mkmodule_testkit::image::decode(image).1
}

/// Checks an image against its input: dialect, contents, padding, trailer, summary.
fn check(image: &[u8], input: &[u8], options: &PackOptions, summary: &PackSummary) {
    let parsed = parse_image(image).expect("image parses");
    let dialect = parsed.layout.dialect;
    assert_eq!(dialect, options.dialect);
    let bs = BS as usize;
    let n = input.len().div_ceil(bs).max(1);
    assert_eq!(parsed.index.len(), n, "block count");
    assert_eq!(summary.num_blocks as usize, n);
    assert_eq!(summary.image_len, image.len() as u64);
    assert_eq!(summary.input_len, input.len() as u64);
    let device = decode(image);
    assert_eq!(&device[..input.len()], input, "contents");
    let tail = &device[input.len()..];
    assert!(
        tail.iter().all(|&b| b == 0),
        "{} {}: padding is not zeros: {:?}",
        options.dialect,
        options.codec,
        &tail[..tail.len().min(40)]
    );
    let header_first = dialect.spec().header_position == HeaderPosition::Start;
    if header_first && options.trailer {
        let trailer = parsed.trailer.expect("trailer present");
        assert_eq!(trailer.original_len, input.len() as u64);
        assert_eq!(trailer.digest_algorithm, DigestAlgorithm::Blake3Blocks);
        assert_eq!(
            trailer.digest,
            mkmodule_format::blake3_blocks_digest(input, bs as u32).to_vec()
        );
        assert_eq!(image.len() % 512, 0, "trailer ends the file on 512");
        assert_eq!(summary.input_digest, Some(trailer.digest));
    } else {
        assert!(parsed.trailer.is_none());
    }
    if header_first {
        // Blocks start right after the index (extract_compressed_fs needs it).
        let first = parsed.index.blocks()[0].offset;
        assert_eq!(first, 136 + 8 * (n as u64 + 1));
    }
}

fn sizes() -> [usize; 6] {
    let bs = BS as usize;
    [0, 1, bs, bs + 1, 3 * bs + 700, 10 * bs]
}

#[test]
fn every_dialect_and_codec_round_trips() {
    let cases: &[(Dialect, &[&str])] = &[
        (Dialect::LinuxV2, &["zlib", "zlib:0", "zlib:12", "best"]),
        (Dialect::LinuxV4, &["zlib", "xz", "lz4", "best"]),
        (Dialect::LinuxV4Footer, &["zlib:1", "xz:0", "lz4", "best"]),
        (Dialect::UzipZlib, &["zlib", "best"]),
        (Dialect::UzipXz, &["xz:1"]),
        (Dialect::UzipZstd, &["zstd", "zstd:19"]),
        (Dialect::UzipZlibDedup, &["zlib"]),
        (Dialect::UzipXzDedup, &["xz:0"]),
        (Dialect::UzipZstdDedup, &["zstd:1"]),
    ];
    for &(dialect, codecs) in cases {
        for codec in codecs {
            for len in sizes() {
                for (kind, input) in [
                    ("text", text(len)),
                    ("random", random(len, len as u64)),
                    ("zeros", vec![0; len]),
                    ("mixed", mixed(len)),
                ] {
                    for known in [true, false] {
                        let mut opts = options(dialect, codec);
                        opts.input_len = known.then_some(len as u64);
                        let (image, summary) = pack_bytes(&input, &opts)
                            .unwrap_or_else(|e| panic!("{dialect} {codec} {kind} {len}: {e}"));
                        check(&image, &input, &opts, &summary);
                    }
                }
            }
        }
    }
}

#[test]
fn output_does_not_depend_on_threads_or_sink() {
    let input = mixed(200 * BS as usize + 123);
    for (dialect, codec) in [
        (Dialect::LinuxV2, "zlib"),
        (Dialect::LinuxV4, "best"),
        (Dialect::UzipZstdDedup, "zstd"),
    ] {
        let mut images = Vec::new();
        for threads in [1, 2, 5] {
            for known in [true, false] {
                let mut opts = options(dialect, codec);
                opts.threads = threads;
                opts.input_len = known.then_some(input.len() as u64);
                images.push(pack_bytes(&input, &opts).unwrap().0);
            }
        }
        assert!(images.windows(2).all(|w| w[0] == w[1]), "{dialect} {codec}");
    }
}

#[test]
fn zero_blocks_are_zero_length_in_uzip() {
    let bs = BS as usize;
    let mut input = text(bs);
    input.resize(5 * bs, 0);
    input.extend_from_slice(&text(100));
    let mut opts = options(Dialect::UzipZlib, "zlib");
    opts.zero_blocks = true;
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    let parsed = parse_image(&image).unwrap();
    let kinds: Vec<BlockKind> = parsed.index.blocks().iter().map(|b| b.kind).collect();
    assert_eq!(kinds[1..5], [BlockKind::Zero; 4]);
    assert_eq!(summary.zero_blocks, 4);
    // Without the option the zero block is compressed once and its bytes repeated.
    opts.zero_blocks = false;
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    let parsed = parse_image(&image).unwrap();
    let lens: Vec<u32> = parsed.index.blocks()[1..5].iter().map(|b| b.len).collect();
    assert!(lens.iter().all(|&l| l > 0 && l == lens[0]));
    assert_eq!(summary.zero_blocks, 4);
}

#[test]
fn dedup_makes_back_references_but_never_to_the_previous_block() {
    let bs = BS as usize;
    let a = text(bs);
    let b = random(bs, 3);
    // a a b a b b: a block is never referenced by the entry right after the latest normally
    // placed block (geom_uzip would read that block as zero-length), so the second a and the
    // first repeat of b are written again.
    let input: Vec<u8> = [&a[..], &a, &b, &a, &b, &b].concat();
    let opts = options(Dialect::UzipZlibDedup, "zlib");
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    let parsed = parse_image(&image).unwrap();
    let kinds: Vec<BlockKind> = parsed.index.blocks().iter().map(|b| b.kind).collect();
    use BlockKind::{Shared, Stored};
    assert_eq!(
        kinds,
        [
            Stored,
            Stored,
            Stored,
            Shared { of: 0 },
            Stored,
            Shared { of: 2 }
        ]
    );
    assert_eq!(summary.shared_blocks, 2);
}

#[test]
fn incompressible_blocks_are_stored_zlib_in_linux_dialects() {
    let input = random(8 * BS as usize, 11);
    for (dialect, codec) in [(Dialect::LinuxV2, "zlib:9"), (Dialect::LinuxV4, "lz4")] {
        let opts = options(dialect, codec);
        let (image, summary) = pack_bytes(&input, &opts).unwrap();
        check(&image, &input, &opts, &summary);
        let parsed = parse_image(&image).unwrap();
        let stored_len = BS as u64 + 6 + 5;
        for block in parsed.index.blocks() {
            assert_eq!(block.codec, CodecKind::Zlib);
            assert_eq!(u64::from(block.len), stored_len);
        }
        assert_eq!(summary.incompressible_blocks, 8);
    }
}

#[test]
fn best_picks_per_block_in_v4() {
    let bs = BS as usize;
    let input = [text(4 * bs), random(2 * bs, 5)].concat();
    let mut opts = options(Dialect::LinuxV4, "best");
    opts.codec = CodecChoice::Best;
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    let fixed = pack_bytes(&input, &options(Dialect::LinuxV4, "zlib:12"))
        .unwrap()
        .0;
    assert!(image.len() <= fixed.len());
}

#[test]
fn footer_images_end_with_their_header() {
    let input = text(5 * BS as usize + 9);
    let opts = options(Dialect::LinuxV4Footer, "zlib");
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    assert_eq!(
        &image[image.len() - 136 + 11..image.len() - 136 + 15],
        b"V4.0"
    );
    assert_eq!(&image[..10], b"#!/bin/sh\n");
    assert_eq!(summary.data_end + 8 * 7 + 136, image.len() as u64);
}

#[test]
fn no_trailer_ends_at_the_data_or_at_512_for_uzip() {
    let input = text(3 * BS as usize + 5);
    let mut opts = options(Dialect::LinuxV2, "zlib");
    opts.trailer = false;
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    assert_eq!(summary.data_end, image.len() as u64);
    let mut opts = options(Dialect::UzipZlib, "zlib");
    opts.trailer = false;
    let (image, summary) = pack_bytes(&input, &opts).unwrap();
    check(&image, &input, &opts, &summary);
    assert_eq!(image.len() % 512, 0);
    assert!(image.len() as u64 - summary.data_end < 512);
}

#[test]
fn announced_length_is_checked() {
    let input = text(10_000);
    let mut opts = options(Dialect::LinuxV2, "zlib");
    opts.input_len = Some(12_000);
    match pack_bytes(&input, &opts) {
        Err(PackError::InputShorter {
            expected: 12_000,
            actual: 10_000,
        }) => {}
        other => panic!("{other:?}"),
    }
    opts.input_len = Some(8_192);
    assert!(matches!(
        pack_bytes(&input, &opts),
        Err(PackError::InputLonger { expected: 8_192 })
    ));
    opts.input_len = Some(9_999);
    assert!(matches!(
        pack_bytes(&input, &opts),
        Err(PackError::InputLonger { expected: 9_999 })
    ));
}

#[test]
fn sinks_that_cannot_hold_the_layout_are_refused() {
    let opts = options(Dialect::LinuxV2, "zlib");
    let mut out = Vec::new();
    let err = pack(&b"abc"[..], Sink::Stream(&mut out), &opts, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("cannot be streamed"), "{err}");
    let mut out = Cursor::new(Vec::new());
    let err = pack(&b"abc"[..], Sink::Seekable(&mut out), &opts, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("input length up front"), "{err}");
}

struct FailingReader {
    left: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("device error"));
        }
        let n = buf.len().min(self.left).min(1000);
        buf[..n].fill(b'x');
        self.left -= n;
        Ok(n)
    }
}

struct FullDisk {
    room: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::from_raw_os_error(28));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn read_and_write_errors_carry_offsets() {
    let opts = options(Dialect::LinuxV4Footer, "zlib");
    let mut out = Vec::new();
    let err = pack(
        FailingReader { left: 50_500 },
        Sink::Stream(&mut out),
        &opts,
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, PackError::Read { offset: 50_500, .. }),
        "{err}"
    );
    let input = random(3 << 20, 9);
    let err = pack(
        &input[..],
        Sink::Stream(&mut FullDisk { room: 100_000 }),
        &opts,
        &|_| {},
    )
    .unwrap_err();
    // The I/O cause is the error's source, not part of its own message.
    let text = mkmodule_blockdev::chain_text(&err);
    assert!(matches!(err, PackError::Write { .. }), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
}

#[test]
fn progress_reports_every_block_in_order() {
    let input = text(20 * BS as usize);
    let opts = options(Dialect::LinuxV2, "zlib");
    let events = std::cell::RefCell::new(Vec::new());
    let mut out = Cursor::new(Vec::new());
    let mut spool = Cursor::new(Vec::new());
    pack(
        &input[..],
        Sink::Spooled {
            output: &mut out,
            spool: &mut spool,
        },
        &opts,
        &|e| events.borrow_mut().push(e),
    )
    .unwrap();
    let events = events.into_inner();
    assert_eq!(events.len(), 21);
    assert_eq!(events[20], ProgressEvent::Finishing);
    match events[19] {
        ProgressEvent::Blocks {
            blocks,
            input_bytes,
            ..
        } => assert_eq!((blocks, input_bytes), (20, input.len() as u64)),
        other => panic!("{other:?}"),
    }
}
