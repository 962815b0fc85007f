//! `cargo xtask bench-create [--runs N] [CORPUS_FILE...]`: mkmodule create against its peers,
//! on the same input, in one run.
//!
//! For each corpus file (default: `rootfs.ext4`, an ext4 image of a Debian root filesystem, and
//! `live.iso`, an ISO 9660 image, from `$CORPUS`, else `../corpus`) it runs, with a warm page
//! cache:
//!
//! * `create_compressed_fs -q -t 2 -L 9 -B 64K IN OUT` (the reference),
//! * `mkmodule IN -o OUT` (portable profile: v2, zlib at the default level, 64 KiB blocks),
//! * `cat IN | mkmodule - -o OUT` (the same from a pipe: blocks spooled, memory still bounded),
//! * `mkmodule IN -o OUT -c zstd` (uzip-zstd at the default level),
//! * `qemu-img convert -c -O qcow2 -o compression_type=zstd -m 2 -W IN OUT`,
//!
//! each under `/usr/bin/time` for wall time, CPU time and peak RSS, and prints a table with the
//! ratios mkmodule aims for: portable zlib at least 6x faster than
//! create_compressed_fs and no larger; zstd twice as fast as qemu-img's qcow2 zstd and no larger;
//! peak RSS under 64 MiB. With `--runs N` each tool runs N times and the median wall time counts.
//! Outputs go to `target/bench-create/` and are removed after each run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::common::{corpus_dir, require_tools, shell_quote, time_shell, warm, workspace_root};

/// One measured run of one tool.
#[derive(Debug, Clone, Copy)]
struct Measure {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    out_bytes: u64,
}

/// A tool to measure: its label and how to run it (`{IN}` and `{OUT}` are substituted).
struct Tool {
    label: &'static str,
    shell: String,
}

/// Runs the benchmark; `args` are the words after `bench-create`.
pub fn run(args: &[String]) -> Result<()> {
    let mut runs = 1usize;
    let mut files = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--runs" => {
                runs = words
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .context("--runs needs a positive number")?;
            }
            other => files.push(PathBuf::from(other)),
        }
    }
    if files.is_empty() {
        let corpus = corpus_dir();
        files = ["rootfs.ext4", "live.iso"]
            .iter()
            .map(|f| corpus.join(f))
            .filter(|p| p.is_file())
            .collect();
        if files.is_empty() {
            bail!(
                "no corpus in {}: make one with `CORPUS={} bash scripts/make-corpus.sh` \
                 or name a file: cargo xtask bench-create FILE",
                corpus.display(),
                corpus.display()
            );
        }
    }
    require_tools(&["create_compressed_fs", "qemu-img", "/usr/bin/time"])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench-create: cargo build --release -p mkmodule");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "mkmodule"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p mkmodule failed");
    }
    let root = workspace_root()?;
    let mkmodule = root.join("target/release/mkmodule");
    let scratch = root.join("target/bench-create");
    std::fs::create_dir_all(&scratch)?;
    let mk = mkmodule.display().to_string();
    let tools = [
        Tool {
            label: "create_compressed_fs -t 2 -L 9 -B 64K",
            shell: "create_compressed_fs -q -t 2 -L 9 -B 64K {IN} {OUT}".into(),
        },
        Tool {
            label: "mkmodule (v2 zlib, 64K)",
            shell: format!("{mk} {{IN}} -o {{OUT}} -f -q"),
        },
        Tool {
            label: "mkmodule (v2 zlib, 64K, stdin pipe)",
            shell: format!("cat {{IN}} | {mk} - -o {{OUT}} -f -q"),
        },
        Tool {
            label: "mkmodule -c zstd (uzip-zstd, 64K)",
            shell: format!("{mk} {{IN}} -o {{OUT}} -f -q -c zstd"),
        },
        Tool {
            label: "qemu-img convert -c -O qcow2 zstd -m 2 -W",
            shell: "qemu-img convert -c -O qcow2 -o compression_type=zstd -m 2 -W {IN} {OUT}"
                .into(),
        },
    ];
    for file in &files {
        bench_file(file, &tools, runs, &scratch)?;
    }
    Ok(())
}

fn bench_file(input: &Path, tools: &[Tool], runs: usize, scratch: &Path) -> Result<()> {
    let in_bytes = std::fs::metadata(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .len();
    eprintln!(
        "bench-create: warming the page cache with {}",
        input.display()
    );
    warm(input);
    // Round robin: a burst of background load hits every tool alike.
    let mut measures: Vec<Vec<Measure>> = vec![Vec::new(); tools.len()];
    for run in 0..runs {
        for (tool, slot) in tools.iter().zip(measures.iter_mut()) {
            eprintln!("bench-create: {} (run {}/{runs})", tool.label, run + 1);
            slot.push(measure(tool, input, scratch)?);
        }
    }
    let results: Vec<Measure> = measures
        .into_iter()
        .map(|mut m| {
            m.sort_by(|a, b| a.wall.total_cmp(&b.wall));
            m[m.len() / 2]
        })
        .collect();
    println!();
    println!(
        "input {} ({in_bytes} bytes), median of {runs} run(s), {} CPUs",
        input.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| tool | wall s | cpu s | peak RSS MiB | output bytes | output/input |");
    println!("|---|---|---|---|---|---|");
    for (tool, m) in tools.iter().zip(&results) {
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {} | {:.4} |",
            tool.label,
            m.wall,
            m.cpu,
            m.rss_kib as f64 / 1024.0,
            m.out_bytes,
            m.out_bytes as f64 / in_bytes as f64
        );
    }
    let [ccfs, zlib, stdin, zstd, qemu] = results[..] else {
        bail!("expected five measurements");
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    let speedup = ccfs.wall / zlib.wall;
    println!(
        "zlib vs create_compressed_fs: {speedup:.1}x faster (target >= 6x: {}), size {:.4}x \
         (target <= 1: {})",
        verdict(speedup >= 6.0),
        zlib.out_bytes as f64 / ccfs.out_bytes as f64,
        verdict(zlib.out_bytes <= ccfs.out_bytes)
    );
    let speedup = qemu.wall / zstd.wall;
    println!(
        "zstd vs qemu-img qcow2 zstd: {speedup:.1}x faster (target >= 2x: {}), size {:.4}x \
         (target <= 1: {})",
        verdict(speedup >= 2.0),
        zstd.out_bytes as f64 / qemu.out_bytes as f64,
        verdict(zstd.out_bytes <= qemu.out_bytes)
    );
    let peak = [zlib, stdin, zstd]
        .iter()
        .map(|m| m.rss_kib)
        .max()
        .unwrap_or(0);
    println!(
        "mkmodule peak RSS {:.1} MiB (target < 64 MiB: {})",
        peak as f64 / 1024.0,
        verdict(peak < 64 * 1024)
    );
    Ok(())
}

/// Runs one tool under `/usr/bin/time` and removes its output afterwards.
fn measure(tool: &Tool, input: &Path, scratch: &Path) -> Result<Measure> {
    let out = scratch.join("out.img");
    let _ = std::fs::remove_file(&out);
    let command = tool
        .shell
        .replace("{IN}", &shell_quote(input))
        .replace("{OUT}", &shell_quote(&out));
    let timed = time_shell(tool.label, &command)?;
    let out_bytes = std::fs::metadata(&out)
        .with_context(|| format!("{} wrote no output", tool.label))?
        .len();
    let _ = std::fs::remove_file(&out);
    Ok(Measure {
        wall: timed.wall,
        cpu: timed.cpu,
        rss_kib: timed.rss_kib,
        out_bytes,
    })
}
