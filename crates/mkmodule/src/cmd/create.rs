//! `mkmodule create`: compress a filesystem or disk image into a cloop-family image.
//!
//! Parse, then act: the arguments become a validated [`Job`] before a byte is read or written.
//! The image is written through [`crate::output::OutputFile`]: a temporary file in the output's
//! directory, synced and renamed into place only when complete; on an error or a signal (INT,
//! TERM, HUP) the temporary file is removed and the exit status is non-zero. Which sink the
//! packer writes through is pack's choice ([`SinkKind::choose`]).

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use mkmodule_format::DigestAlgorithm;
use mkmodule_pack::verity::{HashTreeBuilder, VerityTree};
use mkmodule_pack::{
    check_block_size, choose_dialect, pack_file, pack_with_reuse, pack_with_verity, CodecChoice,
    FormatChoice, OutputKind, PackError, PackOptions, PackSummary, Plan, ProgressEvent, Reuse,
    Sink, SinkKind, DEFAULT_ZLIB_LEVEL, DEFAULT_ZSTD_LEVEL, WRITTEN_DIALECTS,
};

pub(crate) mod reuse;
mod verity;

use crate::output::{in_place_kind, Destination, OutputFile, Replace, SyncBehind};
use crate::progress::{Progress, ProgressArg, ProgressMode, Unit};
use crate::units::{human_bytes, parse_size};

/// Arguments of `mkmodule create`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = after_help())]
pub struct Args {
    /// The filesystem or disk image to compress (`-` for standard input).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// The image to write (`-` for standard output).
    #[arg(short, long, value_name = "OUT")]
    pub output: String,

    /// Uncompressed bytes per block: a multiple of 512 from 512 to 1M (suffixes K, M).
    #[arg(short = 'B', long, value_name = "SIZE", default_value = "64K")]
    pub block_size: String,

    /// Block codec, one of [`mkmodule_pack::codec_choices`] (the help text says which).
    #[arg(
        short,
        long,
        value_name = "CODEC",
        default_value = "zlib",
        help = codec_short_help(),
        long_help = codec_help()
    )]
    pub codec: String,

    /// Image format: auto, v2, v4, v4-footer or uzip.
    #[arg(long, value_name = "FORMAT", default_value = "auto", long_help = format_help())]
    pub format: String,

    /// Write all-zero blocks as zero-length blocks (uzip formats; FreeBSD geom_uzip only).
    #[arg(long)]
    pub zero_blocks: bool,

    /// Write repeated blocks once and point to them (uzip formats; FreeBSD geom_uzip only).
    #[arg(long)]
    pub dedup: bool,

    /// Compressor threads (default: one per core). The image does not depend on it.
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,

    /// The exact input length (suffixes K, M, G); checked against the input. Lets a
    /// header-first image go to standard output when reading standard input.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,

    /// Leave out mkmodule's trailer (input length and digest after the data). Linux formats
    /// then end exactly at the last block, as create_compressed_fs writes them.
    #[arg(long)]
    pub no_trailer: bool,

    /// Overwrite an existing output file.
    #[arg(short, long)]
    pub force: bool,

    /// No progress bar and no summary line.
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub progress: ProgressArg,

    /// Print the summary as JSON (on standard output; on standard error when the image goes to
    /// standard output).
    #[arg(long)]
    pub json: bool,

    /// Also write a dm-verity hash tree over the image's device (blocks x block size) to
    /// OUT.verity, as `veritysetup format` would, and report its root hash.
    #[arg(long)]
    pub verity: bool,

    /// The dm-verity salt in hexadecimal (`-` for none; default: 32 random bytes).
    #[arg(long, value_name = "HEX", requires = "verity")]
    pub verity_salt: Option<String>,

    /// The UUID in the hash file's superblock (default: random).
    #[arg(long, value_name = "UUID", requires = "verity")]
    pub verity_uuid: Option<String>,

    /// Copy the compressed bytes of every block that OLD_IMAGE already holds (at any position)
    /// instead of compressing it again; the image is the same as without it. OLD_IMAGE must
    /// have the same block size and codec (level included), and the same format or one whose
    /// blocks that codec writes the same way.
    #[arg(long, value_name = "OLD_IMAGE")]
    pub reuse: Option<PathBuf>,

    /// How a block of OLD_IMAGE is checked before it is copied: `table` compares the CRC32 of
    /// its compressed bytes with OLD_IMAGE's stored-check table (an image without one has the
    /// block decoded and compared instead); `decode` always decodes it and compares the bytes
    /// (slower). Either way a block that does not check out is compressed, with a warning.
    #[arg(
        long,
        value_name = "CHECK",
        default_value = "table",
        requires = "reuse"
    )]
    pub reuse_check: ReuseCheckArg,
}

