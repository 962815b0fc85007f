//! `mkmodule bench`: choose block size and codec on your own data. A thin layer over the
//! `mkmodule-bench` crate: arguments become a validated sweep before any I/O, progress goes to
//! a bar on stderr, results to stdout as a table, JSON or CSV, and optionally an SVG plot.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mkmodule_bench::report::fmt_us;
use mkmodule_bench::{
    parse_duration, plan_cells, plot, size_label, Audience, Event, MeasureOptions, Phase,
    SampleSize, SweepConfig, DEFAULT_BLOCK_SIZES, DEFAULT_CODECS,
};
use mkmodule_pack::{check_block_size, CodecChoice};

use crate::progress::{Progress, ProgressArg, ProgressMode, Unit};
use crate::units::{human_bytes, parse_size};

/// Arguments of `mkmodule bench`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = after_help())]
pub struct Args {
    /// The data to measure on: a filesystem or disk image (ext4, ISO, ...), or a cloop-family
    /// image (a file or an http:// or https:// URL), whose decoded content is used.
    #[arg(value_name = "IMAGE")]
    pub input: PathBuf,

    /// Block sizes to sweep, comma separated (suffixes K, M).
    #[arg(short = 'B', long = "block-sizes", value_name = "LIST", default_value = DEFAULT_BLOCK_SIZES)]
    pub block_sizes: String,

    /// Codecs to sweep, comma separated, as `create -c` takes them.
    #[arg(
        short = 'c',
        long = "codecs",
        value_name = "LIST",
        default_value = DEFAULT_CODECS,
        help = codecs_help()
    )]
    pub codecs: String,

    /// Compress only a sample of the input: a share (`20%`) or a size (`512M`), taken as
    /// 4 MiB runs of whole blocks spread evenly over the input; `100%` for all of it.
    #[arg(long, value_name = "SIZE|PCT", default_value = "256M")]
    pub sample: String,

    /// Times each combination is compressed and decoded; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: usize,

    /// Random 4 KiB reads per combination (fewer when --read-time runs out first).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub reads: usize,

    /// Time limit of the random reads of one combination (e.g. 2s, 500ms).
    #[arg(long, value_name = "TIME", default_value = "2s")]
    pub read_time: String,

    /// Compressor threads (default: one per core).
    #[arg(short = 'j', long, value_name = "N")]
    pub threads: Option<usize>,

    /// The recommendation's bound on the random 4 KiB read p99 (e.g. 2ms, 500us).
    #[arg(long, value_name = "TIME", default_value = "2ms")]
    pub max_latency: String,

    /// Who will read the image: cloop (Linux cloop.ko), qemu, geom_uzip (FreeBSD), vnd
    /// (NetBSD), serve (only mkmodule serve or mount, which read every codec) or any (every
    /// reader: the portable choice). The recommendation is an image it opens.
    #[arg(long = "for", value_name = "READER", default_value = "any")]
    pub audience: String,

    /// The old spelling of --for: any (now --for serve), all (now --for any), linux (cloop),
    /// freebsd (geom_uzip), netbsd (vnd) or qemu.
    #[arg(long, value_name = "WHICH", hide = true, conflicts_with = "audience")]
    pub readers: Option<String>,

    /// Keep the image of every combination in DIR (created if missing); the report names
    /// each image.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,

    /// Write an SVG plot of ratio against decode speed to FILE.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Print the results as JSON instead of the table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Print the results as CSV (a header and one line per combination) instead of the table.
    #[arg(long)]
    pub csv: bool,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub progress: ProgressArg,

    #[command(flatten)]
    pub remote: crate::remote::RemoteArgs,
}

/// The `--codecs` help, with the codec list `create` itself gives.
fn codecs_help() -> String {
    format!(
        "Codecs to sweep, comma separated, each as `create -c` takes it: {}. Each is written in \
         the format `create --format auto` picks for it. The defaults include zlib:5, what \
         `create` writes when given no -c.",
        mkmodule_pack::codec_choices()
    )
}

fn after_help() -> &'static str {
    "What is measured, per block size x codec:\n  \
     image      size of the image written from the input (or the sample), and ratio = image / input\n  \
     compress   MB/s of input through the real packer on all threads (-j)\n  \
     decode     MB/s of input, decoding every block through the real reader on one thread\n  \
     4K read    latency of random 4 KiB reads through the real reader (default cache), p50 and p99\n  \
     readers    the readers that open the format the codec is written in (zlib: all five;\n             \
     xz and lz4: Linux cloop.ko; zstd: FreeBSD geom_uzip)\n\n\
     The recommendation: the smallest image whose random 4K read p99 stays under --max-latency,\n\
     among those the readers named by --for open. The default, --for any, keeps to images every\n\
     reader opens (V2.0, zlib); --for cloop also allows V4.0 (xz, lz4), --for geom_uzip zstd,\n\
     and --for serve (mkmodule serve or mount only) every codec.\n\n\
     The sample: N runs of 4 MiB (a multiple of every block size) at the centres of N equal\n\
     stretches of the input, so beginning, middle and end are all seen, and every block is a\n\
     block of the input at its own offset. The same input and options give the same sample.\n\n\
     Examples:\n  \
     mkmodule bench rootfs.ext4 --sample 20%\n  \
     mkmodule bench rootfs.ext4 --for cloop\n  \
     mkmodule bench KNOPPIX -B 64K,256K -c zlib:9,xz:6 --for cloop --plot bench.svg\n  \
     mkmodule bench root.img -c zstd:3,zstd:19 --for serve\n  \
     mkmodule bench live.iso --json > bench.json"
}

