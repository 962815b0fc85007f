//! `mkmodule info`: what an image is made of, as text or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mkmodule_format::{BlockKind, HeaderPosition};
use mkmodule_image::{Image, OpenOptions};
use serde::Serialize;

use crate::units::human_bytes;

/// Arguments of `mkmodule info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to describe.
    ///
    /// A file, or an http:// or https:// URL.
    pub image: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also list every block: file offset, compressed length, codec and kind.
    #[arg(long)]
    pub blocks: bool,

    #[command(flatten)]
    pub remote: crate::remote::RemoteArgs,
}

/// Everything `info` reports; the JSON output is this structure.
#[derive(Debug, Serialize)]
struct Info {
    path: String,
    file_len: u64,
    dialect: &'static str,
    signature: String,
    header_position: &'static str,
    block_size: u32,
    blocks: u32,
    /// Blocks per codec.
    codecs: BTreeMap<&'static str, u64>,
    stored_blocks: u64,
    zero_length_blocks: u64,
    shared_blocks: u64,
    /// Blocks known to hold only zeros (zero-length, or equal to a decoded zero block).
    zero_blocks: u64,
    compressed_bytes: u64,
    data_end: u64,
    largest_block: u32,
    largest_block_index: Option<u32>,
    padded_size: u64,
    original_size: Option<u64>,
    /// File length / uncompressed size (original when known, else padded).
    ratio: Option<f64>,
    readers: Vec<&'static str>,
    trailer: Option<TrailerInfo>,
    trailer_problem: Option<String>,
    /// The trailer's block-digest table (docs/FORMAT.md §12.4), when it records one.
    digest_table: Option<DigestTableInfo>,
    /// The trailer's stored-check table (docs/FORMAT.md §12.4), when it records one.
    stored_checks: Option<DigestTableInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_table: Option<Vec<BlockRow>>,
}

#[derive(Debug, Serialize)]
struct TrailerInfo {
    original_len: u64,
    digest_algorithm: &'static str,
    digest: String,
    data_end: u64,
    tool: String,
    /// The block encoder recorded (`zlib:5`, `best`), when recorded.
    block_encoding: Option<String>,
}

/// One of the trailer's tables (block digests, stored checks): where, how big, whether usable.
#[derive(Debug, Serialize)]
struct DigestTableInfo {
    /// What each entry is: `blake3-128` or `sha256-128` for block digests, `crc32` for stored
    /// checks.
    algorithm: &'static str,
    offset: u64,
    entries: u32,
    /// Whether the table is in place and matches its checksum (only then is it used).
    valid: bool,
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct BlockRow {
    index: u32,
    offset: u64,
    len: u32,
    codec: &'static str,
    /// `stored`, `zero-length` or `shared`.
    kind: &'static str,
    /// For shared blocks: the block whose bytes they reuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    of: Option<u32>,
    zero: bool,
}

/// Runs `mkmodule info`.
pub fn run(args: Args) -> Result<()> {
    let options = OpenOptions {
        cache_bytes: 0,
        readahead: 0,
        ..OpenOptions::default()
    };
    let image = crate::open::open_image(&args.image, &options, &args.remote)
        .with_context(|| format!("{} is not a readable image", args.image.display()))?;
    let info = collect(&image, args.blocks);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &info)?;
    }
    out.flush()?;
    Ok(())
}

fn collect(image: &Image, with_blocks: bool) -> Info {
    let index = image.index();
    let layout = image.layout();
    let mut codecs = BTreeMap::new();
    let (mut stored, mut zero_length, mut shared) = (0, 0, 0);
    for entry in index.blocks() {
        *codecs.entry(entry.codec.name()).or_insert(0) += 1;
        match entry.kind {
            BlockKind::Stored => stored += 1,
            BlockKind::Zero => zero_length += 1,
            BlockKind::Shared { .. } => shared += 1,
        }
    }
    let largest_block_index = index
        .blocks()
        .iter()
        .enumerate()
        .max_by_key(|(i, e)| (e.len, std::cmp::Reverse(*i)))
        .map(|(i, _)| i as u32);
    let original_size = image.original_size();
    let uncompressed = original_size.unwrap_or(image.padded_size());
    let block_table = with_blocks.then(|| {
        index
            .blocks()
            .iter()
            .enumerate()
            .map(|(i, entry)| BlockRow {
                index: i as u32,
                offset: entry.offset,
                len: entry.len,
                codec: entry.codec.name(),
                kind: match entry.kind {
                    BlockKind::Stored => "stored",
                    BlockKind::Zero => "zero-length",
                    BlockKind::Shared { .. } => "shared",
                },
                of: match entry.kind {
                    BlockKind::Shared { of } => Some(of),
                    _ => None,
                },
                zero: image.is_zero_block(i as u32),
            })
            .collect()
    });
    let spec = layout.dialect.spec();
    Info {
        path: image.path().display().to_string(),
        file_len: image.file_len(),
        dialect: layout.dialect.name(),
        signature: String::from_utf8_lossy(&spec.signature[..1]).into_owned()
            + &format!("{}.0", layout.version),
        header_position: match spec.header_position {
            HeaderPosition::Start => "start",
            HeaderPosition::End => "end",
        },
        block_size: image.block_size(),
        blocks: image.num_blocks(),
        codecs,
        stored_blocks: stored,
        zero_length_blocks: zero_length,
        shared_blocks: shared,
        zero_blocks: image.zero_blocks(),
        compressed_bytes: index.stored_bytes(),
        data_end: index.data_end(),
        largest_block: index.largest_block(),
        largest_block_index,
        padded_size: image.padded_size(),
        original_size,
        ratio: (uncompressed > 0).then(|| image.file_len() as f64 / uncompressed as f64),
        readers: spec.readers.iter().map(|r| r.name()).collect(),
        trailer: image.trailer().map(|t| TrailerInfo {
            original_len: t.original_len,
            digest_algorithm: t.digest_algorithm.name(),
            digest: t.digest.iter().map(|b| format!("{b:02x}")).collect(),
            data_end: t.data_end,
            tool: t.tool.clone(),
            block_encoding: t.extension.encoding.map(|e| e.to_string()),
        }),
        trailer_problem: image
            .trailer_problem()
            .map(|p| mkmodule_blockdev::chain_text(p)),
        digest_table: digest_table_info(image),
        stored_checks: stored_checks_info(image),
        block_table,
    }
}