/// `--reuse-check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReuseCheckArg {
    /// Check the compressed bytes against OLD_IMAGE's stored checks (decode without them).
    Table,
    /// Decode every copied block and compare it.
    Decode,
}

impl From<ReuseCheckArg> for mkmodule_pack::ReuseCheck {
    fn from(arg: ReuseCheckArg) -> Self {
        match arg {
            ReuseCheckArg::Table => mkmodule_pack::ReuseCheck::Table,
            ReuseCheckArg::Decode => mkmodule_pack::ReuseCheck::Decode,
        }
    }
}

/// The one-line `--codec` help of `create` and `commit`: the list the parse error gives too.
pub(crate) fn codec_short_help() -> String {
    format!("Block codec: {}.", mkmodule_pack::codec_choices())
}

fn codec_help() -> String {
    use mkmodule_codec::{codec_syntax, level_range, CodecKind};
    let default_level = |kind| level_range(kind).map_or(0, |r| r.default);
    format!(
        "{short}\n\n\
         {zlib:<12} deflate in a zlib wrapper (libdeflate); default level {DEFAULT_ZLIB_LEVEL}, \
         which is no larger than zlib -9. Every reader decodes it.\n\
         {zstd:<12} default level {DEFAULT_ZSTD_LEVEL}; uzip-zstd only (FreeBSD with ZSTDIO).\n\
         {xz:<12} default level {xz_default}; v4 (Linux cloop.ko) or uzip-xz (FreeBSD).\n\
         {lz4:<12} fast; v4 only (Linux cloop.ko).\n\
         {none:<12} blocks stored uncompressed, as level-0 zlib (the one uncompressed \
         encoding every reader decodes).\n\
         best         per block the smallest result of the codecs the format allows, each at \
         its highest level (v4: zlib, xz and lz4); slow.\n\n\
         A block that does not shrink is stored as level-0 zlib where the format has zlib. \
         lzo images are read, not written.",
        short = codec_short_help(),
        zlib = codec_syntax(CodecKind::Zlib),
        zstd = codec_syntax(CodecKind::Zstd),
        xz = codec_syntax(CodecKind::Xz),
        xz_default = default_level(CodecKind::Xz),
        lz4 = codec_syntax(CodecKind::Lz4),
        none = codec_syntax(CodecKind::None),
    )
}

fn format_help() -> String {
    let mut text = String::from(
        "Image format (dialect). auto picks the most compatible one that can express the \
         other options: v2 for zlib, none and best; v4 for xz and lz4; uzip-zstd for zstd; the \
         codec's uzip format with --zero-blocks or --dedup. uzip picks uzip-zlib, uzip-xz or \
         uzip-zstd by codec.\n",
    );
    for dialect in WRITTEN_DIALECTS {
        let spec = dialect.spec();
        let codecs: Vec<&str> = spec
            .codecs
            .iter()
            .filter(|c| {
                !matches!(
                    c,
                    mkmodule_codec::CodecKind::None | mkmodule_codec::CodecKind::Lzo
                )
            })
            .map(|c| c.name())
            .collect();
        let readers: Vec<&str> = spec.readers.iter().map(|r| r.name()).collect();
        text.push_str(&format!(
            "\n{:<10} {}; readers: {}",
            dialect.name(),
            codecs.join(", "),
            readers.join(", ")
        ));
    }
    text.push_str(
        "\n\nv2 with zlib is the portable profile: the Debian preamble (qemu detects it), every \
         block padded to the block size, and (with the trailer) the file padded to 512 bytes. \
         uzip images keep the final block at its real length, as mkuzip does. v4-footer puts \
         the index after the blocks, so it can be written to a pipe.",
    );
    text
}

fn after_help() -> &'static str {
    "Examples:\n  \
     mkmodule rootfs.img -o KNOPPIX                 portable image (v2, zlib, 64K blocks)\n  \
     mkisofs -R dir | mkmodule - -o KNOPPIX         from a pipe (blocks spooled beside OUT)\n  \
     mkisofs -R dir | mkmodule - -o - --format v4-footer > KNOPPIX\n  \
     mkmodule disk.img -o disk.uzst -c zstd:9 --zero-blocks\n  \
     mkmodule new.ext4 -o KNOPPIX.new --reuse KNOPPIX   remaster: copy the unchanged blocks"
}

