//! `mkmodule create` round trips: every format and codec, generated data of awkward sizes, files,
//! stdin and stdout; images decoded with the format and codec crates.

use crate::common_create;

use common_create::*;
use mkmodule_format::{BlockKind, Dialect};

const BS: usize = 4096;

/// Every format x codec the command line offers, with the dialect it must produce.
const CASES: &[(&[&str], Dialect)] = &[
    (&[], Dialect::LinuxV2),
    (&["-c", "zlib:1"], Dialect::LinuxV2),
    (&["-c", "none"], Dialect::LinuxV2),
    (&["-c", "best"], Dialect::LinuxV2),
    (&["-c", "xz:1"], Dialect::LinuxV4),
    (&["-c", "lz4"], Dialect::LinuxV4),
    (&["-c", "best", "--format", "v4"], Dialect::LinuxV4),
    (
        &["-c", "zlib", "--format", "v4-footer"],
        Dialect::LinuxV4Footer,
    ),
    (
        &["-c", "lz4", "--format", "v4-footer"],
        Dialect::LinuxV4Footer,
    ),
    (&["-c", "zlib", "--format", "uzip"], Dialect::UzipZlib),
    (&["-c", "xz:0", "--format", "uzip"], Dialect::UzipXz),
    (&["-c", "zstd"], Dialect::UzipZstd),
    (&["-c", "zstd:19", "--zero-blocks"], Dialect::UzipZstd),
    (
        &["-c", "zlib", "--dedup", "--zero-blocks"],
        Dialect::UzipZlibDedup,
    ),
    (
        &["-c", "xz:0", "--format", "uzip", "--dedup"],
        Dialect::UzipXzDedup,
    ),
    (&["-c", "zstd:1", "--dedup"], Dialect::UzipZstdDedup),
];

fn sizes() -> [usize; 5] {
    [0, 1, BS, BS + 1, 3 * BS + 700]
}

fn inputs(len: usize) -> [(&'static str, Vec<u8>); 3] {
    [
        ("text", text(len)),
        ("random", random(len, len as u64 + 1)),
        ("zeros", vec![0; len]),
    ]
}

#[test]
fn every_format_and_codec_round_trips_from_a_file() {
    let dir = tempdir();
    for (extra, dialect) in CASES {
        for len in sizes() {
            for (kind, data) in inputs(len) {
                let input = put(dir.path(), "in.img", &data);
                let out = dir.path().join("out.img");
                let _ = std::fs::remove_file(&out);
                let mut args = vec![input.to_str().unwrap(), "-o", "out.img", "-B", "4K", "-q"];
                args.extend_from_slice(extra);
                ok(dir.path(), &args, None);
                let image = std::fs::read(&out).unwrap();
                let header_first = !matches!(dialect, Dialect::LinuxV4Footer);
                let parsed = check_image(&image, &data, header_first);
                assert_eq!(parsed.layout.dialect, *dialect, "{extra:?} {kind} {len}");
            }
        }
    }
}

#[test]
fn stdin_to_file_spools_and_matches_the_file_mode() {
    let dir = tempdir();
    for (extra, _) in CASES {
        let data = mixed(5 * BS + 333);
        put(dir.path(), "in.img", &data);
        let mut from_file = vec!["in.img", "-o", "a.img", "-B", "4K", "-q", "-f"];
        from_file.extend_from_slice(extra);
        ok(dir.path(), &from_file, None);
        let mut from_pipe = vec!["-", "-o", "b.img", "-B", "4K", "-q", "-f"];
        from_pipe.extend_from_slice(extra);
        ok(dir.path(), &from_pipe, Some(&data));
        let a = std::fs::read(dir.path().join("a.img")).unwrap();
        let b = std::fs::read(dir.path().join("b.img")).unwrap();
        assert!(a == b, "{extra:?}: stdin and file give different images");
        check_image(&b, &data, !extra.contains(&"v4-footer"));
    }
    assert_eq!(entries(dir.path()), ["a.img", "b.img", "in.img"]);
}

#[test]
fn stdout_with_size_or_footer() {
    let dir = tempdir();
    let data = mixed(7 * BS + 5);
    put(dir.path(), "in.img", &data);
    ok(
        dir.path(),
        &["in.img", "-o", "ref.img", "-B", "4K", "-q"],
        None,
    );
    let reference = std::fs::read(dir.path().join("ref.img")).unwrap();
    // Standard output redirected to a file: written in place when the length is known.
    let file = std::fs::File::create(dir.path().join("redirect.img")).unwrap();
    let status = std::process::Command::new(bin())
        .args([
            "-",
            "-o",
            "-",
            "-B",
            "4K",
            "-q",
            "--size",
            &data.len().to_string(),
        ])
        .current_dir(dir.path())
        .stdin(std::fs::File::open(dir.path().join("in.img")).unwrap())
        .stdout(file)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(dir.path().join("redirect.img")).unwrap() == reference);
    // A pipe: header-first formats are refused with one sentence naming both ways out.
    let err = fails(dir.path(), &["-", "-o", "-", "-B", "4K"], Some(&data));
    assert!(
        err.contains("--format v4-footer") && err.contains("-o FILE"),
        "{err}"
    );
    // A footer image streams to a pipe.
    let image = ok(
        dir.path(),
        &["-", "-o", "-", "-B", "4K", "-q", "--format", "v4-footer"],
        Some(&data),
    );
    check_image(&image, &data, false);
}

