//! Images of an earlier release, whose trailer records SHA-256 (of the input and of every block)
//! where this release writes BLAKE3 (testdata/mkmodule-sha256, written by that release): `info`
//! names the algorithms, `verify` and `extract` check them, `create --reuse` and `fetch --seed`
//! take blocks from such an image (by decoding it: its digests are of another hash) and give the
//! same bytes as without it. And the BLAKE3 digests written now are the documented ones, as
//! Debian's `b3sum` computes them.

use std::path::{Path, PathBuf};

use crate::common_create::*;
use mkmodule_format::{Trailer, TRAILER_LEN};

/// The earlier release's image: 48 blocks of 4 KiB, zlib:5 (testdata/mkmodule-sha256/regen.sh).
fn earlier_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/mkmodule-sha256/sha256-tables-b4096.cloop")
}

fn json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).expect("JSON on stdout")
}

/// A directory with the earlier image as `old.img` and its content, extracted, as `old.raw`.
fn with_earlier_image() -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::copy(earlier_image(), dir.path().join("old.img")).unwrap();
    ok(
        dir.path(),
        &["extract", "old.img", "-o", "old.raw", "-q"],
        None,
    );
    dir
}

/// The first word of a `*sum` tool's output line for `file`.
fn sum(tool_name: &str, dir: &Path, file: &str) -> String {
    let out = tool(tool_name, &[file], dir);
    assert!(out.status.success(), "{tool_name} {file} failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

#[test]
fn info_verify_and_extract_check_the_sha256_of_an_earlier_release() {
    let dir = with_earlier_image();
    let info = json(&ok(dir.path(), &["info", "--json", "old.img"], None));
    assert_eq!(info["trailer"]["digest_algorithm"], "sha256", "{info}");
    assert_eq!(info["digest_table"]["algorithm"], "sha256-128", "{info}");
    assert_eq!(info["digest_table"]["valid"], true, "{info}");
    assert_eq!(info["stored_checks"]["valid"], true, "{info}");
    // extract checked the SHA-256 as it wrote old.raw; sha256sum agrees with the trailer.
    assert_eq!(
        info["trailer"]["digest"].as_str().unwrap(),
        sum("sha256sum", dir.path(), "old.raw")
    );
    let report = json(&ok(dir.path(), &["verify", "--json", "old.img"], None));
    assert_eq!(report["digest"]["algorithm"], "sha256", "{report}");
    assert_eq!(report["digest"]["status"], "ok", "{report}");
    assert_eq!(
        report["digest_table"]["algorithm"], "sha256-128",
        "{report}"
    );
    assert_eq!(report["digest_table"]["status"], "ok", "{report}");

    // Block 30's entry in the SHA-256 table changed (and the table's checksum with it, so the
    // table is still used): verify computes the SHA-256 of the decoded block and names it.
    let mut damaged = std::fs::read(dir.path().join("old.img")).unwrap();
    let len = damaged.len();
    let mut trailer = Trailer::find(&damaged[len - TRAILER_LEN..], len as u64)
        .unwrap()
        .expect("a trailer");
    let table = trailer.extension.digest_table.as_mut().unwrap();
    let entry = table.offset as usize + 30 * 16;
    damaged[entry] ^= 1;
    let table_bytes = &damaged[table.offset as usize..table.offset as usize + 48 * 16];
    table.crc = crc32fast::hash(table_bytes);
    damaged[len - TRAILER_LEN..].copy_from_slice(&trailer.encode());
    put(dir.path(), "damaged.img", &damaged);
    let out = run_in(dir.path(), &["verify", "--json", "damaged.img"], None);
    assert_eq!(out.status.code(), Some(3), "verify exits 3 on damage");
    let report = json(&out.stdout);
    assert_eq!(report["digest_table"]["status"], "mismatch", "{report}");
    assert_eq!(report["bad_blocks"][0]["index"], 30, "{report}");
    assert_eq!(
        report["bad_blocks"].as_array().unwrap().len(),
        1,
        "{report}"
    );
}

const BS: usize = 4096;

/// The earlier image's content with blocks 5 and 40 changed and a block inserted at 10.
fn changed(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    new[5 * BS + 7] ^= 0x20;
    new[40 * BS..41 * BS].copy_from_slice(&random(BS, 3));
    new.splice(10 * BS..10 * BS, random(BS, 4));
    new
}

#[test]
fn reuse_and_seed_from_an_earlier_release_give_the_same_bytes() {
    let dir = with_earlier_image();
    let old = std::fs::read(dir.path().join("old.raw")).unwrap();
    put(dir.path(), "new.raw", &changed(&old));
    let options = ["-B", "4K", "-c", "zlib:5", "-q", "-f"];
    ok(
        dir.path(),
        &[&options[..], &["new.raw", "-o", "plain.img"]].concat(),
        None,
    );
    let report = json(&ok(
        dir.path(),
        &[
            &options[..],
            &[
                "new.raw",
                "-o",
                "reused.img",
                "--json",
                "--reuse",
                "old.img",
            ],
        ]
        .concat(),
        None,
    ));
    let plain = std::fs::read(dir.path().join("plain.img")).unwrap();
    assert!(
        plain == std::fs::read(dir.path().join("reused.img")).unwrap(),
        "reusing an earlier release's image changed the output: {report}"
    );
    // 49 blocks: the inserted one, 5 and 41 (was 40) are new, 25 and 26 are zeros (written by
    // the writer, neither copied nor compressed), the other 44 are in OLD.
    assert_eq!(report["zero_blocks"], 2, "{report}");
    assert_eq!(report["blocks_reused"], 44, "{report}");
    assert_eq!(report["blocks_compressed"], 3, "{report}");
    assert_eq!(report["digest_algorithm"], "blake3-blocks", "{report}");

    let fetched = json(&ok(
        dir.path(),
        &[
            "fetch",
            "plain.img",
            "-o",
            "got.img",
            "--seed",
            "old.img",
            "--json",
        ],
        None,
    ));
    assert!(
        plain == std::fs::read(dir.path().join("got.img")).unwrap(),
        "fetch --seed gave other bytes: {fetched}"
    );
    assert_eq!(fetched["blocks_from_source"], 3, "{fetched}");
    assert_eq!(fetched["seed_blocks_rejected"], 0, "{fetched}");
}

/// The trailer's `blake3-blocks` digest and the block-digest table are what docs/FORMAT.md
/// §12.4 and §12.6 define, computed here with Debian's b3sum: BLAKE3 of each 4 KiB block (the
/// last one zero-padded), the table holding their first 16 bytes, and the digest being BLAKE3
/// of those hashes followed by the length and the block size.
#[test]
fn the_digests_are_the_documented_blake3_as_b3sum_computes_it() {
    let dir = tempdir();
    let len = 37 * BS + 1234;
    let input = mixed(len);
    put(dir.path(), "in.raw", &input);
    let report = json(&ok(
        dir.path(),
        &["in.raw", "-o", "in.img", "-B", "4K", "--json", "-q"],
        None,
    ));
    assert_eq!(report["digest_algorithm"], "blake3-blocks", "{report}");
    let mut names = Vec::new();
    for (i, block) in input.chunks(BS).enumerate() {
        let mut padded = block.to_vec();
        padded.resize(BS, 0);
        let name = format!("block{i:03}");
        put(dir.path(), &name, &padded);
        names.push(name);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = tool("b3sum", &names, dir.path());
    assert!(out.status.success(), "b3sum failed");
    let hashes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(hashes.len(), 38);
    let mut chain = Vec::new();
    for hash in &hashes {
        chain.extend((0..32).map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap()));
    }
    chain.extend_from_slice(&(len as u64).to_be_bytes());
    chain.extend_from_slice(&(BS as u32).to_be_bytes());
    put(dir.path(), "chain", &chain);
    let expected = sum("b3sum", dir.path(), "chain");
    assert_eq!(report["digest"].as_str().unwrap(), expected, "{report}");

    let image = std::fs::read(dir.path().join("in.img")).unwrap();
    let trailer = Trailer::find(&image[image.len() - TRAILER_LEN..], image.len() as u64)
        .unwrap()
        .unwrap();
    let table = trailer.extension.digest_table.unwrap();
    let at = table.offset as usize;
    for (i, hash) in hashes.iter().enumerate() {
        let entry: String = image[at + 16 * i..at + 16 * (i + 1)]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(entry, hash[..32], "table entry {i}");
    }
    let info = json(&ok(dir.path(), &["info", "--json", "in.img"], None));
    assert_eq!(
        info["trailer"]["digest_algorithm"], "blake3-blocks",
        "{info}"
    );
    assert_eq!(info["trailer"]["digest"].as_str().unwrap(), expected);
    assert_eq!(info["digest_table"]["algorithm"], "blake3-128", "{info}");
    let verified = json(&ok(dir.path(), &["verify", "--json", "in.img"], None));
    assert_eq!(
        verified["digest"]["algorithm"], "blake3-blocks",
        "{verified}"
    );
    assert_eq!(verified["digest"]["status"], "ok", "{verified}");
    assert_eq!(verified["digest"]["actual"].as_str().unwrap(), expected);
    ok(
        dir.path(),
        &["extract", "in.img", "-o", "out.raw", "-q"],
        None,
    );
    assert!(std::fs::read(dir.path().join("out.raw")).unwrap() == input);
}
