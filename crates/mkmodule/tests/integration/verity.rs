//! `mkmodule create --verity`: the hash file beside the image is byte for byte what
//! `veritysetup format` writes over the image's padded device, the root hashes agree, and
//! `veritysetup verify` accepts the pair (and refuses a flipped data byte).

use std::path::Path;

use crate::common_create::{fails, mixed, ok, put, random, tempdir, tool};

const SALT: &str = "5a1700112233445566778899aabbccddeeff00112233445566778899aabbccdd";
const UUID: &str = "0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0";

/// What `create --verity --json` reported.
struct Created {
    root_hash: String,
    hash_file: String,
    data_blocks: u64,
}

fn create(dir: &Path, input: &str, image: &str, salt: &str, extra: &[&str]) -> Created {
    let mut args = vec![
        "create",
        input,
        "-o",
        image,
        "--verity",
        "--verity-salt",
        salt,
        "--verity-uuid",
        UUID,
        "--json",
        "-q",
    ];
    args.extend_from_slice(extra);
    let stdout = ok(dir, &args, None);
    let report: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON report");
    let verity = &report["verity"];
    assert_eq!(verity["hash_algorithm"], "sha256");
    assert_eq!(verity["data_block_size"], 4096);
    assert_eq!(verity["hash_block_size"], 4096);
    assert_eq!(verity["uuid"], UUID);
    let expected_salt = if salt == "-" { "" } else { salt };
    assert_eq!(verity["salt"], expected_salt);
    Created {
        root_hash: verity["root_hash"].as_str().unwrap().to_string(),
        hash_file: verity["hash_file"].as_str().unwrap().to_string(),
        data_blocks: verity["data_blocks"].as_u64().unwrap(),
    }
}

/// The root hash `veritysetup format` prints.
fn root_hash_of(format_output: &[u8]) -> String {
    let text = String::from_utf8_lossy(format_output);
    text.lines()
        .find_map(|line| line.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("no root hash in {text:?}"))
        .trim()
        .to_string()
}

fn veritysetup(dir: &Path, args: &[&str]) -> std::process::Output {
    tool("veritysetup", args, dir)
}

