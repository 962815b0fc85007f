//! `mkmodule extract`: decompress an image back to the raw filesystem or disk image.
//!
//! Blocks are decoded on every core. A regular-file output is written at block offsets from the
//! decoding threads, with holes for zero blocks, into a temporary file next to OUT
//! ([`crate::output::OutputFile`]) that is synced and renamed over OUT only when everything
//! succeeded: an error or a signal never leaves a partial OUT behind. Standard output, pipes and
//! devices get the blocks in order.
//!
//! When the image's trailer records a digest of the original content (docs/FORMAT.md §12.6),
//! what is written is hashed on the way out, in order, zero blocks and holes included, and a
//! mismatch fails with exit status 3 like `verify`: a new OUT is then removed, and a device or
//! standard output is told that what it received is wrong. `--no-verify` skips the check.

use std::fs::{File, OpenOptions as FileOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mkmodule_blockdev::is_zero;
use mkmodule_format::ContentHasher;
use mkmodule_image::{Decoded, ExposedSize, Image, OpenOptions, ParallelOptions};

use super::{ExitStatus, EXIT_DAMAGED};
use crate::output::{Destination, OutputFile, Replace};
use crate::progress::{Progress, ProgressArg, Unit};

/// Arguments of `mkmodule extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to decompress.
    ///
    /// A file, or an http:// or https:// URL.
    pub image: PathBuf,
    /// Where to write the raw contents: a file, a device, or `-` for standard output.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Write blocks × block size bytes even when the trailer records the original length.
    #[arg(long)]
    pub padded: bool,
    /// Leave holes for zero blocks in a regular-file OUT (the default).
    #[arg(long, overrides_with = "no_sparse")]
    pub sparse: bool,
    /// Write zero blocks out in full.
    #[arg(long, overrides_with = "sparse")]
    pub no_sparse: bool,
    /// Decoding threads (default: one per core).
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,
    /// Replace OUT if it is an existing file; allow binary output to a terminal.
    #[arg(short, long)]
    pub force: bool,
    /// Show no progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: ProgressArg,
    /// Do not check what is written against the digest the trailer records.
    #[arg(long)]
    pub no_verify: bool,

    #[command(flatten)]
    pub remote: crate::remote::RemoteArgs,
}

/// The trailer's digest of the content as it is written, compared at the end with the
/// trailer's.
struct ContentCheck {
    hasher: ContentHasher,
    expected: Vec<u8>,
}

impl ContentCheck {
    /// A check against the trailer's digest, or `None` when there is none to check (no trailer,
    /// a damaged one, no digest in it) or `--no-verify` asked for none.
    fn for_image(image: &Image, args: &Args) -> Option<ContentCheck> {
        if args.no_verify || image.original_size().is_none() {
            return None;
        }
        let trailer = image.trailer()?;
        Some(ContentCheck {
            hasher: ContentHasher::new(
                trailer.digest_algorithm,
                trailer.original_len,
                image.block_size(),
            )?,
            expected: trailer.digest.to_vec(),
        })
    }

    /// Hashes the next `data` written (only as far as the original length reaches: the padding
    /// of `--padded` is not hashed).
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// Hashes the next `len` zero bytes written (a zero block, or a hole).
    fn update_zeros(&mut self, len: usize) {
        self.hasher.update_zeros(len as u64);
    }

