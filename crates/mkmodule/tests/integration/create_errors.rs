//! `mkmodule create` on bad input: one clear sentence, a non-zero exit, and no file left under
//! the output name (nor a temporary one beside it).

use crate::common_create;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common_create::*;

#[test]
fn bad_options_are_refused_before_any_io() {
    let dir = tempdir();
    put(dir.path(), "in.img", &text(10_000));
    let cases: &[(&[&str], &str)] = &[
        (&["-B", "1000"], "block size 1000 is not possible"),
        (&["-B", "2M"], "block size 2097152 is not possible"),
        (&["-B", "64Q"], "--block-size"),
        (&["-c", "zstd", "--format", "v2"], "use --format uzip-zstd"),
        (
            &["-c", "lz4", "--format", "uzip"],
            "use --format v4 or v4-footer",
        ),
        (&["-c", "zlib:13"], "zlib level 13 is out of range 0..=12"),
        (&["-c", "gzip"], "unknown codec"),
        (&["--format", "v9"], "unknown format"),
        (
            &["--zero-blocks", "--format", "v2"],
            "--zero-blocks is not possible in v2",
        ),
        (&["--dedup", "-c", "lz4"], "--dedup is not possible in v4"),
        (
            &["--size", "20000"],
            "--size 20000 does not match the input in.img",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["in.img", "-o", "out.img"];
        args.extend_from_slice(extra);
        let err = fails(dir.path(), &args, None);
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    assert_eq!(entries(dir.path()), ["in.img"]);
}

#[test]
fn bad_inputs_and_outputs_leave_nothing_behind() {
    let dir = tempdir();
    let data = text(100_000);
    put(dir.path(), "in.img", &data);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let err = fails(dir.path(), &["missing.img", "-o", "out.img"], None);
    assert!(err.contains("cannot open the input missing.img"), "{err}");
    let err = fails(dir.path(), &["sub", "-o", "out.img"], None);
    assert!(err.contains("is a directory"), "{err}");
    let err = fails(dir.path(), &["in.img", "-o", "sub"], None);
    assert!(err.contains("the output sub is a directory"), "{err}");
    let err = fails(dir.path(), &["in.img", "-o", "nodir/out.img"], None);
    assert!(err.contains("does not exist"), "{err}");
    // Input shorter or longer than announced, through a pipe.
    let err = fails(
        dir.path(),
        &["-", "-o", "out.img", "--size", "100001"],
        Some(&data),
    );
    assert!(
        err.contains("ended after 100000 bytes, but 100001"),
        "{err}"
    );
    let err = fails(
        dir.path(),
        &["-", "-o", "out.img", "--size", "99999"],
        Some(&data),
    );
    assert!(err.contains("longer than the 99999 bytes"), "{err}");
    assert_eq!(entries(dir.path()), ["in.img", "sub"]);
    assert_eq!(entries(&dir.path().join("sub")), Vec::<String>::new());
}

#[test]
fn an_existing_output_needs_force() {
    let dir = tempdir();
    put(dir.path(), "in.img", &text(100_000));
    put(dir.path(), "out.img", b"precious");
    let err = fails(dir.path(), &["in.img", "-o", "out.img"], None);
    assert!(err.contains("exists: add -f"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("out.img")).unwrap(),
        b"precious"
    );
    ok(dir.path(), &["in.img", "-o", "out.img", "-f", "-q"], None);
    check_image(
        &std::fs::read(dir.path().join("out.img")).unwrap(),
        &text(100_000),
        true,
    );
    assert_eq!(entries(dir.path()), ["in.img", "out.img"]);
}

#[test]
fn a_full_disk_is_one_sentence() {
    let dir = tempdir();
    put(dir.path(), "in.img", &random(3 << 20, 5));
    // An existing device is written in place (never replaced); /dev/full refuses every write.
    let err = fails(dir.path(), &["in.img", "-o", "/dev/full", "-f"], None);
    assert!(err.contains("No space left on device"), "{err}");
    let out = Command::new(bin())
        .args(["in.img", "-o", "-", "--format", "v4-footer"])
        .current_dir(dir.path())
        .stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(entries(dir.path()), ["in.img"]);
}

fn stopped_by(signal: &str, code: i32) {
    let dir = tempdir();
    // Standard input stays open and silent: the job waits for data with its temporary file
    // created, until the signal comes.
    let mut child = Command::new(bin())
        .args(["-", "-o", "out.img", "-q"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&text(200_000)).unwrap();
    let started = Instant::now();
    while !entries(dir.path()).iter().any(|n| n.ends_with(".partial")) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no temporary file appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        entries(dir.path()),
        Vec::<String>::new(),
        "files left after {signal}"
    );
}

#[test]
fn sigterm_removes_the_partial_image() {
    stopped_by("-TERM", 143);
}

#[test]
fn sigint_removes_the_partial_image() {
    stopped_by("-INT", 130);
}

/// `text` with every run of white space made one space (help text is wrapped to the terminal).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn an_unknown_codec_is_answered_with_the_list_the_help_gives() {
    let dir = tempdir();
    put(dir.path(), "in.img", &text(10_000));
    let commands: [&[&str]; 2] = [
        &["create", "in.img", "-o", "out.img"],
        &["commit", "in.img", "-o", "out.img"],
    ];
    let mut lists = Vec::new();
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--codec", "foo"]);
        let out = run_in(dir.path(), &args, None);
        assert!(!out.status.success(), "{args:?} should fail");
        let error = one_line(&String::from_utf8_lossy(&out.stderr));
        let (_, after) = error
            .split_once("unknown codec \"foo\": expected ")
            .unwrap_or_else(|| panic!("{error}"));
        // The list ends the sentence; clap's error adds its own advice after a blank line.
        let list = after
            .split(" For more information")
            .next()
            .unwrap()
            .to_string();
        for name in ["zlib", "zstd", "xz", "lz4", "none", "best"] {
            assert!(list.contains(name), "{name} missing from {list:?}");
        }
        assert!(list.contains("lzo: read only"), "{list}");
        for help in ["-h", "--help"] {
            let text = run_in(dir.path(), &[command[0], help], None);
            let text = one_line(&String::from_utf8_lossy(&text.stdout));
            assert!(
                text.contains(&format!("Block codec: {list}")),
                "{} {help} does not give {list:?}: {text}",
                command[0]
            );
        }
        lists.push(list);
    }
    assert_eq!(
        lists[0], lists[1],
        "create and commit accept the same codecs"
    );
}
