//! Interop of `mkmodule create` with the peer tools (CI installs them; a missing tool fails):
//! portable images read back exactly by Debian's extract_compressed_fs and qemu's cloop driver,
//! and create_compressed_fs images of the same input decode to the same bytes.

use crate::common_create;

use std::path::Path;

use common_create::*;

/// Over 10 blocks of 64 KiB (extract_compressed_fs crashes on 1-9 blocks), a length that is not
/// a multiple of 512, and every kind of content.
fn corpus() -> Vec<u8> {
    mixed(23 * 65536 + 1234)
}

/// The first `len` bytes of `path`, checking everything after them is zero padding.
fn read_padded(path: &Path, len: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() >= len, "{} is short", path.display());
    assert!(bytes[len..].iter().all(|&b| b == 0), "tail is not zero");
    bytes.truncate(len);
    bytes
}

fn extract(dir: &Path, image: &str) -> std::path::PathBuf {
    let out = dir.join(format!("{image}.extract"));
    // extract_compressed_fs does not truncate its output: start from nothing.
    let _ = std::fs::remove_file(&out);
    let run = tool(
        "extract_compressed_fs",
        &[image, out.to_str().unwrap()],
        dir,
    );
    assert!(
        run.status.success(),
        "extract_compressed_fs {image}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn qemu_raw(dir: &Path, image: &str, probe: bool) -> std::path::PathBuf {
    let out = dir.join(format!("{image}.qemu"));
    let mut args = vec!["convert"];
    if !probe {
        args.extend_from_slice(&["-f", "cloop"]);
    }
    args.extend_from_slice(&["-O", "raw", image, out.to_str().unwrap()]);
    let run = tool("qemu-img", &args, dir);
    assert!(
        run.status.success(),
        "qemu-img convert {image}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[test]
fn portable_images_read_back_exactly_with_extract_and_qemu() {
    let dir = tempdir();
    let data = corpus();
    put(dir.path(), "in.img", &data);
    let variants: &[(&str, &[&str])] = &[
        ("default.img", &[]),
        ("notrailer.img", &["--no-trailer"]),
        ("level9.img", &["-c", "zlib:9", "-B", "16K"]),
        ("stored.img", &["-c", "none", "-B", "32K"]),
        ("best.img", &["-c", "best", "-B", "8K"]),
    ];
    for (name, extra) in variants {
        let mut args = vec!["in.img", "-o", name, "-q"];
        args.extend_from_slice(extra);
        ok(dir.path(), &args, None);
        let image = std::fs::read(dir.path().join(name)).unwrap();
        check_image(&image, &data, !extra.contains(&"--no-trailer"));
        let extracted = extract(dir.path(), name);
        assert!(
            read_padded(&extracted, data.len()) == data,
            "{name}: extract differs"
        );
        // The Debian preamble makes qemu detect the format by itself.
        let raw = qemu_raw(dir.path(), name, true);
        assert!(
            read_padded(&raw, data.len()) == data,
            "{name}: qemu differs"
        );
    }
}

#[test]
fn stdin_images_read_back_with_extract_and_qemu() {
    let dir = tempdir();
    let data = corpus();
    ok(dir.path(), &["-", "-o", "pipe.img", "-q"], Some(&data));
    let extracted = extract(dir.path(), "pipe.img");
    assert!(read_padded(&extracted, data.len()) == data);
    let raw = qemu_raw(dir.path(), "pipe.img", false);
    assert!(read_padded(&raw, data.len()) == data);
}

#[test]
fn create_compressed_fs_images_decode_to_the_same_bytes() {
    let dir = tempdir();
    let data = corpus();
    put(dir.path(), "in.img", &data);
    let run = tool(
        "create_compressed_fs",
        &[
            "-q",
            "-B",
            "64K",
            "-L",
            "9",
            "-t",
            "2",
            "in.img",
            "ref.cloop",
        ],
        dir.path(),
    );
    assert!(
        run.status.success(),
        "create_compressed_fs: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    ok(
        dir.path(),
        &["in.img", "-o", "ours.img", "-q", "--no-trailer"],
        None,
    );
    let reference = std::fs::read(dir.path().join("ref.cloop")).unwrap();
    let ours = std::fs::read(dir.path().join("ours.img")).unwrap();
    let (ref_parsed, ref_device) = decode(&reference);
    let (our_parsed, our_device) = decode(&ours);
    assert!(ref_device == our_device, "decoded devices differ");
    assert!(ref_device[..data.len()] == data[..]);
    // Same structure: identical 136-byte header (Debian preamble, block size, count), blocks
    // right after the index, file ending at index[n].
    assert_eq!(reference[..136], ours[..136]);
    assert_eq!(
        ref_parsed.index.blocks()[0].offset,
        our_parsed.index.blocks()[0].offset
    );
    assert_eq!(ref_parsed.index.data_end(), reference.len() as u64);
    assert_eq!(our_parsed.index.data_end(), ours.len() as u64);
}
