//! `cargo xtask`: project tasks that are not part of the shipped tools.

mod bench_create;
mod bench_read;
mod bench_serve;
mod demo;

use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci      cargo fmt --check, clippy with -D warnings, and the whole test suite
  demo    build a sample ext4 image, compress, inspect, verify and extract it, and read it
          with qemu-img and extract_compressed_fs
  bench-create [--runs N] [CORPUS_FILE...]
          mkmodule create vs create_compressed_fs and qemu-img qcow2 zstd (wall, CPU, peak
          RSS, size); files default to $CORPUS/rootfs.ext4 and live.iso
  bench-read [RAW_IMAGE]
          extract vs extract_compressed_fs vs qemu-img; random read_at/s (zlib, zstd)
  bench-serve [RAW_IMAGE]
          NBD serving: mkmodule serve vs qemu-nbd -f cloop vs nbdkit (raw), nbdcopy and fio;
          RAW_IMAGE defaults to $CORPUS/rootfs.ext4 (CORPUS defaults to ../corpus)";

fn main() -> Result<()> {
    // Tasks work from the workspace root whatever the caller's directory.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => ci(),
        "demo" => demo::demo(),
        "bench-create" => bench_create::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        "bench-read" => bench_read::bench_read(std::env::args_os().nth(2).map(Into::into)),
        "bench-serve" => bench_serve::bench_serve(std::env::args_os().nth(2).map(Into::into)),
        _ => bail!("{USAGE}"),
    }
}

/// Runs a command and fails when it does.
pub fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Runs a cargo subcommand and fails when it does.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args))
}

/// The full check CI runs: formatting, lints, then every test.
fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    Ok(())
}
