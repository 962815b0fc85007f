//! The first word on the command line: a command, or (as with create_compressed_fs) the input
//! of `create`; a word that is neither a command nor an existing file is a usage error.

use std::process::{Command, Output};

fn run_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkmodule"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn a_mistyped_command_is_a_usage_error_naming_the_nearest_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["extrct", "X", "-o", "out"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`extrct` is neither a command nor an existing file"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `extract`?"), "{stderr}");
    assert!(!dir.path().join("out").exists());
}

#[test]
fn an_existing_file_named_like_a_command_typo_is_compressed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("extrct"), vec![b'x'; 10_000]).unwrap();
    let out = run_in(dir.path(), &["extrct", "-o", "out.img", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("out.img").exists());
}
