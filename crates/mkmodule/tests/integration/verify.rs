//! `mkmodule verify`: good images pass; a flipped block, a wrong digest, a damaged trailer or a
//! broken index exit with status 3 and say where.

use crate::common_read;

use common_read::build::{build, sample, Spec};
use common_read::{fails, fixtures, ok, write};
use mkmodule_format::{Dialect, DigestAlgorithm, Trailer};

#[test]
fn every_fixture_verifies() {
    for fixture in fixtures() {
        let path = fixture.path.to_str().unwrap();
        let text = ok(&["verify", path]);
        assert!(text.contains(": ok"), "{text}");
        let report: serde_json::Value =
            serde_json::from_str(&ok(&["verify", "--json", path])).unwrap();
        assert_eq!(report["ok"], true);
        assert_eq!(report["blocks"], fixture.num_blocks);
        assert!(report["bad_blocks"].as_array().unwrap().is_empty());
        assert!(report["digest"].is_null());
    }
}

#[test]
fn a_flipped_block_is_reported_with_index_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    for dialect in [Dialect::LinuxV2, Dialect::UzipZstd, Dialect::UzipXz] {
        let built = build(&sample(14, 4096, 0), &Spec::new(dialect, 4096));
        let entry = built.index().blocks()[9];
        let mut bytes = built.image.clone();
        bytes[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x08;
        let image = write(dir.path(), dialect.name(), &bytes);

        let (code, stdout, stderr) = fails(&["verify", &image]);
        assert_eq!(code, 3, "{dialect}: {stderr}");
        assert!(
            stdout.contains(&format!("bad block 9: block 9 at offset {}", entry.offset)),
            "{dialect}: {stdout}"
        );
        assert!(stderr.contains("is damaged: 1 bad block"), "{stderr}");

        let (code, stdout, _) = fails(&["verify", "--json", &image]);
        assert_eq!(code, 3);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["ok"], false);
        let bad = report["bad_blocks"].as_array().unwrap();
        assert_eq!(bad.len(), 1, "{dialect}: {report}");
        assert_eq!(bad[0]["index"], 9);
        assert_eq!(bad[0]["offset"], entry.offset);
    }
}

#[test]
fn the_trailer_digest_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(11, 4096, 999);
    let spec = Spec {
        trailer: true,
        ..Spec::new(Dialect::LinuxV2, 4096)
    };
    let built = build(&data, &spec);
    let good = write(dir.path(), "good", &built.image);
    let text = ok(&["verify", &good]);
    assert!(
        text.contains(&format!(
            "digest: sha256 {} (ok)",
            common_read::sha256_hex(&data)
        )),
        "{text}"
    );

    // The same image with a trailer recording another digest (CRC valid): content mismatch.
    let mut bytes = built.image.clone();
    let at = bytes.len() - 136;
    let wrong = Trailer {
        original_len: data.len() as u64,
        digest_algorithm: DigestAlgorithm::Sha256,
        digest: vec![0xAB; 32],
        data_end: built.index().data_end(),
        tool: "liar".into(),
        extension: Default::default(),
    };
    bytes[at..].copy_from_slice(&wrong.encode());
    let bad = write(dir.path(), "bad-digest", &bytes);
    let (code, stdout, stderr) = fails(&["verify", &bad]);
    assert_eq!(code, 3);
    assert!(stdout.contains("MISMATCH"), "{stdout}");
    assert!(
        stderr.contains("does not match its recorded digest"),
        "{stderr}"
    );
    let (_, stdout, _) = fails(&["verify", "--json", &bad]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["digest"]["status"], "mismatch");
    assert_eq!(report["digest"]["actual"], common_read::sha256_hex(&data));

    // A corrupt trailer checksum is damage too.
    let mut bytes = built.image.clone();
    let at = bytes.len() - 60;
    bytes[at] ^= 1;
    let corrupt = write(dir.path(), "bad-trailer", &bytes);
    let (code, stdout, _) = fails(&["verify", &corrupt]);
    assert_eq!(code, 3);
    assert!(stdout.contains("trailer: mkmodule trailer"), "{stdout}");
}