/// Creates an image of `data` with `--verity`, formats its padded device with veritysetup and
/// compares; returns the data blocks covered.
fn check_against_veritysetup(data: &[u8], salt: &str, extra: &[&str]) -> u64 {
    let dir = tempdir();
    let d = dir.path();
    put(d, "input", data);
    let created = create(d, "input", "image", salt, extra);
    assert_eq!(created.hash_file, "image.verity");
    ok(
        d,
        &["extract", "image", "--padded", "-o", "device", "-q"],
        None,
    );
    let device = std::fs::read(d.join("device")).unwrap();
    assert_eq!(device.len() % 4096, 0);
    assert!(device.len() >= data.len());
    assert_eq!(created.data_blocks, device.len() as u64 / 4096);

    let formatted = veritysetup(
        d,
        &[
            "format",
            "--salt",
            salt,
            "--uuid",
            UUID,
            "device",
            "reference",
        ],
    );
    assert!(
        formatted.status.success(),
        "veritysetup format: {}",
        String::from_utf8_lossy(&formatted.stderr)
    );
    assert_eq!(root_hash_of(&formatted.stdout), created.root_hash);
    let ours = std::fs::read(d.join("image.verity")).unwrap();
    let theirs = std::fs::read(d.join("reference")).unwrap();
    assert_eq!(ours.len(), theirs.len(), "hash file lengths");
    assert!(ours == theirs, "the hash files differ");

    let verified = veritysetup(d, &["verify", "device", "image.verity", &created.root_hash]);
    assert!(
        verified.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    created.data_blocks
}

#[test]
fn a_whole_number_of_blocks_matches_veritysetup() {
    assert_eq!(check_against_veritysetup(&mixed(3 << 20), SALT, &[]), 768);
}

#[test]
fn a_padded_final_block_matches_veritysetup() {
    // 3 MiB + 1000 bytes: the device is four 64 KiB blocks more than the 3 MiB.
    let blocks = check_against_veritysetup(&mixed((3 << 20) + 1000), SALT, &[]);
    assert_eq!(blocks, 768 + 16);
}

#[test]
fn a_short_uzip_final_block_is_covered_as_the_padded_device() {
    let data = random((1 << 20) + 5000, 7);
    let blocks = check_against_veritysetup(&data, SALT, &["-c", "zstd", "-B", "16K"]);
    assert_eq!(blocks, 256 + 4);
}

#[test]
fn no_salt_matches_veritysetup() {
    check_against_veritysetup(&mixed(1 << 20), "-", &["-B", "4K"]);
}

#[test]
fn three_levels_match_veritysetup() {
    // More than 128 x 128 data blocks: level 0 needs 129 hash blocks, level 1 two, level 2 one.
    let mut data = mixed(4 << 20);
    data.resize((64 << 20) + 3 * 4096 + 17, 0);
    data[(40 << 20)..(40 << 20) + 4096].copy_from_slice(&random(4096, 3));
    let blocks = check_against_veritysetup(&data, SALT, &["-B", "1M"]);
    assert_eq!(blocks, 65 * 256);
}

#[test]
fn a_flipped_data_byte_fails_veritysetup_verify() {
    let dir = tempdir();
    let d = dir.path();
    put(d, "input", &mixed(2 << 20));
    let created = create(d, "input", "image", SALT, &[]);
    ok(
        d,
        &["extract", "image", "--padded", "-o", "device", "-q"],
        None,
    );
    let mut device = std::fs::read(d.join("device")).unwrap();
    device[123_456] ^= 0x40;
    std::fs::write(d.join("device"), &device).unwrap();
    let verified = veritysetup(d, &["verify", "device", "image.verity", &created.root_hash]);
    assert!(!verified.status.success(), "a corrupt device verified");
}

#[test]
fn refusals_are_one_sentence() {
    let dir = tempdir();
    let d = dir.path();
    put(d, "input", &mixed(100_000));
    let err = fails(d, &["create", "input", "-o", "-", "--verity"], None);
    assert!(err.contains("--verity needs an output file"), "{err}");
    let err = fails(
        d,
        &["create", "input", "-o", "image", "--verity", "-B", "2K"],
        None,
    );
    assert!(err.contains("multiple of 4096, not 2048"), "{err}");
    assert!(!d.join("image").exists());
    let err = fails(
        d,
        &[
            "create",
            "input",
            "-o",
            "image",
            "--verity",
            "--verity-salt",
            "xyz",
        ],
        None,
    );
    assert!(err.contains("--verity-salt"), "{err}");
    std::fs::write(d.join("image.verity"), b"keep").unwrap();
    let err = fails(d, &["create", "input", "-o", "image", "--verity"], None);
    assert!(err.contains("image.verity exists"), "{err}");
    assert!(!d.join("image").exists());
    assert_eq!(std::fs::read(d.join("image.verity")).unwrap(), b"keep");
}

#[test]
fn verify_recomputes_the_tree_and_names_the_first_bad_data_block() {
    let dir = tempdir();
    let d = dir.path();
    put(d, "input", &mixed(5 << 20));
    let created = create(d, "input", "image", SALT, &[]);
    let out = ok(d, &["verify", "--verity", "image", "-q"], None);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains(&format!(
            "verity: image.verity ok, root hash {}",
            created.root_hash
        )),
        "{text}"
    );

    // 1280 data blocks: level 0 is 10 hash blocks after the superblock and one level-1 block.
    let mut hashes = std::fs::read(d.join("image.verity")).unwrap();
    assert_eq!(hashes.len(), 12 * 4096);
    hashes[2 * 4096 + 700 * 32 + 3] ^= 1;
    hashes[2 * 4096 + 900 * 32] ^= 1;
    std::fs::write(d.join("image.verity"), &hashes).unwrap();
    let err = fails(d, &["verify", "--verity", "image", "-q", "--json"], None);
    assert_eq!(
        err,
        "mkmodule: image is damaged: data block 700 (device offset 2867200, image block 43) does \
         not match its hash in image.verity"
    );
}

#[test]
fn verify_without_a_hash_file_is_an_error_not_damage() {
    let dir = tempdir();
    let d = dir.path();
    put(d, "input", &mixed(100_000));
    ok(d, &["create", "input", "-o", "image", "-q"], None);
    let out = crate::common_create::run_in(d, &["verify", "--verity", "image", "-q"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "mkmodule: image has no hash tree to check: image.verity does not exist (it is written \
         by `mkmodule create --verity`)"
    );
}

/// `serve` exports the hash tree beside the image as `NAME.verity`; what a client copies from
/// the two exports is a data and hash device pair that `veritysetup verify` accepts.
#[test]
fn serve_exports_the_tree_beside_the_image() {
    use crate::common_tools::{run_ok, Served};
    let dir = tempdir();
    let d = dir.path();
    put(d, "input", &mixed(3 << 20));
    let created = create(d, "input", "image", SALT, &[]);
    let image = d.join("image").display().to_string();
    let served = Served::start(d, &[&format!("root={image}")]);
    let list = run_ok("nbdinfo", &["--list", &served.uri("")]);
    assert!(list.contains("export=\"root\""), "{list}");
    assert!(list.contains("export=\"root.verity\""), "{list}");
    let data = d.join("served-data").display().to_string();
    let tree = d.join("served-tree").display().to_string();
    run_ok("nbdcopy", &[&served.uri("root"), &data]);
    run_ok("nbdcopy", &[&served.uri("root.verity"), &tree]);
    served.terminate();
    assert_eq!(
        std::fs::read(&tree).unwrap(),
        std::fs::read(d.join("image.verity")).unwrap()
    );
    let verified = veritysetup(d, &["verify", &data, &tree, &created.root_hash]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}
