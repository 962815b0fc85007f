//! `cargo xtask bench-read [RAW_IMAGE]`: reading speed of the image reader against its peers,
//! in one run.
//!
//! On one zlib cloop image made by `create_compressed_fs -B 64K` (so every tool reads the very
//! same file) it times, as medians of several alternating rounds:
//!
//! * whole-image extraction to a file: `mkmodule extract` (sparse, and `--no-sparse`),
//!   `extract_compressed_fs` and `qemu-img convert -f cloop -O raw`;
//! * extraction to `/dev/null`: `mkmodule extract` and `extract_compressed_fs` (qemu-img cannot
//!   write a device smaller than the image);
//! * random 4 KiB reads per second through `Image::read_at` with a 16 MiB cache (far smaller
//!   than the image) on 1 and 2 threads, for the zlib image and a zstd image that
//!   `mkmodule create -c zstd` writes from the same input; and sequential `read_at` MB/s.
//!
//! RAW_IMAGE defaults to `$CORPUS/rootfs.ext4` (CORPUS defaults to `../corpus`); without it an
//! ext4 image of `/usr/share` is made with `mkfs.ext4 -d`. Scratch files go to
//! `target/bench-read`. The output is markdown tables with ratios.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::common::{default_corpus_file, median, time_command};
use crate::{cargo, run};

const ROUNDS: usize = 3;
const RANDOM_SECONDS: &str = "5";
const CACHE_BYTES: &str = "16777216";

/// A benchmarked command: its label and how to build it afresh for each run.
type Tool<'a> = (&'static str, Box<dyn Fn() -> Command + 'a>);

/// Runs the benchmark.
pub fn bench_read(raw: Option<PathBuf>) -> Result<()> {
    let scratch = PathBuf::from("target/bench-read");
    std::fs::create_dir_all(&scratch)?;
    let raw = match raw {
        Some(raw) => raw,
        None => {
            let corpus = default_corpus_file("rootfs.ext4");
            if corpus.is_file() {
                corpus
            } else {
                make_ext4(&scratch.join("usr-share.ext4"), Path::new("/usr/share"))?
            }
        }
    };
    if !raw.is_file() {
        bail!("{} is not a file", raw.display());
    }
    cargo(&["build", "--release", "-p", "mkmodule"])?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "mkmodule-image",
        "--example",
        "read_bench",
    ])?;
    let mkmodule = std::fs::canonicalize("target/release/mkmodule")?;
    let bench_bin = std::fs::canonicalize("target/release/examples/read_bench")?;

    let zlib = scratch.join("image-zlib.cloop");
    if !zlib.exists() {
        run(Command::new("create_compressed_fs")
            .args(["-q", "-B", "65536", "-L", "9", "-t", "2"])
            .arg(&raw)
            .arg(&zlib))?;
    }
    let zstd = scratch.join("image-zstd.uzst");
    if !zstd.exists() {
        run(Command::new(&mkmodule)
            .args(["create", "-c", "zstd", "-B", "64K", "-q", "-f"])
            .arg(&raw)
            .arg("-o")
            .arg(&zstd))?;
    }
    let out = scratch.join("out.raw");

    // Correctness first: our extract must give back the input (zero-padded to whole blocks).
    run(Command::new(&mkmodule)
        .args(["extract", "-q", "-f"])
        .arg(&zlib)
        .arg("-o")
        .arg(&out))?;
    same_content(&raw, &out)?;

    let raw_len = std::fs::metadata(&raw)?.len();
    let zlib_len = std::fs::metadata(&zlib)?.len();
    eprintln!(
        "bench-read: {} ({} bytes) -> {} ({} bytes)",
        raw.display(),
        raw_len,
        zlib.display(),
        zlib_len
    );

    let to_file: Vec<Tool<'_>> = vec![
        (
            "mkmodule extract (sparse)",
            Box::new(|| {
                let mut c = Command::new(&mkmodule);
                c.args(["extract", "-q", "-f"])
                    .arg(&zlib)
                    .arg("-o")
                    .arg(&out);
                c
            }),
        ),
        (
            "mkmodule extract --no-sparse",
            Box::new(|| {
                let mut c = Command::new(&mkmodule);
                c.args(["extract", "-q", "-f", "--no-sparse"])
                    .arg(&zlib)
                    .arg("-o")
                    .arg(&out);
                c
            }),
        ),
        (
            "extract_compressed_fs",
            Box::new(|| {
                let mut c = Command::new("extract_compressed_fs");
                c.arg(&zlib).arg(&out);
                c
            }),
        ),
        (
            "qemu-img convert -f cloop -O raw",
            Box::new(|| {
                let mut c = Command::new("qemu-img");
                c.args(["convert", "-f", "cloop", "-O", "raw"])
                    .arg(&zlib)
                    .arg(&out);
                c
            }),
        ),
    ];
    let file_times = time_rounds(&to_file, Some(&out))?;

    let to_null: Vec<Tool<'_>> = vec![
        (
            "mkmodule extract -o /dev/null",
            Box::new(|| {
                let mut c = Command::new(&mkmodule);
                c.args(["extract", "-q"])
                    .arg(&zlib)
                    .args(["-o", "/dev/null"]);
                c
            }),
        ),
        (
            "extract_compressed_fs IMAGE - > /dev/null",
            Box::new(|| {
                let mut c = Command::new("extract_compressed_fs");
                c.arg(&zlib).arg("-");
                c
            }),
        ),
    ];
    let null_times = time_rounds(&to_null, None)?;
    let _ = std::fs::remove_file(&out);

    let mb = raw_len as f64 / 1e6;
    println!(
        "\n## Whole-image extraction of {} ({mb:.0} MB) from its create_compressed_fs -B 64K \
         zlib image ({zlib_len} bytes), median of {ROUNDS}\n",
        raw.display()
    );
    for (title, tools, times, reference) in [
        ("to a file", &to_file, &file_times, 2),
        ("to /dev/null", &to_null, &null_times, 1),
    ] {
        println!("| {title} | wall s | cpu s | MB/s | wall vs extract_compressed_fs |");
        println!("|---|---|---|---|---|");
        let base = times[reference].0;
        for ((name, _), (wall, cpu)) in tools.iter().zip(times.iter()) {
            println!(
                "| {name} | {wall:.2} | {cpu:.2} | {:.0} | {:.2}x faster |",
                mb / wall,
                base / wall
            );
        }
        println!();
    }
    println!(
        "\n## Image::read_at, 16 MiB cache, {RANDOM_SECONDS} s per row (examples/read_bench)\n"
    );
    println!("| image | random 4 KiB reads/s, 1 thread | 2 threads | hit ratio | sequential read_at MB/s |");
    println!("|---|---|---|---|---|");
    for (label, image) in [
        ("zlib (create_compressed_fs)", &zlib),
        ("zstd (mkmodule create -c zstd)", &zstd),
    ] {
        let one = read_bench(&bench_bin, &["random", "--threads", "1"], image)?;
        let two = read_bench(&bench_bin, &["random", "--threads", "2"], image)?;
        let seq = read_bench(&bench_bin, &["sequential"], image)?;
        println!(
            "| {label} | {} | {} | {} | {} |",
            field(&one, "reads_per_sec")?,
            field(&two, "reads_per_sec")?,
            field(&two, "hit_ratio")?,
            field(&seq, "mb_per_sec")?
        );
    }
    Ok(())
}

