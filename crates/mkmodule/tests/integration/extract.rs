//! `mkmodule extract`: fixtures to their raw SHA-256 (file and stdout), exact original length,
//! sparse output, careful replacement of OUT, and agreement with qemu-img and
//! extract_compressed_fs; the trailer's digest checked on the way out.

use crate::common_read;

use std::os::unix::fs::MetadataExt;

use common_read::build::{build, sample, Spec};
use common_read::{fails, fixtures, ok, run, sha256_hex, tool, write};
use mkmodule_format::Dialect;

#[test]
fn every_fixture_extracts_to_its_raw_sha256() {
    let dir = tempfile::tempdir().unwrap();
    for fixture in fixtures() {
        let out = dir.path().join(format!("{}.raw", fixture.name));
        ok(&[
            "extract",
            fixture.path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, fixture.raw_len, "{}", fixture.name);
        assert_eq!(sha256_hex(&bytes), fixture.raw_sha256, "{}", fixture.name);

        let piped = run(&[
            "extract",
            fixture.path.to_str().unwrap(),
            "-o",
            "-",
            "-j",
            "3",
        ]);
        assert!(
            piped.status.success(),
            "{}",
            String::from_utf8_lossy(&piped.stderr)
        );
        assert_eq!(
            sha256_hex(&piped.stdout),
            fixture.raw_sha256,
            "{} to stdout",
            fixture.name
        );
    }
}

#[test]
fn every_dialect_extracts_to_its_content() {
    let dir = tempfile::tempdir().unwrap();
    for dialect in Dialect::ALL {
        let data = sample(20, 4096, 777);
        let built = build(&data, &Spec::new(dialect, 4096));
        let image = write(dir.path(), dialect.name(), &built.image);
        let out = dir.path().join(format!("{}.raw", dialect.name()));
        ok(&["extract", &image, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == built.expected, "{dialect}");
    }
}

#[test]
fn the_trailer_gives_back_the_exact_original_length() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(9, 4096, 1234);
    let spec = Spec {
        trailer: true,
        ..Spec::new(Dialect::LinuxV2, 4096)
    };
    let built = build(&data, &spec);
    let image = write(dir.path(), "img", &built.image);
    let exact = dir.path().join("exact");
    ok(&["extract", &image, "-o", exact.to_str().unwrap()]);
    assert!(std::fs::read(&exact).unwrap() == data);
    let padded = dir.path().join("padded");
    ok(&[
        "extract",
        &image,
        "-o",
        padded.to_str().unwrap(),
        "--padded",
    ]);
    assert!(std::fs::read(&padded).unwrap() == built.expected);
    let piped = run(&["extract", &image, "-o", "-"]);
    assert!(piped.stdout == data);
}

#[test]
fn zero_blocks_become_holes_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    // 64 blocks of 64 KiB: 48 all-zero (compressed zero blocks, as create_compressed_fs writes).
    let bs = 65536;
    let mut data = vec![0u8; 64 * bs];
    for block in (0..64).step_by(4) {
        data[block * bs..(block + 1) * bs]
            .copy_from_slice(&common_read::build::random(bs, block as u64));
    }
    let built = build(&data, &Spec::new(Dialect::LinuxV2, bs as u32));
    let image = write(dir.path(), "sparse.cloop", &built.image);

    let sparse = dir.path().join("sparse.raw");
    ok(&["extract", &image, "-o", sparse.to_str().unwrap()]);
    let meta = std::fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), data.len() as u64);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated <= (16 * bs + 256 * 1024) as u64,
        "sparse output allocates {allocated} bytes for 1 MiB of data"
    );
    assert!(std::fs::read(&sparse).unwrap() == data);

    let dense = dir.path().join("dense.raw");
    ok(&[
        "extract",
        &image,
        "-o",
        dense.to_str().unwrap(),
        "--no-sparse",
    ]);
    let meta = std::fs::metadata(&dense).unwrap();
    assert!(
        meta.blocks() * 512 >= data.len() as u64,
        "--no-sparse left holes"
    );
    assert!(std::fs::read(&dense).unwrap() == data);
}

