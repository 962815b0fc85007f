//! `mkmodule extract`: decompress an image back to the raw filesystem or disk image.
//!
//! Blocks are decoded on every core. A regular-file output is written at block offsets from the
//! decoding threads, with holes for zero blocks, into a temporary file next to OUT
//! ([`crate::output::OutputFile`]) that is synced and renamed over OUT only when everything
//! succeeded: an error or a signal never leaves a partial OUT behind. Standard output, pipes and
//! devices get the blocks in order.

use std::fs::{File, OpenOptions as FileOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use mkmodule_blockdev::is_zero;
use mkmodule_image::{Decoded, ExposedSize, Image, OpenOptions, ParallelOptions};

use crate::output::{Destination, OutputFile, Replace};
use crate::progress::bytes_bar;

/// Arguments of `mkmodule extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to decompress.
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
    let image = Image::open_with(&args.image, &options)
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
    let bar = bytes_bar(Some(image.size()), "extracting", args.quiet);
    let result = if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        if stdout.is_terminal() && !args.force {
            bail!("refusing to write binary data to a terminal: redirect it, or use --force");
        }
        write_in_order(&image, pass, &mut stdout.lock(), &bar, "standard output")
    } else {
        extract_to_path(&image, &args, pass, &bar)
    };
    bar.finish_and_clear();
    result.with_context(|| format!("extracting {}", args.image.display()))
}

/// Writes to OUT: a new regular file through a temporary file, or an existing device in place.
fn extract_to_path(
    image: &Image,
    args: &Args,
    pass: ParallelOptions,
    bar: &ProgressBar,
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
            write_in_order(image, pass, &mut file, bar, &name)?;
            return file
                .flush()
                .with_context(|| format!("writing {}", out.display()));
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
    write_at_offsets(image, pass, temp.file(), !args.no_sparse, bar, &name)?;
    temp.commit(&name)
}

/// Decodes on all threads and writes each block at its offset; zero blocks become holes when
/// `sparse`. The file ends up exactly `image.size()` bytes long. Errors name the block that failed to decode, or `name` and the
/// byte offset of a failed write.
fn write_at_offsets(
    image: &Image,
    pass: ParallelOptions,
    file: &File,
    sparse: bool,
    bar: &ProgressBar,
    name: &str,
) -> Result<()> {
    let size = image.size();
    let bs = u64::from(image.block_size());
    let zeros = if sparse {
        Vec::new()
    } else {
        vec![0u8; bs as usize]
    };
    let pass = ParallelOptions {
        skip_zero: sparse,
        ..pass
    };
    image.par_blocks(pass, |block, decoded| -> Result<()> {
        let at = u64::from(block) * bs;
        if at >= size {
            return Ok(());
        }
        let take = (size - at).min(bs) as usize;
        let data = match decoded? {
            Decoded::Zero if sparse => None,
            Decoded::Zero => Some(&zeros[..take]),
            Decoded::Data(data) if sparse && is_zero(&data[..take]) => None,
            Decoded::Data(data) => Some(&data[..take]),
        };
        if let Some(data) = data {
            file.write_all_at(data, at)
                .with_context(|| format!("writing {name} at byte {at}"))?;
        }
        bar.inc(take as u64);
        Ok(())
    })?;
    file.set_len(size)
        .with_context(|| format!("setting the length of {name} to {size} bytes"))?;
    Ok(())
}

/// Decodes on all threads and writes the blocks in order to `out`.
fn write_in_order(
    image: &Image,
    pass: ParallelOptions,
    out: &mut impl Write,
    bar: &ProgressBar,
    name: &str,
) -> Result<()> {
    let size = image.size();
    let bs = u64::from(image.block_size());
    let zeros = vec![0u8; bs as usize];
    image.par_blocks_ordered(pass, |block, decoded| -> Result<()> {
        let at = u64::from(block) * bs;
        if at >= size {
            return Ok(());
        }
        let take = (size - at).min(bs) as usize;
        let data = match decoded? {
            Decoded::Zero => &zeros[..take],
            Decoded::Data(data) => &data[..take],
        };
        out.write_all(data)
            .with_context(|| format!("writing {name} at byte {at}"))?;
        bar.inc(take as u64);
        Ok(())
    })?;
    out.flush().with_context(|| format!("writing {name}"))?;
    Ok(())
}
