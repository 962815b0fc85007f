//! Golden bytes for the dialects no Linux tool writes (V4 and FreeBSD uzip), built by hand from
//! docs/FORMAT.md §3 and §5 and compared with what the emitters produce.

use mkmodule_format::{encode_index, parse_image, CodecKind, Dialect, Header, IndexEntry};

fn hex(s: &str) -> Vec<u8> {
    let clean: String = s.split_whitespace().collect();
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap())
        .collect()
}

fn nul_padded(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    out.resize(128, 0);
    out
}

#[test]
fn v4_header_first_with_codec_flags() {
    // bs 4096, n 3: index at 136, data at 136 + 32 = 168 (0xa8).
    // Blocks: zlib at 0xa8 (len 16), xz at 0xb8 (len 64), lz4 at 0xf8 (len 8); end 0x100.
    let mut expected = nul_padded(b"#!/bin/sh\n#V4.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n");
    expected.extend(hex("00001000 00000003
         00000000000000a8
         20000000000000b8
         30000000000000f8
         0000000000000100"));
    let header = Header {
        block_size: 4096,
        num_blocks: 3,
    };
    let entries = [
        IndexEntry {
            offset: 0xa8,
            codec: CodecKind::Zlib,
        },
        IndexEntry {
            offset: 0xb8,
            codec: CodecKind::Xz,
        },
        IndexEntry {
            offset: 0xf8,
            codec: CodecKind::Lz4,
        },
    ];
    let mut got = header.encode(Dialect::LinuxV4).to_vec();
    got.extend(encode_index(Dialect::LinuxV4, header, &entries, 0x100).unwrap());
    assert_eq!(got, expected);

    got.resize(0x100, 0);
    let parsed = parse_image(&got).unwrap();
    let lens: Vec<_> = parsed
        .index
        .blocks()
        .iter()
        .map(|b| (b.codec, b.len))
        .collect();
    assert_eq!(
        lens,
        [
            (CodecKind::Zlib, 16),
            (CodecKind::Xz, 64),
            (CodecKind::Lz4, 8)
        ]
    );
}

#[test]
fn v4_footer_header_is_the_last_136_bytes() {
    // Lead-in 128 bytes, two zlib blocks at 0x80 (len 32) and 0xa0 (len 32), index at 0xc0,
    // header at 0xd8, file length 0x160.
    let mut file = vec![0u8; 0xc0];
    file[..128].copy_from_slice(&Dialect::footer_lead_in());
    file.extend(hex("0000000000000080 00000000000000a0 00000000000000c0"));
    file.extend(nul_padded(b"#!/bin/sh\n#V4.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\nexit $?\n"));
    file.extend(hex("00000200 00000002"));
    assert_eq!(file.len(), 0x160);
    let parsed = parse_image(&file).unwrap();
    assert_eq!(parsed.layout.dialect, Dialect::LinuxV4Footer);
    assert_eq!(parsed.layout.index_offset, 0xc0);
    assert_eq!(
        parsed.layout.header,
        Header {
            block_size: 512,
            num_blocks: 2
        }
    );
    assert_eq!(parsed.index.data_end(), 0xc0);
    let header = Header {
        block_size: 512,
        num_blocks: 2,
    };
    let entries = [
        IndexEntry {
            offset: 0x80,
            codec: CodecKind::Zlib,
        },
        IndexEntry {
            offset: 0xa0,
            codec: CodecKind::Zlib,
        },
    ];
    let mut emitted = encode_index(Dialect::LinuxV4Footer, header, &entries, 0xc0).unwrap();
    emitted.extend(header.encode(Dialect::LinuxV4Footer));
    assert_eq!(emitted, file[0xc0..]);
}

#[test]
fn uzip_xz_dedup_signature_and_index() {
    // mkuzip -A lzma -d: "#!/bin/sh\n#l3.0\n", no flag bits; back-reference to block 0.
    let mut file = nul_padded(b"#!/bin/sh\n#l3.0\n");
    file.extend(hex("00004000 00000003
         00000000000000a8
         00000000000000c8
         00000000000000a8
         00000000000000e8"));
    file.resize(0xe8, 0x33);
    let header = Header {
        block_size: 16384,
        num_blocks: 3,
    };
    assert_eq!(header.encode(Dialect::UzipXzDedup).to_vec(), file[..136]);
    let parsed = parse_image(&file).unwrap();
    assert_eq!(parsed.layout.dialect, Dialect::UzipXzDedup);
    let got: Vec<_> = parsed
        .index
        .blocks()
        .iter()
        .map(|b| (b.offset, b.len, b.codec))
        .collect();
    assert_eq!(
        got,
        [
            (0xa8, 32, CodecKind::Xz),
            (0xc8, 32, CodecKind::Xz),
            (0xa8, 32, CodecKind::Xz)
        ]
    );
}

#[test]
fn uzip_zstd_preamble_bytes() {
    // docs/FORMAT.md §3.1: identical to the zlib script except line 2 is "#Z4.0 Format".
    let header = Header {
        block_size: 65536,
        num_blocks: 0,
    }
    .encode(Dialect::UzipZstd);
    assert_eq!(&header[..24], b"#!/bin/sh\n#Z4.0 Format\n(");
    assert_eq!(&header[128..], hex("00010000 00000000"));
    let zlib = Header {
        block_size: 65536,
        num_blocks: 0,
    }
    .encode(Dialect::UzipZlib);
    let differing: Vec<_> = (0..136).filter(|&i| header[i] != zlib[i]).collect();
    assert_eq!(differing, [11, 12]);
}
