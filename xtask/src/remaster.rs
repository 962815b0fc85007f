//! The remaster benchmark: `cargo xtask remaster [EXT4] [--rounds N] [--debug] [--no-iso]`, and
//! a section of `cargo xtask compare`.
//!
//! A copy of an ext4 image is loop-mounted read-write (this needs root) and changed as a
//! remaster changes a live system: about 20 MiB of new files, 100 files rewritten (written
//! anew beside themselves and renamed over, as package managers do), 5 deleted. Then the
//! changed image is compressed twice, alternating, `rounds` times: a full `mkmodule create`
//! and `mkmodule create --reuse OLD`, OLD being the image of the unchanged copy, each into a
//! file that does not exist yet (the previous round's is removed and synced first). The report
//! gives both times, the share of blocks copied and whether the two outputs are byte-identical;
//! then `mkmodule fetch NEW --seed OLD`, with the bytes it read from NEW against the compressed
//! bytes of the blocks OLD lacks. The ISO 9660 study ([`iso_section`]) follows: the corpus tree
//! made into an ISO, changed the same way, made again, and the share of blocks reused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::common::{
    corpus_dir, median, positive_arg, require_tools, shell_quote, time_shell, workspace_root,
};
use crate::{cargo, run};

/// New files added, each [`NEW_FILE_BYTES`] long.
const NEW_FILES: usize = 20;
const NEW_FILE_BYTES: usize = 1 << 20;
/// Files rewritten and deleted.
const REWRITTEN: usize = 100;
const DELETED: usize = 5;

/// `cargo xtask remaster [EXT4] [--rounds N] [--debug]`: the section alone, on any ext4 image
/// (default: the corpus's `rootfs.ext4`). `--debug` times the debug build instead of building
/// a release one: a quick check of the benchmark itself, whose times then mean nothing.
pub fn remaster(args: &[String]) -> Result<()> {
    let mut rounds = 3usize;
    let mut debug = false;
    let mut no_iso = false;
    let mut raw = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--rounds" => rounds = positive_arg(&mut words, "--rounds")?,
            "--debug" => debug = true,
            "--no-iso" => no_iso = true,
            other if !other.starts_with('-') && raw.is_none() => raw = Some(PathBuf::from(other)),
            other => bail!("remaster: unknown argument {other:?}"),
        }
    }
    let root = workspace_root()?;
    let mkmodule = if debug {
        cargo(&["build", "-p", "mkmodule"])?;
        root.join("target/debug/mkmodule")
    } else {
        cargo(&["build", "--release", "-p", "mkmodule"])?;
        root.join("target/release/mkmodule")
    };
    let raw = raw.unwrap_or_else(|| corpus_dir().join("rootfs.ext4"));
    let scratch = root.join("target/remaster");
    std::fs::create_dir_all(&scratch)?;
    let mut report = section(&mkmodule, &raw, &scratch, rounds)?;
    if !no_iso {
        report.push_str(&iso_section(
            &mkmodule,
            &corpus_dir().join("rootfs"),
            &scratch,
        )?);
    }
    let out = root.join("target/remaster.md");
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("{report}");
    Ok(())
}

