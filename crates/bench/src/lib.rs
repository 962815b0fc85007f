//! `mkmodule bench`: sweep block sizes x codecs over a user's own data and measure, for each
//! combination, the image size, the compression and decompression speed and the random-read
//! latency through the real reader, then recommend one.
//!
//! The work is split so each part can be tested alone:
//!
//! * [`sample`]: which bytes of the input are compressed (the whole input, or runs of whole
//!   blocks spread evenly across it), deterministic and documented there.
//! * [`input`]: raw files and devices, or the decoded content of a cloop image, and writing the
//!   sample to a scratch file.
//! * [`measure`]: one cell (block size, codec): pack the sample into an image with the real
//!   packer, decode all of it with the real reader, time random 4 KiB reads through
//!   [`mkmodule_image::Image::read_at`] with the default cache, and check what they return.
//! * [`sweep`]: all cells one after another (each packs on every core; cells do not run at the
//!   same time, so their timings do not disturb each other).
//! * [`report`]: the aligned table, JSON, CSV and the recommendation.
//! * [`plot`]: an SVG scatter plot of ratio against decode speed.

pub mod input;
pub mod measure;
pub mod plot;
pub mod report;
pub mod sample;
pub mod sweep;

use std::fmt;

use mkmodule_format::Dialect;
use mkmodule_pack::{choose_dialect, CodecChoice, FormatChoice, OptionsError};

pub use measure::{CellResult, MeasureOptions, Phase};
pub use report::{parse_duration, Audience, Recommendation, Report, SampleInfo};
pub use sample::{plan_sample, run_len_for, SamplePlan, SampleSize};
pub use sweep::{plan_cells, run, run_input, Event, SweepConfig};

/// Default block sizes of a sweep.
pub const DEFAULT_BLOCK_SIZES: &str = "16K,64K,128K,256K,1M";
/// Default codecs of a sweep; the first is `create`'s own default
/// ([`mkmodule_pack::DEFAULT_ZLIB_LEVEL`]), so the table shows where the default stands.
pub const DEFAULT_CODECS: &str = "zlib:5,zlib:6,zlib:9,zlib:12,zstd:3,zstd:19,xz:6,lz4";

/// Errors of a sweep, each one sentence with the numbers involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A file could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The input is a directory.
    #[error("the input {} is a directory: give a filesystem or disk image", path.display())]
    InputIsDirectory {
        /// The input path.
        path: std::path::PathBuf,
    },
    /// The input holds no bytes.
    #[error("the input {} is empty", path.display())]
    EmptyInput {
        /// The input path.
        path: std::path::PathBuf,
    },
    /// The sweep was given no block size and codec to measure.
    #[error("nothing to sweep: no cells")]
    NoCells,
    /// The image written has another length than the packer reported.
    #[error("{cell}: the image {} holds {actual} bytes, the packer reported {reported}", image.display())]
    ImageLength {
        /// The combination.
        cell: String,
        /// The image file.
        image: std::path::PathBuf,
        /// Its length on disk.
        actual: u64,
        /// The length the packer reported.
        reported: u64,
    },
    /// A block size and codec that cannot make an image.
    #[error("{cell}")]
    Options {
        /// The combination.
        cell: String,
        /// Why.
        #[source]
        source: OptionsError,
    },
    /// The packer failed.
    #[error("packing {cell}")]
    Pack {
        /// The combination.
        cell: String,
        /// Why.
        #[source]
        source: mkmodule_pack::PackError,
    },
    /// The reader failed.
    #[error(transparent)]
    Image(#[from] mkmodule_image::ImageError),
    /// The reader returned other bytes than the input holds.
    #[error(
        "{cell}: the image read back differs from the input at offset {offset} (image {image})"
    )]
    Mismatch {
        /// The combination.
        cell: String,
        /// Offset of the 4 KiB read that differed.
        offset: u64,
        /// The image file.
        image: String,
    },
}

impl BenchError {
    /// What kind of failure this is: a file or the packer failing, an input or settings that
    /// cannot be measured, or an image that reads back wrong.
    pub fn kind(&self) -> mkmodule_blockdev::ErrorKind {
        use mkmodule_blockdev::ErrorKind;
        match self {
            BenchError::Io { .. } | BenchError::Pack { .. } => ErrorKind::Io,
            BenchError::InputIsDirectory { .. }
            | BenchError::EmptyInput { .. }
            | BenchError::NoCells
            | BenchError::Options { .. } => ErrorKind::Config,
            BenchError::ImageLength { .. } | BenchError::Mismatch { .. } => ErrorKind::Corrupt,
            BenchError::Image(error) => error.kind(),
        }
    }
}

/// One combination of the sweep: a block size and a codec, in the dialect `mkmodule create
/// --format auto` picks for that codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// The codec (and level).
    pub codec: CodecChoice,
    /// The dialect written.
    pub dialect: Dialect,
}

impl Cell {
    /// The cell for `block_size` and `codec`, with the dialect `--format auto` picks.
    pub fn new(block_size: u32, codec: CodecChoice) -> Result<Cell, BenchError> {
        let (dialect, codec) =
            choose_dialect(FormatChoice::Auto, codec, false, false).map_err(|source| {
                BenchError::Options {
                    cell: format!("{codec} with {} blocks", size_label(block_size)),
                    source,
                }
            })?;
        Ok(Cell {
            block_size,
            codec,
            dialect,
        })
    }

    /// A file name for its image: `zstd19-256K.uzip`.
    pub fn file_name(&self) -> String {
        let codec = self.codec.to_string().replace(':', "");
        let ext = self.dialect.extension();
        format!("{codec}-{}.{ext}", size_label(self.block_size))
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.codec, size_label(self.block_size))
    }
}

/// A block size as people write it: `16K`, `1M`, `1536` (when not a whole KiB).
pub fn size_label(bytes: u32) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else if bytes % 1024 == 0 {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_take_the_dialect_auto_picks() {
        let cell = |c: &str| Cell::new(65536, c.parse().unwrap()).unwrap();
        assert_eq!(cell("zlib:9").dialect, Dialect::LinuxV2);
        assert_eq!(cell("zstd:19").dialect, Dialect::UzipZstd);
        assert_eq!(cell("xz:6").dialect, Dialect::LinuxV4);
        assert_eq!(cell("lz4").dialect, Dialect::LinuxV4);
        assert_eq!(cell("zstd:19").file_name(), "zstd19-64K.uzip");
        assert_eq!(cell("zlib:9").file_name(), "zlib9-64K.cloop");
        assert_eq!(cell("xz:6").file_name(), "xz6-64K.cloop");
        assert_eq!(cell("lz4").to_string(), "lz4 64K");
        assert!(Cell::new(65536, "lzo".parse().unwrap()).is_err());
    }

    #[test]
    fn the_default_sweep_includes_what_create_writes_by_default() {
        let create_default = format!("zlib:{}", mkmodule_pack::DEFAULT_ZLIB_LEVEL);
        assert!(
            DEFAULT_CODECS.split(',').any(|c| c == create_default),
            "{DEFAULT_CODECS}"
        );
        for codec in DEFAULT_CODECS.split(',') {
            Cell::new(65536, codec.parse().unwrap()).unwrap();
        }
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(16384), "16K");
        assert_eq!(size_label(1 << 20), "1M");
        assert_eq!(size_label(1536), "1536");
        assert_eq!(size_label(3 << 19), "1536K");
    }
}
