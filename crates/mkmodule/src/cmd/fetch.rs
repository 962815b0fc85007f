//! `mkmodule fetch SOURCE -o NEW --seed OLD`: a copy of the image at SOURCE that reads from
//! SOURCE only what OLD does not already hold.
//!
//! SOURCE's header, index, block-digest table and trailer are read first (docs/FORMAT.md §12.4).
//! Then NEW is written front to back as SOURCE's exact bytes: every stored block whose digest a
//! block of OLD has, with the same codec and compressed length, is taken from OLD once OLD's
//! bytes pass [`CopyCheck::accepts`]: their CRC32 equals SOURCE's stored check for the block
//! (docs/FORMAT.md §12.4), or, when SOURCE has no stored-check table, they decode to the
//! digest; everything else (headers, index, table, trailer, the other
//! blocks) is read from SOURCE in as few ranges as possible. NEW is decoded at the end and each
//! block checked against SOURCE's table and the content against the trailer's digest; only
//! then is it renamed into place, so a failed fetch leaves no NEW behind.
//!
//! SOURCE is opened by [`open_source`] as a `Box<dyn ImageSource>`: a local path, or an
//! `http(s)://` URL read with range requests (crates/remote).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use mkmodule_format::{BlockDigest, BlockDigestAlgorithm, BlockKind, ContentHasher};
use mkmodule_image::{
    CopyCheck, Decoded, FileSource, Image, ImageSource, OpenOptions, ParallelOptions, Wanted,
};
use serde_json::json;

use crate::output::{Destination, OutputFile, Replace};
use crate::units::human_bytes;

/// Arguments of `mkmodule fetch`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
SOURCE must carry mkmodule's block-digest table (images written by `mkmodule create`); without
one every byte is read from SOURCE. NEW is byte-identical to SOURCE and is checked against
SOURCE's digests before it is renamed into place.
Example:
  mkmodule fetch /mnt/mirror/KNOPPIX -o KNOPPIX.new --seed KNOPPIX
  mkmodule fetch https://images.example/KNOPPIX -o KNOPPIX.new --seed KNOPPIX")]
pub struct Args {
    /// The image to copy.
    #[arg(value_name = "SOURCE")]
    source: String,

    /// The new image (written under a temporary name, renamed when complete and checked).
    #[arg(short, long, value_name = "NEW_IMAGE")]
    output: PathBuf,

    /// An image already here (an older release of SOURCE) whose blocks are used instead of
    /// reading them from SOURCE.
    #[arg(long, value_name = "OLD_IMAGE")]
    seed: PathBuf,

    /// Threads for decoding OLD (when it has no digest table) and checking NEW (default: one
    /// per core).
    #[arg(short = 'j', long, value_name = "N")]
    threads: Option<usize>,

    /// Replace NEW_IMAGE if it exists.
    #[arg(short, long)]
    force: bool,

    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    json: bool,

    /// Print nothing but errors and warnings.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    remote: crate::remote::RemoteArgs,
}

/// Opens SOURCE: a local image file, or an `http(s)://` URL read with range requests under
/// `remote` (headers, CA certificates, timeout).
pub(crate) fn open_source(
    source: &str,
    remote: &crate::remote::RemoteArgs,
) -> Result<Box<dyn ImageSource>> {
    if crate::open::url_of(std::path::Path::new(source)).is_some() {
        let http = mkmodule_remote::HttpSource::open(source, &remote.options())
            .with_context(|| format!("cannot open {source}"))?;
        return Ok(Box::new(http));
    }
    let file = File::open(source).with_context(|| format!("cannot open {source}"))?;
    Ok(Box::new(FileSource::new(file)))
}

/// A source that counts the bytes read from it.
#[derive(Clone)]
struct Counting {
    inner: Arc<dyn ImageSource>,
    read: Arc<AtomicU64>,
}

impl ImageSource for Counting {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_exact_at(buf, offset)
    }
}

/// What a fetch did.
#[derive(Debug, Default)]
struct Stats {
    /// Bytes read from SOURCE, everything included.
    source_bytes: u64,
    /// Stored blocks taken from OLD, and their compressed bytes.
    seed_blocks: u64,
    seed_bytes: u64,
    /// Stored blocks read from SOURCE, and their compressed bytes.
    source_blocks: u64,
    source_block_bytes: u64,
    /// Blocks of OLD with the digest whose bytes did not check out (read from SOURCE instead).
    rejected: u64,
    /// Whether OLD's blocks were checked against SOURCE's stored checks (else decoded).
    stored_checks: bool,
    /// Whether SOURCE had a usable block-digest table.
    table: bool,
}

