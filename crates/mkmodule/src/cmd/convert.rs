//! `mkmodule convert`: write an image's content as another dialect, codec or block size.
//!
//! The new image is what `create` makes of the image's content (what `extract` gives: the
//! original length when the trailer records it) with the same options, byte for byte. The
//! content is decoded and packed again, and every block whose compressed bytes the new options
//! would write the same way (the same codec and level and block size, in a dialect that writes
//! that codec's blocks the same way, docs/FORMAT.md §12.5) is copied instead of compressed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mkmodule_image::{ExposedSize, Image, OpenOptions};
use mkmodule_pack::{PackSummary, ProgressEvent, Reuse};
use serde_json::json;

use super::commit::{plan, style_of, write_image, NewImageArgs};
use super::create::reuse::{compressed_blocks, warn_rejected};
use crate::output::Destination;
use crate::progress::{Progress, ProgressArg, Unit};
use crate::units::human_bytes;

/// Arguments of `mkmodule convert`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Blocks are copied when the codec, level and block size stay and both formats write that codec's
blocks the same way (v2, v4 and uzip-zlib share zlib blocks); the rest are compressed again.
The result is the image `create` makes of `extract IMAGE` with the same options.
Examples:
  mkmodule convert freebsd.uzip -o portable.cloop --format v2
  mkmodule convert KNOPPIX -o KNOPPIX.v4f --format v4-footer
  mkmodule convert KNOPPIX -o KNOPPIX.xz --format v4 -c xz")]
pub struct Args {
    /// The image to convert.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// The new image (written under a temporary name, renamed when complete).
    #[arg(short, long, value_name = "NEW_IMAGE")]
    output: PathBuf,

    #[command(flatten)]
    new: NewImageArgs,

    /// Replace NEW_IMAGE if it exists.
    #[arg(short, long)]
    force: bool,

    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    progress: ProgressArg,
}

/// Runs `mkmodule convert`.
pub fn run(args: Args) -> Result<()> {
    let destination = Destination::of_new_image(&args.output, &[&args.image], args.force)?;
    let options = OpenOptions {
        exposed_size: ExposedSize::Original,
        ..OpenOptions::default()
    };
    let image = Image::open_with(&args.image, &options)
        .with_context(|| format!("opening {}", args.image.display()))?;
    let size = image.size();
    let plan = plan(&args.new, Some(&style_of(&image)), size)?;
    let reuse = match Reuse::new(&image, &plan, plan.threads) {
        Ok(reuse) => Some(reuse),
        Err(e) => {
            if !args.quiet {
                eprintln!(
                    "mkmodule: compressing every block: the blocks of {} cannot be copied: {e}",
                    args.image.display()
                );
            }
            None
        }
    };
    let warn = |event| {
        if let ProgressEvent::ReuseRejected { block, old_block } = event {
            warn_rejected(block, old_block, Some(&args.image));
        }
    };
    let mode = args.progress.mode(args.quiet);
    let bar = Progress::new(mode, "convert", "convert", Unit::Bytes, Some(size));
    let reader = bar.wrap_read(image.reader());
    let summary = write_image(
        reader,
        destination,
        (&args.output, args.force),
        &plan,
        reuse.as_ref(),
        &warn,
    )?;
    bar.finish();
    report(&args, &image, &summary, reuse.is_some())
}

/// Prints the summary: a line on standard error, or JSON on standard output.
fn report(args: &Args, image: &Image, summary: &PackSummary, reused: bool) -> Result<()> {
    if args.json {
        let value = json!({
            "image": args.image.display().to_string(),
            "output": args.output.display().to_string(),
            "from_dialect": image.dialect().name(),
            "dialect": summary.dialect.name(),
            "block_size": summary.block_size,
            "num_blocks": summary.num_blocks,
            "input_len": summary.input_len,
            "image_len": summary.image_len,
            "zero_blocks": summary.zero_blocks,
            "blocks_copied": summary.reused_blocks,
            "blocks_compressed": compressed_blocks(summary),
            "blocks_copy_rejected": summary.rejected_blocks,
            "copying": reused,
        });
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(());
    }
    if !args.quiet {
        eprintln!(
            "mkmodule: {} ({}) -> {}: {} image, {} blocks of {}, {} for {}; {} blocks copied, \
             {} compressed, {} all zeros",
            args.image.display(),
            image.dialect(),
            args.output.display(),
            summary.dialect,
            summary.num_blocks,
            human_bytes(u64::from(summary.block_size)),
            human_bytes(summary.image_len),
            human_bytes(summary.input_len),
            summary.reused_blocks,
            compressed_blocks(summary),
            summary.zero_blocks
        );
    }
    Ok(())
}