/// Runs every command `ROUNDS` times, tools alternating within a round; returns the median
/// wall time and the median CPU time (user + system, from GNU time) of each, in seconds.
/// `output` is removed (and everything synced) before each run.
fn time_rounds(tools: &[Tool<'_>], output: Option<&Path>) -> Result<Vec<(f64, f64)>> {
    let mut walls = vec![Vec::new(); tools.len()];
    let mut cpus = vec![Vec::new(); tools.len()];
    for _ in 0..ROUNDS {
        for (k, (name, make)) in tools.iter().enumerate() {
            if let Some(out) = output {
                let _ = std::fs::remove_file(out);
            }
            Command::new("sync").status().context("running sync")?;
            let timed = time_command(name, &make())?;
            eprintln!(
                "bench-read: {name}: {:.2} s wall, {:.2} s cpu",
                timed.wall, timed.cpu
            );
            walls[k].push(timed.wall);
            cpus[k].push(timed.cpu);
        }
    }
    Ok(walls
        .into_iter()
        .map(median)
        .zip(cpus.into_iter().map(median))
        .collect())
}

/// Runs the read_bench example and returns its `key=value` line.
fn read_bench(program: &Path, args: &[&str], image: &Path) -> Result<String> {
    let mut command = Command::new(program);
    command.arg(args[0]).arg(image).args(&args[1..]);
    if args[0] == "random" {
        command.args(["--secs", RANDOM_SECONDS, "--cache", CACHE_BYTES]);
    }
    let out = command.output().context("running read_bench")?;
    if !out.status.success() {
        bail!(
            "read_bench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8(out.stdout)?;
    eprintln!("bench-read: {}", line.trim());
    Ok(line)
}

fn field(line: &str, key: &str) -> Result<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .with_context(|| format!("no {key} in {line:?}"))
}

/// Checks `extracted` is `raw` followed only by zeros (the padding of the last block).
fn same_content(raw: &Path, extracted: &Path) -> Result<()> {
    let mut a = File::open(raw)?;
    let mut b = File::open(extracted)?;
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if m < n || x[..n] != y[..n] {
            bail!(
                "{} differs from {} near offset {at}",
                extracted.display(),
                raw.display()
            );
        }
        if y[n..m].iter().any(|&v| v != 0) {
            bail!(
                "{} has non-zero bytes after the input's end",
                extracted.display()
            );
        }
        if m == 0 {
            return Ok(());
        }
        at += m as u64;
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read(&mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Makes an ext4 image of `dir` (1.25 times its disk usage) with `mkfs.ext4 -d`.
fn make_ext4(path: &Path, dir: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let du = Command::new("du").arg("-sk").arg(dir).output()?;
    let used_kib: u64 = String::from_utf8(du.stdout)?
        .split_whitespace()
        .next()
        .context("du printed nothing")?
        .parse()?;
    let size_mib = (used_kib * 5 / 4).div_ceil(1024);
    run(Command::new("truncate")
        .arg("-s")
        .arg(format!("{size_mib}M"))
        .arg(path))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(dir)
        .arg(path))?;
    Ok(path.to_path_buf())
}
