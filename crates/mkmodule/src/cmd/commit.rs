//! `mkmodule commit`: fold a copy-on-write overlay (from `mkmodule serve --cow FILE`) and its
//! image into a new image.
//!
//! When the new image has the base image's format, block size and encoder (the default when the
//! base records its encoder), the compressed bytes of every block the overlay left alone are
//! copied from the base instead of compressed again (docs/FORMAT.md §12.5); the image is the
//! same either way.

use std::fs::{File, OpenOptions as FileOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mkmodule_blockdev::DeviceReader;
use mkmodule_codec::{CodecKind, CodecSpec};
use mkmodule_format::{BlockEncoding, Dialect};
use mkmodule_image::{Image, OpenOptions};
use mkmodule_overlay::OverlayOptions;
use mkmodule_pack::{
    check_block_size, choose_dialect, pack_with_reuse, CodecChoice, FormatChoice, OutputKind,
    PackOptions, PackSummary, Plan, ProgressEvent, Reuse, Sink, SinkKind,
};

use crate::open::{main_codec, open_device, open_overlay, Found, OverlayStore};
use crate::output::{in_place_kind, Destination, OutputFile, Replace, SyncBehind};
use crate::progress::{Progress, ProgressArg, Unit};
use crate::units::{human_bytes, parse_size};

/// Arguments of `mkmodule commit`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The overlay must not be in use: stop the `mkmodule serve --cow OVERLAY` that writes it first.
Example:
  mkmodule serve --cow root.cow KNOPPIX      (clients write; stop the server)
  mkmodule commit KNOPPIX root.cow -o KNOPPIX.new
  qemu-img convert -f cloop -O raw KNOPPIX.new root.raw")]
pub struct Args {
    /// The image the overlay was made over (a cloop-family image or a raw file).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// The overlay file written by `mkmodule serve --cow OVERLAY`.
    #[arg(value_name = "OVERLAY")]
    overlay: PathBuf,

    /// The new image (written under a temporary name, renamed when complete).
    #[arg(short, long, value_name = "NEW_IMAGE")]
    output: PathBuf,

    #[command(flatten)]
    new: NewImageArgs,

    /// Replace NEW_IMAGE if it exists.
    #[arg(short, long)]
    force: bool,

    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    progress: ProgressArg,
}

/// How the new image of `commit` and `convert` is written; by default as the image it comes from.
#[derive(Debug, clap::Args)]
pub(crate) struct NewImageArgs {
    /// Dialect of the new image: auto, v2, v4, v4-footer, uzip, or a full name such as
    /// uzip-zstd (default: the image's own; a raw IMAGE gives v2).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<FormatChoice>,

    /// Block codec (default: the image's encoder when its trailer records it, else the image's
    /// codec at mkmodule's default level).
    #[arg(
        short = 'c',
        long,
        value_name = "CODEC",
        help = commit_codec_help(),
        long_help = commit_codec_help()
    )]
    pub codec: Option<CodecChoice>,

    /// Uncompressed block size, a multiple of 512 up to 1M (default: the image's).
    #[arg(short = 'B', long, value_name = "SIZE", value_parser = parse_size)]
    pub block_size: Option<u64>,

    /// Compressor threads (default: one per core).
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,

    /// Leave out mkmodule's trailer (input length and digest).
    #[arg(long)]
    pub no_trailer: bool,
}

/// What the base image is written with, as far as the new image should follow it.
pub(crate) struct BaseStyle {
    dialect: Dialect,
    codec: Option<CodecKind>,
    /// The encoder the base's trailer records (codec and level, or best).
    encoding: Option<BlockEncoding>,
    block_size: u32,
}

/// What the new image follows of a base that is a cloop image.
fn base_style(found: &Found) -> Option<BaseStyle> {
    match found {
        Found::Image(image) => Some(style_of(image)),
        Found::Raw => None,
    }
}

/// How `image` is written, as far as a new image made from it follows it.
pub(crate) fn style_of(image: &Image) -> BaseStyle {
    BaseStyle {
        dialect: image.dialect(),
        codec: main_codec(image),
        encoding: image
            .trailer()
            .filter(|_| image.trailer_problem().is_none())
            .and_then(|t| t.extension.encoding),
        block_size: image.block_size(),
    }
}