/// Runs `mkmodule fetch`.
pub fn run(args: Args) -> Result<()> {
    Destination::of_new_image(&args.output, &[], args.force)?;
    let threads = args.threads.unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    let source = Counting {
        inner: Arc::from(open_source(&args.source, &args.remote)?),
        read: Arc::clone(&read),
    };
    let options = OpenOptions {
        cache_bytes: 0,
        readahead: 0,
        scan_zero_blocks: false,
        ..OpenOptions::default()
    };
    let image = Image::open_source(Box::new(source.clone()), &args.source, &options)
        .with_context(|| format!("opening {}", args.source))?;
    let seed = Image::open_with(&args.seed, &options)
        .with_context(|| format!("opening the seed {}", args.seed.display()))?;
    let replace = match args.force {
        true => Replace::Existing,
        false => Replace::Never,
    };
    let mut temp = OutputFile::create(&args.output, replace)?;
    let name = args.output.display().to_string();
    let mut stats = copy(&image, &source, &seed, temp.file_mut(), &args, threads)
        .with_context(|| format!("writing {name}"))?;
    stats.source_bytes = read.load(Ordering::Relaxed);
    let check = temp
        .file()
        .try_clone()
        .with_context(|| format!("reopening {name}"))?;
    check_copy(check, &image, threads).with_context(|| {
        format!(
            "{name} is not the image at {}: it was not written",
            args.source
        )
    })?;
    temp.commit(&name)?;
    report(&args, &image, &stats)
}

/// Where each digest's first usable block of the seed is: stored blocks, but not a uzip final
/// block (compressed short, it does not decode to a whole block).
/// Digests are of `algorithm`, SOURCE's table's hash: taken from the seed's table when it has
/// the same hash, computed by decoding the seed otherwise.
fn seed_blocks(
    seed: &Image,
    threads: usize,
    algorithm: BlockDigestAlgorithm,
) -> HashMap<BlockDigest, u32> {
    let digests = seed.block_digests(threads, algorithm);
    let short_final = seed.dialect().spec().short_final_block;
    let last = digests.digests.len().saturating_sub(1);
    let mut by_digest = HashMap::new();
    for (block, digest) in digests.digests.into_iter().enumerate() {
        let stored = seed
            .index()
            .get(block)
            .is_some_and(|e| e.kind == BlockKind::Stored)
            && !(short_final && block == last);
        if let (Some(digest), true) = (digest, stored) {
            by_digest.entry(digest).or_insert(block as u32);
        }
    }
    by_digest
}

/// Bytes of SOURCE not yet copied, read in one range when the next block from the seed (or the
/// end) comes.
struct Pending {
    from: u64,
    to: u64,
}

/// Writes SOURCE's bytes into `out`, taking from `seed` the blocks it has.
fn copy(
    image: &Image,
    source: &Counting,
    seed: &Image,
    out: &mut File,
    args: &Args,
    threads: usize,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let table = match image.digest_table() {
        Ok(table) => table,
        Err(e) => {
            eprintln!(
                "mkmodule: warning: {}: {e}; every block is read from it",
                args.source
            );
            None
        }
    };
    stats.table = table.is_some();
    if table.is_none() && !args.quiet {
        eprintln!(
            "mkmodule: {} has no block-digest table: every block is read from it",
            args.source
        );
    }
    let offered = match &table {
        Some(table) => seed_blocks(seed, threads, table.algorithm),
        None => HashMap::new(),
    };
    let file_len = source.len().context("reading the length of SOURCE")?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut pending = Pending { from: 0, to: 0 };
    // SOURCE's checks of its own stored bytes: what a block taken from OLD must hash to. A
    // damaged table is not trusted: OLD's blocks are decoded instead.
    let checks = match &table {
        Some(_) => image.stored_checks().ok().flatten(),
        None => None,
    };
    stats.stored_checks = checks.is_some();
    let mut buf = Vec::new();
    let mut checker = CopyCheck::new(image.block_size());
    for (block, entry) in image.index().blocks().iter().enumerate() {
        if entry.kind != BlockKind::Stored || entry.offset < pending.to {
            continue; // zero-length, a back-reference, or bytes already placed
        }
        let wanted = table
            .as_ref()
            .and_then(|t| Some((t.algorithm, t.digests.get(block)?)));
        let from_seed = wanted.and_then(|(algorithm, digest)| {
            let &at = offered.get(digest)?;
            let theirs = seed.compressed_block(at, &mut buf).ok()?;
            if theirs.codec != entry.codec || theirs.len != entry.len {
                return None;
            }
            let stored = checks.as_ref().and_then(|c| c.get(block).copied());
            let good = checker.accepts(
                theirs.codec,
                &buf,
                stored,
                Wanted::Digest(algorithm, digest),
            );
            if !good {
                stats.rejected += 1;
                eprintln!(
                    "mkmodule: warning: block {at} of {} does not match block {block} of {} \
                     (damaged): read it from {} instead",
                    args.seed.display(),
                    args.source,
                    args.source
                );
            }
            good.then_some(())
        });
        if from_seed.is_some() {
            flush_pending(source, &mut pending, entry.offset, &mut w)?;
            w.write_all(&buf).context("writing a block")?;
            pending = Pending {
                from: entry.end(),
                to: entry.end(),
            };
            stats.seed_blocks += 1;
            stats.seed_bytes += u64::from(entry.len);
        } else {
            pending.to = entry.end();
            stats.source_blocks += 1;
            stats.source_block_bytes += u64::from(entry.len);
        }
    }
    flush_pending(source, &mut pending, file_len, &mut w)?;
    w.flush().context("writing")?;
    Ok(stats)
}

