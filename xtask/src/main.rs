//! `cargo xtask`: project tasks that are not part of the shipped tools.

mod bench_create;
mod bench_read;
mod bench_serve;
mod common;
mod compare;
mod demo;
mod deny;
mod fuzz;
mod live_iso;
mod remaster;
mod storm;
mod storm_origin;

use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci      cargo fmt --check, cargo deny (licences, bans, sources; advisories when the RustSec
          database can be fetched; needs cargo-deny: scripts/install-cargo-deny.sh), clippy
          with -D warnings, the whole test suite, then every fuzz target for 20 s (needs
          cargo-fuzz: scripts/install-fuzz.sh)
  deny    the cargo deny checks of ci alone
  deb [--profile release|dev] [--binary PATH] [-o DIR]
          the Debian package target/debian/mkmodule_VERSION_ARCH.deb, built with dpkg-deb
          from the binary of PROFILE (release; built first) or PATH: binary, man pages,
          completions, systemd units, /etc/mkmodule/exports, initramfs-tools and dracut
          integration (needs dpkg-dev, binutils); paths are relative to the workspace root
  demo    build a sample ext4 image, compress, inspect, verify and extract it, and read it
          with qemu-img and extract_compressed_fs
  bench-create [--runs N] [CORPUS_FILE...]
          mkmodule create vs create_compressed_fs and qemu-img qcow2 zstd (wall, CPU, peak
          RSS, size); files default to $CORPUS/rootfs.ext4 and live.iso
  bench-read [RAW_IMAGE]
          extract vs extract_compressed_fs vs qemu-img; random read_at/s (zlib, zstd)
  bench-serve [RAW_IMAGE]
          NBD serving: mkmodule serve vs qemu-nbd -f cloop vs nbdkit (raw), nbdcopy and fio;
          RAW_IMAGE defaults to $CORPUS/rootfs.ext4 (CORPUS defaults to ../corpus)
  compare [--rounds N] [--fio-seconds S]
          mkmodule vs every peer on the corpus in one run (create vs create_compressed_fs,
          mksquashfs, qemu-img -c; extract vs extract_compressed_fs, qemu-img; serve vs
          qemu-nbd -f cloop, nbdkit raw and xz); markdown medians and ratios on stdout and in
          target/compare.md, and the remaster section below; makes the corpus with
          scripts/make-corpus.sh if missing
  remaster [EXT4] [--rounds N] [--debug] [--no-iso]
          loop-mount a copy of EXT4 (default $CORPUS/rootfs.ext4; needs root), add 20 MiB,
          rewrite 100 files, delete 5; time create vs create --reuse, share of blocks copied,
          byte identity, fetch --seed bytes read (target/remaster.md); then the ISO 9660 study
          on $CORPUS/rootfs (--no-iso skips it); --debug times the debug build (checks only)
  storm [--record] [--clients N] [--mkmodule BIN]
          boot storm: replay a guest boot's block reads (recorded once with mkmodule serve
          --trace while qemu boots $CORPUS/rootfs.ext4 with systemd) from N NBD clients at once
          (default 32) through mkmodule serve URL (cold and warm cache), mkmodule serve FILE,
          qemu-nbd (cloop over curl) and nbdkit curl + cache, nginx as the origin; origin bytes
          (and where they went, request by request), MB/s, p50/p99 latency (target/storm.md);
          --mkmodule runs BIN instead of this tree's release build; also a section of compare
  live-iso --root ROOT.img [--module M.img ...] -o live.iso [--kernel K] [--initrd I]
          [--kernel-dir DIR] [--label L] [--append WORDS] [--menu-seconds N] [--mkmodule BIN]
          a bootable hybrid ISO (BIOS and UEFI, grub-mkrescue): ROOT.img compressed by mkmodule
          as KNOPPIX/KNOPPIX, each module as KNOPPIX/modules/NN-NAME.mo, the kernel (default:
          the newest in DIR, /var/cache/mkmodule/guest-kernel) and an initramfs with the
          dist/lib/mkmodule-live stage (built from DIR's modules unless --initrd); boots with
          mkmodule.live=L console=ttyS0 WORDS (relative paths: from the workspace root)
  fuzz [--time N] [TARGET...]
          run every fuzz target (or the named ones) for N seconds each (default 60) with
          cargo-fuzz on the stable toolchain; prints execs, exec/s and coverage per target and
          fails on a crash (see fuzz/README.md)
  fuzz-seeds
          regenerate the seed corpora in fuzz/corpus/";

fn main() -> Result<()> {
    // Tasks work from the workspace root whatever the caller's directory.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => ci(),
        "deny" => deny::deny(),
        "deb" => xtask::deb::cli(&std::env::args().skip(2).collect::<Vec<_>>()),
        "demo" => demo::demo(),
        "bench-create" => bench_create::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        "bench-read" => bench_read::bench_read(std::env::args_os().nth(2).map(Into::into)),
        "bench-serve" => bench_serve::bench_serve(std::env::args_os().nth(2).map(Into::into)),
        "compare" => compare::compare(&std::env::args().skip(2).collect::<Vec<_>>()),
        "remaster" => remaster::remaster(&std::env::args().skip(2).collect::<Vec<_>>()),
        "storm" => storm::storm(&std::env::args().skip(2).collect::<Vec<_>>()),
        "live-iso" => live_iso::live_iso(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fuzz" => fuzz::fuzz(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fuzz-seeds" => fuzz::seeds(),
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

/// Seconds each fuzz target runs in `ci`: 12 targets, 4 minutes, plus the fuzz build. CI has no
/// time to spare, so a new target shortens them all: with 9 targets this was 30 s (270 s in
/// all); the 30 s saved pay for building and linking the three newer targets.
const CI_FUZZ_SECONDS: u64 = 20;

/// The full check CI runs: formatting, the dependency rules, lints, every test, then a short run
/// of every fuzz target.
fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    deny::deny()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    fuzz::fuzz(&["--time".into(), CI_FUZZ_SECONDS.to_string()])?;
    Ok(())
}