/// Where the input comes from.
#[derive(Debug)]
enum InputSpec {
    Stdin,
    Path(PathBuf),
}

/// Where the image goes.
#[derive(Debug, Clone)]
enum OutputSpec {
    Stdout,
    Path(PathBuf),
}

/// The validated job: everything decided before any I/O.
#[derive(Debug)]
struct Job {
    input: InputSpec,
    output: OutputSpec,
    options: PackOptions,
    /// The packer's plan, made once from `options` (its input length set when the input is
    /// open).
    plan: Plan,
    size: Option<u64>,
    force: bool,
    quiet: bool,
    progress: ProgressMode,
    json: bool,
    /// The dm-verity tree's parameters (`--verity`).
    verity: Option<mkmodule_pack::verity::VerityParams>,
    /// The older image to copy blocks from (`--reuse`).
    reuse: Option<PathBuf>,
    /// How its blocks are checked (`--reuse-check`).
    reuse_check: mkmodule_pack::ReuseCheck,
}

impl Job {
    /// The progress of this job: the input's bytes, done when the output is in place.
    fn progress(&self) -> Progress {
        let total = self.plan.input_len;
        Progress::new(self.progress, "create", "compress", Unit::Bytes, total)
    }

    fn from_args(args: Args) -> Result<Job> {
        let block_size = parse_size(&args.block_size)
            .map_err(|e| anyhow!("--block-size: {e}"))
            .and_then(|bs| Ok(check_block_size(bs)?))?;
        let codec: CodecChoice = args
            .codec
            .parse()
            .map_err(|e| anyhow!("--codec {:?}: {e}", args.codec))?;
        let format: FormatChoice = args.format.parse().map_err(|e: String| anyhow!(e))?;
        let (dialect, codec) = choose_dialect(format, codec, args.zero_blocks, args.dedup)?;
        let threads = match args.threads {
            Some(0) | None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => n,
        };
        let size = args
            .size
            .as_deref()
            .map(|s| parse_size(s).map_err(|e| anyhow!("--size: {e}")))
            .transpose()?;
        let input = match args.input.as_str() {
            "-" => InputSpec::Stdin,
            path => InputSpec::Path(PathBuf::from(path)),
        };
        let output = match args.output.as_str() {
            "-" => OutputSpec::Stdout,
            "" => bail!("the output name is empty"),
            path => OutputSpec::Path(PathBuf::from(path)),
        };
        let options = PackOptions {
            dialect,
            codec,
            block_size,
            threads,
            zero_blocks: args.zero_blocks,
            trailer: !args.no_trailer,
            input_len: size,
            ..PackOptions::portable()
        };
        // Everything the packer would refuse, refused now.
        let plan = options.plan()?;
        if args.verity && matches!(output, OutputSpec::Stdout) {
            bail!(
                "--verity needs an output file: the hash tree is written beside it as OUT.verity"
            );
        }
        let verity = args
            .verity
            .then(|| {
                let (salt, uuid) = (args.verity_salt.as_deref(), args.verity_uuid.as_deref());
                verity::params(salt, uuid, block_size)
            })
            .transpose()?;
        Ok(Job {
            input,
            output,
            options,
            plan,
            size,
            force: args.force,
            quiet: args.quiet,
            progress: args.progress.mode(args.quiet),
            json: args.json,
            verity,
            reuse: args.reuse,
            reuse_check: args.reuse_check.into(),
        })
    }
}

/// Runs `mkmodule create`.
pub fn run(args: Args) -> Result<()> {
    let mut job = Job::from_args(args)?;
    let (input, input_len) = open_input(&job.input, job.size)?;
    job.options.input_len = input_len;
    job.plan = job.plan.clone().with_input_len(input_len)?;
    let old = job.reuse.as_deref().map(reuse::open_old).transpose()?;
    let reuse = match (&old, &job.reuse) {
        (Some(old), Some(path)) => {
            Some(reuse::prepare(old, path, &job.plan, job.quiet)?.with_check(job.reuse_check))
        }
        _ => None,
    };
    let reuse = reuse.as_ref();
    match job.output.clone() {
        OutputSpec::Stdout => {
            if std::io::stdout().is_terminal() {
                bail!(
                    "refusing to write an image to a terminal: redirect standard output or use \
                     -o FILE"
                );
            }
            let stdout = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot use standard output")?;
            let progress = job.progress();
            write_direct(
                &job,
                &progress,
                input,
                File::from(stdout),
                "standard output",
                reuse,
            )
        }
        OutputSpec::Path(path) => write_path(&job, input, &path, reuse),
    }
}