/// `commit`'s `--codec` help: create's list, and the default.
fn commit_codec_help() -> String {
    format!(
        "{} Default: the image's encoder when its trailer records it, else the image's codec at \
         mkmodule's default level.",
        super::create::codec_short_help()
    )
}

/// The packer's plan: the base's dialect, codec and block size unless told otherwise.
pub(crate) fn plan(args: &NewImageArgs, style: Option<&BaseStyle>, size: u64) -> Result<Plan> {
    let mut options = PackOptions::portable();
    let format = match (args.format, style) {
        (Some(format), _) => format,
        // mkmodule writes v4-footer where the image has the unwritten v2-footer.
        (None, Some(s)) if s.dialect == Dialect::LinuxV2Footer => FormatChoice::V4Footer,
        (None, Some(s)) => FormatChoice::Dialect(s.dialect),
        (None, None) => FormatChoice::V2,
    };
    let recorded = style.and_then(|s| s.encoding).and_then(codec_choice);
    let codec = match (args.codec, recorded, style.and_then(|s| s.codec)) {
        (Some(codec), _, _) => codec,
        (None, Some(codec), _) => codec,
        (None, None, Some(kind)) => CodecChoice::default_for(kind),
        (None, None, None) => options.codec,
    };
    let (dialect, codec) = match choose_dialect(format, codec, false, false) {
        Ok(chosen) => chosen,
        // The image's codec does not fit a format asked for: take that format's own codec.
        Err(_) if args.codec.is_none() && args.format.is_some() => {
            let (dialect, _) = choose_dialect(format, options.codec, false, false)
                .or_else(|_| choose_dialect(format, CodecChoice::Best, false, false))?;
            let kind = dialect
                .spec()
                .codecs
                .iter()
                .copied()
                .find(|k| !matches!(k, CodecKind::None | CodecKind::Lzo))
                .unwrap_or(CodecKind::Zlib);
            (dialect, CodecChoice::default_for(kind))
        }
        Err(e) => return Err(e.into()),
    };
    options.dialect = dialect;
    options.codec = codec;
    options.block_size = match (args.block_size, style) {
        (Some(n), _) => check_block_size(n)?,
        (None, Some(s)) => s.block_size,
        (None, None) => options.block_size,
    };
    if let Some(threads) = args.threads {
        options.threads = threads.max(1);
    }
    options.trailer = !args.no_trailer;
    options.input_len = Some(size);
    Ok(options.plan()?)
}

/// The `--codec` that writes blocks as `encoding` did, when this build can.
fn codec_choice(encoding: BlockEncoding) -> Option<CodecChoice> {
    match encoding {
        BlockEncoding::Best => Some(CodecChoice::Best),
        BlockEncoding::Fixed { codec, level } => {
            let spec = match mkmodule_codec::level_range(codec).is_some() {
                true => CodecSpec::new(codec, i32::from(level)).ok()?,
                false => CodecSpec::with_default_level(codec),
            };
            Some(CodecChoice::Fixed(spec))
        }
    }
}