/// Runs the benchmark on a copy of the ext4 image `raw` in `scratch` with the mkmodule binary
/// `mkmodule`, and returns its markdown section.
pub fn section(mkmodule: &Path, raw: &Path, scratch: &Path, rounds: usize) -> Result<String> {
    require_tools(&["/usr/bin/time", "mount", "umount", "cmp"])?;
    let edited = scratch.join("remaster.ext4");
    let old = scratch.join("remaster-old.img");
    std::fs::copy(raw, &edited)
        .with_context(|| format!("copying {} to {}", raw.display(), edited.display()))?;
    run(Command::new(mkmodule)
        .arg(raw)
        .arg("-o")
        .arg(&old)
        .args(["-f", "-q"]))?;
    let changes = edit(&edited, &scratch.join("mnt"))?;

    let mk = shell_quote(mkmodule);
    let (full_out, reuse_out) = (scratch.join("full.img"), scratch.join("reused.img"));
    let report_json = scratch.join("reused.json");
    let full = format!(
        "{mk} {} -o {} -f -q",
        shell_quote(&edited),
        shell_quote(&full_out)
    );
    let reuse = format!(
        "{mk} {} -o {} -f -q --json --reuse {} > {}",
        shell_quote(&edited),
        shell_quote(&reuse_out),
        shell_quote(&old),
        shell_quote(&report_json)
    );
    let decode_out = scratch.join("reused-decode.img");
    let decode = format!(
        "{mk} {} -o {} -f -q --reuse {} --reuse-check decode",
        shell_quote(&edited),
        shell_quote(&decode_out),
        shell_quote(&old),
    );
    let (mut full_runs, mut reuse_runs, mut decode_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (label, command, output, runs) in [
            ("create", &full, &full_out, &mut full_runs),
            ("create --reuse", &reuse, &reuse_out, &mut reuse_runs),
            (
                "create --reuse --reuse-check decode",
                &decode,
                &decode_out,
                &mut decode_runs,
            ),
        ] {
            // Each run writes a new file: replacing the previous round's image would add the
            // kernel's deletion of 250 MB of it (over 0.1 s here) to the time of creating this one.
            match std::fs::remove_file(output) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", output.display()))
                }
                _ => {}
            }
            Command::new("sync").status().context("running sync")?;
            let timed = time_shell(label, command)?;
            eprintln!(
                "remaster: {label} (round {round}/{rounds}): {:.2} s wall, {:.2} s cpu",
                timed.wall, timed.cpu
            );
            runs.push(timed);
        }
    }
    let same = |other: &Path| -> Result<bool> {
        Ok(Command::new("cmp")
            .arg("-s")
            .arg(&full_out)
            .arg(other)
            .status()?
            .success())
    };
    let identical = same(&reuse_out)? && same(&decode_out)?;
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_json)?)
        .context("reading the --json report of create --reuse")?;
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let (blocks, reused) = (count("num_blocks"), count("blocks_reused"));
    let zero = count("zero_blocks");

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Remaster (a copy of `{}`, loop-mounted read-write: {changes}; portable options)\n\n\
         | run | wall s (of create) | cpu s | peak RSS MiB |\n|---|---|---|---|",
        raw.file_name().unwrap_or_default().to_string_lossy()
    );
    let full_wall = median(full_runs.iter().map(|t| t.wall).collect());
    for (label, runs) in [
        ("create", &full_runs),
        ("create --reuse OLD", &reuse_runs),
        ("create --reuse OLD --reuse-check decode", &decode_runs),
    ] {
        let wall = median(runs.iter().map(|t| t.wall).collect());
        let _ = writeln!(
            out,
            "| {label} | {wall:.2} ({:.0} %) | {:.2} | {:.1} |",
            100.0 * wall / full_wall.max(1e-9),
            median(runs.iter().map(|t| t.cpu).collect()),
            median(runs.iter().map(|t| t.rss_kib as f64).collect()) / 1024.0
        );
    }
    let speedup = median(full_runs.iter().map(|t| t.wall).collect())
        / median(reuse_runs.iter().map(|t| t.wall).collect()).max(1e-9);
    let _ = writeln!(
        out,
        "\nBlocks copied from OLD: {reused} of {blocks} ({:.1} %; {zero} all-zero blocks need no \
         work either way). create --reuse is {speedup:.2}x as fast as create. The three outputs \
         are {}.",
        100.0 * reused as f64 / blocks.max(1) as f64,
        if identical {
            "byte-identical"
        } else {
            "DIFFERENT"
        }
    );
    if !identical {
        bail!("create --reuse wrote another image than create:\n{out}");
    }
    out.push_str(&fetch_part(mkmodule, &full_out, &old, scratch)?);
    Ok(out)
}

