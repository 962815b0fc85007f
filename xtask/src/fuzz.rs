//! `cargo xtask fuzz` and `cargo xtask fuzz-seeds`: the libFuzzer targets of `fuzz/`.
//!
//! The targets are built by cargo-fuzz (`scripts/install-fuzz.sh` installs it) on the stable
//! toolchain with `RUSTC_BOOTSTRAP=1`, which unlocks the nightly-only flags it passes to rustc,
//! without a sanitizer (`-s none`: our crates have no `unsafe`, and the C codec libraries are
//! not instrumented by cargo-fuzz anyway) and with debug assertions (`-a`) and overflow checks.
//! Each target then runs for N seconds on a working corpus in `fuzz/work/<target>` (ignored by
//! git) seeded from the committed `fuzz/corpus/<target>`; crash inputs land in
//! `fuzz/artifacts/<target>/`. Inputs of crashes found and fixed are kept in
//! `fuzz/regressions/<target>/` and replayed before each run.

#[path = "../../fuzz/src/build.rs"]
#[allow(dead_code)]
mod build;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mkmodule_codec::{BlockCompressor, CodecKind, CodecSpec};
use mkmodule_format::{
    is_header_first, BlockDigestAlgorithm, BlockEncoding, Dialect, DigestAlgorithm, DigestTableRef,
    Trailer, TrailerExtension,
};
use mkmodule_nbd::proto::*;
use mkmodule_pack::verity::{HashTreeBuilder, VerityParams};

use build::{build_image, ImageSpec};

/// One fuzz target: its name, the longest input libFuzzer makes, and its dictionary.
struct Target {
    name: &'static str,
    max_len: usize,
    dict: Option<&'static str>,
}

/// Every target, in the order `cargo xtask fuzz` runs them.
const TARGETS: &[Target] = &[
    Target {
        name: "parse_image",
        max_len: 256 << 10,
        dict: Some("image.dict"),
    },
    Target {
        name: "trailer",
        max_len: 4096,
        dict: Some("image.dict"),
    },
    Target {
        name: "read_image",
        max_len: 256 << 10,
        dict: Some("image.dict"),
    },
    Target {
        name: "read_mutated",
        max_len: 80 << 10,
        dict: None,
    },
    Target {
        name: "read_adapter",
        max_len: 256 << 10,
        dict: Some("image.dict"),
    },
    Target {
        name: "decompress",
        max_len: 128 << 10,
        dict: None,
    },
    Target {
        name: "nbd_server",
        max_len: 16 << 10,
        dict: Some("nbd.dict"),
    },
    Target {
        name: "overlay_open",
        max_len: 1024,
        dict: None,
    },
    Target {
        name: "verity_superblock",
        max_len: 4096,
        dict: None,
    },
    Target {
        name: "connect_handshake",
        max_len: 64 << 10,
        dict: Some("nbd.dict"),
    },
    Target {
        name: "remote_answer",
        max_len: 512,
        dict: Some("http.dict"),
    },
    Target {
        name: "remote_cache",
        max_len: 1024,
        dict: None,
    },
];

/// Seconds one input may take before libFuzzer calls it a hang.
const UNIT_TIMEOUT_SECS: u32 = 20;

/// What one run reported.
#[derive(Debug, Default)]
struct Outcome {
    execs: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<String>,
    peak_rss_mb: Option<u64>,
    crash: Option<String>,
    failed: bool,
}

