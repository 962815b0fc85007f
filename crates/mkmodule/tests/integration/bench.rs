//! `mkmodule bench`: the structure of its output on small generated inputs, and that every
//! number it reports comes from the images it really built (sizes, ratios, readers). No
//! timing is asserted.

use std::path::Path;
use std::process::{Command, Output};

use mkmodule_format::Dialect;

const MIB: u64 = 1 << 20;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mkmodule")
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("mkmodule runs")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "mkmodule {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `len` bytes like a small filesystem: 4 KiB pieces of words, of noise and of zeros.
fn filesystem_like(len: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 8] = [
        b"the ",
        b"usr/lib/",
        b"config ",
        b"return ",
        b"0x0000 ",
        b"Debian ",
        b"kernel ",
        b"data\n",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let end = (out.len() + 4096).min(len);
        match next() % 8 {
            0..=4 => {
                while out.len() < end {
                    let w = WORDS[(next() % 8) as usize];
                    let take = w.len().min(end - out.len());
                    out.extend_from_slice(&w[..take]);
                }
            }
            5 => {
                while out.len() < end {
                    out.push(next() as u8);
                }
            }
            _ => out.resize(end, 0),
        }
    }
    out
}

const CELL_FIELDS: [&str; 20] = [
    "codec",
    "block_size",
    "dialect",
    "readers",
    "image",
    "input_bytes",
    "image_bytes",
    "ratio",
    "estimated_full_bytes",
    "zero_blocks",
    "blocks",
    "compress_seconds",
    "compress_mb_s",
    "decode_seconds",
    "decode_mb_s",
    "reads",
    "read_p50_us",
    "read_p99_us",
    "cache_hit_ratio",
    "read_cache_bytes",
];

/// The small sweep of these tests.
const SWEEP: [&str; 8] = [
    "-B",
    "64K,128K",
    "-c",
    "zlib:1,lz4",
    "--rounds",
    "1",
    "--reads",
    "60",
];

fn readers_of(dialect: &str) -> Vec<String> {
    let dialect: Dialect = dialect.parse().expect("a dialect name");
    dialect
        .spec()
        .readers
        .iter()
        .map(|r| r.name().to_string())
        .collect()
}

#[test]
fn json_has_one_cell_per_combination_built_from_real_images() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.raw"), filesystem_like(4 << 20)).unwrap();
    let mut args = vec!["bench", "in.raw"];
    args.extend(SWEEP);
    args.extend([
        "--keep",
        "images",
        "--plot",
        "plot.svg",
        "--json",
        "-q",
        "--read-time",
        "1s",
    ]);
    let text = ok(dir.path(), &args);
    let report: serde_json::Value = serde_json::from_str(&text).expect("bench --json parses");
    assert_eq!(report["input_bytes"], 4 * MIB);
    assert_eq!(report["input_kind"], "raw");
    assert_eq!(report["sample"]["bytes"], 4 * MIB);
    assert_eq!(report["sample"]["method"], "the whole input");
    let cells = report["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 4);
    let mut seen = Vec::new();
    for cell in cells {
        for field in CELL_FIELDS {
            assert!(cell.get(field).is_some(), "no {field} in {cell}");
        }
        let codec = cell["codec"].as_str().unwrap().to_string();
        let block = cell["block_size"].as_u64().unwrap();
        seen.push((codec.clone(), block));
        // The reported size is the size of the image it built, and that image is a real one.
        let image = cell["image"].as_str().expect("the kept image's path");
        let image = dir.path().join(image);
        let on_disk = std::fs::metadata(&image).expect("the image exists").len();
        assert_eq!(cell["image_bytes"], on_disk, "{codec} {block}");
        let info: serde_json::Value = serde_json::from_str(&ok(
            dir.path(),
            &["info", "--json", image.to_str().unwrap()],
        ))
        .unwrap();
        assert_eq!(info["block_size"], block, "{codec}");
        assert_eq!(info["dialect"], cell["dialect"], "{codec}");
        // ratio = size / input; the whole input was used, so the estimate is the size itself.
        let input = cell["input_bytes"].as_u64().unwrap();
        assert_eq!(input, 4 * MIB);
        let ratio = cell["ratio"].as_f64().unwrap();
        assert!(
            (ratio - on_disk as f64 / input as f64).abs() < 1e-12,
            "{ratio}"
        );
        assert_eq!(cell["estimated_full_bytes"], on_disk);
        assert_eq!(cell["blocks"], 4 * MIB / block);
        // The readers are those of the dialect `create --format auto` picks for the codec.
        let dialect = cell["dialect"].as_str().unwrap();
        let want = if codec.starts_with("zlib") {
            "v2"
        } else {
            "v4"
        };
        assert_eq!(dialect, want, "{codec}");
        let readers: Vec<String> = cell["readers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        assert_eq!(readers, readers_of(dialect));
        assert_eq!(cell["reads"], 60);
        let (p50, p99) = (
            cell["read_p50_us"].as_f64().unwrap(),
            cell["read_p99_us"].as_f64().unwrap(),
        );
        assert!(p50 <= p99);
        for speed in ["compress_mb_s", "decode_mb_s"] {
            assert!(cell[speed].as_f64().unwrap() > 0.0, "{speed}");
        }
    }
    seen.sort();
    let mut want = vec![
        ("lz4".to_string(), 65536),
        ("lz4".to_string(), 131072),
        ("zlib:1".to_string(), 65536),
        ("zlib:1".to_string(), 131072),
    ];
    want.sort();
    assert_eq!(seen, want);
    // A recommendation naming one of the cells.
    let pick = &report["recommendation"];
    let index = pick["cell"].as_u64().expect("a recommended cell") as usize;
    assert!(index < 4);
    let options = pick["create_options"].as_str().unwrap();
    assert!(
        options.contains(cells[index]["codec"].as_str().unwrap()),
        "{options}"
    );

    // The plot: well-formed XML, one point and one label per cell.
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).expect("the plot exists");
    let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let class_count = |class: &str| {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(class))
            .count()
    };
    assert_eq!(class_count("point"), 4);
    assert_eq!(class_count("label"), 4);
    assert_eq!(class_count("recommended"), 1);
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("label"))
        .filter_map(|n| n.text())
        .collect();
    for label in ["zlib:1 64K", "zlib:1 128K", "lz4 64K", "lz4 128K"] {
        assert!(labels.contains(&label), "no label {label}: {labels:?}");
    }
    for title in ["x-title", "y-title"] {
        assert_eq!(class_count(title), 1, "{title}");
    }
}

