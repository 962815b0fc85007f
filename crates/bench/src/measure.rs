//! Measuring one cell: build its image with the real packer, decode it with the real reader,
//! time random reads through the real reader, and check what they return.
//!
//! What each number is:
//!
//! * `image_bytes`: the length of the image file written for the cell (header, index, blocks,
//!   trailer), read back from the file system. `ratio` = `image_bytes / input_bytes`, where
//!   `input_bytes` is what was compressed (the sample). `estimated_full_bytes` = `ratio x` the
//!   whole input's length (equal to `image_bytes` when the whole input was compressed).
//! * `compress_mb_s`: `input_bytes` / the wall time of `mkmodule_pack::pack` (reading the
//!   input from the page cache, compressing on `threads` threads, writing the image file), in
//!   MB/s (10^6 bytes). The median over `rounds`.
//! * `decode_mb_s`: `input_bytes` / the wall time of one [`Image::par_blocks`] pass over every
//!   block on ONE thread (known all-zero blocks are skipped, as extract and the NBD server skip
//!   them), the image file in the page cache. The median over `rounds`. One thread is what a
//!   cloop.ko or qemu reader gets and is steadier on a shared machine than all cores.
//! * `read_p50_us`, `read_p99_us`: latency of aligned 4 KiB [`Image::read_at`] calls at
//!   uniformly random offsets (the same offsets for every cell), on a freshly opened image with
//!   the reader's default options, one thread, the image file in the page cache: so this is
//!   decode + copy time, the cost a reader adds over the disk. The block cache is the default
//!   one ([`mkmodule_image::DEFAULT_CACHE_BYTES`]) scaled by the sample's share of the input
//!   (`read_cache_bytes`, at least one block): random reads then hit the cache as often as
//!   they would on the image of the whole input, instead of finding a small sample all
//!   cached. `reads` were made: `MeasureOptions::reads`, or fewer when
//!   `MeasureOptions::read_seconds` ran out first (but at least [`MIN_READS`]).
//!   `cache_hit_ratio` says how many of them the cache answered.
//!
//! Every 4 KiB read is compared with the same bytes of the input; a difference is an error.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mkmodule_format::{Dialect, Reader};
use mkmodule_image::{Image, OpenOptions, ParallelOptions, DEFAULT_CACHE_BYTES};
use mkmodule_pack::{pack_with_plan, PackOptions, ProgressEvent, Sink};
use serde::Serialize;

use crate::input::pread;
use crate::{BenchError, Cell};

/// Fewest random reads a cell gets, however slow its reads are.
pub const MIN_READS: usize = 50;

/// How a cell is measured.
#[derive(Debug, Clone)]
pub struct MeasureOptions {
    /// Compressor threads of the packer.
    pub threads: usize,
    /// Times each cell is compressed and decoded; medians are reported.
    pub rounds: usize,
    /// Random reads per cell (at most).
    pub reads: usize,
    /// Time limit of the random reads of one cell.
    pub read_seconds: f64,
    /// Bytes per random read.
    pub read_size: usize,
    /// Seed of the random offsets (the same for every cell).
    pub seed: u64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rounds: 1,
            reads: 2000,
            read_seconds: 2.0,
            read_size: 4096,
            seed: 0x6d6b_6d6f_6475_6c65,
        }
    }
}

/// What a cell is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Packing: input bytes done of total, round (from 1) of rounds.
    Compressing {
        /// Input bytes compressed so far.
        done: u64,
        /// Input bytes in all.
        total: u64,
        /// This round, from 1.
        round: usize,
        /// Rounds in all.
        rounds: usize,
    },
    /// Decoding every block: round (from 1) of rounds.
    Decoding {
        /// This round, from 1.
        round: usize,
        /// Rounds in all.
        rounds: usize,
    },
    /// Random reads.
    Reading,
}

/// The measurements of one cell (see the module documentation for what each means).
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// Codec and level as `mkmodule create -c` takes it (`zstd:19`).
    pub codec: String,
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// The dialect written (`mkmodule create --format`).
    pub dialect: String,
    /// Readers that open the image.
    pub readers: Vec<String>,
    /// The image file, when kept (`--keep`).
    pub image: Option<String>,
    /// Bytes compressed.
    pub input_bytes: u64,
    /// Length of the image file.
    pub image_bytes: u64,
    /// `image_bytes / input_bytes`.
    pub ratio: f64,
    /// `ratio x` the whole input's length.
    pub estimated_full_bytes: u64,
    /// All-zero blocks (never compressed).
    pub zero_blocks: u64,
    /// Blocks in the image.
    pub blocks: u32,
    /// Median wall time of packing, seconds.
    pub compress_seconds: f64,
    /// `input_bytes / compress_seconds`, MB/s.
    pub compress_mb_s: f64,
    /// Median wall time of decoding every block on one thread, seconds.
    pub decode_seconds: f64,
    /// `input_bytes / decode_seconds`, MB/s.
    pub decode_mb_s: f64,
    /// Random reads made.
    pub reads: usize,
    /// Median random-read latency, microseconds.
    pub read_p50_us: f64,
    /// 99th percentile random-read latency, microseconds.
    pub read_p99_us: f64,
    /// Share of the random reads the block cache answered.
    pub cache_hit_ratio: f64,
    /// Byte limit of the block cache during the random reads.
    pub read_cache_bytes: u64,
    /// The dialect, for filtering by reader.
    #[serde(skip)]
    pub dialect_kind: Option<Dialect>,
}