/// Runs `mkmodule commit`.
pub fn run(args: Args) -> Result<()> {
    let destination =
        Destination::of_new_image(&args.output, &[&args.image, &args.overlay], args.force)?;
    let base = open_device(&args.image, &OpenOptions::default(), &Default::default())?;
    let size = base.device.size();
    let plan = plan(&args.new, base_style(&base.found).as_ref(), size)?;
    let old = match &base.found {
        Found::Image(image) => Some(std::sync::Arc::clone(image)),
        Found::Raw => None,
    };
    let warn = |event| {
        if let ProgressEvent::ReuseRejected { block, old_block } = event {
            super::create::reuse::warn_rejected(block, old_block, Some(&args.image));
        }
    };
    let reuse = old.as_deref().and_then(|image| {
        Reuse::new(image, &plan, plan.threads)
            .map_err(|e| {
                if !args.quiet {
                    eprintln!(
                        "mkmodule: compressing every block: the blocks of {} cannot be copied: \
                         {e}",
                        args.image.display()
                    );
                }
            })
            .ok()
    });
    let overlay = open_overlay(
        base.device,
        OverlayStore::ExistingReadOnly(&args.overlay),
        &OverlayOptions::default(),
    )?;
    let stats = overlay.stats();
    let mode = args.progress.mode(args.quiet);
    let bar = Progress::new(mode, "commit", "commit", Unit::Bytes, Some(size));
    // The merged view of the overlay as a stream, for the packer.
    let reader = bar.wrap_read(DeviceReader::new(overlay.as_ref()));
    let summary = write_image(
        reader,
        destination,
        (&args.output, args.force),
        &plan,
        reuse.as_ref(),
        &warn,
    )?;
    bar.finish();
    eprintln!(
        "mkmodule: {} + {} ({} chunks of {} written, {} zeroed) -> {}: {} image, {} blocks of \
         {}, {} for {}",
        args.image.display(),
        args.overlay.display(),
        stats.data_chunks,
        human_bytes(u64::from(stats.chunk_size)),
        stats.zero_chunks,
        args.output.display(),
        summary.dialect,
        summary.num_blocks,
        human_bytes(u64::from(summary.block_size)),
        human_bytes(summary.image_len),
        human_bytes(summary.input_len)
    );
    if reuse.is_some() && !args.quiet {
        eprintln!("{}", super::create::reuse::line(&summary, &args.image));
    }
    Ok(())
}

/// Packs into `output`: in place when it is a device or a FIFO (never replaced), else into a
/// new file renamed into place when complete (replacing an existing one only when `force`).
pub(crate) fn write_image(
    reader: impl Read + Send,
    destination: Destination,
    (output, force): (&Path, bool),
    plan: &Plan,
    reuse: Option<&Reuse<'_>>,
    warn: &dyn Fn(ProgressEvent),
) -> Result<PackSummary> {
    let name = output.display().to_string();
    match destination {
        Destination::BlockDevice | Destination::SpecialFile => {
            let mut out = FileOptions::new()
                .write(true)
                .open(output)
                .with_context(|| format!("opening {name}"))?;
            write_in_place(reader, &mut out, plan, &name, reuse, warn)
        }
        _ => write_new_file(reader, (output, force), plan, &name, reuse, warn),
    }
}

/// Packs into a new file beside `output` (replaced when `force`), renamed into place when
/// complete.
fn write_new_file(
    reader: impl Read + Send,
    (output, force): (&Path, bool),
    plan: &Plan,
    name: &str,
    reuse: Option<&Reuse<'_>>,
    warn: &dyn Fn(ProgressEvent),
) -> Result<PackSummary> {
    let replace = if force {
        Replace::Existing
    } else {
        Replace::Never
    };
    let mut temp = OutputFile::create(output, replace)?;
    let mut out = SyncBehind::new(temp.file_mut());
    let sink = match SinkKind::choose(plan, OutputKind::NewFile, name)? {
        SinkKind::Stream => Sink::Stream(&mut out),
        // The length is known: a header-first image is written in place.
        _ => Sink::Seekable(&mut out),
    };
    let summary = pack_with_reuse(reader, sink, plan, reuse, warn)
        .with_context(|| format!("writing {name}"))?;
    drop(out);
    temp.commit(name)?;
    Ok(summary)
}

/// Packs into an existing device or FIFO, in place.
fn write_in_place(
    reader: impl Read + Send,
    out: &mut File,
    plan: &Plan,
    name: &str,
    reuse: Option<&Reuse<'_>>,
    warn: &dyn Fn(ProgressEvent),
) -> Result<PackSummary> {
    let kind = in_place_kind(out);
    let summary = match SinkKind::choose(plan, kind, name)? {
        SinkKind::Seekable => pack_with_reuse(reader, Sink::Seekable(out), plan, reuse, warn),
        _ => pack_with_reuse(reader, Sink::Stream(out), plan, reuse, warn),
    }
    .with_context(|| format!("writing {name}"))?;
    out.flush().with_context(|| format!("writing {name}"))?;
    Ok(summary)
}
