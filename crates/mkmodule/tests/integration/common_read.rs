//! Helpers for the `info`, `extract` and `verify` tests: run the real binary, build images of
//! every dialect (the testkit's builder), find the fixtures.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

/// The test image builder and test data (from the testkit), under one name.
pub mod build {
    pub use mkmodule_testkit::data::*;
    pub use mkmodule_testkit::image::*;
}

pub use mkmodule_testkit::data::sha256_hex;
pub use mkmodule_testkit::fixtures::fixtures;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mkmodule")
}

/// `mkmodule ARGS`, stdin closed, output captured.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("mkmodule runs")
}

/// Runs and asserts success; returns stdout as text.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "mkmodule {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The exit status, stdout and stderr of a run that must fail.
pub fn fails(args: &[&str]) -> (i32, String, String) {
    let out = run(args);
    assert!(!out.status.success(), "mkmodule {args:?} succeeded");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `bytes` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs an external tool; a missing tool fails the test (it is a declared dependency).
pub fn tool(program: &str, args: &[&str]) -> Output {
    mkmodule_testkit::tools::require_tool(program);
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required for this test (install it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
