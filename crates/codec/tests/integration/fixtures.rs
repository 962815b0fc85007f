//! The reference images of Debian's create_compressed_fs (testdata/cloop-utils): parse each
//! with the format crate, decode every block with the codec crate, and compare the SHA-256 of
//! the decoded device contents with the manifest.

use mkmodule_codec::BlockDecompressor;
use mkmodule_format::{parse_image, BlockKind, Dialect};
use mkmodule_testkit::fixtures::fixtures_dir;
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_fixture_decodes_to_its_manifest_sha256() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("manifest.json")).unwrap())
            .unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 10, "manifest lists the ten reference images");
    let mut decompressor = BlockDecompressor::new();
    for entry in entries {
        let name = entry["name"].as_str().unwrap();
        let bytes = std::fs::read(fixtures_dir().join(name)).unwrap();
        let parsed = parse_image(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.layout.dialect, Dialect::LinuxV2, "{name}");
        let header = parsed.layout.header;
        assert_eq!(
            u64::from(header.block_size),
            entry["block_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(header.num_blocks),
            entry["num_blocks"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(parsed.index.largest_block()),
            entry["max_block_len"].as_u64().unwrap(),
            "{name}"
        );
        assert!(parsed.trailer.is_none(), "{name}");

        let mut hasher = Sha256::new();
        let mut block = vec![0u8; header.block_size as usize];
        for (i, b) in parsed.index.blocks().iter().enumerate() {
            assert_eq!(b.kind, BlockKind::Stored, "{name} block {i}");
            let data = &bytes[b.offset as usize..b.end() as usize];
            decompressor
                .decompress_exact(b.codec, data, &mut block)
                .unwrap_or_else(|e| panic!("{name} block {i} at offset {}: {e}", b.offset));
            hasher.update(&block);
        }
        assert_eq!(
            hex(&hasher.finalize()),
            entry["raw_sha256"].as_str().unwrap(),
            "{name}: decoded content differs from create_compressed_fs's input"
        );
    }
}