/// `cargo xtask fuzz [--time N] [TARGET...]`.
pub fn fuzz(args: &[String]) -> Result<()> {
    let mut seconds: u64 = 60;
    let mut names: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--time" => {
                let value = it.next().context("--time needs a number of seconds")?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--time {value}: not a number of seconds"))?;
            }
            other if other.starts_with('-') => bail!("fuzz: unknown option {other}"),
            other => names.push(other.to_string()),
        }
    }
    let targets: Vec<&Target> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                TARGETS.iter().find(|t| t.name == n).with_context(|| {
                    let all: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                    format!("no fuzz target {n:?} (targets: {})", all.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let present = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        bail!("cargo-fuzz is not installed: run scripts/install-fuzz.sh");
    }

    // One build of every chosen target.
    let mut build = Command::new(&cargo);
    build
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build", "-s", "none", "-a"]);
    if targets.len() == 1 {
        build.arg(targets[0].name);
    }
    crate::run(&mut build)?;
    let triple = host_triple()?;
    let bin_dir = PathBuf::from("fuzz/target").join(triple).join("release");

    let mut outcomes = Vec::new();
    for target in &targets {
        let started = Instant::now();
        let outcome = run_target(&bin_dir, target, seconds)?;
        eprintln!(
            "xtask: fuzz {} done in {:.0} s{}",
            target.name,
            started.elapsed().as_secs_f64(),
            if outcome.failed { ": FAILED" } else { "" }
        );
        outcomes.push((target.name, outcome));
    }

    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    println!(
        "\n{:<14} {:>12} {:>9} {:>6} {:>7} {:>14} {:>7}  result",
        "target", "execs", "exec/s", "cov", "ft", "corpus", "rss MB"
    );
    for (name, o) in &outcomes {
        let result = match (&o.crash, o.failed) {
            (Some(path), _) => format!("CRASH {path}"),
            (None, true) => "FAILED (see the log in fuzz/work)".to_string(),
            (None, false) => "ok".to_string(),
        };
        println!(
            "{:<14} {:>12} {:>9} {:>6} {:>7} {:>14} {:>7}  {result}",
            name,
            show(o.execs),
            show(o.exec_per_sec),
            show(o.cov),
            show(o.ft),
            o.corpus.as_deref().unwrap_or("?"),
            show(o.peak_rss_mb),
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| o.failed)
        .map(|(n, _)| *n)
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found a failure in: {} (reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run \
             -s none -a TARGET CRASH_FILE`)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The host's target triple, under which cargo-fuzz puts its binaries.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// Replays the target's regression inputs, then fuzzes it for `seconds`.
fn run_target(bin_dir: &Path, target: &Target, seconds: u64) -> Result<Outcome> {
    let binary = bin_dir.join(target.name);
    let work = PathBuf::from("fuzz/work").join(target.name);
    let seeds = PathBuf::from("fuzz/corpus").join(target.name);
    let artifacts = PathBuf::from("fuzz/artifacts").join(target.name);
    for dir in [&work, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = PathBuf::from("fuzz/work").join(format!("{}.log", target.name));
    let mut outcome = Outcome::default();

    // Every kept crash input must pass.
    let regressions = PathBuf::from("fuzz/regressions").join(target.name);
    if regressions.is_dir() {
        let mut inputs: Vec<PathBuf> = fs::read_dir(&regressions)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        if !inputs.is_empty() {
            let out = run_binary(Command::new(&binary).args(&inputs))?;
            if !out.status.success() {
                fs::write(&log_path, &out.stderr)?;
                eprintln!("{}", tail(&String::from_utf8_lossy(&out.stderr), 40));
                outcome.failed = true;
                outcome.crash = Some(format!("a regression input in {}", regressions.display()));
                return Ok(outcome);
            }
        }
    }

    let mut command = Command::new(&binary);
    command
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", target.max_len))
        .arg(format!("-timeout={UNIT_TIMEOUT_SECS}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(dict) = target.dict {
        command.arg(format!("-dict=fuzz/dict/{dict}"));
    }
    eprintln!("xtask: {command:?}");
    let out = run_binary(&mut command)?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    fs::write(&log_path, &log).with_context(|| format!("writing {}", log_path.display()))?;
    parse_stats(&log, &mut outcome);
    if !out.status.success() {
        outcome.failed = true;
        eprintln!("{}", tail(&log, 60));
    }
    Ok(outcome)
}

/// Runs a fuzz binary to its end, capturing its output, then removes the scratch file the
/// overlay target keeps (fuzz/src/overlay.rs), which is named after its process.
fn run_binary(command: &mut Command) -> Result<std::process::Output> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    for dir in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let _ = fs::remove_file(dir.join(format!("mkmodule-fuzz-overlay-{pid}.cow")));
    }
    Ok(out)
}

/// Reads libFuzzer's final statistics, its last status line and any crash path from its log.
fn parse_stats(log: &str, outcome: &mut Outcome) {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    outcome.execs = stat("stat::number_of_executed_units:");
    outcome.exec_per_sec = stat("stat::average_exec_per_sec:");
    outcome.peak_rss_mb = stat("stat::peak_rss_mb:");
    if let Some(status) = log.lines().rev().find(|l| l.contains(" cov: ")) {
        let field = |key: &str| {
            let mut words = status.split_whitespace();
            words.find(|w| *w == key)?;
            words.next().map(str::to_string)
        };
        outcome.cov = field("cov:").and_then(|v| v.parse().ok());
        outcome.ft = field("ft:").and_then(|v| v.parse().ok());
        outcome.corpus = field("corp:");
    }
    outcome.crash = log
        .lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p))
        .map(|p| p.trim().to_string());
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `cargo xtask fuzz-seeds`: regenerates the committed seed corpora in `fuzz/corpus/`.
///
/// The seeds are small and deterministic: the reference fixtures, images of every dialect and
/// codec written by `fuzz/src/build.rs`, trailers, compressed blocks, NBD client sessions and
/// overlay edit scripts. Files other generators (or a person) put there are left alone.
pub fn seeds() -> Result<()> {
    let corpus = PathBuf::from("fuzz/corpus");
    let mut written = 0usize;
    let mut bytes = 0usize;
    let mut put = |target: &str, name: &str, data: &[u8]| -> Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), data)?;
        written += 1;
        bytes += data.len();
        Ok(())
    };

    // Images: the reference fixtures and every dialect with its quirks.
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    let mut fixtures: Vec<PathBuf> = fs::read_dir("testdata/cloop-utils")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cloop"))
        .collect();
    fixtures.sort();
    for path in fixtures {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        images.push((format!("fixture-{name}"), fs::read(&path)?));
    }
    let content = sample_content(7 * 1024 + 300);
    for dialect in Dialect::ALL {
        for (variant, block_size, codecs) in dialect_variants(dialect) {
            let mut spec = ImageSpec::new(dialect, block_size);
            spec.codecs = codecs;
            spec.trailer = variant.contains("trailer");
            let image = build_image(&content, &spec).context("building a seed image")?;
            images.push((format!("{}-{variant}", dialect.name()), image));
        }
    }
    for (name, image) in &images {
        put("parse_image", name, image)?;
        put("read_image", name, image)?;
    }

    // Trailers: file length, then the last bytes of an image with a trailer.
    for (name, image) in images.iter().filter(|(n, _)| n.contains("trailer")) {
        let mut seed = (image.len() as u64).to_le_bytes().to_vec();
        seed.extend_from_slice(&image[image.len().saturating_sub(200)..]);
        put("trailer", name, &seed)?;
    }
    for (k, algorithm) in [
        DigestAlgorithm::None,
        DigestAlgorithm::Sha256,
        DigestAlgorithm::Blake3Blocks,
    ]
    .into_iter()
    .enumerate()
    {
        let trailer = Trailer {
            original_len: 12345,
            digest_algorithm: algorithm,
            digest: vec![0xab; algorithm.len()],
            data_end: 163,
            tool: "mkmodule 0.1.0".into(),
            extension: Default::default(),
        };
        let mut seed = 1024u64.to_le_bytes().to_vec();
        seed.extend_from_slice(&trailer.encode());
        put("trailer", &format!("bare-{k}"), &seed)?;
    }
    // A trailer with the extension: block encoder and a block-digest table of two entries.
    let table = [0x5au8; 32];
    let extended = Trailer {
        original_len: 8000,
        digest_algorithm: DigestAlgorithm::WRITTEN,
        digest: vec![0xcd; 32],
        data_end: 163,
        tool: "mkmodule 0.1.0".into(),
        extension: TrailerExtension {
            encoding: Some(BlockEncoding::Fixed {
                codec: mkmodule_format::CodecKind::Zstd,
                level: 19,
            }),
            digest_table: Some(DigestTableRef::for_table(
                BlockDigestAlgorithm::WRITTEN,
                1024 - 136 - 32,
                &table,
            )),
            stored_checks: None,
        },
    };
    let mut seed = 1024u64.to_le_bytes().to_vec();
    seed.extend_from_slice(&table);
    seed.extend_from_slice(&extended.encode());
    put("trailer", "bare-extended", &seed)?;

    // read_mutated: [dialect, codec mix, block size, flags, edit count, edits, content].
    for (d, dialect) in Dialect::ALL.iter().enumerate() {
        for (k, (mix, size, flags, edits)) in [
            (0u8, 0u8, 0u8, &[][..]),
            (0b01_10_11, 1, 1, &[][..]),
            (0b11_00_10, 3, 8 | 16, &[][..]),
            (0b10_01_00, 0, 2 | 4, &[2u8, 20, 0, 0x40][..]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut seed = vec![d as u8, mix, size, flags, (edits.len() / 4) as u8];
            seed.extend_from_slice(edits);
            seed.extend_from_slice(&content[..content.len().min(3000 + 1500 * k)]);
            put("read_mutated", &format!("{}-{k}", dialect.name()), &seed)?;
        }
    }

    // read_adapter: [flags, op count, ops (5 bytes each), image]: the images above, read
    // through a script of reads and seeks, then both parallel passes.
    let scripts: [(u8, &[[u8; 5]]); 3] = [
        (
            0,
            &[[0, 0, 0, 0xff, 0x0f], [0, 0, 0, 0x10, 0], [3, 0, 0, 100, 0]],
        ),
        (
            1 | 2 | 4 | 8,
            &[
                [1, 0, 0x80, 0, 0],
                [0, 0, 0, 0xff, 0x3f],
                [2, 0, 0x70, 0, 0],
                [0, 0, 0, 1, 0],
            ],
        ),
        (
            16 | 8,
            &[[5, 0, 0, 0, 0], [0, 0, 0, 0, 0x20], [1, 0xff, 0xff, 9, 0]],
        ),
    ];
    for (name, image) in &images {
        for (k, (flags, ops)) in scripts.iter().enumerate() {
            // Every image once; small ones with every script (the seeds stay small).
            if k > 0 && image.len() > 16 << 10 {
                continue;
            }
            let mut seed = vec![*flags, ops.len() as u8];
            for op in ops.iter() {
                seed.extend_from_slice(op);
            }
            seed.extend_from_slice(image);
            put("read_adapter", &format!("{name}-{k}"), &seed)?;
        }
    }

    // decompress: [codec + 6 × mode, length or level, bytes].
    let codec_count = CodecKind::ALL.len() as u8;
    for (c, codec) in CodecKind::ALL.iter().enumerate() {
        let block = &content[..4096];
        let mut compressor = BlockCompressor::new(CodecSpec::with_default_level(*codec))
            .with_context(|| format!("a {codec} compressor"))?;
        let mut packed = Vec::new();
        compressor.compress(block, &mut packed)?;
        let mut seed = vec![c as u8];
        seed.extend_from_slice(&(4096u16 / 16).to_le_bytes());
        seed.extend_from_slice(&packed);
        put("decompress", &format!("{}-block", codec.name()), &seed)?;
        let mut seed = vec![c as u8 + codec_count, 1, 0];
        seed.extend_from_slice(&content[..2000]);
        put("decompress", &format!("{}-roundtrip", codec.name()), &seed)?;
    }

    // nbd_server: [config bits, client bytes].
    for (name, bits, session) in nbd_sessions() {
        let mut seed = vec![bits];
        seed.extend_from_slice(&session);
        put("nbd_server", name, &seed)?;
    }

    // overlay_open: [flags, edits (op, offset lo, offset hi, value)...]; op % 3 is the area
    // (header, region 0, region 1), (op / 3) % 4 the action (xor, xor, set, fill 8 bytes).
    let overlay_seeds: [(&str, &[u8]); 10] = [
        ("header-set-label-length", &[1, 6, 96, 0, 0xff]),
        ("region-fill-count", &[2 | 4 | 8, 10, 0x04, 0x10, 0x01]),
        ("plain", &[0]),
        ("writable", &[8]),
        ("header-base-size", &[1, 0, 23, 0, 0x80]),
        ("header-chunk-size", &[1 | 8, 0, 13, 0, 0x10]),
        ("checkpoint-generation", &[2, 1, 8, 0, 0x05, 2, 8, 0, 0x05]),
        ("checkpoint-state", &[2 | 8, 1, 33, 0, 0xff]),
        (
            "record-run",
            &[4 | 8, 1, 0x20, 0x10, 0x01, 2, 0x28, 0x10, 0x7f],
        ),
        ("cut", &[16, 2, 0x00, 0x10, 0]),
    ];
    for (name, seed) in overlay_seeds {
        put("overlay_open", name, seed)?;
    }

    // dm-verity hash files as `create --verity` writes them: the superblock and first hash
    // block, for one, two and 129 data blocks, with and without a salt.
    for (name, blocks, salt) in [
        ("one-block", 1usize, vec![0x5a; 32]),
        ("two-blocks", 2, vec![0x11; 32]),
        ("two-levels-no-salt", 129, Vec::new()),
    ] {
        let params = VerityParams::new(salt, [7; 16])?;
        let mut tree = HashTreeBuilder::new(params, std::io::Cursor::new(Vec::new()));
        for i in 0..blocks {
            tree.push_data_block(&[i as u8; 4096]);
        }
        let mut file = Vec::new();
        tree.finish(&mut file)?;
        file.truncate(4096);
        put("verity_superblock", name, &file)?;
    }

    // connect_handshake: what a server sends `mkmodule connect`: the greeting, replies to
    // NBD_OPT_GO, then simple replies to the identity probe's reads (cookies 1, 2, ...).
    for (name, size, infos) in [
        ("one-sample", 4096u64, false),
        ("two-samples-with-infos", 8192, true),
        ("sixteen-samples", 1 << 20, false),
    ] {
        put("connect_handshake", name, &server_transcript(size, infos))?;
    }

    // remote_answer: [status selector: 2][flags][start: 8][span: 2][length: 8], then the
    // Content-Range, the answer's ETag and the pinned ETag, one a line. Flags bit 7 writes the
    // Content-Range from the numbers, bit 6 gives the answer an ETag.
    let answer = |status: u8, flags: u8, start: u64, span: u16, len: u64, text: &str| {
        let mut seed = vec![status, 0, flags];
        seed.extend_from_slice(&start.to_le_bytes());
        seed.extend_from_slice(&span.to_le_bytes());
        seed.extend_from_slice(&len.to_le_bytes());
        seed.extend_from_slice(text.as_bytes());
        seed
    };
    let answers = [
        ("range-ok", answer(0, 0x80, 4096, 65535, 1 << 30, "")),
        ("range-etag", answer(0, 0xc0, 0, 0, 1, "\n\"abc\"\n\"abc\"")),
        (
            "range-other-etag",
            answer(0, 0xc0, 0, 0, 1, "\n\"abc\"\n\"abd\""),
        ),
        ("probe", answer(0, 0, 0, 0, 0, "bytes 0-0/6291456")),
        ("empty", answer(6, 0, 0, 0, 0, "bytes */0")),
        ("changed", answer(6, 0, 0, 0, 0, "bytes */77")),
        ("precondition", answer(5, 0, 0, 0, 0, "")),
        ("whole-file", answer(4, 0, 0, 0, 0, "")),
    ];
    for (name, seed) in answers {
        put("remote_answer", name, &seed)?;
    }

    // remote_cache: [mode][length: 2] then a URL record (even mode) or an entry file (odd).
    let record = mkmodule_remote::format_origin(&mkmodule_remote::OriginRecord {
        len: 6 << 20,
        validator: "etag:\"65f2a1-600000\"".into(),
        identity: "0f".repeat(32),
    });
    put(
        "remote_cache",
        "origin",
        &[b"\0\0\0", record.as_bytes()].concat(),
    )?;
    let data = b"compressed block bytes";
    let len = (data.len() as u16).to_le_bytes();
    let entry = mkmodule_remote::entry_file(data);
    put(
        "remote_cache",
        "entry",
        &[&[1, len[0], len[1]], &entry[..]].concat(),
    )?;

    println!("fuzz-seeds: wrote {written} seeds ({bytes} bytes) under fuzz/corpus/");
    Ok(())
}

/// Which images of `dialect` to write: name, block size and codec mix.
fn dialect_variants(dialect: Dialect) -> Vec<(&'static str, u32, Vec<CodecKind>)> {
    let mut out = vec![("b512", 512, vec![dialect.default_codec()])];
    if is_header_first(dialect) {
        out.push(("b4096-trailer", 4096, vec![dialect.default_codec()]));
    }
    if dialect.spec().codec_flags {
        out.push(("b1024-mixed", 1024, CodecKind::ALL.to_vec()));
    }
    out
}

/// Content with zero, text, repeated and random blocks (for zero-length blocks, dedup and
/// incompressible blocks), deterministic.
fn sample_content(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut line = 0u32;
    while out.len() < len {
        match (out.len() / 1024) % 4 {
            0 => out.resize(out.len() + 1024, 0),
            1 | 2 => {
                while out.len() % 1024 != 0 || out.len() / 1024 % 4 != 3 {
                    let text = format!("{line:06} the quick brown fox jumps over the cloop\n");
                    line += 1;
                    out.extend_from_slice(text.as_bytes());
                    if out.len() / 1024 % 4 == 3 {
                        out.truncate(out.len() / 1024 * 1024);
                    }
                }
            }
            _ => {
                for _ in 0..128 {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

fn option(opt: u32, payload: &[u8]) -> Vec<u8> {
    mkmodule_testkit::nbd::option_request(opt, payload)
}

fn request(cmd: u16, flags: u16, offset: u64, len: u32) -> Vec<u8> {
    let cookie = (u64::from(cmd) << 8) | u64::from(len & 0xff);
    mkmodule_testkit::nbd::request_with_flags(flags, cmd, cookie, offset, len).to_vec()
}

/// Client sessions for the `nbd_server` seeds: name, config bits, bytes.
fn nbd_sessions() -> Vec<(&'static str, u8, Vec<u8>)> {
    let flags = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let go = |name: &str, info: Vec<u16>| {
        option(
            OPT_GO,
            &InfoRequest {
                name: name.into(),
                requests: info,
            }
            .encode(),
        )
    };
    let meta = |opt: u32, queries: &[&str]| {
        option(
            opt,
            &MetaRequest {
                name: "disk".into(),
                queries: queries.iter().map(|q| q.to_string()).collect(),
            }
            .encode(),
        )
    };

    // Structured replies, block status, every command, then disconnect.
    let mut structured = flags.clone();
    structured.extend(option(OPT_STRUCTURED_REPLY, &[]));
    structured.extend(meta(OPT_LIST_META_CONTEXT, &[]));
    structured.extend(meta(OPT_SET_META_CONTEXT, &[CONTEXT_BASE_ALLOCATION]));
    structured.extend(go(
        "disk",
        vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
    ));
    structured.extend(request(CMD_READ, 0, 0, 4096));
    structured.extend(request(CMD_READ, CMD_FLAG_DF, 4096, 512));
    structured.extend(request(CMD_BLOCK_STATUS, 0, 0, 16384));
    structured.extend(request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 512, 8192));
    let mut write = request(CMD_WRITE, CMD_FLAG_FUA, 1024, 16);
    write.extend_from_slice(&[0x5a; 16]);
    structured.extend(write);
    structured.extend(request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 8192, 4096));
    structured.extend(request(CMD_TRIM, 0, 12288, 4096));
    structured.extend(request(CMD_CACHE, 0, 0, 8192));
    structured.extend(request(CMD_FLUSH, 0, 0, 0));
    structured.extend(request(CMD_READ, 0, 16000, 1000));
    structured.extend(request(CMD_DISC, 0, 0, 0));

    // Old-style EXPORT_NAME, simple replies.
    let mut simple = flags.clone();
    simple.extend(option(OPT_EXPORT_NAME, b"disk"));
    simple.extend(request(CMD_READ, 0, 0, 1024));
    simple.extend(request(CMD_READ, 0, 16383, 2));
    simple.extend(request(CMD_FLUSH, 0, 0, 0));
    simple.extend(request(9, 0, 0, 0));
    simple.extend(request(CMD_DISC, 0, 0, 0));

    // Haggling only: list, info, unsupported and refused options, abort.
    let mut haggle = 1u32.to_be_bytes().to_vec();
    haggle.extend(option(OPT_LIST, &[]));
    haggle.extend(option(
        OPT_INFO,
        &InfoRequest {
            name: "empty".into(),
            requests: vec![INFO_BLOCK_SIZE],
        }
        .encode(),
    ));
    haggle.extend(option(OPT_STARTTLS, &[]));
    haggle.extend(option(OPT_EXTENDED_HEADERS, &[]));
    haggle.extend(meta(OPT_SET_META_CONTEXT, &["base:"]));
    haggle.extend(go("nonexistent", vec![]));
    haggle.extend(option(OPT_ABORT, &[]));

    let mut default_export = flags;
    default_export.extend(go("", vec![]));
    default_export.extend(request(CMD_READ, 0, 0, 16384));

    vec![
        ("structured-rw", 1 | 2, structured.clone()),
        ("structured-ro", 2 | 8, structured),
        ("simple", 0, simple),
        ("haggle", 4, haggle),
        ("default-export", 1, default_export),
    ]
}

/// A well-behaved server's side of `mkmodule connect`'s handshake and identity probe for an
/// export of `size` bytes (a multiple of 4096, at most 16 samples), with the block-size and
/// description information when `infos`.
fn server_transcript(size: u64, infos: bool) -> Vec<u8> {
    use mkmodule_nbd::proto;
    let mut out = Vec::new();
    out.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    let mut reply = |kind: u32, payload: &[u8]| {
        out.extend_from_slice(&proto::OPT_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&proto::OPT_GO.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    };
    let mut export = proto::INFO_EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&size.to_be_bytes());
    export.extend_from_slice(&1u16.to_be_bytes());
    reply(proto::REP_INFO, &export);
    if infos {
        let mut sizes = proto::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for value in [512u32, 4096, 32 << 20] {
            sizes.extend_from_slice(&value.to_be_bytes());
        }
        reply(proto::REP_INFO, &sizes);
        let mut description = proto::INFO_DESCRIPTION.to_be_bytes().to_vec();
        description.extend_from_slice(b"root.img");
        reply(proto::REP_INFO, &description);
    }
    reply(proto::REP_ACK, &[]);
    let samples = (size / 4096).clamp(1, 16);
    for cookie in 1..=samples {
        out.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend(std::iter::repeat_n(cookie as u8, 4096));
    }
    out
}
