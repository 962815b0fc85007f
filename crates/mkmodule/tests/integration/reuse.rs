//! `create --reuse OLD` and `commit` copying the blocks the overlay left alone: the images are
//! byte-identical to those made without reuse, the counts are reported, a damaged OLD gives its
//! damaged block up to compression with a warning naming it, other options are refused, and
//! `info` shows the block-digest table.

use std::sync::Arc;

use crate::common_create;

use common_create::*;
use mkmodule_blockdev::BlockDevice;
use mkmodule_format::{parse_image, BlockKind};
use mkmodule_image::{Image, ImageDevice};
use mkmodule_overlay::{Overlay, OverlayOptions};

const BS: usize = 4096;

fn json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap()
}

/// `mixed` data with a few blocks changed, one inserted and one removed.
fn remastered(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    new[5 * BS + 17] ^= 1;
    new[20 * BS..21 * BS].copy_from_slice(&random(BS, 99));
    new.drain(9 * BS..10 * BS);
    new.splice(2 * BS..2 * BS, random(BS, 7));
    new.extend_from_slice(b"and a new tail");
    new
}

/// A directory holding `data` as `in.raw` and the image `create in.raw -q ARGS` makes of it.
fn with_image(data: &[u8], args: &[&str]) -> tempfile::TempDir {
    let dir = tempdir();
    put(dir.path(), "in.raw", data);
    ok(dir.path(), &[&["in.raw", "-q"], args].concat(), None);
    dir
}

#[test]
fn reuse_gives_the_same_image_and_counts_the_blocks() {
    let dir = tempdir();
    let old = mixed(40 * BS + 300);
    let new = remastered(&old);
    put(dir.path(), "old.raw", &old);
    put(dir.path(), "new.raw", &new);
    for extra in [
        &["-c", "zlib:7"][..],
        &["-c", "zstd:3", "--dedup"],
        &["-c", "lz4"],
    ] {
        let with = |args: &[&'static str]| [&["-B", "4K", "-q"], extra, args].concat();
        ok(dir.path(), &with(&["old.raw", "-o", "old.img", "-f"]), None);
        ok(
            dir.path(),
            &with(&["new.raw", "-o", "plain.img", "-f"]),
            None,
        );
        let report = ok(
            dir.path(),
            &with(&[
                "new.raw",
                "-o",
                "reused.img",
                "-f",
                "--json",
                "--reuse",
                "old.img",
            ]),
            None,
        );
        let plain = std::fs::read(dir.path().join("plain.img")).unwrap();
        let reused = std::fs::read(dir.path().join("reused.img")).unwrap();
        assert!(plain == reused, "{extra:?}: the images differ");
        let report = json(&report);
        let (copied, compressed) = (&report["blocks_reused"], &report["blocks_compressed"]);
        let n = report["num_blocks"].as_u64().unwrap();
        let zero = report["zero_blocks"].as_u64().unwrap();
        assert!(copied.as_u64().unwrap() > n / 2, "{extra:?}: {report}");
        assert_eq!(
            copied.as_u64().unwrap() + compressed.as_u64().unwrap() + zero,
            n
        );
        assert_eq!(report["blocks_reuse_rejected"], 0);
    }
}

#[test]
fn reuse_with_other_options_is_refused_naming_the_option() {
    let dir = with_image(&mixed(10 * BS), &["-o", "old.img", "-c", "zlib:9"]);
    let err = fails(
        dir.path(),
        &["in.raw", "-o", "new.img", "--reuse", "old.img"],
        None,
    );
    assert!(
        err.contains("cannot reuse the blocks of old.img: its blocks were compressed as zlib:9")
            && err.contains("give --codec zlib:9"),
        "{err}"
    );
    let err = fails(
        dir.path(),
        &["in.raw", "-o", "new.img", "-B", "32K", "--reuse", "old.img"],
        None,
    );
    assert!(err.contains("give --block-size 65536"), "{err}");
    assert!(!dir.path().join("new.img").exists());
}

/// A block of OLD whose compressed bytes were damaged behind valid tables is found wrong (by
/// its stored check by default, by decoding with `--reuse-check decode`) and compressed again,
/// with a warning naming OLD's block and the new block; the image is the one made without reuse.
#[test]
fn a_damaged_block_of_old_is_compressed_again_with_a_warning() {
    let dir = tempdir();
    let data = random(12 * BS, 5);
    put(dir.path(), "in.raw", &data);
    ok(
        dir.path(),
        &["in.raw", "-o", "old.img", "-B", "4K", "-q"],
        None,
    );
    let path = dir.path().join("old.img");
    let mut old = std::fs::read(&path).unwrap();
    let entry = *parse_image(&old).unwrap().index.get(6).unwrap();
    assert_eq!(entry.kind, BlockKind::Stored);
    for k in 0..4 {
        old[(entry.offset + 100 + k) as usize] ^= 0x55;
    }
    std::fs::write(&path, &old).unwrap();
    ok(
        dir.path(),
        &["in.raw", "-o", "plain.img", "-B", "4K", "-q"],
        None,
    );
    let plain = std::fs::read(dir.path().join("plain.img")).unwrap();
    for check in ["table", "decode"] {
        let out = run_in(
            dir.path(),
            &[
                "in.raw",
                "-o",
                "new.img",
                "-f",
                "-B",
                "4K",
                "--reuse",
                "old.img",
                "--reuse-check",
                check,
                "--json",
            ],
            None,
        );
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning: block 6 of old.img does not match the new block 6"),
            "{check}: {stderr}"
        );
        let report = json(&out.stdout);
        assert_eq!(report["blocks_reuse_rejected"], 1, "{check}");
        assert_eq!(report["blocks_reused"], 11, "{check}");
        let new = std::fs::read(dir.path().join("new.img")).unwrap();
        assert!(plain == new, "{check}: not the image made without reuse");
    }
}