/// Opens the input and finds its length when it has one (regular file, block device).
fn open_input(spec: &InputSpec, size: Option<u64>) -> Result<(File, Option<u64>)> {
    let (mut file, name) = match spec {
        InputSpec::Stdin => {
            let fd = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot use standard input")?;
            (File::from(fd), "standard input".to_string())
        }
        InputSpec::Path(path) => {
            let meta = fs::metadata(path)
                .with_context(|| format!("cannot open the input {}", path.display()))?;
            if meta.is_dir() {
                bail!(
                    "the input {} is a directory: give a filesystem or disk image (make one \
                     with mkisofs or mkfs.ext4 -d first)",
                    path.display()
                );
            }
            let file = File::open(path)
                .with_context(|| format!("cannot open the input {}", path.display()))?;
            (file, path.display().to_string())
        }
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot examine the input {name}"))?;
    let known = if meta.is_file() {
        let at = file.stream_position().unwrap_or(0);
        Some(meta.len().saturating_sub(at))
    } else if meta.file_type().is_block_device() {
        let end = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("cannot find the size of the device {name}"))?;
        file.seek(SeekFrom::Start(0))
            .with_context(|| format!("cannot rewind the device {name}"))?;
        Some(end)
    } else {
        None
    };
    match (known, size) {
        (Some(len), Some(size)) if len != size => {
            bail!("--size {size} does not match the input {name}, which holds {len} bytes")
        }
        (Some(len), _) => Ok((file, Some(len))),
        (None, size) => Ok((file, size)),
    }
}

/// Writes to an output we do not own (standard output, an existing device): in place when it
/// seeks and the length is known, as a stream for footer images, refused otherwise.
fn write_direct(
    job: &Job,
    progress: &Progress,
    input: File,
    mut out: File,
    name: &str,
    reuse: Option<&Reuse<'_>>,
) -> Result<()> {
    if job.verity.is_some() {
        bail!("--verity needs a regular output file, not {name}: the hash tree goes beside it");
    }
    let regular = out.metadata().map(|m| m.is_file()).unwrap_or(false);
    let kind = in_place_kind(&mut out);
    let sink = match SinkKind::choose(&job.plan, kind, name)? {
        SinkKind::Seekable => Sink::Seekable(&mut out),
        _ => Sink::Stream(&mut out),
    };
    match run_pack(job, progress, input, sink, name, None, reuse) {
        Ok(summary) => {
            if regular {
                out.set_len(summary.image_len)
                    .with_context(|| format!("cannot set the length of {name}"))?;
            }
            out.flush().ok();
            progress.finish();
            report(job, &summary, name, None)
        }
        Err(error) => {
            if regular {
                // Leave no partial image behind; the file itself belongs to the shell.
                let _ = out.set_len(0);
            }
            Err(error)
        }
    }
}

