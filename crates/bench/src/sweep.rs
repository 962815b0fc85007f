//! The sweep: every (codec, block size) cell, one after another, on one sample of the input.
//!
//! Cells run one at a time: each packs on every core (the packer's own pipeline), and a cell's
//! decode and read timings are not disturbed by another cell running beside it.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use mkmodule_pack::CodecChoice;

use crate::input::Input;
use crate::measure::{image_path, measure_cell, CellResult, MeasureOptions, Phase};
use crate::report::{Report, SampleInfo};
use crate::sample::{plan_sample, run_len_for, SamplePlan, SampleSize};
use crate::{BenchError, Cell};

/// What to sweep and where to put the files.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The cells, in report order (see [`plan_cells`]).
    pub cells: Vec<Cell>,
    /// How much of the input to compress.
    pub sample: SampleSize,
    /// How each cell is measured.
    pub measure: MeasureOptions,
    /// Scratch directory for the sample (and the images when not kept).
    pub work_dir: PathBuf,
    /// Keep the images here (when `None` each is removed once measured).
    pub keep_dir: Option<PathBuf>,
}

/// Progress of a sweep.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Writing the sample: bytes done of total.
    Sampling {
        /// Bytes written.
        done: u64,
        /// Bytes in the sample.
        total: u64,
    },
    /// A cell is being measured.
    Cell {
        /// Its position, from 0.
        index: usize,
        /// Cells in all.
        total: usize,
        /// The cell.
        cell: &'a Cell,
        /// What it is doing.
        phase: Phase,
    },
    /// A cell is done.
    CellDone {
        /// Its position, from 0.
        index: usize,
        /// Cells in all.
        total: usize,
        /// Its measurements.
        result: &'a CellResult,
    },
}

/// The cells for every codec x block size, codecs outermost (as given), each validated: a
/// combination no dialect can express is an error before any I/O.
pub fn plan_cells(block_sizes: &[u32], codecs: &[CodecChoice]) -> Result<Vec<Cell>, BenchError> {
    let mut cells = Vec::with_capacity(block_sizes.len() * codecs.len());
    for &codec in codecs {
        for &block_size in block_sizes {
            let cell = Cell::new(block_size, codec)?;
            if !cells.contains(&cell) {
                cells.push(cell);
            }
        }
    }
    Ok(cells)
}

/// Runs the sweep over `input_path`.
pub fn run(
    input_path: &Path,
    config: &SweepConfig,
    on_event: &dyn Fn(Event<'_>),
) -> Result<Report, BenchError> {
    if config.cells.is_empty() {
        return Err(BenchError::NoCells);
    }
    run_input(input_path, Input::open(input_path)?, config, on_event)
}

/// Runs the sweep over `input`, already opened (an image read from elsewhere than a local
/// file, say); `input_path` names it in the report.
pub fn run_input(
    input_path: &Path,
    input: Input,
    config: &SweepConfig,
    on_event: &dyn Fn(Event<'_>),
) -> Result<Report, BenchError> {
    if config.cells.is_empty() {
        return Err(BenchError::NoCells);
    }
    let full_len = input.len();
    if input.is_empty() {
        return Err(BenchError::EmptyInput {
            path: input_path.to_path_buf(),
        });
    }
    let block_sizes: Vec<u32> = config.cells.iter().map(|c| c.block_size).collect();
    let plan = match config.sample {
        SampleSize::Whole => SamplePlan::whole(full_len),
        size => plan_sample(full_len, size.target(full_len), run_len_for(&block_sizes)),
    };
    // Pack straight from a raw input when all of it is used; otherwise write the sample (or
    // the decoded content of an image) to a scratch file once.
    let (source, scratch): (PathBuf, Option<PathBuf>) = match input.raw_path() {
        Some(path) if plan.is_whole() => (path.to_path_buf(), None),
        _ => {
            let path = config.work_dir.join("sample.raw");
            let file = File::create(&path).map_err(|source| BenchError::Io {
                what: format!("cannot create the sample file {}", path.display()),
                source,
            })?;
            let total = plan.bytes();
            let mut out = BufWriter::with_capacity(1 << 20, file);
            input.write_sample(&plan, &mut out, &mut |done| {
                on_event(Event::Sampling { done, total })
            })?;
            drop(out);
            (path.clone(), Some(path))
        }
    };
    let source_len = plan.bytes();
    let image_dir = config.keep_dir.as_deref().unwrap_or(&config.work_dir);
    let total = config.cells.len();
    let mut cells = Vec::with_capacity(total);
    for (index, cell) in config.cells.iter().enumerate() {
        let path = image_path(image_dir, cell);
        let phase = |phase: Phase| {
            on_event(Event::Cell {
                index,
                total,
                cell,
                phase,
            })
        };
        let measured = measure_cell(
            &source,
            source_len,
            full_len,
            cell,
            &path,
            &config.measure,
            &phase,
        );
        let mut result = match measured {
            Ok(result) => result,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        if config.keep_dir.is_some() {
            result.image = Some(path.display().to_string());
        } else {
            let _ = std::fs::remove_file(&path);
        }
        on_event(Event::CellDone {
            index,
            total,
            result: &result,
        });
        cells.push(result);
    }
    if let Some(path) = scratch {
        let _ = std::fs::remove_file(path);
    }
    Ok(Report {
        tool: concat!("mkmodule ", env!("CARGO_PKG_VERSION")).to_string(),
        input: input_path.display().to_string(),
        input_kind: input.kind(),
        input_bytes: full_len,
        sample: SampleInfo::from_plan(&plan),
        threads: config.measure.threads,
        decode_threads: 1,
        rounds: config.measure.rounds.max(1),
        read_size: config.measure.read_size,
        cache_bytes: crate::measure::read_cache_bytes(source_len, full_len, 0),
        cells,
        recommendation: None,
    })
}
