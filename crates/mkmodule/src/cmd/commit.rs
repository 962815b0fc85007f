//! `mkmodule commit`: fold a copy-on-write overlay (from `mkmodule serve --cow FILE`) and its
//! image into a new image.

use std::collections::HashMap;
use std::fs::File;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mkmodule_blockdev::{BlockDevice, DeviceReader, FileDevice};
use mkmodule_codec::CodecKind;
use mkmodule_format::{BlockKind, Dialect, FormatError};
use mkmodule_image::{Image, ImageDevice, ImageError, OpenOptions};
use mkmodule_overlay::{Overlay, OverlayOptions};
use mkmodule_pack::{
    check_block_size, choose_dialect, pack, CodecChoice, FormatChoice, PackOptions, Sink,
};

use crate::progress::bytes_bar;
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

    /// Dialect of the new image: auto, v2, v4, v4-footer, uzip, or a full name such as
    /// uzip-zstd (default: the image's own; a raw IMAGE gives v2).
    #[arg(long, value_name = "FORMAT")]
    format: Option<FormatChoice>,

    /// Block codec: zlib, xz, lz4, zstd, none, best, or CODEC:LEVEL (default: the image's
    /// codec at mkmodule's default level).
    #[arg(short = 'c', long, value_name = "CODEC")]
    codec: Option<CodecChoice>,

    /// Uncompressed block size, a multiple of 512 up to 1M (default: the image's).
    #[arg(short = 'B', long, value_name = "SIZE", value_parser = parse_size)]
    block_size: Option<u64>,

    /// Compressor threads (default: one per core).
    #[arg(short = 'j', long, value_name = "N")]
    threads: Option<usize>,

    /// Leave out mkmodule's trailer (input length and SHA-256).
    #[arg(long)]
    no_trailer: bool,

    /// Replace NEW_IMAGE if it exists.
    #[arg(short, long)]
    force: bool,

    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

/// What the base image is written with, as far as the new image should follow it.
struct BaseStyle {
    dialect: Dialect,
    codec: Option<CodecKind>,
    block_size: u32,
}

/// Opens IMAGE as a cloop image (or a raw file) for use as the overlay's base.
fn open_base(path: &Path) -> Result<(Arc<dyn BlockDevice>, Option<BaseStyle>)> {
    match Image::open_with(path, &OpenOptions::default()) {
        Ok(image) => {
            let mut counts: HashMap<CodecKind, u64> = HashMap::new();
            for block in image.index().blocks() {
                if block.kind == BlockKind::Stored {
                    *counts.entry(block.codec).or_default() += 1;
                }
            }
            let codec = counts
                .into_iter()
                .filter(|(k, _)| !matches!(k, CodecKind::None | CodecKind::Lzo))
                .max_by_key(|&(k, n)| (n, k as u8))
                .map(|(k, _)| k);
            let style = BaseStyle {
                dialect: image.dialect(),
                codec,
                block_size: image.block_size(),
            };
            Ok((Arc::new(ImageDevice::new(Arc::new(image))), Some(style)))
        }
        Err(ImageError::Format(FormatError::NotCloop { .. })) => {
            let raw = FileDevice::open(path)
                .with_context(|| format!("opening {} as a raw image", path.display()))?;
            Ok((Arc::new(raw), None))
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// The pack options: the base's dialect, codec and block size unless told otherwise.
fn plan(args: &Args, style: Option<&BaseStyle>, size: u64) -> Result<PackOptions> {
    let mut options = PackOptions::portable();
    let format = match (args.format, style) {
        (Some(format), _) => format,
        // mkmodule writes v4-footer where the image has the unwritten v2-footer.
        (None, Some(s)) if s.dialect == Dialect::LinuxV2Footer => FormatChoice::V4Footer,
        (None, Some(s)) => FormatChoice::Dialect(s.dialect),
        (None, None) => FormatChoice::V2,
    };
    let codec = match (args.codec, style.and_then(|s| s.codec)) {
        (Some(codec), _) => codec,
        (None, Some(kind)) => CodecChoice::default_for(kind),
        (None, None) => options.codec,
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
    options.plan()?;
    Ok(options)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs `mkmodule commit`.
pub fn run(args: Args) -> Result<()> {
    for input in [&args.image, &args.overlay] {
        if same_file(&args.output, input) {
            bail!(
                "the new image {} would replace its input {}: write it elsewhere",
                args.output.display(),
                input.display()
            );
        }
    }
    if args.output.exists() && !args.force {
        bail!(
            "{} exists: pass --force to replace it",
            args.output.display()
        );
    }
    let (base, style) = open_base(&args.image)?;
    let size = base.size();
    let options = plan(&args, style.as_ref(), size)?;
    let overlay = Overlay::open(
        &args.overlay,
        base,
        &OverlayOptions::default().read_only(true),
    )
    .with_context(|| format!("opening the overlay {}", args.overlay.display()))?;
    let stats = overlay.stats();
    let file_name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = args
        .output
        .with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<mkmodule_pack::PackSummary> {
        let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let bar = bytes_bar(Some(size), "commit", args.quiet);
        // The merged view of the overlay as a stream, for the packer.
        let reader = bar.wrap_read(DeviceReader::new(&overlay));
        let summary = pack(reader, Sink::Seekable(&mut out), &options, &|_| {})
            .with_context(|| format!("writing {}", args.output.display()))?;
        bar.finish_and_clear();
        out.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, &args.output)
            .with_context(|| format!("renaming {} to {}", tmp.display(), args.output.display()))?;
        Ok(summary)
    })();
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
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
    Ok(())
}
