//! `mkmodule verify`: decode every block in parallel, check each against the block-digest table
//! and the content against the trailer's digest, and report each bad block. Exit status 3 when
//! the image is damaged.
//!
//! Blocks known to be zero (zero-length blocks, and blocks whose bytes equal a decoded zero
//! block's) are not decoded again. What is left to do, the bytes to decode plus the bytes to hash,
//! is bounded before anything starts: a header can claim terabytes of zero-length blocks in a
//! file of kilobytes, and hashing them for a trailer's digest would take hours. Work above
//! `--max-size` is refused with the numbers.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Result};
use mkmodule_blockdev::{chain_text, ErrorKind};
use mkmodule_format::{stored_check, BlockHash, ContentHasher, DigestAlgorithm};
use mkmodule_image::DigestTable;
use mkmodule_image::{Decoded, Image, ImageError, OpenOptions, ParallelOptions};
use serde::Serialize;

mod verity;

use super::{ExitStatus, EXIT_DAMAGED};
use crate::progress::{Progress, ProgressArg, Unit};
use crate::units::{human_bytes, parse_size};

/// Arguments of `mkmodule verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to check.
    ///
    /// A file, or an http:// or https:// URL.
    pub image: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Decoding threads (default: one per core).
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Show no progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: ProgressArg,
    /// Refuse to start when checking needs more than SIZE bytes decoded or hashed: the blocks
    /// not known to be zero, or the whole content when the trailer records a digest
    /// (suffixes K, M, G, T). The default, 2T, is the largest device Linux cloop.ko attaches
    /// (it counts 512-byte sectors in 32 bits).
    #[arg(long, value_name = "SIZE", default_value = "2T", value_parser = parse_size)]
    pub max_size: u64,

    /// Also recompute the dm-verity hash tree of the image's device and compare it with
    /// IMAGE.verity (written by `create --verity`), naming the first bad data block.
    #[arg(long)]
    pub verity: bool,

    #[command(flatten)]
    pub remote: crate::remote::RemoteArgs,
}

/// How many bytes checking `image` decodes or hashes, whichever is more: the blocks not known
/// to be zero are decoded; with a trailer digest, the original content is hashed, zeros included.
fn work_bytes(image: &Image, hashed: Option<u64>) -> u64 {
    let bs = u64::from(image.block_size());
    let stored = u64::from(image.num_blocks()).saturating_sub(image.zero_blocks());
    (stored * bs).max(hashed.unwrap_or(0))
}

/// Refuses a check of more than `max` bytes, naming what the image claims against its file.
fn check_work(image: &Image, hashed: Option<u64>, max: u64) -> Result<()> {
    let work = work_bytes(image, hashed);
    if work <= max {
        return Ok(());
    }
    let what = match hashed {
        Some(len) if len >= work => format!(
            "hashing {} ({len} bytes) for the trailer's digest",
            human_bytes(len)
        ),
        _ => format!("decoding {} ({work} bytes)", human_bytes(work)),
    };
    anyhow::bail!(
        "checking would mean {what}, more than --max-size {} ({max} bytes): the image claims \
         {} blocks of {} bytes ({} of them zero) in a file of {} bytes; pass a larger \
         --max-size to check it anyway",
        human_bytes(max),
        image.num_blocks(),
        image.block_size(),
        image.zero_blocks(),
        image.file_len()
    )
}

/// What verify found; the JSON output is this structure.
#[derive(Debug, Serialize)]
struct Report {
    image: String,
    ok: bool,
    /// Set when the image could not even be opened (bad header, index or file).
    error: Option<String>,
    dialect: Option<&'static str>,
    blocks: u32,
    bad_blocks: Vec<BadBlock>,
    digest: Option<DigestReport>,
    trailer_problem: Option<String>,
    /// The block-digest table (docs/FORMAT.md §12.4), when the trailer points to one.
    digest_table: Option<TableReport>,
    /// The stored-check table (docs/FORMAT.md §12.4), when the trailer points to one.
    stored_checks: Option<TableReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verity: Option<verity::VerityReport>,
}

#[derive(Debug, Serialize)]
struct BadBlock {
    index: u32,
    offset: Option<u64>,
    reason: String,
}