impl CellResult {
    /// The readers of the cell's dialect.
    pub fn reader_set(&self) -> &'static [Reader] {
        match self.dialect_kind {
            Some(d) => d.spec().readers,
            None => &[],
        }
    }
}

/// The median of `values` (the upper one of the middle two), 0 for none.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The `p`-quantile of `values` by the nearest-rank method (`p` in `(0, 1]`), 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The block cache of the random reads: the reader's default scaled by `source_len /
/// full_len` (the sample's share of the input), at least one block of `block_size`.
pub fn read_cache_bytes(source_len: u64, full_len: u64, block_size: u32) -> u64 {
    let share = source_len as f64 / full_len.max(1) as f64;
    let scaled = (DEFAULT_CACHE_BYTES as f64 * share.min(1.0)) as u64;
    scaled.max(u64::from(block_size))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Io { what, source }
}

/// Measures `cell` on the `source_len` bytes of `source` (the sample, or the whole input),
/// writing its image to `image_path`; `full_len` is the whole input's length.
pub fn measure_cell(
    source: &Path,
    source_len: u64,
    full_len: u64,
    cell: &Cell,
    image_path: &Path,
    options: &MeasureOptions,
    phase: &dyn Fn(Phase),
) -> Result<CellResult, BenchError> {
    let label = cell.to_string();
    let rounds = options.rounds.max(1);
    let pack_options = PackOptions {
        dialect: cell.dialect,
        codec: cell.codec,
        block_size: cell.block_size,
        threads: options.threads.max(1),
        zero_blocks: false,
        trailer: true,
        input_len: Some(source_len),
        ..PackOptions::portable()
    };
    let plan = pack_options.plan().map_err(|source| BenchError::Options {
        cell: label.clone(),
        source,
    })?;

    // 1. Compress.
    let mut compress_times = Vec::with_capacity(rounds);
    let mut summary = None;
    for round in 1..=rounds {
        let input = File::open(source).map_err(io(format!("cannot open {}", source.display())))?;
        let mut out = File::create(image_path).map_err(io(format!(
            "cannot create the image {}",
            image_path.display()
        )))?;
        let progress = |event: ProgressEvent| {
            if let ProgressEvent::Blocks { input_bytes, .. } = event {
                phase(Phase::Compressing {
                    done: input_bytes,
                    total: source_len,
                    round,
                    rounds,
                });
            }
        };
        let done = pack_with_plan(input, Sink::Seekable(&mut out), &plan, &progress).map_err(
            |source| BenchError::Pack {
                cell: label.clone(),
                source,
            },
        )?;
        compress_times.push(done.elapsed.as_secs_f64());
        summary = Some(done);
    }
    let summary = summary.expect("at least one round");
    let image_bytes = std::fs::metadata(image_path)
        .map_err(io(format!("cannot examine {}", image_path.display())))?
        .len();
    if image_bytes != summary.image_len {
        return Err(BenchError::ImageLength {
            cell: label.to_string(),
            image: image_path.to_path_buf(),
            actual: image_bytes,
            reported: summary.image_len,
        });
    }

    // 2. Decode every block, one thread.
    let image = Image::open_with(image_path, &OpenOptions::default())?;
    let mut decode_times = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        phase(Phase::Decoding { round, rounds });
        let started = Instant::now();
        image.par_blocks(
            ParallelOptions {
                threads: 1,
                skip_zero: true,
            },
            |_, block| block.map(|_| ()),
        )?;
        decode_times.push(started.elapsed().as_secs_f64());
    }
    drop(image);

    // 3. Random reads on a fresh image (empty cache), checked against the source.
    phase(Phase::Reading);
    let cache_bytes = read_cache_bytes(source_len, full_len, cell.block_size);
    let (latencies, hit_ratio) =
        random_reads(source, source_len, image_path, cache_bytes, &label, options)?;

    let compress_seconds = median(&compress_times);
    let decode_seconds = median(&decode_times);
    let mb = source_len as f64 / 1e6;
    let ratio = image_bytes as f64 / source_len.max(1) as f64;
    Ok(CellResult {
        codec: cell.codec.to_string(),
        block_size: cell.block_size,
        dialect: cell.dialect.name().to_string(),
        readers: cell
            .dialect
            .spec()
            .readers
            .iter()
            .map(|r| r.name().to_string())
            .collect(),
        image: None,
        input_bytes: source_len,
        image_bytes,
        ratio,
        estimated_full_bytes: if source_len == full_len {
            image_bytes
        } else {
            (ratio * full_len as f64).round() as u64
        },
        zero_blocks: summary.zero_blocks,
        blocks: summary.num_blocks,
        compress_seconds,
        compress_mb_s: mb / compress_seconds.max(1e-9),
        decode_seconds,
        decode_mb_s: mb / decode_seconds.max(1e-9),
        reads: latencies.len(),
        read_p50_us: percentile(&latencies, 0.5),
        read_p99_us: percentile(&latencies, 0.99),
        cache_hit_ratio: hit_ratio,
        read_cache_bytes: cache_bytes,
        dialect_kind: Some(cell.dialect),
    })
}