/// Copies SOURCE's bytes from `pending.from` up to `to` into `w`, in pieces of at most 4 MiB.
fn flush_pending(
    source: &Counting,
    pending: &mut Pending,
    to: u64,
    w: &mut impl Write,
) -> Result<()> {
    const PIECE: u64 = 4 << 20;
    let mut at = pending.from;
    let mut buf = Vec::new();
    while at < to {
        let len = (to - at).min(PIECE) as usize;
        buf.resize(len, 0);
        source
            .read_exact_at(&mut buf, at)
            .with_context(|| format!("reading {len} bytes at offset {at} of SOURCE"))?;
        w.write_all(&buf).context("writing")?;
        at += len as u64;
    }
    *pending = Pending { from: to, to };
    Ok(())
}

/// Decodes the copy in `file` and checks it against SOURCE: the same header and index, every
/// block against SOURCE's digest table, the content against the trailer's digest.
fn check_copy(file: File, image: &Image, threads: usize) -> Result<()> {
    let options = OpenOptions {
        cache_bytes: 0,
        readahead: 0,
        ..OpenOptions::default()
    };
    let copy = Image::open_source(Box::new(FileSource::new(file)), "NEW", &options)?;
    if copy.index().blocks() != image.index().blocks() || copy.file_len() != image.file_len() {
        bail!("its index differs");
    }
    let table = image.digest_table().ok().flatten();
    let trailer = image
        .trailer()
        .filter(|_| image.trailer_problem().is_none())
        .and_then(|t| {
            let hasher =
                ContentHasher::new(t.digest_algorithm, t.original_len, image.block_size())?;
            Some((t, hasher))
        });
    let bs = u64::from(image.block_size());
    let zeros = vec![0u8; bs as usize];
    let (trailer, mut hasher) = trailer.unzip();
    let pass = ParallelOptions {
        threads,
        skip_zero: true,
    };
    copy.par_blocks_ordered(pass, |block, decoded| {
        let data = match decoded.map_err(|e| anyhow!(e))? {
            Decoded::Zero => &zeros[..],
            Decoded::Data(data) => data,
        };
        let hash = hasher.as_mut().and_then(|h| h.update_block(data));
        if let Some(table) = &table {
            let expected = table.digests.get(block as usize);
            let actual = table
                .algorithm
                .digest_reusing(data, image.block_size(), hash.as_ref());
            if expected != Some(&actual) {
                bail!("block {block} does not match SOURCE's block-digest table");
            }
        }
        Ok(())
    })?;
    if let (Some(trailer), Some(hasher)) = (trailer, hasher) {
        if hasher.finalize()[..] != trailer.digest[..] {
            bail!(
                "its content does not match the {} SOURCE's trailer records",
                trailer.digest_algorithm.name()
            );
        }
    }
    Ok(())
}

/// Prints the summary: a line on standard error, or JSON on standard output.
fn report(args: &Args, image: &Image, stats: &Stats) -> Result<()> {
    let ratio = match stats.source_block_bytes {
        0 => None,
        n => Some(stats.source_bytes as f64 / n as f64),
    };
    if args.json {
        let value = json!({
            "source": args.source,
            "output": args.output.display().to_string(),
            "seed": args.seed.display().to_string(),
            "image_len": image.file_len(),
            "num_blocks": image.num_blocks(),
            "digest_table": stats.table,
            "stored_checks": stats.stored_checks,
            "blocks_from_seed": stats.seed_blocks,
            "bytes_from_seed": stats.seed_bytes,
            "blocks_from_source": stats.source_blocks,
            "block_bytes_from_source": stats.source_block_bytes,
            "source_bytes_read": stats.source_bytes,
            "seed_blocks_rejected": stats.rejected,
            "read_ratio": ratio,
        });
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else if !args.quiet {
        eprintln!(
            "mkmodule: {} -> {}: {} blocks from {} ({}), {} read from {} ({} blocks, {} of \
             them), checked",
            args.source,
            args.output.display(),
            stats.seed_blocks,
            args.seed.display(),
            human_bytes(stats.seed_bytes),
            human_bytes(stats.source_bytes),
            args.source,
            stats.source_blocks,
            human_bytes(stats.source_block_bytes),
        );
    }
    Ok(())
}
