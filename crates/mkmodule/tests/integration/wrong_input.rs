//! A file that is not an image, handed to a reading command by mistake: the message says what
//! the file is not, what it looks like, and what the user probably wanted.

use std::path::Path;
use std::process::Command;

use mkmodule_testkit::tools::require_tool;

use crate::common_read::{fails, write};

/// A small real ext4 filesystem image made by mkfs.ext4.
fn ext4_image(dir: &Path) -> String {
    require_tool("mkfs.ext4");
    let path = dir.join("rootfs.ext4");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 failed");
    path.to_str().unwrap().to_string()
}

#[test]
fn a_raw_ext4_image_is_named_as_such_and_create_is_suggested() {
    let dir = tempfile::tempdir().unwrap();
    let ext4 = ext4_image(dir.path());
    let out = dir.path().join("out");
    for args in [
        vec!["info", ext4.as_str()],
        vec!["verify", ext4.as_str()],
        vec!["extract", ext4.as_str(), "-o", out.to_str().unwrap()],
    ] {
        let (code, _, stderr) = fails(&args);
        // Not an image at all: a plain error (1), not "damaged" (3).
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(&ext4), "{args:?} names the file: {stderr}");
        assert!(stderr.contains("not a cloop-family image"), "{stderr}");
        assert!(stderr.contains("ext2/3/4 filesystem"), "{stderr}");
        assert!(stderr.contains("mkmodule create"), "{stderr}");
        assert!(!stderr.contains("vndcompress"), "{stderr}");
        assert!(!out.exists(), "{args:?} left an output");
    }
}

#[test]
fn other_contents_are_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let mut iso = vec![0u8; 64 << 10];
    iso[32769..32774].copy_from_slice(b"CD001");
    let mut gzip = vec![0x1f, 0x8b, 8, 0];
    gzip.resize(4096, 7);
    let mut squashfs = b"hsqs".to_vec();
    squashfs.resize(4096, 1);
    for (name, bytes, says) in [
        ("live.iso", iso, "ISO 9660"),
        ("root.gz", gzip, "gzip-compressed file: decompress it first"),
        ("root.sqfs", squashfs, "squashfs filesystem"),
    ] {
        let path = write(dir.path(), name, &bytes);
        let (code, _, stderr) = fails(&["info", &path]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
}

#[test]
fn an_unfinished_vndcompress_output_keeps_its_own_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    // What vndcompress leaves before its first checkpoint: a zero header, unwritten entries.
    let mut bytes = vec![0xffu8; 4096];
    bytes[..136].fill(0);
    let path = write(dir.path(), "unfinished", &bytes);
    let (_, _, stderr) = fails(&["info", &path]);
    assert!(stderr.contains("interrupted vndcompress run"), "{stderr}");
    // Zeros alone are no longer taken for one.
    let zeros = write(dir.path(), "zeros", &[0u8; 4096]);
    let (_, _, stderr) = fails(&["info", &zeros]);
    assert!(!stderr.contains("vndcompress"), "{stderr}");
    assert!(stderr.contains("nothing but zero bytes"), "{stderr}");
}
