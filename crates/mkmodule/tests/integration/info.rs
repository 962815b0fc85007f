//! `mkmodule info`: text, JSON and the per-block table, on fixtures and built images.

use crate::common_read;

use common_read::build::{build, sample, Spec};
use common_read::{fails, fixtures, ok, write};
use mkmodule_format::Dialect;

#[test]
fn text_names_dialect_codec_and_sizes() {
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f01"))
        .unwrap();
    let text = ok(&["info", fixture.path.to_str().unwrap()]);
    for want in [
        "dialect:          v2 (signature V2.0, header at the start)",
        "codecs:           zlib (25 blocks)",
        "block size:       4096 bytes",
        "blocks:           25 (25 stored, 0 zero-length, 0 shared)",
        "device size:      102400 bytes",
        "largest block:    253 bytes",
        "trailer:          none",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn json_matches_the_manifest_for_every_fixture() {
    for fixture in fixtures() {
        let text = ok(&["info", "--json", fixture.path.to_str().unwrap()]);
        let info: serde_json::Value = serde_json::from_str(&text).expect("info --json parses");
        assert_eq!(info["dialect"], "v2", "{}", fixture.name);
        assert_eq!(info["block_size"], fixture.block_size, "{}", fixture.name);
        assert_eq!(info["blocks"], fixture.num_blocks, "{}", fixture.name);
        assert_eq!(info["padded_size"], fixture.raw_len, "{}", fixture.name);
        assert!(info["original_size"].is_null());
        assert!(info.get("block_table").is_none());
    }
    let f02 = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f02"))
        .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", f02.path.to_str().unwrap()])).unwrap();
    assert_eq!(info["zero_blocks"], 32);
}

#[test]
fn blocks_table_lists_every_block() {
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f01"))
        .unwrap();
    let path = fixture.path.to_str().unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", "--blocks", path])).unwrap();
    let table = info["block_table"].as_array().unwrap();
    assert_eq!(table.len(), 25);
    assert_eq!(table[0]["offset"], 344);
    let offsets: Vec<u64> = table
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    let text = ok(&["info", "--blocks", path]);
    let rows = text
        .lines()
        .filter(|l| l.trim_end().ends_with("stored"))
        .count();
    assert_eq!(rows, 25, "{text}");
}

#[test]
fn uzip_dedup_and_trailer_details_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(30, 4096, 1000);
    let spec = Spec {
        trailer: true,
        ..Spec::new(Dialect::UzipZstdDedup, 4096)
    };
    let built = build(&data, &spec);
    let path = write(dir.path(), "dedup.uzst", &built.image);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", "--blocks", &path])).unwrap();
    assert_eq!(info["dialect"], "uzip-zstd-dedup");
    assert_eq!(info["signature"], "z4.0");
    assert_eq!(info["codecs"]["zstd"], 30);
    assert!(info["zero_length_blocks"].as_u64().unwrap() >= 8);
    assert!(info["shared_blocks"].as_u64().unwrap() >= 3);
    assert_eq!(info["original_size"], data.len());
    assert_eq!(info["trailer"]["original_len"], data.len());
    assert_eq!(info["trailer"]["digest_algorithm"], "sha256");
    assert_eq!(info["trailer"]["digest"], common_read::sha256_hex(&data));
    let shared = info["block_table"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "shared")
        .unwrap();
    assert!(shared["of"].is_u64());
    let text = ok(&["info", &path]);
    assert!(
        text.contains("trailer:          written by mkmodule tests"),
        "{text}"
    );
    assert!(
        text.contains(&format!("original size:    {}", data.len())),
        "{text}"
    );
}

#[test]
fn v4_footer_mixed_codecs_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(10, 4096, 0);
    let spec = Spec::new(Dialect::LinuxV4Footer, 4096).codecs(&[
        mkmodule_codec::CodecKind::Zlib,
        mkmodule_codec::CodecKind::Lz4,
    ]);
    let path = write(dir.path(), "v4f", &build(&data, &spec).image);
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", &path])).unwrap();
    assert_eq!(info["dialect"], "v4-footer");
    assert_eq!(info["header_position"], "end");
    assert_eq!(info["codecs"]["zlib"], 5);
    assert_eq!(info["codecs"]["lz4"], 5);
}

#[test]
fn what_is_not_an_image_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "junk", &[b'x'; 1000]);
    let (code, _, stderr) = fails(&["info", &path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a cloop-family image"), "{stderr}");
    let missing = dir.path().join("missing");
    let (code, _, stderr) = fails(&["info", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot open"), "{stderr}");
}