#[test]
fn output_does_not_depend_on_the_thread_count() {
    let dir = tempdir();
    let data = mixed(300 * BS + 17);
    put(dir.path(), "in.img", &data);
    for extra in [
        &[][..],
        &["-c", "best", "--format", "v4"],
        &["-c", "zstd", "--dedup"],
    ] {
        let mut images = Vec::new();
        for threads in ["1", "2", "3"] {
            let mut args = vec![
                "in.img", "-o", "out.img", "-B", "4K", "-q", "-f", "-j", threads,
            ];
            args.extend_from_slice(extra);
            ok(dir.path(), &args, None);
            images.push(std::fs::read(dir.path().join("out.img")).unwrap());
        }
        assert!(
            images[0] == images[1] && images[1] == images[2],
            "{extra:?}"
        );
    }
}

#[test]
fn zero_blocks_and_dedup_in_uzip() {
    let dir = tempdir();
    let mut data = text(BS);
    data.resize(4 * BS, 0);
    data.extend_from_slice(&random(BS, 1));
    data.extend_from_slice(&text(BS));
    data.extend_from_slice(&random(BS, 2));
    data.extend_from_slice(&random(BS, 1));
    put(dir.path(), "in.img", &data);
    ok(
        dir.path(),
        &[
            "in.img",
            "-o",
            "z.uzip",
            "-B",
            "4K",
            "-q",
            "--zero-blocks",
            "--dedup",
        ],
        None,
    );
    let image = std::fs::read(dir.path().join("z.uzip")).unwrap();
    let parsed = check_image(&image, &data, true);
    let kinds: Vec<BlockKind> = parsed.index.blocks().iter().map(|b| b.kind).collect();
    use BlockKind::{Shared, Stored, Zero};
    // Block 5 repeats block 0, block 7 repeats block 4 (block 6 sits between them: a reference
    // right after the block it points to would read as a zero-length block in geom_uzip).
    assert_eq!(
        kinds,
        [
            Stored,
            Zero,
            Zero,
            Zero,
            Stored,
            Shared { of: 0 },
            Stored,
            Shared { of: 4 }
        ]
    );
}

#[test]
fn json_summary() {
    let dir = tempdir();
    let data = mixed(100_000);
    put(dir.path(), "in.img", &data);
    let stdout = ok(dir.path(), &["in.img", "-o", "out.img", "--json"], None);
    let summary: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON on stdout");
    assert_eq!(summary["dialect"], "v2");
    assert_eq!(summary["input_bytes"], 100_000);
    assert_eq!(summary["num_blocks"], 2);
    let image_len = std::fs::metadata(dir.path().join("out.img")).unwrap().len();
    assert_eq!(summary["image_bytes"], image_len);
    // With the image on stdout, the JSON goes to stderr.
    let out = run_in(
        dir.path(),
        &["-", "-o", "-", "--format", "v4-footer", "--json"],
        Some(&data),
    );
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON on stderr");
    assert_eq!(summary["image_bytes"], out.stdout.len());
    check_image(&out.stdout, &data, false);
}

#[test]
fn no_trailer_ends_at_the_last_block() {
    let dir = tempdir();
    let data = text(10 * BS + 100);
    put(dir.path(), "in.img", &data);
    ok(
        dir.path(),
        &["in.img", "-o", "out.img", "-B", "4K", "--no-trailer", "-q"],
        None,
    );
    let image = std::fs::read(dir.path().join("out.img")).unwrap();
    let parsed = check_image(&image, &data, false);
    assert_eq!(parsed.index.data_end(), image.len() as u64);
}

#[test]
fn default_command_and_help() {
    let dir = tempdir();
    put(dir.path(), "in.img", &text(1000));
    // `mkmodule INPUT -o OUT` is `mkmodule create INPUT -o OUT`.
    ok(dir.path(), &["create", "in.img", "-o", "a.img", "-q"], None);
    ok(dir.path(), &["in.img", "-o", "b.img", "-q"], None);
    assert!(
        std::fs::read(dir.path().join("a.img")).unwrap()
            == std::fs::read(dir.path().join("b.img")).unwrap()
    );
    let help = String::from_utf8(ok(dir.path(), &["create", "--help"], None)).unwrap();
    for needle in [
        "extract_compressed_fs",
        "qemu",
        "FreeBSD geom_uzip",
        "v4-footer",
        "--zero-blocks",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}