/// What became of the block-digest table.
#[derive(Debug, Serialize)]
struct TableReport {
    /// What each entry is (`blake3-128`, `sha256-128` or `crc32`), when known.
    algorithm: Option<&'static str>,
    /// Entries it should have (the block count).
    entries: u32,
    /// `ok` (every decoded block matched its entry), `mismatch` (some did not: they are bad
    /// blocks) or `unusable` (misplaced or failing its checksum: `problem` says why).
    status: &'static str,
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct DigestReport {
    algorithm: &'static str,
    expected: String,
    /// The digest of the decoded content; absent when a bad block made it impossible.
    actual: Option<String>,
    /// `ok`, `mismatch` or `not checked`.
    status: &'static str,
}

/// Runs `mkmodule verify`.
pub fn run(args: Args) -> Result<()> {
    let mut report = Report {
        image: args.image.display().to_string(),
        ok: false,
        error: None,
        dialect: None,
        blocks: 0,
        bad_blocks: Vec::new(),
        digest: None,
        trailer_problem: None,
        digest_table: None,
        stored_checks: None,
        verity: None,
    };
    let options = OpenOptions {
        cache_bytes: 0,
        readahead: 0,
        ..OpenOptions::default()
    };
    if args.verity {
        let hash_file = mkmodule_pack::verity::hash_file_path(&args.image);
        if !hash_file.exists() {
            bail!(
                "{} has no hash tree to check: {} does not exist (it is written by `mkmodule \
                 create --verity`)",
                args.image.display(),
                hash_file.display()
            );
        }
    }
    match crate::open::open_image(&args.image, &options, &args.remote) {
        Ok(image) => {
            check_work(
                &image,
                digest_trailer(&image).map(|t| t.original_len),
                args.max_size,
            )
            .map_err(|e| e.context(format!("verifying {}", args.image.display())))?;
            check(&image, &args, &mut report);
            if args.verity {
                let threads = args.threads.unwrap_or(0);
                report.verity = Some(verity::check(&image, &args.image, threads));
            }
        }
        Err(error) if error.kind() == ErrorKind::Corrupt => report.error = Some(chain_text(&error)),
        Err(error) => {
            return Err(
                anyhow::Error::from(error).context(format!("opening {}", args.image.display()))
            )
        }
    }
    report.ok = report.error.is_none()
        && report.bad_blocks.is_empty()
        && report.trailer_problem.is_none()
        && [&report.digest_table, &report.stored_checks]
            .iter()
            .all(|t| t.as_ref().is_none_or(|t| t.status != "unusable"))
        && report.digest.as_ref().is_none_or(|d| d.status == "ok");
    let verity_problem = report.verity.as_ref().and_then(|v| v.problem.clone());
    let damaged_before_verity = !report.ok;
    report.ok &= verity_problem.is_none();

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &report)?;
        if let Some(v) = &report.verity {
            let root = v.root_hash.as_deref().unwrap_or("-");
            match &v.problem {
                None => writeln!(out, "verity: {} ok, root hash {root}", v.hash_file)?,
                Some(problem) => writeln!(out, "verity: MISMATCH: {problem}")?,
            }
        }
    }
    out.flush()?;
    if report.ok {
        return Ok(());
    }
    let what = match verity_problem {
        Some(problem) if !damaged_before_verity => problem,
        _ => damage_summary(&report),
    };
    Err(ExitStatus {
        code: EXIT_DAMAGED,
        message: format!("{} is damaged: {what}", args.image.display()),
    }
    .into())
}

/// What is wrong, in one sentence naming where: the open error, the (first) bad block, the
/// trailer's problem, or the digest.
fn damage_summary(report: &Report) -> String {
    match (&report.error, report.bad_blocks.as_slice()) {
        (Some(error), _) => error.clone(),
        (None, [bad]) => format!("1 bad block: {}", bad_block_text(bad)),
        (None, [first, ..]) => format!(
            "{} bad blocks, the first: {}",
            report.bad_blocks.len(),
            bad_block_text(first)
        ),
        (None, []) => match (&report.trailer_problem, table_problem(report)) {
            (Some(problem), _) | (None, Some(problem)) => problem.clone(),
            (None, None) => "the content does not match its recorded digest".to_string(),
        },
    }
}

/// What is wrong with the block-digest or stored-check table, when one cannot be used.
fn table_problem(report: &Report) -> Option<&String> {
    [&report.digest_table, &report.stored_checks]
        .into_iter()
        .find_map(|t| t.as_ref().and_then(|t| t.problem.as_ref()))
}

/// A bad block's reason, which names the block and offset (prefixed when it does not).
fn bad_block_text(bad: &BadBlock) -> String {
    if bad.reason.starts_with("block ") {
        bad.reason.clone()
    } else {
        match bad.offset {
            Some(offset) => format!("block {} at offset {offset}: {}", bad.index, bad.reason),
            None => format!("block {}: {}", bad.index, bad.reason),
        }
    }
}

/// The trailer when it records a digest of the input that can be checked.
fn digest_trailer(image: &Image) -> Option<&mkmodule_format::Trailer> {
    image
        .trailer()
        .filter(|t| t.digest_algorithm != DigestAlgorithm::None && image.original_size().is_some())
}