/// Writes to a path: a temporary file beside it, synced and renamed into place when complete.
fn write_path(job: &Job, input: File, path: &Path, reuse: Option<&Reuse<'_>>) -> Result<()> {
    match Destination::of(path) {
        Destination::Directory => bail!(
            "the output {} is a directory: name a file, e.g. {}",
            path.display(),
            path.join("KNOPPIX").display()
        ),
        Destination::Missing => {}
        _ if !job.force => bail!(
            "the output {} exists: add -f to overwrite it",
            path.display()
        ),
        Destination::RegularFile => {}
        special => {
            // A device or a FIFO: write into it, never replace it.
            let out = OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open the output {}", path.display()))?;
            let kind = if special == Destination::BlockDevice {
                "the device"
            } else {
                "the special file"
            };
            let name = format!("{kind} {}", path.display());
            return write_direct(job, &job.progress(), input, out, &name, reuse);
        }
    }
    let replace = if job.force {
        Replace::Existing
    } else {
        Replace::Never
    };
    let hash_path = verity::sidecar_path(path);
    let mut sidecar = match job.verity {
        Some(_) => Some(verity::create_sidecar(&hash_path, job.force)?),
        None => None,
    };
    let mut temp = OutputFile::create(path, replace)?;
    let progress = &job.progress();
    let name = path.display().to_string();
    let mut tree = match &job.verity {
        Some(params) => Some(verity::builder(params.clone(), temp.dir())?),
        None => None,
    };
    let sink_kind = SinkKind::choose(&job.plan, OutputKind::NewFile, &name)?;
    // Unknown length: the blocks are spooled beside the output (an unnamed file that vanishes
    // with the process), then header, index and blocks are written.
    let mut spool =
        match sink_kind {
            SinkKind::Spooled => Some(tempfile::tempfile_in(temp.dir()).with_context(|| {
                format!("cannot create a spool file in {}", temp.dir().display())
            })?),
            _ => None,
        };
    let mut out = SyncBehind::new(temp.file_mut());
    let sink = match (sink_kind, spool.as_mut()) {
        (SinkKind::Seekable, _) => Sink::Seekable(&mut out),
        (SinkKind::Spooled, Some(spool)) => Sink::Spooled {
            output: &mut out,
            spool,
        },
        _ => Sink::Stream(&mut out),
    };
    let summary = run_pack(job, progress, input, sink, &name, tree.as_mut(), reuse)?;
    drop(out);
    let hash_name = hash_path.display().to_string();
    let finished = match (tree, sidecar.as_mut()) {
        (Some(tree), Some(sidecar)) => Some(verity::finish(tree, sidecar, &hash_name)?),
        _ => None,
    };
    temp.commit(&name)?;
    if let Some(sidecar) = sidecar {
        sidecar.commit(&hash_name)?;
    }
    let verity = finished.as_ref().map(|tree| (tree, hash_name.as_str()));
    progress.finish();
    report(job, &summary, &name, verity)
}

/// Where the input starts in its file when the compressors can read it at its offsets: a
/// regular file or block device whose length is known (not a pipe or a terminal).
fn positioned(input: &File, plan: &Plan) -> Option<u64> {
    plan.input_len?;
    let kind = input.metadata().ok()?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return None;
    }
    (&*input).stream_position().ok()
}

/// Runs the packer, reporting to `bar`. Errors reading the input name it; errors writing the
/// image name `out_name`.
fn run_pack(
    job: &Job,
    bar: &Progress,
    input: File,
    sink: Sink<'_>,
    out_name: &str,
    tree: Option<&mut HashTreeBuilder<File>>,
    reuse: Option<&Reuse<'_>>,
) -> Result<PackSummary> {
    let total = job.plan.input_len;
    let bs = u64::from(job.plan.block_size);
    let blocks_total = total.map(|t| t.div_ceil(bs).max(1));
    let progress = |event: ProgressEvent| match event {
        ProgressEvent::Blocks {
            blocks,
            input_bytes,
            output_bytes,
        } => {
            bar.set_position(input_bytes);
            if blocks % 64 == 1 || Some(blocks) == blocks_total {
                let ratio = output_bytes as f64 / (input_bytes.max(1)) as f64;
                let of = blocks_total.map(|t| format!("/{t}")).unwrap_or_default();
                bar.set_message(format!("block {blocks}{of}, ratio {ratio:.3}"));
            }
        }
        ProgressEvent::Finishing => {
            bar.set_phase("index");
            bar.set_message("writing the index");
        }
        ProgressEvent::ReuseRejected { block, old_block } => {
            bar.suspend(|| reuse::warn_rejected(block, old_block, job.reuse.as_deref()));
        }
    };
    let result = match (positioned(&input, &job.plan), tree) {
        (Some(start), tree) => pack_file(&input, start, sink, &job.plan, tree, reuse, &progress),
        (None, Some(tree)) => pack_with_verity(input, sink, &job.plan, tree, reuse, &progress),
        (None, None) => pack_with_reuse(input, sink, &job.plan, reuse, &progress),
    };
    result.map_err(|error| match error {
        PackError::Read { .. } => {
            let input = match &job.input {
                InputSpec::Stdin => "standard input".to_string(),
                InputSpec::Path(path) => path.display().to_string(),
            };
            anyhow::Error::from(error).context(format!("cannot read the input {input}"))
        }
        PackError::Write { .. } => {
            anyhow::Error::from(error).context(format!("cannot write {out_name}"))
        }
        other => other.into(),
    })
}