/// Times random reads of `options.read_size` bytes through a freshly opened image and checks
/// each against `source`; returns the latencies in microseconds and the cache hit ratio.
fn random_reads(
    source: &Path,
    source_len: u64,
    image_path: &Path,
    cache_bytes: u64,
    label: &str,
    options: &MeasureOptions,
) -> Result<(Vec<f64>, f64), BenchError> {
    let size = options.read_size.max(1);
    let slots = source_len / size as u64;
    if slots == 0 || options.reads == 0 {
        return Ok((Vec::new(), 0.0));
    }
    let src = File::open(source).map_err(io(format!("cannot open {}", source.display())))?;
    let open = OpenOptions {
        cache_bytes,
        ..OpenOptions::default()
    };
    let image = Image::open_with(image_path, &open)?;
    let budget = Duration::from_secs_f64(options.read_seconds.max(0.0));
    let mut latencies = Vec::with_capacity(options.reads);
    let mut got = vec![0u8; size];
    let mut want = vec![0u8; size];
    let mut x = options.seed | 1;
    let started = Instant::now();
    while latencies.len() < options.reads {
        if latencies.len() >= MIN_READS && started.elapsed() >= budget {
            break;
        }
        // xorshift64: the same offsets for every cell.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % slots) * size as u64;
        let t = Instant::now();
        image.read_exact_at(&mut got, offset)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        pread(&src, &mut want, offset).map_err(io(format!(
            "cannot read {} at offset {offset}",
            source.display()
        )))?;
        if got != want {
            return Err(BenchError::Mismatch {
                cell: label.to_string(),
                offset,
                image: image_path.display().to_string(),
            });
        }
    }
    let stats = image.cache_stats();
    let lookups = stats.hits + stats.misses;
    let hit_ratio = if lookups == 0 {
        0.0
    } else {
        stats.hits as f64 / lookups as f64
    };
    Ok((latencies, hit_ratio))
}

/// Where a cell's image goes: `dir/<codec>-<block>.<ext>`.
pub fn image_path(dir: &Path, cell: &Cell) -> PathBuf {
    dir.join(cell.file_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn a_cell_is_measured_on_real_images() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("in.raw");
        // 2 MiB: text-like bytes, then zeros.
        let mut data: Vec<u8> = (0..1u32 << 20)
            .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ ((i / 4096) as u8 & 1))
            .collect();
        data.resize(2 << 20, 0);
        std::fs::write(&source, &data).unwrap();
        let cell = Cell::new(65536, "zstd:3".parse().unwrap()).unwrap();
        let image = image_path(dir.path(), &cell);
        let options = MeasureOptions {
            reads: 100,
            ..MeasureOptions::default()
        };
        let r = measure_cell(&source, 2 << 20, 8 << 20, &cell, &image, &options, &|_| {}).unwrap();
        assert_eq!(r.image_bytes, std::fs::metadata(&image).unwrap().len());
        assert_eq!(r.input_bytes, 2 << 20);
        assert_eq!(r.ratio, r.image_bytes as f64 / (2 << 20) as f64);
        assert_eq!(r.dialect, "uzip-zstd");
        assert_eq!(r.readers, vec!["FreeBSD geom_uzip"]);
        assert_eq!(r.zero_blocks, 16);
        assert_eq!(r.blocks, 32);
        assert_eq!(r.reads, 100);
        assert!(r.read_p50_us <= r.read_p99_us);
        assert!(r.estimated_full_bytes >= 4 * r.image_bytes - 4);
        // A quarter of the input: a quarter of the default cache.
        assert_eq!(r.read_cache_bytes, DEFAULT_CACHE_BYTES / 4);
        assert_eq!(read_cache_bytes(1, 1 << 40, 65536), 65536);
        assert_eq!(read_cache_bytes(5, 5, 65536), DEFAULT_CACHE_BYTES);
    }
}