/// Decodes every block (hashing the content in order when the trailer has a digest).
fn check(image: &Image, args: &Args, report: &mut Report) {
    report.dialect = Some(image.dialect().name());
    report.blocks = image.num_blocks();
    report.trailer_problem = image.trailer_problem().map(|p| chain_text(p));
    // Known-zero blocks are zero for certain (see mkmodule_image's zero map): not decoded again.
    let pass = ParallelOptions {
        threads: args.threads.unwrap_or(0),
        skip_zero: true,
    };
    let bs = u64::from(image.block_size());
    let mode = args.progress.mode(args.quiet);
    let total = Some(image.padded_size());
    let bar = Progress::new(mode, "verify", "verify", Unit::Bytes, total);
    let bad = |error: ImageError, block: u32| BadBlock {
        index: error.block().unwrap_or(block),
        offset: error.offset(),
        reason: chain_text(&error),
    };
    let table = read_table(image, report);
    let table = table.as_ref();
    let zero_digest = table.map(|t| t.algorithm.digest(&[], image.block_size()));
    // A decoded block that does not match its table entry: decodes, but to other bytes.
    // `hash`: the block's BLAKE3 hash when the trailer's digest already computed it.
    let mismatch = |block: u32, decoded: &Decoded<'_>, hash: Option<&BlockHash>| {
        let table = table?;
        let expected = table.digests.get(block as usize)?;
        let actual = match decoded {
            Decoded::Zero => zero_digest?,
            Decoded::Data(data) => table
                .algorithm
                .digest_reusing(data, image.block_size(), hash),
        };
        (actual != *expected).then(|| BadBlock {
            index: block,
            offset: image.index().get(block as usize).map(|e| e.offset),
            reason: format!(
                "block {block}{}: decodes to bytes that do not match its entry in the \
                 block-digest table",
                image
                    .index()
                    .get(block as usize)
                    .map(|e| format!(" at offset {}", e.offset))
                    .unwrap_or_default()
            ),
        })
    };
    let content = digest_trailer(image).and_then(|t| {
        let hasher = ContentHasher::new(t.digest_algorithm, t.original_len, image.block_size())?;
        Some((t, hasher))
    });
    match content {
        Some((trailer, mut hasher)) => {
            let mut bad_blocks = Vec::new();
            let _ = image.par_blocks_ordered(pass, |block, decoded| {
                let hash = match &decoded {
                    Ok(Decoded::Data(data)) => hasher.update_block(data),
                    Ok(Decoded::Zero) => {
                        hasher.update_zeros(bs);
                        None
                    }
                    Err(_) => None,
                };
                match decoded {
                    Ok(decoded) => bad_blocks.extend(mismatch(block, &decoded, hash.as_ref())),
                    Err(error) => bad_blocks.push(bad(error, block)),
                }
                bar.inc(bs);
                Ok::<(), ()>(())
            });
            let expected = hex(&trailer.digest);
            report.digest = Some(if bad_blocks.is_empty() {
                let actual = hex(&hasher.finalize());
                let status = if actual == expected { "ok" } else { "mismatch" };
                DigestReport {
                    algorithm: trailer.digest_algorithm.name(),
                    expected,
                    actual: Some(actual),
                    status,
                }
            } else {
                DigestReport {
                    algorithm: trailer.digest_algorithm.name(),
                    expected,
                    actual: None,
                    status: "not checked",
                }
            });
            report.bad_blocks = bad_blocks;
        }
        None => {
            let bad_blocks = Mutex::new(Vec::new());
            let _ = image.par_blocks(pass, |block, decoded| {
                let entry = match decoded {
                    Ok(decoded) => mismatch(block, &decoded, None),
                    Err(error) => Some(bad(error, block)),
                };
                if let Some(entry) = entry {
                    bad_blocks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(entry);
                }
                bar.inc(bs);
                Ok::<(), ()>(())
            });
            let mut bad_blocks = bad_blocks
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bad_blocks.sort_by_key(|b| b.index);
            report.bad_blocks = bad_blocks;
        }
    }
    if let Some(t) = report.digest_table.as_mut().filter(|t| t.problem.is_none()) {
        let mismatched = report
            .bad_blocks
            .iter()
            .any(|b| b.reason.contains("block-digest table"));
        t.status = if mismatched { "mismatch" } else { "ok" };
    }
    check_stored(image, report);
    bar.finish();
}