/// The summary line, or JSON.
fn report(
    job: &Job,
    s: &PackSummary,
    out_name: &str,
    verity: Option<(&VerityTree, &str)>,
) -> Result<()> {
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    let ratio = s.image_len as f64 / s.input_len.max(1) as f64;
    let mb_s = s.input_len as f64 / 1e6 / secs;
    if job.json {
        let codecs: serde_json::Map<String, serde_json::Value> = s
            .blocks_per_codec
            .iter()
            .map(|(k, n)| (k.name().to_string(), (*n).into()))
            .collect();
        let mut value = serde_json::json!({
            "output": out_name,
            "dialect": s.dialect.name(),
            "codec": job.options.codec.to_string(),
            "block_size": s.block_size,
            "num_blocks": s.num_blocks,
            "input_bytes": s.input_len,
            "image_bytes": s.image_len,
            "data_end": s.data_end,
            "ratio": ratio,
            "zero_blocks": s.zero_blocks,
            "shared_blocks": s.shared_blocks,
            "incompressible_blocks": s.incompressible_blocks,
            "blocks_reused": s.reused_blocks,
            "blocks_compressed": reuse::compressed_blocks(s),
            "blocks_reuse_rejected": s.rejected_blocks,
            "blocks_per_codec": codecs,
            "trailer": s.trailer,
            "digest_algorithm": s.input_digest.as_ref().map(|_| DigestAlgorithm::WRITTEN.name()),
            "digest": s.input_digest.as_deref().map(verity::hex),
            "seconds": secs,
            "input_mb_per_s": mb_s,
            "threads": job.options.threads,
        });
        if let Some((tree, hash_file)) = verity {
            value["verity"] = verity::json(tree, hash_file);
        }
        let text = serde_json::to_string_pretty(&value)?;
        if matches!(job.output, OutputSpec::Stdout) {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        return Ok(());
    }
    if !job.quiet {
        eprintln!(
            "mkmodule: {out_name}: {} -> {} (ratio {ratio:.3}), {} blocks of {}, {} {}, {:.1} s, \
             {mb_s:.0} MB/s",
            human_bytes(s.input_len),
            human_bytes(s.image_len),
            s.num_blocks,
            human_bytes(u64::from(s.block_size)),
            s.dialect,
            job.options.codec,
            secs,
        );
        if let Some((tree, hash_file)) = verity {
            eprintln!("{}", verity::line(tree, hash_file));
        }
        if let Some(old) = &job.reuse {
            eprintln!("{}", reuse::line(s, old));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use mkmodule_format::Dialect;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan(argv: &[&str]) -> Result<Job> {
        let mut full = vec!["create"];
        full.extend_from_slice(argv);
        Job::from_args(Cli::try_parse_from(full)?.args)
    }

    #[test]
    fn defaults_are_the_portable_profile() {
        let p = plan(&["in.img", "-o", "OUT"]).unwrap();
        assert_eq!(p.options.dialect, Dialect::LinuxV2);
        assert_eq!(p.options.block_size, 65536);
        assert_eq!(
            p.options.codec.to_string(),
            format!("zlib:{DEFAULT_ZLIB_LEVEL}")
        );
        assert!(p.options.trailer);
    }

    #[test]
    fn bad_options_fail_with_one_sentence() {
        let err = plan(&["in", "-o", "out", "-B", "1000"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("block size 1000 is not possible"), "{err}");
        let err = plan(&["in", "-o", "out", "-c", "zstd", "--format", "v2"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "zstd blocks are not possible in v2 images: use --format uzip-zstd"
        );
        let err = plan(&["in", "-o", "out", "-c", "gzip"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown codec"), "{err}");
        let err = plan(&["in", "-o", "out", "--format", "v5"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown format"), "{err}");
    }

    #[test]
    fn formats_follow_the_codec() {
        let p = plan(&["in", "-o", "out", "-c", "zstd:5"]).unwrap();
        assert_eq!(p.options.dialect, Dialect::UzipZstd);
        let p = plan(&["in", "-o", "out", "-c", "xz", "--format", "uzip", "--dedup"]).unwrap();
        assert_eq!(p.options.dialect, Dialect::UzipXzDedup);
        let p = plan(&["in", "-o", "out", "-c", "lz4", "--format", "v4-footer"]).unwrap();
        assert_eq!(p.options.dialect, Dialect::LinuxV4Footer);
    }

    #[test]
    fn help_names_the_readers() {
        let help = format_help();
        assert!(
            help.contains("v2         zlib; readers: Linux cloop.ko, extract_compressed_fs, qemu")
        );
        assert!(help.contains("uzip-zstd  zstd; readers: FreeBSD geom_uzip"));
    }
}
