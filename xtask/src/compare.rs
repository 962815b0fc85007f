//! `cargo xtask compare [--rounds N] [--fio-seconds S]`: mkmodule against every peer tool on
//! the corpus, in one run, as one markdown report (stdout and `target/compare.md`).
//!
//! It builds mkmodule in release mode, tries to make the corpus when it is missing (in
//! `CORPUS`, default `../corpus`: see `common::corpus_dir`), then measures, each
//! tool N times (default 3) in alternating rounds so a burst of background load hits all
//! alike, and reports medians and ratios:
//!
//! * **create** from `rootfs.ext4`: `mkmodule` (portable v2 zlib, 64 KiB; zstd; 128 KiB with
//!   zlib, zstd:15 and xz) against `create_compressed_fs -t 2 -L 9 -B 64K`, `qemu-img convert
//!   -c -O qcow2` (zlib and zstd, `-m 2 -W`) and `mksquashfs` of the `rootfs/` tree the ext4
//!   image was made from (`-b 128K -processors 2`, gzip, zstd and xz at their default
//!   levels): wall and CPU time and peak RSS from GNU time, output bytes.
//! * **extract** the create_compressed_fs image of `rootfs.ext4` (zlib, 64 KiB), the same file
//!   for every reader: `mkmodule extract` against `extract_compressed_fs` and `qemu-img
//!   convert -f cloop -O raw`.
//! * **serve** that image: `mkmodule serve` (and `mkmodule serve` of mkmodule's own zstd image)
//!   against `qemu-nbd -r -f cloop`, and both against
//!   `nbdkit file` of the raw image (no decompression) and `nbdkit --filter=xz` of an
//!   `xz --block-size=1MiB -T2` copy; nbdcopy of the whole export to `null:` (MiB/s) and fio's
//!   nbd engine, 4 KiB random reads at queue depth 32 (IOPS).
//!
//! * **remaster** a copy of `rootfs.ext4` (needs root: it is loop-mounted read-write):
//!   `mkmodule create` against `mkmodule create --reuse OLD`, `mkmodule fetch --seed`, and the
//!   ISO 9660 study (see `remaster.rs`).
//!
//! * **storm**: 32 NBD clients replay a recorded guest boot at once through `mkmodule serve`
//!   of an image on a web origin, cold and warm, against qemu-nbd and nbdkit (see `storm.rs`).
//!
//! Scratch files (the peer images, the xz copy) live in `target/compare/` and are reused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::common::{
    corpus_dir, measure_server, median, positive_arg, require_tools, shell_quote, start_server,
    time_shell, warm, workspace_root, ServeFigures, Timed,
};
use crate::{cargo, run};

/// A command to time: `{IN}`, `{TREE}`, `{IMG}` and `{OUT}` are substituted.
struct Job {
    label: String,
    shell: String,
}

impl Job {
    fn new(label: impl Into<String>, shell: impl Into<String>) -> Job {
        Job {
            label: label.into(),
            shell: shell.into(),
        }
    }
}

/// A server to start: label, program, arguments, port, export name, export size.
type ServerSpec<'a> = (&'a str, String, Vec<String>, u16, &'a str, u64);

/// Medians of one job.
#[derive(Debug, Clone, Copy)]
struct Row {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    out_bytes: u64,
}

struct Paths {
    raw: PathBuf,
    tree: PathBuf,
    image: PathBuf,
    out: PathBuf,
}

impl Paths {
    fn fill(&self, shell: &str) -> String {
        shell
            .replace("{IN}", &shell_quote(&self.raw))
            .replace("{TREE}", &shell_quote(&self.tree))
            .replace("{IMG}", &shell_quote(&self.image))
            .replace("{OUT}", &shell_quote(&self.out))
    }
}

/// Runs every job `rounds` times, jobs alternating within a round; the output file is
/// removed (and the disk synced) before each run and its size taken after it.
fn time_jobs(jobs: &[Job], paths: &Paths, rounds: usize, what: &str) -> Result<Vec<Row>> {
    let mut timings: Vec<Vec<(Timed, u64)>> = vec![Vec::new(); jobs.len()];
    for round in 1..=rounds {
        for (job, slot) in jobs.iter().zip(timings.iter_mut()) {
            remove_output(&paths.out)?;
            Command::new("sync").status().context("running sync")?;
            let timed = time_shell(&job.label, &paths.fill(&job.shell))?;
            let bytes = output_bytes(&paths.out)?;
            eprintln!(
                "compare: {what}: {} (round {round}/{rounds}): {:.2} s wall, {:.2} s cpu, {} bytes",
                job.label, timed.wall, timed.cpu, bytes
            );
            slot.push((timed, bytes));
        }
    }
    remove_output(&paths.out)?;
    Ok(timings
        .into_iter()
        .map(|runs| Row {
            wall: median(runs.iter().map(|(t, _)| t.wall).collect()),
            cpu: median(runs.iter().map(|(t, _)| t.cpu).collect()),
            rss_kib: median(runs.iter().map(|(t, _)| t.rss_kib as f64).collect()) as u64,
            out_bytes: runs.last().map_or(0, |(_, b)| *b),
        })
        .collect())
}

