//! `cargo xtask bench-serve [RAW_IMAGE]`: NBD serving speed, mkmodule against its peers in one
//! run.
//!
//! On one zlib cloop image (made by create_compressed_fs -B 64K, so qemu reads the very same
//! file) it measures `mkmodule serve` against `qemu-nbd -r -f cloop`, and both against nbdkit
//! serving the raw image (the no-decompression ceiling). When mkmodule can write a zstd image it
//! measures that too. Each figure is the median of several rounds: nbdcopy of the whole export
//! to `null:` (sequential MiB/s) and fio's nbd engine, 4 KiB random reads at queue depth 32
//! (IOPS). The output is a markdown table with ratios.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::common::{
    default_corpus_file, measure_server, start_server, ServeFigures, ServerProcess,
};
use crate::{cargo, run};

const ROUNDS: usize = 3;
const FIO_SECONDS: u32 = 10;

fn measure(server: &ServerProcess, size: u64, scratch: &Path) -> Result<ServeFigures> {
    measure_server(server, size, ROUNDS, FIO_SECONDS, scratch)
}

/// Runs the benchmark.
pub fn bench_serve(raw: Option<PathBuf>) -> Result<()> {
    let raw = raw.unwrap_or_else(|| default_corpus_file("rootfs.ext4"));
    if !raw.is_file() {
        bail!(
            "{} not found: build the corpus with scripts/make-corpus.sh (CORPUS=DIR) or pass a raw image",
            raw.display()
        );
    }
    cargo(&["build", "--release", "-p", "mkmodule"])?;
    let mkmodule = std::fs::canonicalize("target/release/mkmodule")?;
    let scratch = PathBuf::from("target/bench-serve");
    std::fs::create_dir_all(&scratch)?;
    let zlib = scratch.join("image-zlib.cloop");
    if !zlib.exists() {
        run(Command::new("create_compressed_fs")
            .args(["-q", "-B", "65536", "-L", "9", "-t", "2"])
            .arg(&raw)
            .arg(&zlib))?;
    }
    let zstd = scratch.join("image-zstd.uzip");
    if !zstd.exists() {
        let made = Command::new(&mkmodule)
            .arg(&raw)
            .args(["-o"])
            .arg(&zstd)
            .args(["-c", "zstd", "-q", "-f"])
            .status()?;
        if !made.success() {
            eprintln!("bench-serve: mkmodule could not write a zstd image; skipping that row");
            let _ = std::fs::remove_file(&zstd);
        }
    }
    let raw_size = std::fs::metadata(&raw)?.len();
    let zlib_size = 65536 * raw_size.div_ceil(65536);
    let s = |p: &Path| p.display().to_string();
    let mut rows = Vec::new();
    {
        let server = start_server(
            "mkmodule serve (zlib cloop)",
            &s(&mkmodule),
            &[
                "serve".into(),
                "-p".into(),
                "10931".into(),
                format!("img={}", s(&zlib)),
            ],
            10931,
            "img",
        )?;
        rows.push(measure(&server, zlib_size, &scratch)?);
    }
    {
        let server = start_server(
            "qemu-nbd -r -f cloop (same file)",
            "qemu-nbd",
            &[
                "-r".into(),
                "-f".into(),
                "cloop".into(),
                "-e".into(),
                "0".into(),
                "-t".into(),
                "-p".into(),
                "10932".into(),
                "-x".into(),
                "img".into(),
                s(&zlib),
            ],
            10932,
            "img",
        )?;
        rows.push(measure(&server, zlib_size, &scratch)?);
    }
    if zstd.exists() {
        let server = start_server(
            "mkmodule serve (zstd uzip)",
            &s(&mkmodule),
            &[
                "serve".into(),
                "-p".into(),
                "10933".into(),
                format!("img={}", s(&zstd)),
            ],
            10933,
            "img",
        )?;
        rows.push(measure(
            &server,
            raw_size.next_multiple_of(65536),
            &scratch,
        )?);
    }
    {
        let server = start_server(
            "nbdkit file (raw, no decompression)",
            "nbdkit",
            &[
                "-f".into(),
                "-r".into(),
                "-p".into(),
                "10934".into(),
                "-i".into(),
                "127.0.0.1".into(),
                "file".into(),
                s(&raw),
            ],
            10934,
            "",
        )?;
        rows.push(measure(&server, raw_size, &scratch)?);
    }
    let qemu = rows
        .iter()
        .find(|r| r.label.starts_with("qemu-nbd"))
        .map(|r| (r.mib_per_s, r.iops));
    let nbdkit = rows
        .iter()
        .find(|r| r.label.starts_with("nbdkit"))
        .map(|r| (r.mib_per_s, r.iops));
    println!("\nInput {} ({raw_size} bytes); medians of {ROUNDS} rounds; fio 4k randread qd32 {FIO_SECONDS} s\n", raw.display());
    println!("| server | nbdcopy MiB/s | vs qemu-nbd | vs nbdkit raw | fio IOPS | vs qemu-nbd | vs nbdkit raw |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = |base: Option<(f64, f64)>, pick: fn((f64, f64)) -> f64, v: f64| {
            base.map_or("-".to_string(), |b| format!("{:.2}x", v / pick(b)))
        };
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} |",
            r.label,
            r.mib_per_s,
            ratio(qemu, |b| b.0, r.mib_per_s),
            ratio(nbdkit, |b| b.0, r.mib_per_s),
            r.iops,
            ratio(qemu, |b| b.1, r.iops),
            ratio(nbdkit, |b| b.1, r.iops),
        );
    }
    Ok(())
}