#[test]
fn csv_and_table_have_a_row_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.raw"), filesystem_like(4 << 20)).unwrap();
    let mut args = vec!["bench", "in.raw"];
    args.extend(SWEEP);
    args.extend(["--csv", "--read-time", "1s"]);
    let csv = ok(dir.path(), &args);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "codec");
    for field in CELL_FIELDS {
        assert!(header.contains(&field), "no {field} column");
    }
    for line in &lines[1..] {
        assert_eq!(line.split(',').count(), header.len(), "{line}");
    }

    let mut args = vec!["bench", "in.raw"];
    args.extend(SWEEP);
    // A bound no run can miss: the pick depends only on sizes and readers.
    args.extend([
        "--read-time",
        "1s",
        "--readers",
        "all",
        "--max-latency",
        "100s",
    ]);
    let table = ok(dir.path(), &args);
    let rows = table
        .lines()
        .filter(|l| l.contains(" v2 ") || l.contains(" v4 "))
        .count();
    assert_eq!(rows, 4, "{table}");
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("recommended: -B ") && last.contains("-c zlib:1"),
        "only zlib is read by every reader: {last}"
    );
    assert!(table.contains("compressed: the whole input"), "{table}");
}

#[test]
fn a_sample_is_spread_runs_and_sizes_are_scaled_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.raw"), filesystem_like(16 << 20)).unwrap();
    let text = ok(
        dir.path(),
        &[
            "bench", "in.raw", "-B", "64K", "-c", "zlib:1", "--sample", "25%", "--reads", "30",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["input_bytes"], 16 * MIB);
    assert_eq!(report["sample"]["bytes"], 4 * MIB);
    assert_eq!(report["sample"]["runs"], 1);
    assert_eq!(report["sample"]["run_bytes"], 4 * MIB);
    let cell = &report["cells"][0];
    assert_eq!(cell["input_bytes"], 4 * MIB);
    assert!(cell["image"].is_null());
    let image = cell["image_bytes"].as_f64().unwrap();
    let estimate = cell["estimated_full_bytes"].as_f64().unwrap();
    assert!(
        (estimate - 4.0 * image).abs() <= 1.0,
        "{estimate} vs {image}"
    );
}