/// The block-digest table a usable trailer records, read and checked.
fn digest_table_info(image: &Image) -> Option<DigestTableInfo> {
    let table = image.trailer()?.extension.digest_table?;
    if image.trailer_problem().is_some() {
        return None;
    }
    let problem = image
        .digest_table()
        .err()
        .map(|e| mkmodule_blockdev::chain_text(&e));
    Some(DigestTableInfo {
        algorithm: table.algorithm.name(),
        offset: table.offset,
        entries: table.entries,
        valid: problem.is_none(),
        problem,
    })
}

/// The stored-check table a usable trailer records, read and checked.
fn stored_checks_info(image: &Image) -> Option<DigestTableInfo> {
    let checks = image.trailer()?.extension.stored_checks?;
    if image.trailer_problem().is_some() {
        return None;
    }
    let problem = image
        .stored_checks()
        .err()
        .map(|e| mkmodule_blockdev::chain_text(&e));
    Some(DigestTableInfo {
        algorithm: "crc32",
        offset: checks.offset,
        entries: checks.entries,
        valid: problem.is_none(),
        problem,
    })
}

fn print_text(out: &mut impl Write, info: &Info) -> std::io::Result<()> {
    let sized = |n: u64| {
        if n < 1024 {
            format!("{n} bytes")
        } else {
            format!("{n} bytes ({})", human_bytes(n))
        }
    };
    writeln!(out, "image:            {}", info.path)?;
    writeln!(out, "file size:        {}", sized(info.file_len))?;
    writeln!(
        out,
        "dialect:          {} (signature {}, header at the {})",
        info.dialect, info.signature, info.header_position
    )?;
    let codecs: Vec<String> = info
        .codecs
        .iter()
        .map(|(codec, n)| format!("{codec} ({n} blocks)"))
        .collect();
    writeln!(
        out,
        "codecs:           {}",
        if codecs.is_empty() {
            "none".to_string()
        } else {
            codecs.join(", ")
        }
    )?;
    writeln!(
        out,
        "block size:       {}",
        sized(u64::from(info.block_size))
    )?;
    writeln!(
        out,
        "blocks:           {} ({} stored, {} zero-length, {} shared)",
        info.blocks, info.stored_blocks, info.zero_length_blocks, info.shared_blocks
    )?;
    writeln!(out, "zero blocks:      {}", info.zero_blocks)?;
    writeln!(out, "compressed data:  {}", sized(info.compressed_bytes))?;
    match info.largest_block_index {
        Some(i) => writeln!(
            out,
            "largest block:    {} bytes (block {i})",
            info.largest_block
        )?,
        None => writeln!(out, "largest block:    -")?,
    }
    writeln!(out, "device size:      {}", sized(info.padded_size))?;
    match info.original_size {
        Some(n) => writeln!(out, "original size:    {}", sized(n))?,
        None => writeln!(out, "original size:    not recorded")?,
    }
    match info.ratio {
        Some(r) => writeln!(out, "ratio:            {r:.4} (file / uncompressed)")?,
        None => writeln!(out, "ratio:            -")?,
    }
    writeln!(out, "readers:          {}", info.readers.join(", "))?;
    match &info.trailer {
        Some(t) => {
            writeln!(out, "trailer:          written by {}", t.tool)?;
            writeln!(out, "  original size:  {}", t.original_len)?;
            writeln!(out, "  digest:         {} {}", t.digest_algorithm, t.digest)?;
            if let Some(encoding) = &t.block_encoding {
                writeln!(out, "  block encoder:  {encoding}")?;
            }
        }
        None => writeln!(out, "trailer:          none")?,
    }
    if let Some(problem) = &info.trailer_problem {
        writeln!(out, "trailer problem:  {problem}")?;
    }
    if let Some(table) = &info.digest_table {
        let state = match &table.problem {
            None => "valid".to_string(),
            Some(problem) => format!("not used: {problem}"),
        };
        writeln!(
            out,
            "block digests:    {} {} at offset {}, {state}",
            table.entries, table.algorithm, table.offset
        )?;
    }
    if let Some(table) = &info.stored_checks {
        let state = match &table.problem {
            None => "valid".to_string(),
            Some(problem) => format!("not used: {problem}"),
        };
        writeln!(
            out,
            "stored checks:    {} {} at offset {}, {state}",
            table.entries, table.algorithm, table.offset
        )?;
    }
    if let Some(rows) = &info.block_table {
        writeln!(out)?;
        writeln!(
            out,
            "{:>10} {:>14} {:>9} {:>6}  kind",
            "block", "offset", "length", "codec"
        )?;
        for row in rows {
            let mut kind = row.kind.to_string();
            if let Some(of) = row.of {
                kind = format!("shared with {of}");
            }
            if row.zero {
                kind.push_str(", zero");
            }
            writeln!(
                out,
                "{:>10} {:>14} {:>9} {:>6}  {kind}",
                row.index, row.offset, row.len, row.codec
            )?;
        }
    }
    Ok(())
}