/// `fetch NEW --seed OLD`: the bytes read from NEW against the compressed bytes of the blocks
/// OLD lacks, and identity of the copy.
fn fetch_part(mkmodule: &Path, new: &Path, old: &Path, scratch: &Path) -> Result<String> {
    let fetched = scratch.join("fetched.img");
    let output = Command::new(mkmodule)
        .arg("fetch")
        .arg(new)
        .arg("-o")
        .arg(&fetched)
        .arg("--seed")
        .arg(old)
        .args(["-f", "--json"])
        .output()
        .context("running mkmodule fetch")?;
    if !output.status.success() {
        bail!(
            "mkmodule fetch failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the --json report of fetch")?;
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    let identical = std::fs::read(new)? == std::fs::read(&fetched)?;
    let (read, changed) = (count("source_bytes_read"), count("block_bytes_from_source"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n`mkmodule fetch NEW --seed OLD`: {} blocks from OLD, {} read from NEW ({changed} \
         bytes of compressed blocks OLD lacks); {read} bytes read from NEW in all, {:.3}x the \
         changed blocks' bytes. The copy is {}.",
        count("blocks_from_seed"),
        count("blocks_from_source"),
        read as f64 / changed.max(1) as f64,
        if identical {
            "byte-identical"
        } else {
            "DIFFERENT"
        }
    );
    if !identical {
        bail!("fetch --seed wrote another image than its source:\n{out}");
    }
    Ok(out)
}

/// Loop-mounts `image` read-write on `mnt` and changes it; returns a description.
fn edit(image: &Path, mnt: &Path) -> Result<String> {
    std::fs::create_dir_all(mnt)?;
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(image)
        .arg(mnt))?;
    let result = change_files(mnt);
    let unmounted = run(Command::new("umount").arg(mnt));
    let description = result?;
    unmounted?;
    Ok(description)
}

/// The changes of a remaster, deterministic for a given tree.
fn change_files(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    list_files(root, &mut files)?;
    files.sort();
    let step = (files.len() / (REWRITTEN + DELETED)).max(1);
    let chosen: Vec<&PathBuf> = files.iter().step_by(step).collect();
    let (rewrite, delete) = chosen.split_at(chosen.len().min(REWRITTEN));
    let delete = &delete[..delete.len().min(DELETED)];
    for (k, path) in rewrite.iter().enumerate() {
        let mut bytes = std::fs::read(path)?;
        bytes.extend_from_slice(format!("\nrewritten by the remaster benchmark {k}\n").as_bytes());
        let fresh = path.with_extension("remaster-new");
        std::fs::write(&fresh, &bytes)?;
        std::fs::rename(&fresh, path)?;
    }
    for path in delete {
        std::fs::remove_file(path)?;
    }
    let added = root.join("remaster-added");
    std::fs::create_dir_all(&added)?;
    for k in 0..NEW_FILES {
        std::fs::write(added.join(format!("file{k:02}")), new_file(k as u64))?;
    }
    Ok(format!(
        "{} MiB in {NEW_FILES} new files, {} files rewritten, {} deleted",
        (NEW_FILES * NEW_FILE_BYTES) >> 20,
        rewrite.len(),
        delete.len()
    ))
}

/// Regular files under `dir`, `lost+found` left out.
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() && entry.file_name() != "lost+found" {
            list_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// A new file's contents: half text, half pseudo-random bytes, as binaries and data mix.
fn new_file(seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(NEW_FILE_BYTES);
    let mut line = 0u64;
    while out.len() < NEW_FILE_BYTES / 2 {
        let text = format!(
            "file {seed} line {line}: configuration value {}\n",
            line * 7919 % 1013
        );
        out.extend_from_slice(text.as_bytes());
        line += 1;
    }
    out.truncate(NEW_FILE_BYTES / 2);
    out.extend_from_slice(&mkmodule_testkit::data::random(
        NEW_FILE_BYTES / 2,
        seed + 1,
    ));
    out
}

/// The ISO 9660 study: how much of an image survives for `create --reuse` when the tree is
/// changed as a remaster does and the ISO is made again with `xorriso -as mkisofs`. Files move
/// when anything before them grows, by whole 2 KiB sectors; a block of the image is reused
/// only where the bytes of a whole block moved by a multiple of the block size. Tried: 64 KiB
/// blocks; 64 KiB blocks with the new files sorted last (`-sort`); 2 KiB blocks (one sector).
pub fn iso_section(mkmodule: &Path, tree: &Path, scratch: &Path) -> Result<String> {
    require_tools(&["xorriso", "cp"])?;
    let copy = scratch.join("iso-tree");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    run(Command::new("cp").arg("-a").arg(tree).arg(&copy))?;
    let sort = scratch.join("iso-sort");
    // Higher weights are written first; the remaster's new directory goes last.
    std::fs::write(&sort, format!("{}/remaster-added -10\n", copy.display()))?;
    let iso = |out: &Path, sorted: bool| -> Result<()> {
        let mut command = Command::new("xorriso");
        command
            .args(["-as", "mkisofs", "-quiet", "-R", "-o"])
            .arg(out);
        if sorted {
            command.arg("-sort").arg(&sort);
        }
        run(command.arg(&copy))
    };
    let old_iso = scratch.join("old.iso");
    iso(&old_iso, false)?;
    let changes = change_files(&copy)?;
    let new_iso = scratch.join("new.iso");
    let sorted_iso = scratch.join("new-sorted.iso");
    iso(&new_iso, false)?;
    iso(&sorted_iso, true)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Remaster of an ISO 9660 image (`xorriso -as mkisofs -R` of `{}`, then {changes}, \
         made again)\n\n| new ISO | block size | blocks reused | of blocks | share |\n|---|---|---|---|---|",
        tree.file_name().unwrap_or_default().to_string_lossy()
    );
    for (label, new, bs) in [
        ("plain", &new_iso, "64K"),
        ("new files sorted last (-sort)", &sorted_iso, "64K"),
        ("plain", &new_iso, "2K"),
    ] {
        let old_img = scratch.join(format!("old-iso-{bs}.img"));
        if !old_img.exists() {
            run(Command::new(mkmodule)
                .arg(&old_iso)
                .arg("-o")
                .arg(&old_img)
                .args(["-f", "-q", "-B", bs]))?;
        }
        let output = Command::new(mkmodule)
            .arg(new)
            .arg("-o")
            .arg(scratch.join("new-iso.img"))
            .args(["-f", "-q", "--json", "-B", bs, "--reuse"])
            .arg(&old_img)
            .output()
            .context("running mkmodule create --reuse on the ISO")?;
        if !output.status.success() {
            bail!(
                "mkmodule create --reuse failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let count = |key: &str| summary[key].as_u64().unwrap_or(0);
        let (blocks, reused) = (count("num_blocks"), count("blocks_reused"));
        let _ = writeln!(
            out,
            "| {label} | {bs} | {reused} | {blocks} | {:.1} % |",
            100.0 * reused as f64 / blocks.max(1) as f64
        );
    }
    std::fs::remove_dir_all(&copy)?;
    Ok(out)
}