    /// Compares the digest with the trailer's: a mismatch is exit status 3, with both digests
    /// and `fate`, what became of what was written.
    fn finish(self, name: &str, fate: &str) -> Result<()> {
        let algorithm = self.hasher.algorithm().name();
        let actual = self.hasher.finalize();
        if actual.as_slice() == self.expected.as_slice() {
            return Ok(());
        }
        Err(ExitStatus {
            code: EXIT_DAMAGED,
            message: format!(
                "the image is damaged: the trailer records {algorithm} {}, the extracted \
                 content has {}; {name} {fate}",
                hex(&self.expected),
                hex(&actual)
            ),
        }
        .into())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `mkmodule extract`.
pub fn run(args: Args) -> Result<()> {
    let options = OpenOptions {
        cache_bytes: 0,
        readahead: 0,
        exposed_size: if args.padded {
            ExposedSize::Padded
        } else {
            ExposedSize::Original
        },
        ..OpenOptions::default()
    };
    let image = crate::open::open_image(&args.image, &options, &args.remote)
        .with_context(|| format!("opening {}", args.image.display()))?;
    if let (false, Some(problem)) = (args.padded, image.trailer_problem()) {
        eprintln!(
            "mkmodule: warning: {}: {}; writing the padded size",
            args.image.display(),
            mkmodule_blockdev::chain_text(problem)
        );
    }
    let pass = ParallelOptions {
        threads: args.threads.unwrap_or(0),
        skip_zero: true,
    };
    let mode = args.progress.mode(args.quiet);
    let bar = Progress::new(mode, "extract", "extract", Unit::Bytes, Some(image.size()));
    let check = ContentCheck::for_image(&image, &args);
    let result = if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        if stdout.is_terminal() && !args.force {
            bail!("refusing to write binary data to a terminal: redirect it, or use --force");
        }
        let name = "standard output";
        write_in_order(&image, pass, &mut stdout.lock(), &bar, name, check)
    } else {
        extract_to_path(&image, &args, pass, &bar, check)
    };
    if result.is_ok() {
        bar.finish();
    }
    result.with_context(|| format!("extracting {}", args.image.display()))
}

/// What became of in-place output whose content does not match the trailer's digest.
const WRONG_IN_PLACE: &str = "received the wrong content";

/// Writes to OUT: a new regular file through a temporary file, or an existing device in place.
fn extract_to_path(
    image: &Image,
    args: &Args,
    pass: ParallelOptions,
    bar: &Progress,
    check: Option<ContentCheck>,
) -> Result<()> {
    let out = &args.output;
    match Destination::of(out) {
        Destination::Directory => bail!("{} is a directory", out.display()),
        Destination::RegularFile if !args.force => {
            bail!("{} exists: use --force to replace it", out.display())
        }
        Destination::BlockDevice | Destination::SpecialFile => {
            // A device or a FIFO: write into it in order; holes make no sense there.
            let mut file = FileOptions::new()
                .write(true)
                .open(out)
                .with_context(|| format!("opening {}", out.display()))?;
            let name = out.display().to_string();
            return write_in_order(image, pass, &mut file, bar, &name, check);
        }
        Destination::Missing | Destination::RegularFile => {}
    }
    let replace = if args.force {
        Replace::Existing
    } else {
        Replace::Never
    };
    let temp = OutputFile::create(out, replace)?;
    let name = out.display().to_string();
    let check = write_at_offsets(image, pass, temp.file(), !args.no_sparse, bar, &name, check)?;
    if let Some(check) = check {
        // Dropping the uncommitted temporary file removes it.
        check.finish(&name, "was not written (the partial output was removed)")?;
    }
    temp.commit(&name)
}

/// What one block contributes to the output.
enum Piece<'a> {
    /// Decoded bytes, cut to the output's length.
    Data(&'a [u8]),
    /// A known-zero block: this many zero bytes.
    Zeros(usize),
}

/// The offset and [`Piece`] block `block` contributes to the output, `None` past its end.
fn block_bytes<'a>(image: &Image, block: u32, decoded: Decoded<'a>) -> Option<(u64, Piece<'a>)> {
    let size = image.size();
    let bs = u64::from(image.block_size());
    let at = u64::from(block) * bs;
    if at >= size {
        return None;
    }
    let take = (size - at).min(bs) as usize;
    Some(match decoded {
        Decoded::Zero => (at, Piece::Zeros(take)),
        Decoded::Data(data) => (at, Piece::Data(&data[..take])),
    })
}

/// Decodes on all threads and writes each block at its offset; zero blocks become holes when
/// `sparse`. The file ends up exactly `image.size()` bytes long. With a `check`, blocks are
/// written in order and hashed as they are, and the check is handed back to be finished.
/// Errors name the block that failed to decode, or `name` and the byte offset of a failed write.
fn write_at_offsets(
    image: &Image,
    pass: ParallelOptions,
    file: &File,
    sparse: bool,
    bar: &Progress,
    name: &str,
    mut check: Option<ContentCheck>,
) -> Result<Option<ContentCheck>> {
    let size = image.size();
    let zeros = vec![0u8; image.block_size() as usize];
    let pass = ParallelOptions {
        skip_zero: sparse,
        ..pass
    };
    let write =
        |block: u32, decoded: Decoded<'_>, check: Option<&mut ContentCheck>| -> Result<()> {
            let Some((at, bytes)) = block_bytes(image, block, decoded) else {
                return Ok(());
            };
            let (data, len) = match bytes {
                Piece::Data(data) if sparse && is_zero(data) => (None, data.len()),
                Piece::Data(data) => (Some(data), data.len()),
                Piece::Zeros(len) if sparse => (None, len),
                Piece::Zeros(len) => (Some(&zeros[..len]), len),
            };
            if let Some(check) = check {
                match data {
                    Some(data) => check.update(data),
                    None => check.update_zeros(len),
                }
            }
            if let Some(data) = data {
                file.write_all_at(data, at)
                    .with_context(|| format!("writing {name} at byte {at}"))?;
            }
            bar.inc(len as u64);
            Ok(())
        };
    match check.as_mut() {
        // The digest needs the content in order: the sink runs on this thread, in block order,
        // while the blocks are decoded on the others.
        Some(check) => image.par_blocks_ordered(pass, |block, decoded| {
            write(block, decoded?, Some(&mut *check))
        })?,
        None => image.par_blocks(pass, |block, decoded| write(block, decoded?, None))?,
    }
    file.set_len(size)
        .with_context(|| format!("setting the length of {name} to {size} bytes"))?;
    Ok(check)
}

/// Decodes on all threads and writes the blocks in order to `out`, then checks the content
/// against the trailer's digest when there is a `check`.
fn write_in_order(
    image: &Image,
    pass: ParallelOptions,
    out: &mut impl Write,
    bar: &Progress,
    name: &str,
    mut check: Option<ContentCheck>,
) -> Result<()> {
    let zeros = vec![0u8; image.block_size() as usize];
    image.par_blocks_ordered(pass, |block, decoded| -> Result<()> {
        let Some((at, bytes)) = block_bytes(image, block, decoded?) else {
            return Ok(());
        };
        let data = match bytes {
            Piece::Data(data) => data,
            Piece::Zeros(len) => &zeros[..len],
        };
        if let Some(check) = check.as_mut() {
            check.update(data);
        }
        out.write_all(data)
            .with_context(|| format!("writing {name} at byte {at}"))?;
        bar.inc(data.len() as u64);
        Ok(())
    })?;
    out.flush().with_context(|| format!("writing {name}"))?;
    match check {
        Some(check) => check.finish(name, WRONG_IN_PLACE),
        None => Ok(()),
    }
}