fn remove_output(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(out)?,
        Ok(_) => std::fs::remove_file(out)?,
        Err(_) => {}
    }
    Ok(())
}

fn output_bytes(out: &Path) -> Result<u64> {
    Ok(std::fs::metadata(out)
        .with_context(|| format!("no output at {}", out.display()))?
        .len())
}

/// The first line of `program --version` (or `-version`), for the report.
fn version(program: &str, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Runs the comparison; `args` are the words after `compare`.
pub fn compare(args: &[String]) -> Result<()> {
    let mut rounds = 3usize;
    let mut fio_seconds = 10u32;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--rounds" => rounds = positive_arg(&mut words, "--rounds")?,
            "--fio-seconds" => fio_seconds = positive_arg(&mut words, "--fio-seconds")?,
            other => {
                bail!("compare: unknown argument {other:?} (expected --rounds N, --fio-seconds S)")
            }
        }
    }
    require_tools(&[
        "/usr/bin/time",
        "create_compressed_fs",
        "extract_compressed_fs",
        "qemu-img",
        "qemu-nbd",
        "nbdkit",
        "nbdcopy",
        "fio",
        "mksquashfs",
        "xz",
    ])?;
    cargo(&["build", "--release", "-p", "mkmodule"])?;
    let root = workspace_root()?;
    let mkmodule = root.join("target/release/mkmodule");
    let mk = shell_quote(&mkmodule);

    let corpus = corpus_dir();
    let raw = corpus.join("rootfs.ext4");
    let tree = corpus.join("rootfs");
    if !raw.is_file() || !tree.is_dir() {
        let script = root.join("scripts/make-corpus.sh");
        eprintln!(
            "compare: no corpus in {}: making it with {}",
            corpus.display(),
            script.display()
        );
        run(Command::new("bash").arg(&script).env("CORPUS", &corpus))?;
    }
    let raw = std::fs::canonicalize(&raw)?;
    let tree = std::fs::canonicalize(&tree)?;
    let raw_len = std::fs::metadata(&raw)?.len();
    let scratch = root.join("target/compare");
    std::fs::create_dir_all(&scratch)?;

    // The reference image every reader and server reads: create_compressed_fs's own.
    let image = scratch.join("rootfs-ccfs-64k.cloop");
    if !image.exists() {
        run(Command::new("create_compressed_fs")
            .args(["-q", "-B", "65536", "-L", "9", "-t", "2"])
            .arg(&raw)
            .arg(&image))?;
    }
    let xz_copy = scratch.join("rootfs.ext4.xz");
    if !xz_copy.exists() {
        let partial = scratch.join("rootfs.ext4.xz.partial");
        run(Command::new("bash").args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "xz --block-size=1MiB -T2 -c {} > {}",
                shell_quote(&raw),
                shell_quote(&partial)
            ),
        ]))?;
        std::fs::rename(&partial, &xz_copy)?;
    }
    // mkmodule's default zstd image, served against nbdkit's raw file (the ceiling).
    let zstd_image = scratch.join("rootfs-mkmodule-zstd-64k.uzip");
    run(Command::new(&mkmodule)
        .arg(&raw)
        .arg("-o")
        .arg(&zstd_image)
        .args(["-c", "zstd", "-f", "-q"]))?;
    let paths = Paths {
        raw: raw.clone(),
        tree: tree.clone(),
        image: image.clone(),
        out: scratch.join("out"),
    };
    let mut report = String::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(
        report,
        "# mkmodule compared with its peers\n\nCorpus `{}` ({raw_len} bytes) and the `rootfs/` \
         tree it was made from; {cores} cores, shared with other work; medians of {rounds} \
         rounds, tools alternating within each round. Versions: {}; {}; {}; {}.\n",
        raw.display(),
        version(&mkmodule.display().to_string(), "--version"),
        version("qemu-img", "--version"),
        version("mksquashfs", "-version"),
        version("nbdkit", "--version"),
    );

    // --- create -------------------------------------------------------------------------
    warm(&raw);
    let create = [
        Job::new(
            "create_compressed_fs -t 2 -L 9 -B 64K",
            "create_compressed_fs -q -t 2 -L 9 -B 64K {IN} {OUT}",
        ),
        Job::new("mkmodule (v2, zlib:5, 64K)", format!("{mk} {{IN}} -o {{OUT}} -f -q")),
        Job::new(
            "qemu-img convert -c -O qcow2 (zlib) -m 2 -W",
            "qemu-img convert -c -O qcow2 -m 2 -W {IN} {OUT}",
        ),
        Job::new(
            "mkmodule -c zstd (uzip-zstd, zstd:3, 64K)",
            format!("{mk} {{IN}} -o {{OUT}} -f -q -c zstd"),
        ),
        Job::new(
            "qemu-img convert -c -O qcow2 zstd (defaults)",
            "qemu-img convert -c -O qcow2 -o compression_type=zstd {IN} {OUT}",
        ),
        Job::new(
            "qemu-img convert -c -O qcow2 zstd -m 2 -W",
            "qemu-img convert -c -O qcow2 -o compression_type=zstd -m 2 -W {IN} {OUT}",
        ),
        Job::new(
            "mksquashfs rootfs/ -b 128K -comp gzip -processors 2",
            "mksquashfs {TREE} {OUT} -b 128K -comp gzip -processors 2 -noappend -no-progress -quiet",
        ),
        Job::new(
            "mkmodule -B 128K (v2, zlib:5)",
            format!("{mk} {{IN}} -o {{OUT}} -f -q -B 128K"),
        ),
        Job::new(
            "mksquashfs rootfs/ -b 128K -comp zstd -processors 2",
            "mksquashfs {TREE} {OUT} -b 128K -comp zstd -processors 2 -noappend -no-progress -quiet",
        ),
        Job::new(
            "mkmodule -B 128K -c zstd:15 (uzip-zstd)",
            format!("{mk} {{IN}} -o {{OUT}} -f -q -B 128K -c zstd:15"),
        ),
        Job::new(
            "mksquashfs rootfs/ -b 128K -comp xz -processors 2",
            "mksquashfs {TREE} {OUT} -b 128K -comp xz -processors 2 -noappend -no-progress -quiet",
        ),
        Job::new(
            "mkmodule -B 128K -c xz:6 (v4)",
            format!("{mk} {{IN}} -o {{OUT}} -f -q -B 128K -c xz:6"),
        ),
    ];
    let rows = time_jobs(&create, &paths, rounds, "create")?;
    let _ = writeln!(
        report,
        "## Create (input `rootfs.ext4`; mksquashfs reads the `rootfs/` tree instead)\n\n\
         | tool | wall s | cpu s | peak RSS MiB | output bytes | output / rootfs.ext4 |\n\
         |---|---|---|---|---|---|"
    );
    for (job, r) in create.iter().zip(&rows) {
        let _ = writeln!(
            report,
            "| {} | {:.2} | {:.2} | {:.1} | {} | {:.4} |",
            job.label,
            r.wall,
            r.cpu,
            r.rss_kib as f64 / 1024.0,
            r.out_bytes,
            r.out_bytes as f64 / raw_len as f64
        );
    }
    let pairs = [(1, 0), (1, 2), (3, 4), (3, 5), (7, 6), (9, 8), (11, 10)];
    let _ = writeln!(
        report,
        "\n| mkmodule | peer | speed (peer wall / mkmodule wall) | size (mkmodule / peer) |\n\
         |---|---|---|---|"
    );
    for (m, p) in pairs {
        let (a, b) = (rows[m], rows[p]);
        let _ = writeln!(
            report,
            "| {} | {} | {:.2}x | {:.4}x |",
            create[m].label,
            create[p].label,
            b.wall / a.wall,
            a.out_bytes as f64 / b.out_bytes as f64
        );
    }

    // --- extract ------------------------------------------------------------------------
    warm(&image);
    let extract = [
        Job::new(
            "mkmodule extract",
            format!("{mk} extract -q -f {{IMG}} -o {{OUT}}"),
        ),
        Job::new("extract_compressed_fs", "extract_compressed_fs {IMG} {OUT}"),
        Job::new(
            "qemu-img convert -f cloop -O raw",
            "qemu-img convert -f cloop -O raw {IMG} {OUT}",
        ),
    ];
    let rows = time_jobs(&extract, &paths, rounds, "extract")?;
    let image_len = std::fs::metadata(&image)?.len();
    let _ = writeln!(
        report,
        "\n## Extract (the create_compressed_fs -B 64K image of rootfs.ext4, {image_len} bytes, \
         to a file)\n\n\
         | reader | wall s | cpu s | MB/s | mkmodule speed-up |\n|---|---|---|---|---|"
    );
    for (job, r) in extract.iter().zip(&rows) {
        let _ = writeln!(
            report,
            "| {} | {:.2} | {:.2} | {:.0} | {} |",
            job.label,
            r.wall,
            r.cpu,
            raw_len as f64 / 1e6 / r.wall,
            if job.label.starts_with("mkmodule") {
                "-".to_string()
            } else {
                format!("{:.1}x", r.wall / rows[0].wall)
            }
        );
    }

    // --- serve --------------------------------------------------------------------------
    let padded = raw_len.div_ceil(65536) * 65536;
    let s = |p: &Path| p.display().to_string();
    let servers: Vec<ServerSpec<'_>> = vec![
        (
            "mkmodule serve (cloop zlib 64K)",
            s(&mkmodule),
            vec![
                "serve".into(),
                "-p".into(),
                "10941".into(),
                format!("img={}", s(&image)),
            ],
            10941,
            "img",
            padded,
        ),
        (
            "mkmodule serve (mkmodule zstd:3 64K image)",
            s(&mkmodule),
            vec![
                "serve".into(),
                "-p".into(),
                "10945".into(),
                format!("img={}", s(&zstd_image)),
            ],
            10945,
            "img",
            raw_len,
        ),
        (
            "qemu-nbd -r -f cloop (same file)",
            "qemu-nbd".into(),
            vec![
                "-r".into(),
                "-f".into(),
                "cloop".into(),
                "-e".into(),
                "0".into(),
                "-t".into(),
                "-p".into(),
                "10942".into(),
                "-x".into(),
                "img".into(),
                s(&image),
            ],
            10942,
            "img",
            padded,
        ),
        (
            "nbdkit file (raw rootfs.ext4, no decompression)",
            "nbdkit".into(),
            vec![
                "-f".into(),
                "-r".into(),
                "-p".into(),
                "10943".into(),
                "-i".into(),
                "127.0.0.1".into(),
                "file".into(),
                s(&raw),
            ],
            10943,
            "",
            raw_len,
        ),
        (
            "nbdkit --filter=xz file (xz --block-size=1MiB -T2 copy)",
            "nbdkit".into(),
            vec![
                "-f".into(),
                "-r".into(),
                "-p".into(),
                "10944".into(),
                "-i".into(),
                "127.0.0.1".into(),
                "--filter=xz".into(),
                "file".into(),
                s(&xz_copy),
            ],
            10944,
            "",
            raw_len,
        ),
    ];
    let mut figures: Vec<ServeFigures> = Vec::new();
    for (label, program, args, port, export, size) in &servers {
        let server = start_server(label, program, args, *port, export)?;
        figures.push(measure_server(
            &server,
            *size,
            rounds,
            fio_seconds,
            &scratch,
        )?);
    }
    let _ = writeln!(
        report,
        "\n## Serve over NBD (127.0.0.1; nbdcopy of the whole export to null:, fio nbd engine \
         4 KiB random reads at queue depth 32 for {fio_seconds} s)\n\n\
         | server | nbdcopy MiB/s | fio IOPS | mkmodule: nbdcopy | mkmodule: IOPS |\n\
         |---|---|---|---|---|"
    );
    let ours = figures[0].clone();
    for f in &figures {
        let ratio = |mine: f64, theirs: f64| {
            if f.label.starts_with("mkmodule") {
                "-".to_string()
            } else {
                format!("{:.2}x", mine / theirs)
            }
        };
        let _ = writeln!(
            report,
            "| {} | {:.0} | {:.0} | {} | {} |",
            f.label,
            f.mib_per_s,
            f.iops,
            ratio(ours.mib_per_s, f.mib_per_s),
            ratio(ours.iops, f.iops)
        );
    }
    if let (Some(zstd), Some(raw_file)) = (
        figures.iter().find(|f| f.label.contains("zstd")),
        figures.iter().find(|f| f.label.starts_with("nbdkit file")),
    ) {
        let _ = writeln!(
            report,
            "\nmkmodule serving its zstd image: {:.2}x nbdkit's raw-file throughput, {:.2}x its IOPS.",
            zstd.mib_per_s / raw_file.mib_per_s,
            zstd.iops / raw_file.iops
        );
    }
    report.push_str(&crate::remaster::section(
        &mkmodule, &raw, &scratch, rounds,
    )?);
    report.push_str(&crate::remaster::iso_section(
        &mkmodule,
        &corpus.join("rootfs"),
        &scratch,
    )?);
    match crate::storm::section(&mkmodule, &raw, 32, false) {
        Ok(section) => report.push_str(&section),
        Err(e) => {
            let _ = writeln!(report, "\n## Boot storm\n\nNot run: {e:#}");
        }
    }
    let _ = writeln!(
        report,
        "\nRatios are mkmodule's figure over the peer's (above 1: mkmodule is faster). \
         Reproduce: `CORPUS={} cargo xtask compare --rounds {rounds}`.",
        corpus.display()
    );

    let out = root.join("target/compare.md");
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("{report}");
    eprintln!("compare: the report is in {}", out.display());
    Ok(())
}