/// Compares the CRC32 of every block's stored bytes with the stored-check table, when the image
/// has a usable one: cheap next to decoding. A block already found bad is not named again.
fn check_stored(image: &Image, report: &mut Report) {
    let (checks, status, problem) = match image.stored_checks() {
        Ok(None) => return,
        Ok(Some(checks)) => (checks, "ok", None),
        Err(error) => (Vec::new(), "unusable", Some(chain_text(&error))),
    };
    let mut table = TableReport {
        algorithm: Some("crc32"),
        entries: image.num_blocks(),
        status,
        problem,
    };
    let mut bytes = Vec::new();
    let mut found = Vec::new();
    for (block, &expected) in checks.iter().enumerate() {
        let block = block as u32;
        if report.bad_blocks.iter().any(|b| b.index == block) {
            continue;
        }
        let Ok(entry) = image.compressed_block(block, &mut bytes) else {
            continue; // a read error: decoding it failed too, and said so
        };
        if stored_check(&bytes) != expected {
            table.status = "mismatch";
            found.push(BadBlock {
                index: block,
                offset: Some(entry.offset),
                reason: format!(
                    "block {block} at offset {}: its stored bytes do not match its entry in the \
                     stored-check table",
                    entry.offset
                ),
            });
        }
    }
    report.bad_blocks.extend(found);
    report.bad_blocks.sort_by_key(|b| b.index);
    report.stored_checks = Some(table);
}

/// Reads and checks the block-digest table, recording in `report` that there is one and, when
/// it cannot be used, why; returns it when usable.
fn read_table(image: &Image, report: &mut Report) -> Option<DigestTable> {
    let entries = image.num_blocks();
    let (table, status, problem) = match image.digest_table() {
        Ok(None) => return None,
        Ok(Some(table)) => (Some(table), "ok", None),
        Err(error) => (None, "unusable", Some(chain_text(&error))),
    };
    report.digest_table = Some(TableReport {
        algorithm: table
            .as_ref()
            .map(|t| t.algorithm.name())
            .or_else(|| Some(image.trailer()?.extension.digest_table?.algorithm.name())),
        entries,
        status,
        problem,
    });
    table
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_text(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    if let Some(error) = &report.error {
        writeln!(out, "{}: cannot be read: {error}", report.image)?;
        return Ok(());
    }
    for bad in &report.bad_blocks {
        writeln!(out, "bad block {}: {}", bad.index, bad.reason)?;
    }
    if let Some(problem) = &report.trailer_problem {
        writeln!(out, "trailer: {problem}")?;
    }
    match &report.digest_table {
        Some(TableReport {
            problem: Some(problem),
            ..
        }) => writeln!(out, "block-digest table: UNUSABLE: {problem}")?,
        Some(t) => writeln!(
            out,
            "block-digest table: {} entries ({})",
            t.entries, t.status
        )?,
        None => {}
    }
    match &report.stored_checks {
        Some(TableReport {
            problem: Some(problem),
            ..
        }) => writeln!(out, "stored-check table: UNUSABLE: {problem}")?,
        Some(t) => writeln!(
            out,
            "stored-check table: {} entries ({})",
            t.entries, t.status
        )?,
        None => {}
    }
    match &report.digest {
        Some(d) if d.status == "mismatch" => writeln!(
            out,
            "digest: {} MISMATCH: recorded {}, content {}",
            d.algorithm,
            d.expected,
            d.actual.as_deref().unwrap_or("-")
        )?,
        Some(d) => writeln!(out, "digest: {} {} ({})", d.algorithm, d.expected, d.status)?,
        None => writeln!(out, "digest: none recorded")?,
    }
    let verdict = if report.ok { "ok" } else { "DAMAGED" };
    writeln!(
        out,
        "{}: {} blocks, {} bad: {verdict}",
        report.image,
        report.blocks,
        report.bad_blocks.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(bad: &[(u32, &str)], trailer: Option<&str>) -> Report {
        Report {
            image: "img".into(),
            ok: false,
            error: None,
            dialect: Some("v2"),
            blocks: 10,
            bad_blocks: bad
                .iter()
                .map(|&(index, reason)| BadBlock {
                    index,
                    offset: Some(1000),
                    reason: reason.into(),
                })
                .collect(),
            digest: None,
            trailer_problem: trailer.map(String::from),
            digest_table: None,
            stored_checks: None,
            verity: None,
        }
    }

    #[test]
    fn the_summary_names_the_first_bad_block_or_the_trailer() {
        let one = report(
            &[(7, "block 7 at offset 1000 (20 bytes, zlib): corrupt")],
            None,
        );
        assert_eq!(
            damage_summary(&one),
            "1 bad block: block 7 at offset 1000 (20 bytes, zlib): corrupt"
        );
        let two = report(&[(3, "odd"), (7, "block 7: x")], None);
        assert_eq!(
            damage_summary(&two),
            "2 bad blocks, the first: block 3 at offset 1000: odd"
        );
        let trailer = report(&[], Some("mkmodule trailer at offset 9 is corrupt"));
        assert_eq!(
            damage_summary(&trailer),
            "mkmodule trailer at offset 9 is corrupt"
        );
        assert_eq!(
            damage_summary(&report(&[], None)),
            "the content does not match its recorded digest"
        );
    }
}
