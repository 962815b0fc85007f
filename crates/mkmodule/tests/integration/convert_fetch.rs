//! `convert` gives, for every pair of dialects tried, the image `create` makes of the content
//! with the same options, copying the blocks whose codec stays, and the peers read it; `fetch
//! --seed` rebuilds an image byte for byte, reading from the source little more than the blocks
//! the seed lacks, uses no damaged seed block, and leaves nothing behind when it fails.

use crate::common_create;

use std::path::Path;

use common_create::*;
use mkmodule_format::parse_image;

const BS: usize = 65536;

fn json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap()
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// Over 10 blocks of 64 KiB (extract_compressed_fs needs that), a length that is not a
/// multiple of the block size, and every kind of content.
fn content() -> Vec<u8> {
    mixed(14 * BS + 1234)
}

#[test]
fn convert_equals_create_for_each_dialect_pair() {
    let dir = tempdir();
    put(dir.path(), "in.raw", &content());
    // (create options of the image converted, convert's options, create options of the same
    // image, whether blocks can be copied): convert keeps the codec and level when the new
    // format has it, else takes the format's default.
    type Pair<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], bool);
    let pairs: &[Pair<'_>] = &[
        (
            &["--format", "uzip-zlib"],
            &["--format", "v2"],
            &["--format", "v2"],
            true,
        ),
        (
            &["--format", "v2"],
            &["--format", "v4-footer"],
            &["--format", "v4-footer"],
            true,
        ),
        (
            &["--format", "v2", "-c", "zlib:9"],
            &["--format", "v4"],
            &["--format", "v4", "-c", "zlib:9"],
            true,
        ),
        (
            &["--format", "v2"],
            &["--format", "v4", "-c", "xz"],
            &["--format", "v4", "-c", "xz"],
            false,
        ),
        (
            &["--format", "v4", "-c", "lz4"],
            &["--format", "uzip-zstd"],
            &["--format", "uzip-zstd", "-c", "zstd"],
            false,
        ),
        (
            &["--format", "uzip-zstd", "-c", "zstd"],
            &["--format", "v2", "-B", "32K"],
            &["--format", "v2", "-B", "32K"],
            false,
        ),
    ];
    for (from, to, to_create, copies) in pairs {
        ok(
            dir.path(),
            &[&["in.raw", "-o", "from.img", "-f", "-q"], *from].concat(),
            None,
        );
        ok(
            dir.path(),
            &[&["in.raw", "-o", "plain.img", "-f", "-q"], *to_create].concat(),
            None,
        );
        let report = json(&ok(
            dir.path(),
            &[
                &["convert", "from.img", "-o", "new.img", "-f", "--json"],
                *to,
            ]
            .concat(),
            None,
        ));
        assert!(
            read(dir.path(), "plain.img") == read(dir.path(), "new.img"),
            "{from:?} -> {to:?}: not the image create makes: {report}"
        );
        let copied = report["blocks_copied"].as_u64().unwrap();
        let n = report["num_blocks"].as_u64().unwrap();
        let zero = report["zero_blocks"].as_u64().unwrap();
        assert_eq!(
            copied + report["blocks_compressed"].as_u64().unwrap() + zero,
            n,
            "{report}"
        );
        match copies {
            // A uzip final block is compressed short: never copied.
            true => assert!(copied + zero + 1 >= n, "{from:?} -> {to:?}: {report}"),
            false => assert_eq!(copied, 0, "{from:?} -> {to:?}: {report}"),
        }
    }
}

/// A block of the image converted whose bytes were damaged behind valid tables (an lz4 block's
/// last literal: it still decodes, to other bytes) is not copied where its content comes again:
/// that block is compressed, with a warning naming both blocks, and the output is what `create`
/// makes of the content as it decodes.
#[test]
fn convert_compresses_a_damaged_block_again() {
    let dir = tempdir();
    let mut data = content();
    let page = text(BS);
    data[3 * BS..4 * BS].copy_from_slice(&page);
    data[7 * BS..8 * BS].copy_from_slice(&page);
    put(dir.path(), "in.raw", &data);
    let lz4 = ["--format", "v4", "-c", "lz4"];
    ok(
        dir.path(),
        &[&["in.raw", "-o", "from.img", "-q"][..], &lz4].concat(),
        None,
    );
    let path = dir.path().join("from.img");
    let mut image = std::fs::read(&path).unwrap();
    let entry = *parse_image(&image).unwrap().index.get(3).unwrap();
    assert_eq!(entry.codec, mkmodule_format::CodecKind::Lz4);
    image[entry.end() as usize - 1] ^= 0x01;
    std::fs::write(&path, &image).unwrap();
    // The last literal is the block's last byte.
    let mut damaged = data.clone();
    damaged[4 * BS - 1] ^= 0x01;
    put(dir.path(), "damaged.raw", &damaged);
    let to = ["--format", "v4-footer", "-c", "lz4"];
    ok(
        dir.path(),
        &[&["damaged.raw", "-o", "plain.img", "-q"][..], &to].concat(),
        None,
    );
    let out = run_in(
        dir.path(),
        &[&["convert", "from.img", "-o", "new.img", "--json"][..], &to].concat(),
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: block 3 of from.img does not match the new block 7"),
        "{stderr}"
    );
    let report = json(&out.stdout);
    assert_eq!(report["blocks_copy_rejected"], 1, "{report}");
    assert!(read(dir.path(), "plain.img") == read(dir.path(), "new.img"));
}