#[test]
fn a_cloop_image_is_measured_on_its_decoded_content() {
    let dir = tempfile::tempdir().unwrap();
    let data = filesystem_like((3 << 20) + 1000);
    std::fs::write(dir.path().join("in.raw"), &data).unwrap();
    ok(dir.path(), &["create", "in.raw", "-o", "in.cloop", "-q"]);
    let text = ok(
        dir.path(),
        &[
            "bench", "in.cloop", "-B", "64K", "-c", "lz4", "--reads", "30", "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        report["input_kind"]
            .as_str()
            .unwrap()
            .starts_with("cloop image (v2)"),
        "{}",
        report["input_kind"]
    );
    // The original length (from the trailer), not the compressed file's.
    assert_eq!(report["input_bytes"], data.len());
    assert_eq!(report["cells"][0]["input_bytes"], data.len());
}

#[test]
fn refusals_are_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.raw"), filesystem_like(1 << 20)).unwrap();
    for (args, want) in [
        (&["bench", "in.raw", "-c", "lzo"][..], "lzo"),
        (&["bench", "in.raw", "-B", "1000"], "block size 1000"),
        (&["bench", "."], "directory"),
        (&["bench", "missing.raw"], "missing.raw"),
    ] {
        let out = run(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A sweep where zstd (read by FreeBSD geom_uzip only) is the smallest image: what is
/// recommended then depends on who will read it. The bound is one no run can miss.
const AUDIENCE_SWEEP: [&str; 12] = [
    "-B",
    "64K",
    "-c",
    "zstd:19,lz4,zlib:1",
    "--reads",
    "30",
    "--read-time",
    "1s",
    "--max-latency",
    "100s",
    "--sample",
    "100%",
];

#[test]
fn for_cloop_recommends_an_image_cloop_ko_opens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.raw"), filesystem_like(2 << 20)).unwrap();
    let mut args = vec!["bench", "in.raw", "--for", "cloop", "--keep", "images"];
    args.extend(AUDIENCE_SWEEP);
    let mut json_args = args.clone();
    json_args.extend(["--json", "-q"]);
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir.path(), &json_args)).expect("bench --json parses");
    let pick = &report["recommendation"];
    assert_eq!(pick["for"], "cloop");
    let cell = &report["cells"][pick["cell"].as_u64().expect("a pick") as usize];
    let dialect = cell["dialect"].as_str().unwrap();
    assert!(
        ["v2", "v4", "v4-footer"].contains(&dialect),
        "{dialect}: {pick}"
    );
    let readers: Vec<String> = pick["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(readers, readers_of(dialect));
    assert!(readers.contains(&"Linux cloop.ko".to_string()));
    // The kept image is what `info` calls it.
    let image = dir.path().join(cell["image"].as_str().unwrap());
    let info: serde_json::Value = serde_json::from_str(&ok(
        dir.path(),
        &["info", "--json", image.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(info["dialect"], dialect);

    let table = ok(dir.path(), &args);
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("recommended: -B 64K -c ") && last.contains("cloop.ko"),
        "{last}"
    );
    assert!(!last.contains("zstd"), "{last}");
    assert!(
        table.contains("for Linux cloop.ko (--for cloop)"),
        "{table}"
    );
}

#[test]
fn the_default_audience_is_every_reader_and_serve_may_take_zstd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.raw"), filesystem_like(2 << 20)).unwrap();
    let mut args = vec!["bench", "in.raw"];
    args.extend(AUDIENCE_SWEEP);
    let table = ok(dir.path(), &args);
    let lines: Vec<&str> = table.lines().collect();
    let (last, statement) = (lines[lines.len() - 1], lines[lines.len() - 2]);
    assert!(
        statement.starts_with("recommending for every reader (")
            && statement.contains("--for serve"),
        "{table}"
    );
    assert!(
        last.starts_with("recommended: -B 64K -c zlib:1 (v2), readable by Linux cloop.ko, "),
        "only V2 zlib is read by every reader: {last}"
    );
    for reader in readers_of("v2") {
        assert!(last.contains(&reader), "{reader}: {last}");
    }

    let mut args = vec!["bench", "in.raw", "--for", "serve", "--json", "-q"];
    args.extend(AUDIENCE_SWEEP);
    let report: serde_json::Value = serde_json::from_str(&ok(dir.path(), &args)).unwrap();
    let pick = &report["recommendation"];
    assert_eq!(pick["for"], "serve");
    let cell = &report["cells"][pick["cell"].as_u64().unwrap() as usize];
    assert_eq!(cell["codec"], "zstd:19", "the smallest image: {pick}");
    assert_eq!(pick["readers"], serde_json::json!(readers_of("uzip-zstd")));
}
