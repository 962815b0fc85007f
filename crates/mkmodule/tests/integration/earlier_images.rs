//! Images of an earlier release, whose trailer records SHA-256 (of the input and of every block)
//! where this release writes BLAKE3 (testdata/mkmodule-sha256, written by that release): `info`
//! names the algorithms, `verify` and `extract` check them, `create --reuse` and `fetch --seed`
//! take blocks from such an image (by decoding it: its digests are of another hash) and give the
//! same bytes as without it. And the trailer's BLAKE3 is what Debian's `b3sum` prints for the
//! extracted image.

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
    assert_eq!(report["digest_algorithm"], "blake3", "{report}");

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

/// The trailer's digest is BLAKE3 of the input, which Debian's b3sum computes the same way.
#[test]
fn the_trailer_digest_is_b3sum_of_the_extracted_image() {
    let dir = tempdir();
    put(dir.path(), "in.raw", &mixed(37 * BS + 1234));
    let report = json(&ok(
        dir.path(),
        &["in.raw", "-o", "in.img", "-B", "4K", "--json", "-q"],
        None,
    ));
    assert_eq!(report["digest_algorithm"], "blake3", "{report}");
    let b3sum = sum("b3sum", dir.path(), "in.raw");
    assert_eq!(report["digest"].as_str().unwrap(), b3sum, "{report}");
    let info = json(&ok(dir.path(), &["info", "--json", "in.img"], None));
    assert_eq!(info["trailer"]["digest_algorithm"], "blake3", "{info}");
    assert_eq!(info["trailer"]["digest"].as_str().unwrap(), b3sum);
    assert_eq!(info["digest_table"]["algorithm"], "blake3-128", "{info}");
    ok(
        dir.path(),
        &["extract", "in.img", "-o", "out.raw", "-q"],
        None,
    );
    assert_eq!(sum("b3sum", dir.path(), "out.raw"), b3sum);
    let verified = json(&ok(dir.path(), &["verify", "--json", "in.img"], None));
    assert_eq!(verified["digest"]["algorithm"], "blake3", "{verified}");
    assert_eq!(verified["digest"]["status"], "ok", "{verified}");
    assert_eq!(verified["digest"]["actual"].as_str().unwrap(), b3sum);
}
