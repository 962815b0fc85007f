//! Property tests: emit -> parse is the identity for every dialect; parsing never panics.

use mkmodule_format::{
    encode_index, header_first_data_start, is_header_first, parse_image, BlockKind, CodecKind,
    Dialect, Header, IndexEntry, HEADER_LEN,
};
use proptest::prelude::*;

/// One block as a test writer lays it out: its codec and compressed length.
#[derive(Debug, Clone)]
struct Block {
    codec: CodecKind,
    len: u32,
}

/// Writes a complete image (filler bytes for block data) and returns it with the entries used.
fn emit(dialect: Dialect, block_size: u32, blocks: &[Block]) -> (Vec<u8>, Vec<IndexEntry>, u64) {
    let header = Header {
        block_size,
        num_blocks: blocks.len() as u32,
    };
    let mut entries = Vec::new();
    if is_header_first(dialect) {
        let mut offset = header_first_data_start(header.num_blocks);
        for b in blocks {
            entries.push(IndexEntry {
                offset,
                codec: b.codec,
            });
            offset += u64::from(b.len);
        }
        let mut out = header.encode(dialect).to_vec();
        out.extend(encode_index(dialect, header, &entries, offset).unwrap());
        out.resize(offset as usize, 0xa5);
        (out, entries, offset)
    } else {
        // A footer image starts with a lead-in so block 0 is not at offset 0.
        let mut out = Dialect::footer_lead_in().to_vec();
        let mut offset = out.len() as u64;
        for b in blocks {
            entries.push(IndexEntry {
                offset,
                codec: b.codec,
            });
            offset += u64::from(b.len);
        }
        out.resize(offset as usize, 0x5a);
        out.extend(encode_index(dialect, header, &entries, offset).unwrap());
        out.extend_from_slice(&header.encode(dialect));
        (out, entries, offset)
    }
}

fn arb_blocks(dialect: Dialect, block_size: u32) -> impl Strategy<Value = Vec<Block>> {
    let codecs = dialect.spec().codecs.to_vec();
    let min_len = u32::from(!dialect.spec().zero_length_blocks);
    let block = (
        proptest::sample::select(codecs),
        min_len..=block_size.min(700),
    )
        .prop_map(|(codec, len)| Block { codec, len });
    proptest::collection::vec(block, 0..40)
}

fn arb_case() -> impl Strategy<Value = (Dialect, u32, Vec<Block>)> {
    (proptest::sample::select(Dialect::ALL.to_vec()), 1u32..=16).prop_flat_map(
        |(dialect, sectors)| {
            let bs = sectors * 512;
            (Just(dialect), Just(bs), arb_blocks(dialect, bs))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn emit_then_parse_is_identity((dialect, block_size, blocks) in arb_case()) {
        let (bytes, entries, data_end) = emit(dialect, block_size, &blocks);
        let parsed = parse_image(&bytes).unwrap();
        // Footer V2 is only ever detected; every other dialect detects as itself, except that a
        // uzip zlib image and a Linux V2 image differ only in their script text.
        prop_assert_eq!(parsed.layout.dialect, dialect);
        prop_assert_eq!(parsed.layout.header, Header { block_size, num_blocks: blocks.len() as u32 });
        prop_assert_eq!(parsed.index.data_end(), data_end);
        for (i, (entry, block)) in parsed.index.blocks().iter().zip(&blocks).enumerate() {
            prop_assert_eq!(entry.offset, entries[i].offset, "block {}", i);
            prop_assert_eq!(entry.len, block.len, "block {}", i);
            prop_assert_eq!(entry.codec, block.codec, "block {}", i);
            let kind = if block.len == 0 { BlockKind::Zero } else { BlockKind::Stored };
            prop_assert_eq!(entry.kind, kind, "block {}", i);
        }
        prop_assert!(parsed.trailer.is_none());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let _ = parse_image(&bytes);
    }

    #[test]
    fn parse_never_panics_on_mutated_images(
        (dialect, block_size, blocks) in arb_case(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (mut bytes, _, _) = emit(dialect, block_size, &blocks);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(parsed) = parse_image(&bytes) {
            // Whatever parses must describe blocks inside the file.
            for b in parsed.index.blocks() {
                prop_assert!(b.end() <= bytes.len() as u64);
                prop_assert!(b.offset >= 1);
            }
            prop_assert!(parsed.layout.index_offset + parsed.layout.index_len() <= bytes.len() as u64);
            prop_assert!(parsed.layout.header_offset + HEADER_LEN <= bytes.len() as u64);
        }
    }
}