#[test]
fn a_broken_index_is_damage_and_a_missing_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(&sample(12, 4096, 0), &Spec::new(Dialect::LinuxV2, 4096));
    let cut = write(dir.path(), "cut", &built.image[..built.image.len() - 100]);
    let (code, stdout, _) = fails(&["verify", &cut]);
    assert_eq!(code, 3);
    assert!(
        stdout.contains("cannot be read: index end entry"),
        "{stdout}"
    );
    let (code, stdout, _) = fails(&["verify", "--json", &cut]);
    assert_eq!(code, 3);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["error"].as_str().unwrap().contains("truncated"));

    let missing = dir.path().join("missing");
    let (code, _, stderr) = fails(&["verify", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn a_bad_block_in_an_image_with_a_digest_leaves_the_digest_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        trailer: true,
        ..Spec::new(Dialect::UzipZstd, 4096)
    };
    let built = build(&sample(40, 4096, 10), &spec);
    let entry = built.index().blocks()[33];
    let mut bytes = built.image.clone();
    bytes[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x02;
    let image = write(dir.path(), "img", &bytes);
    let (code, stdout, _) = fails(&["verify", "--json", "-j", "2", &image]);
    assert_eq!(code, 3);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["bad_blocks"][0]["index"], 33);
    assert_eq!(report["bad_blocks"][0]["offset"], entry.offset);
    assert_eq!(report["digest"]["status"], "not checked");
    assert!(report["digest"]["actual"].is_null());
}

/// A uzip image of `blocks` zero-length blocks of `block_size` bytes: the header, an index whose
/// entries all point at its own end, and (with `trailer_len`) a trailer claiming that many bytes
/// of content. The file is a few hundred KiB; the device it claims is `blocks × block_size`.
fn zero_length_claim(block_size: u32, blocks: u32, trailer_len: Option<u64>) -> Vec<u8> {
    let template = build(&[0u8; 4096], &Spec::new(Dialect::UzipZlib, 4096)).image;
    let mut image = template[..128].to_vec();
    image.extend_from_slice(&block_size.to_be_bytes());
    image.extend_from_slice(&blocks.to_be_bytes());
    let data_end = 136 + 8 * (u64::from(blocks) + 1);
    for _ in 0..=blocks {
        image.extend_from_slice(&data_end.to_be_bytes());
    }
    if let Some(original_len) = trailer_len {
        let padding = (512 - (data_end as usize + 136) % 512) % 512;
        image.resize(image.len() + padding, 0);
        let trailer = Trailer {
            original_len,
            digest_algorithm: DigestAlgorithm::Sha256,
            digest: vec![0x5a; 32],
            data_end,
            tool: "mkmodule tests".into(),
            extension: Default::default(),
        };
        image.extend_from_slice(&trailer.encode());
    }
    image
}

#[test]
fn terabytes_of_zero_length_blocks_are_bounded_by_max_size() {
    let dir = tempfile::tempdir().unwrap();
    // 65536 blocks of 64 MiB: a 4 TiB device in a file of 512 KiB.
    let (block_size, blocks) = (64 << 20, 65536);
    let claimed = u64::from(block_size) * u64::from(blocks);
    let started = std::time::Instant::now();

    // With a digest to check, the 4 TiB would all be hashed: refused at once, with the numbers.
    let image = write(
        dir.path(),
        "claims.uzip",
        &zero_length_claim(block_size, blocks, Some(claimed)),
    );
    let (code, _, stderr) = fails(&["verify", &image]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for needle in [
        "hashing 4.0 TiB (4398046511104 bytes) for the trailer's digest",
        "more than --max-size 2.0 TiB",
        "65536 blocks of 67108864 bytes (65536 of them zero)",
        "--max-size to check it anyway",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    // A smaller claim under a smaller limit is refused the same way.
    let (_, _, stderr) = fails(&["verify", &image, "--max-size", "1G"]);
    assert!(stderr.contains("more than --max-size 1.0 GiB"), "{stderr}");

    // Without a digest, zero-length blocks are known zero: nothing to decode, done at once.
    let image = write(
        dir.path(),
        "zeros.uzip",
        &zero_length_claim(block_size, blocks, None),
    );
    let text = ok(&["verify", &image, "-q"]);
    assert!(text.contains("65536 blocks, 0 bad: ok"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
