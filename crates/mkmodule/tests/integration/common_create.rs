//! Helpers for the `mkmodule create` tests: run the real binary, make data, decode images with
//! the format and codec crates only (the reader crate is tested on its own).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mkmodule_format::{DigestAlgorithm, HeaderPosition, ParsedImage};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mkmodule")
}

/// `mkmodule ARGS` in `dir`, with `stdin` fed from memory (or closed).
pub fn run_in(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mkmodule starts");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        // Feed from a thread: the child may exit early (and then the write fails, which is fine).
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    child.wait_with_output().expect("mkmodule runs")
}

/// Runs and asserts success; returns stdout.
pub fn ok(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = run_in(dir, args, stdin);
    assert!(
        out.status.success(),
        "mkmodule {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs and asserts failure with exactly one line on stderr; returns that line.
pub fn fails(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run_in(dir, args, stdin);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "mkmodule {args:?} should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err:?}");
    err.trim_end().to_string()
}

/// Runs an external peer tool; a missing tool fails the test (CI installs them).
pub fn tool(name: &str, args: &[&str], dir: &Path) -> Output {
    mkmodule_testkit::tools::require_tool(name);
    Command::new(name)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{name} is needed by this test and cannot run ({e}); \
                 scripts/install-deps.sh installs it"
            )
        })
}

/// Deterministic pseudo-random bytes.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compressible text.
pub fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "{i:06} the quick brown fox jumps over {} lazy dogs\n",
                i * 7919 % 977
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// A filesystem-like mix: text, zeros, random bytes, repeats.
pub fn mixed(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut part = 0u64;
    while out.len() < len {
        let chunk = match part % 4 {
            0 => text(50_000),
            1 => vec![0; 70_000],
            2 => random(30_000, part),
            _ => out[..out.len().min(20_000)].to_vec(),
        };
        out.extend_from_slice(&chunk);
        part += 1;
    }
    out.truncate(len);
    out
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Writes `data` to `dir/name` and returns the path.
pub fn put(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write test input");
    path
}

pub use mkmodule_testkit::image::decode;

/// Checks `image` holds `input` exactly (followed by zero padding up to whole blocks), and that
/// its trailer, when present, records the input's length and SHA-256.
pub fn check_image(image: &[u8], input: &[u8], expect_trailer: bool) -> ParsedImage {
    let (parsed, device) = decode(image);
    assert!(device.len() >= input.len(), "device shorter than input");
    assert!(
        device[..input.len()] == *input,
        "decoded bytes differ from the input"
    );
    assert!(
        device[input.len()..].iter().all(|&b| b == 0),
        "padding is not zeros"
    );
    let bs = parsed.index.block_size() as usize;
    assert_eq!(parsed.index.len(), input.len().div_ceil(bs).max(1));
    if expect_trailer {
        let trailer = parsed.trailer.clone().expect("a trailer");
        assert_eq!(trailer.original_len, input.len() as u64);
        assert_eq!(trailer.digest_algorithm, DigestAlgorithm::Blake3Blocks);
        assert_eq!(
            trailer.digest,
            mkmodule_format::blake3_blocks_digest(input, bs as u32).to_vec()
        );
        assert_eq!(image.len() % 512, 0);
    } else {
        assert!(parsed.trailer.is_none(), "unexpected trailer");
    }
    if parsed.layout.dialect.spec().header_position == HeaderPosition::Start {
        let n = parsed.index.len() as u64;
        assert_eq!(parsed.index.blocks()[0].offset, 136 + 8 * (n + 1));
    }
    parsed
}

/// Lists a directory's entries (to prove nothing was left behind).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