#[test]
fn info_shows_the_digest_table_and_its_damage() {
    let dir = with_image(&mixed(6 * BS), &["-o", "a.img", "-B", "4K"]);
    let info = json(&ok(dir.path(), &["info", "--json", "a.img"], None));
    let table = &info["digest_table"];
    assert_eq!(table["entries"], 6);
    assert_eq!(table["valid"], true);
    assert_eq!(info["trailer"]["block_encoding"], "zlib:5");
    let path = dir.path().join("a.img");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = table["offset"].as_u64().unwrap() as usize;
    bytes[at + 3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let info = json(&ok(dir.path(), &["info", "--json", "a.img"], None));
    assert_eq!(info["digest_table"]["valid"], false);
    let problem = info["digest_table"]["problem"].as_str().unwrap();
    assert!(problem.contains("block-digest table"), "{problem}");
    assert!(info["trailer_problem"].is_null());
    assert_eq!(info["original_size"], 6 * BS);
    // No trailer, no table.
    ok(
        dir.path(),
        &["in.raw", "-o", "b.img", "--no-trailer", "-q"],
        None,
    );
    let info = json(&ok(dir.path(), &["info", "--json", "b.img"], None));
    assert!(info["digest_table"].is_null());
}

/// `commit` copies every block the overlay did not touch: the same image as a plain `create`
/// of the merged contents.
#[test]
fn commit_reuses_the_untouched_blocks() {
    let dir = tempdir();
    let data = mixed(32 * BS);
    put(dir.path(), "base.raw", &data);
    ok(
        dir.path(),
        &[
            "base.raw", "-o", "base.img", "-B", "4K", "-c", "zlib:8", "-q",
        ],
        None,
    );
    let image = Arc::new(Image::open(dir.path().join("base.img")).unwrap());
    let base: Arc<dyn BlockDevice> = Arc::new(ImageDevice::new(image));
    let options = OverlayOptions::default().with_chunk_size(BS as u32);
    let overlay = Overlay::create(&dir.path().join("over.cow"), base, &options).unwrap();
    let mut merged = data.clone();
    for (block, seed) in [(3usize, 1u64), (17, 2), (30, 3)] {
        let fresh = random(BS, seed);
        overlay.write_at(&fresh, (block * BS) as u64).unwrap();
        merged[block * BS..(block + 1) * BS].copy_from_slice(&fresh);
    }
    overlay.flush().unwrap();
    drop(overlay);
    let out = run_in(
        dir.path(),
        &["commit", "base.img", "over.cow", "-o", "new.img"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("blocks copied from base.img, 3 compressed"),
        "{stderr}"
    );
    put(dir.path(), "merged.raw", &merged);
    ok(
        dir.path(),
        &[
            "merged.raw",
            "-o",
            "plain.img",
            "-B",
            "4K",
            "-c",
            "zlib:8",
            "-q",
        ],
        None,
    );
    let plain = std::fs::read(dir.path().join("plain.img")).unwrap();
    assert!(plain == std::fs::read(dir.path().join("new.img")).unwrap());
}

/// `verify` compares every decoded block with its entry in the block-digest table: a block
/// replaced by another valid block of the same length (stored blocks: the length does not
/// depend on the bytes) decodes, and is named; a damaged table fails the check too.
#[test]
fn verify_checks_blocks_against_the_digest_table() {
    let data = mixed(12 * BS);
    let mut other = data.clone();
    other[6 * BS + 10] ^= 0x20;
    let options = ["-B", "4K", "-c", "none", "-f"];
    let dir = with_image(&data, &[&["-o", "a.img"][..], &options].concat());
    put(dir.path(), "other.raw", &other);
    ok(
        dir.path(),
        &[&["other.raw", "-o", "b.img", "-q"][..], &options].concat(),
        None,
    );
    let text = String::from_utf8(ok(dir.path(), &["verify", "a.img"], None)).unwrap();
    assert!(
        text.contains("block-digest table: 12 entries (ok)")
            && text.contains("stored-check table: 12 entries (ok)"),
        "{text}"
    );
    let path = dir.path().join("a.img");
    let good = std::fs::read(&path).unwrap();
    let entry = *parse_image(&good).unwrap().index.get(6).unwrap();
    let replacement = std::fs::read(dir.path().join("b.img")).unwrap();
    let theirs = *parse_image(&replacement).unwrap().index.get(6).unwrap();
    assert_eq!((entry.offset, entry.len), (theirs.offset, theirs.len));

    let mut bytes = good.clone();
    let range = entry.offset as usize..entry.end() as usize;
    bytes[range.clone()].copy_from_slice(&replacement[range]);
    std::fs::write(&path, &bytes).unwrap();
    let out = run_in(dir.path(), &["verify", "a.img"], None);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "bad block 6: block 6 at offset {}: decodes to bytes that do not match its entry \
             in the block-digest table",
            entry.offset
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("block-digest table: 12 entries (mismatch)"),
        "{stdout}"
    );
    let out = run_in(dir.path(), &["verify", "--json", "a.img"], None);
    let report = json(&out.stdout);
    assert_eq!(
        report["bad_blocks"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["bad_blocks"][0]["index"], 6);
    assert_eq!(report["digest_table"]["status"], "mismatch");

    // The blocks intact, one digest of the table changed: its checksum fails.
    let info = json(&ok(dir.path(), &["info", "--json", "a.img"], None));
    let mut bytes = good.clone();
    let at = info["digest_table"]["offset"].as_u64().unwrap() as usize;
    bytes[at + 16 * 3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = run_in(dir.path(), &["verify", "a.img"], None);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("block-digest table: UNUSABLE"), "{stdout}");
    assert!(stdout.contains(", 0 bad: DAMAGED"), "{stdout}");
    assert!(
        stderr.contains("a.img is damaged") && stderr.contains("block-digest table"),
        "{stderr}"
    );

    // One stored check changed: that table's checksum fails.
    let checks = info["stored_checks"]["offset"].as_u64().unwrap() as usize;
    assert_eq!(checks + 12 * 4, at);
    let mut bytes = good.clone();
    bytes[checks + 4 * 5] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = run_in(dir.path(), &["verify", "a.img"], None);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stored-check table: UNUSABLE"), "{stdout}");
    assert!(
        stdout.contains("block-digest table: 12 entries (ok)"),
        "{stdout}"
    );
}