#[test]
fn an_existing_output_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f01"))
        .unwrap();
    let out = write(dir.path(), "out.raw", b"precious");
    let (code, _, stderr) = fails(&["extract", fixture.path.to_str().unwrap(), "-o", &out]);
    assert_eq!(code, 1);
    assert!(stderr.contains("exists: use --force"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    ok(&[
        "extract",
        fixture.path.to_str().unwrap(),
        "-o",
        &out,
        "--force",
    ]);
    assert_eq!(
        sha256_hex(&std::fs::read(&out).unwrap()),
        fixture.raw_sha256
    );
}

#[test]
fn a_damaged_image_leaves_no_output_behind() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(&sample(12, 4096, 0), &Spec::new(Dialect::LinuxV2, 4096));
    let mut bytes = built.image.clone();
    let entry = built.index().blocks()[7];
    bytes[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x40;
    let image = write(dir.path(), "bad.cloop", &bytes);
    let out = dir.path().join("out.raw");
    let (code, _, stderr) = fails(&["extract", &image, "-o", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("block 7 at offset {}", entry.offset)),
        "{stderr}"
    );
    assert!(!out.exists(), "a partial output was left behind");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["bad.cloop".to_string()],
        "temporary files left behind"
    );
}

#[test]
fn output_can_be_a_device() {
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name.starts_with("f03"))
        .unwrap();
    ok(&["extract", fixture.path.to_str().unwrap(), "-o", "/dev/null"]);
}

#[test]
fn qemu_img_and_extract_compressed_fs_agree_with_us() {
    let dir = tempfile::tempdir().unwrap();
    for fixture in fixtures().iter().filter(|f| f.num_blocks > 0) {
        let path = fixture.path.to_str().unwrap();
        let ours = dir.path().join(format!("{}.ours", fixture.name));
        ok(&["extract", path, "-o", ours.to_str().unwrap()]);
        let ours = std::fs::read(&ours).unwrap();

        let qemu = dir.path().join(format!("{}.qemu", fixture.name));
        tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "cloop",
                "-O",
                "raw",
                path,
                qemu.to_str().unwrap(),
            ],
        );
        assert!(
            std::fs::read(&qemu).unwrap() == ours,
            "{}: qemu-img differs",
            fixture.name
        );

        // extract_compressed_fs crashes on images of 1 to 9 blocks (docs/FORMAT.md §10).
        if fixture.num_blocks >= 10 {
            let theirs = dir.path().join(format!("{}.ecfs", fixture.name));
            tool("extract_compressed_fs", &[path, theirs.to_str().unwrap()]);
            assert!(
                std::fs::read(&theirs).unwrap() == ours,
                "{}: extract_compressed_fs differs",
                fixture.name
            );
        }
    }
}

/// Temporary files and outputs left in `dir` besides `keep`.
fn leftovers(dir: &std::path::Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != keep)
        .collect()
}

#[test]
fn an_index_with_overlapping_entries_fails_the_trailer_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(8, 4096, 0);
    let spec = Spec {
        trailer: true,
        ..Spec::new(Dialect::UzipZlibDedup, 4096)
    };
    let mut built = build(&data, &spec);
    // Entry 4 made to point at block 2: it parses as a back-reference and decodes block 2's
    // bytes where block 4's belong.
    let block_2 = built.index().blocks()[2].offset;
    built.set_index_word(4, block_2);
    let image = write(dir.path(), "edited.uzip", &built.image);
    let expected = sha256_hex(&data);

    let out = dir.path().join("out.raw");
    let (code, _, stderr) = fails(&["extract", &image, "-o", out.to_str().unwrap()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("the image is damaged"), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!out.exists(), "the wrong output was kept");
    assert!(leftovers(dir.path(), "edited.uzip").is_empty());

    let piped = run(&["extract", &image, "-o", "-"]);
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(piped.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("standard output received the wrong content"),
        "{stderr}"
    );

    ok(&[
        "extract",
        &image,
        "-o",
        out.to_str().unwrap(),
        "--no-verify",
    ]);
    assert!(std::fs::read(&out).unwrap() != data);
}

#[test]
fn sparse_extraction_hashes_the_holes() {
    let dir = tempfile::tempdir().unwrap();
    // Zero blocks as holes in the output must still count as zeros in the digest.
    let data = sample(21, 4096, 100);
    for dialect in [Dialect::LinuxV2, Dialect::UzipZlib] {
        let spec = Spec {
            trailer: true,
            ..Spec::new(dialect, 4096)
        };
        let image = write(dir.path(), "img", &build(&data, &spec).image);
        for mode in ["--sparse", "--no-sparse"] {
            let out = dir.path().join(format!("{}{mode}", dialect.name()));
            ok(&["extract", &image, "-o", out.to_str().unwrap(), mode]);
            assert!(std::fs::read(&out).unwrap() == data, "{dialect:?} {mode}");
        }
    }
}
