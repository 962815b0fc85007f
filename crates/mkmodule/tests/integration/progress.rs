//! `--progress=json` on the long commands: every progress line is a JSON object, the position
//! never goes down, and the last line says `"done":true` with the whole total counted.

use std::path::Path;

use serde_json::Value;

use crate::common_create::{mixed, ok, put, run_in, tempdir};

/// Runs `mkmodule ARGS` in `dir`, asserts success and returns its standard error.
fn stderr_of(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = run_in(dir, args, stdin);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mkmodule {args:?}: {text}");
    out.stderr
}
use crate::common_tools::Served;

/// The stderr lines that start with `{`, each parsed (a line that does not parse fails).
fn json_lines(stderr: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// Every stderr line, each of which must be a JSON object.
fn only_json_lines(stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stderr);
    let lines = json_lines(stderr);
    assert_eq!(lines.len(), text.lines().count(), "not all JSON: {text}");
    lines
}

/// Checks the sequence a successful `command` writes: the fields of every line, the position
/// never lower than before, `done` only on the last line, where the position is `total` (or,
/// with no total, `expect_done`). Returns the last line.
fn check_sequence(lines: &[Value], command: &str, total: Option<u64>, expect_done: u64) -> Value {
    assert!(
        lines.len() >= 2,
        "a first and a last line at least: {lines:?}"
    );
    let mut position = 0;
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["command"], command, "{line}");
        assert!(line["phase"].is_string(), "{line}");
        assert_eq!(
            line["total"],
            total.map_or(Value::Null, Value::from),
            "{line}"
        );
        assert!(line["rate"].is_u64(), "{line}");
        assert!(line["elapsed_seconds"].is_number(), "{line}");
        let eta = &line["eta_seconds"];
        assert!(
            eta.is_null() || eta.as_f64().is_some_and(|s| s >= 0.0),
            "{line}"
        );
        let now = line["position"].as_u64().unwrap();
        assert!(now >= position, "position went from {position} to {now}");
        position = now;
        assert_eq!(line["done"], i + 1 == lines.len(), "done only last: {line}");
    }
    let last = lines.last().unwrap().clone();
    assert_eq!(last["position"], total.unwrap_or(expect_done), "{last}");
    assert_eq!(lines[0]["position"], 0);
    last
}

/// A 4 MiB input file, its last MiB zeros (blocks the readers skip), and its image in `dir`.
fn input_and_image(dir: &Path) -> (Vec<u8>, u64) {
    let mut data = mixed(3 << 20);
    data.resize(4 << 20, 0);
    put(dir, "in.raw", &data);
    ok(dir, &["create", "in.raw", "-o", "in.cloop", "-q"], None);
    (data.clone(), data.len() as u64)
}

#[test]
fn progress_json_of_create_counts_the_input_file() {
    let dir = tempdir();
    let data = mixed(3 << 20);
    put(dir.path(), "in.raw", &data);
    let args = [
        "create",
        "in.raw",
        "-o",
        "out.cloop",
        "-q",
        "--progress=json",
    ];
    let stderr = stderr_of(dir.path(), &args, None);
    let lines = only_json_lines(&stderr);
    let len = data.len() as u64;
    let last = check_sequence(&lines, "create", Some(len), len);
    assert_eq!(last["unit"], "bytes");
    assert_eq!(last["eta_seconds"], 0.0);
}

#[test]
fn progress_json_of_create_from_standard_input_has_no_total() {
    let dir = tempdir();
    let data = mixed((2 << 20) + 1234);
    let args = ["create", "-", "-o", "out.cloop", "-q", "--progress=json"];
    let stderr = stderr_of(dir.path(), &args, Some(&data));
    let lines = only_json_lines(&stderr);
    check_sequence(&lines, "create", None, data.len() as u64);
    // With no total there is no time left to tell until the end.
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|line| line["eta_seconds"].is_null()));
}

#[test]
fn progress_json_of_extract_and_verify_counts_the_image() {
    let dir = tempdir();
    let (data, len) = input_and_image(dir.path());
    let args = [
        "extract",
        "in.cloop",
        "-o",
        "back.raw",
        "-q",
        "--progress=json",
    ];
    let stderr = stderr_of(dir.path(), &args, None);
    check_sequence(&only_json_lines(&stderr), "extract", Some(len), len);
    assert!(std::fs::read(dir.path().join("back.raw")).unwrap() == data);

    let args = ["verify", "in.cloop", "-q", "--progress=json"];
    let stderr = stderr_of(dir.path(), &args, None);
    // 4 MiB is a whole number of the default 64 KiB blocks: padded size = input length.
    check_sequence(&only_json_lines(&stderr), "verify", Some(len), len);
}

#[test]
fn progress_json_of_commit_counts_the_merged_device() {
    let dir = tempdir();
    let (_, len) = input_and_image(dir.path());
    let (cow, image) = (dir.path().join("cow"), dir.path().join("in.cloop"));
    // An overlay with nothing written yet: serve --cow creates it.
    let served = Served::start(
        dir.path(),
        &["--cow", cow.to_str().unwrap(), image.to_str().unwrap()],
    );
    served.terminate();
    let args: Vec<&str> = "commit in.cloop cow -o new.cloop --progress=json"
        .split(' ')
        .collect();
    let stderr = stderr_of(dir.path(), &args, None);
    // The summary stays a plain line beside the JSON ones.
    check_sequence(&json_lines(&stderr), "commit", Some(len), len);
}

#[test]
fn progress_json_of_bench_counts_combinations() {
    let dir = tempdir();
    put(dir.path(), "in.raw", &mixed(1 << 20));
    let args: Vec<&str> = "bench in.raw -B 64K -c lz4,zlib:1 --reads 30 --json -q --progress=json"
        .split(' ')
        .collect();
    let stderr = stderr_of(dir.path(), &args, None);
    let last = check_sequence(&only_json_lines(&stderr), "bench", Some(2), 2);
    assert_eq!(last["unit"], "combinations");
}

#[test]
fn progress_none_quiet_and_a_pipe_write_no_progress_lines() {
    let dir = tempdir();
    put(dir.path(), "in.raw", &mixed(1 << 20));
    // Standard error is a pipe here: auto shows nothing, and so do none and -q.
    for extra in [&[][..], &["--progress=none"], &["-q"], &["--progress=bar"]] {
        let mut args = vec!["create", "in.raw", "-o", "out.cloop", "-f"];
        args.extend_from_slice(extra);
        let stderr = stderr_of(dir.path(), &args, None);
        assert!(json_lines(&stderr).is_empty(), "{extra:?}");
    }
}

#[test]
fn progress_help_documents_the_json_lines() {
    let dir = tempdir();
    for command in ["create", "extract", "verify", "commit", "bench"] {
        let help = String::from_utf8(ok(dir.path(), &[command, "--help"], None)).unwrap();
        for needle in ["--progress <HOW>", "\"done\":true", "eta_seconds", "null"] {
            assert!(
                help.contains(needle),
                "{command} --help lacks {needle}: {help}"
            );
        }
    }
}

#[test]
fn progress_json_starts_only_once_the_output_is_accepted() {
    let dir = tempdir();
    put(dir.path(), "in.raw", &mixed(1 << 20));
    put(dir.path(), "out.cloop", b"taken");
    let args = ["create", "in.raw", "-o", "out.cloop", "--progress=json"];
    let out = run_in(dir.path(), &args, None);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(json_lines(&out.stderr).is_empty(), "{text}");
    assert!(text.contains("exists"), "{text}");
}