/// The validated sweep and what to do with its results.
struct Plan {
    config: SweepConfig,
    max_latency: Duration,
    audience: Audience,
    plot: Option<PathBuf>,
    json: bool,
    csv: bool,
    progress: ProgressMode,
    _work: tempfile::TempDir,
}

fn parse_list<T>(text: &str, what: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let items: Vec<T> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(&parse)
        .collect::<Result<_>>()?;
    if items.is_empty() {
        bail!("{what}: the list is empty");
    }
    Ok(items)
}

impl Plan {
    fn from_args(args: Args) -> Result<Plan> {
        let block_sizes = parse_list(&args.block_sizes, "--block-sizes", |s| {
            let bytes = parse_size(s).map_err(|e| anyhow!("--block-sizes: {e}"))?;
            check_block_size(bytes).map_err(|e| anyhow!("--block-sizes: {e}"))
        })?;
        let codecs = parse_list(&args.codecs, "--codecs", |s| {
            s.parse::<CodecChoice>()
                .map_err(|e| anyhow!("--codecs {s:?}: {e}"))
        })?;
        let cells = plan_cells(&block_sizes, &codecs)?;
        let sample = if args.sample.trim().ends_with('%') {
            args.sample
                .parse::<SampleSize>()
                .map_err(|e| anyhow!("--sample: {e}"))?
        } else {
            let bytes = parse_size(&args.sample).map_err(|e| anyhow!("--sample: {e}"))?;
            if bytes == 0 {
                bail!("--sample 0: give a size such as 512M or a share such as 20%");
            }
            SampleSize::Bytes(bytes)
        };
        if args.rounds == 0 {
            bail!("--rounds 0: give at least 1");
        }
        let read_time = parse_duration(&args.read_time).map_err(|e| anyhow!("--read-time: {e}"))?;
        let max_latency =
            parse_duration(&args.max_latency).map_err(|e| anyhow!("--max-latency: {e}"))?;
        let audience = match &args.readers {
            Some(old) => {
                Audience::from_readers_value(old).map_err(|e| anyhow!("--readers: {e}"))?
            }
            None => args
                .audience
                .parse()
                .map_err(|e: String| anyhow!("--for: {e}"))?,
        };
        let threads = match args.threads {
            Some(0) | None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => n,
        };
        if let Some(dir) = &args.keep {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
        let work = tempfile::Builder::new()
            .prefix("mkmodule-bench.")
            .tempdir()
            .context("cannot create a scratch directory (set TMPDIR to a roomier place)")?;
        Ok(Plan {
            config: SweepConfig {
                cells,
                sample,
                measure: MeasureOptions {
                    threads,
                    rounds: args.rounds,
                    reads: args.reads,
                    read_seconds: read_time.as_secs_f64(),
                    ..MeasureOptions::default()
                },
                work_dir: work.path().to_path_buf(),
                keep_dir: args.keep.clone(),
            },
            max_latency,
            audience,
            plot: args.plot,
            json: args.json,
            csv: args.csv,
            progress: args.progress.mode(args.quiet),
            _work: work,
        })
    }
}

/// Runs `mkmodule bench`.
pub fn run(args: Args) -> Result<()> {
    let input = args.input.clone();
    let remote = args.remote.clone();
    let plan = Plan::from_args(args)?;
    let cells = Some(plan.config.cells.len() as u64);
    let bar = Progress::new(plan.progress, "bench", "sample", Unit::Combinations, cells);
    let on_event = |event: Event<'_>| match event {
        Event::Sampling { done, total } => {
            bar.set_phase("sample");
            bar.set_message(format!(
                "writing the sample: {} of {}",
                human_bytes(done),
                human_bytes(total)
            ));
        }
        Event::Cell {
            index,
            total,
            cell,
            phase,
        } => {
            let what = match phase {
                Phase::Compressing {
                    done,
                    total,
                    round,
                    rounds,
                } => {
                    let pct = done as f64 * 100.0 / total.max(1) as f64;
                    if rounds > 1 {
                        format!("compressing {pct:.0}% (round {round}/{rounds})")
                    } else {
                        format!("compressing {pct:.0}%")
                    }
                }
                Phase::Decoding { .. } => "decoding".to_string(),
                Phase::Reading => "random reads".to_string(),
            };
            bar.set_phase("measure");
            bar.set_message(format!(
                "[{}/{total}] {} {}: {what}",
                index + 1,
                cell.codec,
                size_label(cell.block_size)
            ));
        }
        Event::CellDone { result, .. } => {
            bar.inc(1);
            bar.println(format!(
                "{} {}: ratio {:.3}, compress {:.0} MB/s, decode {:.0} MB/s, 4K read p99 {}",
                result.codec,
                size_label(result.block_size),
                result.ratio,
                result.compress_mb_s,
                result.decode_mb_s,
                fmt_us(result.read_p99_us)
            ));
        }
    };
    let result = match crate::open::url_of(&input) {
        // An image URL: opened like every image, its decoded content is the input.
        Some(_) => {
            let options = mkmodule_image::OpenOptions {
                exposed_size: mkmodule_image::ExposedSize::Original,
                ..mkmodule_image::OpenOptions::default()
            };
            let image = crate::open::open_image(&input, &options, &remote)
                .with_context(|| format!("opening {}", input.display()))?;
            let opened = mkmodule_bench::input::Input::Image(Box::new(image));
            mkmodule_bench::run_input(&input, opened, &plan.config, &on_event)
        }
        None => mkmodule_bench::run(&input, &plan.config, &on_event),
    };
    let mut report = result?;
    bar.finish();
    report.recommend(plan.max_latency, plan.audience);
    if let Some(path) = &plan.plot {
        std::fs::write(path, plot::svg(&report))
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
    }
    let recommendation = report
        .recommendation
        .as_ref()
        .map(|r| r.text.clone())
        .unwrap_or_default();
    if plan.json {
        println!("{}", report.to_json());
    } else if plan.csv {
        print!("{}", report.to_csv());
    } else {
        print!("{}", report.heading());
        println!();
        print!("{}", report.table());
        println!();
        println!("{}", plan.audience.statement());
        println!("{recommendation}");
        if let Some(path) = &plan.plot {
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan(argv: &[&str]) -> Result<Plan> {
        let mut full = vec!["bench"];
        full.extend_from_slice(argv);
        Plan::from_args(Cli::try_parse_from(full)?.args)
    }

    #[test]
    fn defaults_sweep_five_sizes_by_eight_codecs_for_every_reader() {
        let p = plan(&["in.img"]).unwrap();
        assert_eq!(p.config.cells.len(), 40);
        assert_eq!(p.config.sample, SampleSize::Bytes(256 << 20));
        assert_eq!(p.max_latency, Duration::from_millis(2));
        assert_eq!(p.audience, Audience::Any);
    }

    #[test]
    fn bad_lists_fail_before_any_work() {
        let err = |argv: &[&str]| plan(argv).err().expect("refused").to_string();
        assert!(err(&["in", "-B", "1000"]).contains("block size 1000"));
        assert!(err(&["in", "-c", "gzip"]).contains("unknown codec"));
        assert!(err(&["in", "-c", "lzo"]).contains("lzo"));
        assert!(err(&["in", "--sample", "0%"]).contains("--sample"));
        assert!(err(&["in", "--max-latency", "soon"]).contains("--max-latency"));
        assert!(err(&["in", "--readers", "windows"]).contains("--readers"));
        assert!(err(&["in", "--for", "windows"]).contains("--for"));
        assert!(err(&["in", "--for", "cloop", "--readers", "all"]).contains("--readers"));
        assert!(err(&["in", "-B", ","]).contains("empty"));
        let p = plan(&[
            "in",
            "-B",
            "64K,128K",
            "-c",
            "zlib:1,lz4",
            "--sample",
            "20%",
        ])
        .unwrap();
        assert_eq!(p.config.cells.len(), 4);
        assert_eq!(p.config.sample, SampleSize::Fraction(0.2));
    }

    #[test]
    fn for_names_the_readers_and_readers_keeps_its_old_meaning() {
        let audience = |argv: &[&str]| plan(argv).unwrap().audience;
        assert_eq!(audience(&["in", "--for", "cloop"]), Audience::Cloop);
        assert_eq!(audience(&["in", "--for", "geom_uzip"]), Audience::GeomUzip);
        assert_eq!(audience(&["in", "--for", "serve"]), Audience::Serve);
        assert_eq!(audience(&["in", "--readers", "any"]), Audience::Serve);
        assert_eq!(audience(&["in", "--readers", "all"]), Audience::Any);
        assert_eq!(audience(&["in", "--readers", "linux"]), Audience::Cloop);
        assert_eq!(audience(&["in", "--readers", "netbsd"]), Audience::Vnd);
    }
}