#[test]
fn converted_images_read_back_with_the_peers() {
    let dir = tempdir();
    let data = content();
    put(dir.path(), "in.raw", &data);
    ok(
        dir.path(),
        &["in.raw", "-o", "from.uzip", "--format", "uzip-zlib", "-q"],
        None,
    );
    ok(
        dir.path(),
        &[
            "convert",
            "from.uzip",
            "-o",
            "v2.img",
            "--format",
            "v2",
            "-q",
        ],
        None,
    );
    let out = dir.path().join("v2.extract");
    let run = tool(
        "extract_compressed_fs",
        &["v2.img", out.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let extracted = std::fs::read(&out).unwrap();
    assert_eq!(&extracted[..data.len()], &data[..]);
    assert!(extracted[data.len()..].iter().all(|&b| b == 0));
    let run = tool(
        "qemu-img",
        &["convert", "-f", "cloop", "-O", "raw", "v2.img", "v2.qemu"],
        dir.path(),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(&read(dir.path(), "v2.qemu")[..data.len()], &data[..]);
}

/// `old` with about a tenth of its blocks changed, one inserted and a new tail.
fn remastered(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    new[3 * BS..4 * BS].copy_from_slice(&random(BS, 99));
    new[9 * BS + 5] ^= 1;
    new.splice(6 * BS..6 * BS, text(BS));
    new.extend_from_slice(&random(3000, 4));
    new
}

#[test]
fn fetch_with_a_seed_reads_little_more_than_the_changed_blocks() {
    let dir = tempdir();
    let old = content();
    put(dir.path(), "old.raw", &old);
    put(dir.path(), "new.raw", &remastered(&old));
    ok(dir.path(), &["old.raw", "-o", "old.img", "-q"], None);
    ok(dir.path(), &["new.raw", "-o", "new.img", "-q"], None);
    let report = json(&ok(
        dir.path(),
        &[
            "fetch", "new.img", "-o", "got.img", "--seed", "old.img", "--json",
        ],
        None,
    ));
    let source = read(dir.path(), "new.img");
    assert!(source == read(dir.path(), "got.img"), "{report}");
    // Blocks 3, 6 (inserted), 10 (was 9) and the last are new; the rest are in the seed.
    let parsed = parse_image(&source).unwrap();
    let changed: u64 = [3usize, 6, 10, 15]
        .iter()
        .map(|&b| u64::from(parsed.index.get(b).unwrap().len))
        .sum();
    assert_eq!(report["blocks_from_source"], 4, "{report}");
    assert_eq!(report["block_bytes_from_source"], changed, "{report}");
    assert_eq!(report["seed_blocks_rejected"], 0);
    // Besides those blocks: the header and index (read twice: to open, to copy), the table and
    // the trailer (read twice as well) and the padding.
    let read_bytes = report["source_bytes_read"].as_u64().unwrap();
    let data_start = parsed.index.get(0).unwrap().offset;
    let tail = source.len() as u64 - parsed.index.data_end();
    assert!(
        read_bytes <= changed + 2 * (data_start + tail),
        "{read_bytes} bytes read for {changed} changed: {report}"
    );
}

#[test]
fn fetch_skips_a_damaged_seed_block_and_never_leaves_a_partial_image() {
    let dir = tempdir();
    let old = content();
    put(dir.path(), "old.raw", &old);
    ok(dir.path(), &["old.raw", "-o", "old.img", "-q"], None);
    ok(dir.path(), &["old.raw", "-o", "same.img", "-q"], None);
    let seed_path = dir.path().join("old.img");
    let mut seed = std::fs::read(&seed_path).unwrap();
    let entry = *parse_image(&seed).unwrap().index.get(2).unwrap();
    seed[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x40;
    std::fs::write(&seed_path, &seed).unwrap();
    let out = run_in(
        dir.path(),
        &[
            "fetch", "same.img", "-o", "got.img", "--seed", "old.img", "--json",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: block 2 of old.img does not match block 2 of same.img"),
        "{stderr}"
    );
    let report = json(&out.stdout);
    // Found by the source's stored check of block 2, without decoding.
    assert_eq!(report["stored_checks"], true);
    assert_eq!(report["seed_blocks_rejected"], 1);
    assert_eq!(report["blocks_from_source"], 1);
    assert!(read(dir.path(), "same.img") == read(dir.path(), "got.img"));

    // A source that is not what its own digests say, with a seed that shares nothing: the
    // check fails and nothing is left behind.
    let source_path = dir.path().join("same.img");
    let mut source = std::fs::read(&source_path).unwrap();
    let entry = *parse_image(&source).unwrap().index.get(5).unwrap();
    source[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x40;
    std::fs::write(&source_path, &source).unwrap();
    put(dir.path(), "other.raw", &random(3 * BS, 1));
    ok(dir.path(), &["other.raw", "-o", "other.img", "-q"], None);
    std::fs::remove_file(dir.path().join("got.img")).unwrap();
    let out = run_in(
        dir.path(),
        &["fetch", "same.img", "-o", "got.img", "--seed", "other.img"],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("it was not written"), "{stderr}");
    assert_eq!(
        entries(dir.path())
            .iter()
            .filter(|e| e.contains("got"))
            .count(),
        0
    );
}
