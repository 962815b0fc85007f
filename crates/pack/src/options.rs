//! What the packer is asked to do, and its validation into a [`Plan`] before any I/O.

use mkmodule_codec::{level_range, CodecKind, CodecSpec};
use mkmodule_format::{BlockEncoding, Dialect, MAX_WRITE_BLOCK_SIZE, MIN_BLOCK_SIZE, PORTABLE};

use crate::choice::{codec_hint, written_codecs, CodecChoice};
use crate::error::{NearestBlockSizes, OptionsError};

/// Uncompressed bytes in flight per compressor thread (read, queued, compressing, waiting in
/// the reorder window), between [`MIN_SLOTS_PER_THREAD`] and [`MAX_SLOTS_PER_THREAD`] blocks.
/// Memory is `slots x (block size + its compressed bound)`: about 4 MiB per thread with blocks
/// of 64 KiB or more, 8 blocks per thread of 1 MiB.
///
/// The window must be wide: with `create --reuse`, a block that is compressed takes about as
/// long as 20 copied ones, and the writer waits for blocks in order, so a narrow window stops
/// the other threads behind each changed block. 32 blocks of 64 KiB instead of 4 took a
/// remaster of 959 MB from 1.49 s to 1.02 s (median of 8, 2 cores).
pub const WINDOW_BYTES_PER_THREAD: usize = 2 << 20;
/// Fewest blocks in flight per compressor thread.
pub const MIN_SLOTS_PER_THREAD: usize = 4;
/// Most blocks in flight per compressor thread.
pub const MAX_SLOTS_PER_THREAD: usize = 32;

/// Everything the packer needs to know, before it reads a byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// The dialect written. Dedup (back-references to identical blocks) is on exactly when the
    /// dialect has back-references (`uzip-*-dedup`).
    pub dialect: Dialect,
    /// The block codec.
    pub codec: CodecChoice,
    /// Uncompressed bytes per block: a multiple of 512 from 512 to 1 MiB.
    pub block_size: u32,
    /// Compressor threads (at least 1). The output does not depend on it.
    pub threads: usize,
    /// Write all-zero blocks as zero-length blocks (uzip dialects only; FreeBSD reads them as
    /// zeros). Without it all-zero blocks still skip compression: their bytes are computed once.
    pub zero_blocks: bool,
    /// Append mkmodule's trailer (docs/FORMAT.md §12: input length and digest) after the data of a
    /// header-first image. Footer images never carry it (their header must end the file).
    pub trailer: bool,
    /// The exact input length when known in advance (file size or `--size`). Required for a
    /// header-first image written in place ([`crate::Sink::Seekable`]); checked against the
    /// input whenever given.
    pub input_len: Option<u64>,
    /// Tool name and version recorded in the trailer.
    pub tool: String,
}

impl PackOptions {
    /// The portable profile (docs/FORMAT.md §11.1): V2.0, zlib at
    /// [`crate::DEFAULT_ZLIB_LEVEL`], 64 KiB blocks, trailer on, one thread per core.
    pub fn portable() -> PackOptions {
        PackOptions {
            dialect: PORTABLE.dialect,
            codec: CodecChoice::default_for(PORTABLE.codec),
            block_size: PORTABLE.block_size,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            zero_blocks: false,
            trailer: true,
            input_len: None,
            tool: concat!("mkmodule ", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// Validates the options into a plan; no I/O.
    pub fn plan(&self) -> Result<Plan, OptionsError> {
        check_block_size(u64::from(self.block_size))?;
        if self.threads == 0 {
            return Err(OptionsError::NoThreads);
        }
        let dialect = self.dialect;
        let spec = dialect.spec();
        if dialect == Dialect::LinuxV2Footer {
            return Err(OptionsError::DialectNotWritten {
                dialect,
                instead: Dialect::LinuxV4Footer,
            });
        }
        let candidates: Vec<CodecSpec> = match self.codec {
            CodecChoice::Fixed(spec) => {
                match spec.kind() {
                    CodecKind::None => {
                        return Err(OptionsError::CodecNotWritten {
                            codec: CodecKind::None,
                            hint: "use zlib:0 (stored blocks in a zlib wrapper)",
                        })
                    }
                    CodecKind::Lzo => {
                        return Err(OptionsError::CodecNotWritten {
                            codec: CodecKind::Lzo,
                            hint: "use lz4 for a fast codec in v4 images",
                        })
                    }
                    kind if !dialect.allows_codec(kind) => {
                        return Err(OptionsError::CodecNotInDialect {
                            codec: kind,
                            dialect,
                            hint: codec_hint(kind),
                        })
                    }
                    _ => {}
                }
                vec![spec]
            }
            CodecChoice::Best => written_codecs(dialect)
                .map(|kind| match level_range(kind) {
                    Some(range) => CodecSpec::new(kind, range.max).expect("max level is valid"),
                    None => CodecSpec::with_default_level(kind),
                })
                .collect(),
        };
        let stored = CodecSpec::new(CodecKind::Zlib, 0).expect("zlib level 0 is valid");
        let stored_fallback = dialect.allows_codec(CodecKind::Zlib) && candidates != [stored];
        if self.zero_blocks && !spec.zero_length_blocks {
            return Err(OptionsError::FeatureNotInDialect {
                option: "--zero-blocks",
                dialect,
                hint: "zero-length blocks exist only in FreeBSD uzip images",
            });
        }
        let (max_blocks, limit_reason) = block_limit(dialect, self.block_size);
        let encoding = match self.codec {
            CodecChoice::Fixed(spec) => BlockEncoding::Fixed {
                codec: spec.kind(),
                level: spec.level().map_or(0, |level| level.clamp(0, 255) as u8),
            },
            CodecChoice::Best => BlockEncoding::Best,
        };
        Plan {
            dialect,
            block_size: self.block_size,
            threads: self.threads,
            candidates,
            stored_fallback,
            encoding,
            zero_length: self.zero_blocks,
            dedup: spec.back_references,
            pad_final: !spec.short_final_block,
            trailer: self.trailer && mkmodule_format::is_header_first(dialect),
            input_len: self.input_len,
            max_blocks,
            limit_reason,
            tool: self.tool.clone(),
            verity_salt: None,
        }
        .with_input_len(self.input_len)
    }
}

/// Checks a block size given on the command line: a multiple of 512 in 512..=1 MiB.
pub fn check_block_size(block_size: u64) -> Result<u32, OptionsError> {
    let max = MAX_WRITE_BLOCK_SIZE;
    let min = u64::from(MIN_BLOCK_SIZE);
    if block_size % min == 0 && (min..=u64::from(max)).contains(&block_size) {
        return Ok(block_size as u32);
    }
    let below = (block_size / min * min).clamp(min, u64::from(max));
    let above = block_size
        .div_ceil(min)
        .saturating_mul(min)
        .clamp(min, u64::from(max));
    Err(OptionsError::BlockSize {
        block_size,
        max,
        nearest: NearestBlockSizes { below, above },
    })
}

/// The most blocks an image of `dialect` may hold so that its readers accept it, and why.
fn block_limit(dialect: Dialect, block_size: u32) -> (u64, &'static str) {
    // Linux and qemu compute the device size in 512-byte sectors with 32-bit arithmetic.
    let below_2tib = ((1u64 << 41) - 1) / u64::from(block_size);
    let u32_count = u64::from(u32::MAX);
    match dialect {
        Dialect::LinuxV2 | Dialect::LinuxV2Footer => {
            const QEMU_MAX: u64 = 67_108_863;
            if QEMU_MAX < below_2tib {
                (QEMU_MAX, "qemu reads at most 67,108,863 blocks")
            } else {
                (below_2tib, "Linux and qemu expose devices below 2 TiB only")
            }
        }
        Dialect::LinuxV4 | Dialect::LinuxV4Footer => (
            below_2tib.min(u32_count),
            "Linux exposes devices below 2 TiB only",
        ),
        _ => (u32_count, "the header counts blocks in 32 bits"),
    }
}

/// Validated options: what the pipeline runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The dialect written.
    pub dialect: Dialect,
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// Compressor threads.
    pub threads: usize,
    /// Codecs tried per block (one unless `best`); the smallest result wins, ties to the first.
    pub candidates: Vec<CodecSpec>,
    /// A block that does not shrink is stored as level-0 zlib when that is smaller.
    pub stored_fallback: bool,
    /// The block encoder as the trailer records it (docs/FORMAT.md §12.4).
    pub encoding: BlockEncoding,
    /// All-zero blocks become zero-length blocks.
    pub zero_length: bool,
    /// Identical blocks become back-references.
    pub dedup: bool,
    /// The final partial block is zero-padded to a whole block (Linux dialects).
    pub pad_final: bool,
    /// A trailer follows the data (header-first dialects only).
    pub trailer: bool,
    /// The announced input length.
    pub input_len: Option<u64>,
    /// The most blocks the image may hold.
    pub max_blocks: u64,
    /// The reader limit behind `max_blocks`.
    pub limit_reason: &'static str,
    /// Tool text for the trailer.
    pub tool: String,
    /// The dm-verity salt when the compressors hash the data for a hash tree (set by
    /// [`crate::pack_with_verity`]).
    pub verity_salt: Option<Vec<u8>>,
}

impl Plan {
    /// The plan for an input of exactly `input_len` bytes (`None`: unknown until it ends),
    /// refused when the dialect cannot hold that many blocks. For a length learnt after the
    /// options were checked (the input's file size), without checking them again.
    pub fn with_input_len(self, input_len: Option<u64>) -> Result<Plan, OptionsError> {
        if let Some(len) = input_len {
            let num_blocks = self.num_blocks_for(len);
            if num_blocks > self.max_blocks {
                return Err(OptionsError::TooManyBlocks {
                    input_len: len,
                    num_blocks,
                    block_size: self.block_size,
                    max_blocks: self.max_blocks,
                    dialect: self.dialect,
                    reason: self.limit_reason,
                });
            }
        }
        Ok(Plan { input_len, ..self })
    }

    /// Blocks for an input of `len` bytes (at least one: Linux cannot attach an empty image).
    pub fn num_blocks_for(&self, len: u64) -> u64 {
        len.div_ceil(u64::from(self.block_size)).max(1)
    }

    /// Blocks in flight at most: the memory bound is this many times
    /// (block size + the largest compressed block).
    pub fn slots(&self) -> usize {
        let per_thread = (WINDOW_BYTES_PER_THREAD / self.block_size as usize)
            .clamp(MIN_SLOTS_PER_THREAD, MAX_SLOTS_PER_THREAD);
        self.threads * per_thread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_holds_about_two_mib_per_thread() {
        let slots = |block_size: u32, threads: usize| {
            PackOptions {
                block_size,
                threads,
                ..PackOptions::portable()
            }
            .plan()
            .unwrap()
            .slots()
        };
        assert_eq!(slots(65536, 2), 64);
        assert_eq!(slots(262144, 2), 16);
        assert_eq!(slots(1 << 20, 3), 12);
        assert_eq!(slots(512, 1), MAX_SLOTS_PER_THREAD);
        assert_eq!(slots(4096, 1), MAX_SLOTS_PER_THREAD);
    }

    #[test]
    fn best_tries_the_dialects_written_codecs_at_their_top_level() {
        let mut options = PackOptions::portable();
        options.codec = CodecChoice::Best;
        options.dialect = Dialect::LinuxV4;
        let plan = options.plan().unwrap();
        let names: Vec<String> = plan.candidates.iter().map(|c| c.to_string()).collect();
        assert_eq!(names, ["zlib:12", "xz:9", "lz4"]);
        assert!(plan.stored_fallback);
        options.dialect = Dialect::UzipZstd;
        let plan = options.plan().unwrap();
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].to_string(), "zstd:22");
        assert!(!plan.stored_fallback);
    }

    #[test]
    fn block_sizes() {
        assert_eq!(check_block_size(65536), Ok(65536));
        assert_eq!(check_block_size(512), Ok(512));
        assert_eq!(check_block_size(1 << 20), Ok(1 << 20));
        let err = check_block_size(1000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "block size 1000 is not possible: it must be a multiple of 512 from 512 to 1048576 \
             bytes (try 512 or 1024)"
        );
        assert!(check_block_size(0).is_err());
        assert!(check_block_size(2 << 20).is_err());
    }

    #[test]
    fn too_many_blocks_is_refused_up_front() {
        let mut options = PackOptions::portable();
        options.block_size = 512;
        options.input_len = Some(64 << 30);
        let err = options.plan().unwrap_err();
        assert!(matches!(
            err,
            OptionsError::TooManyBlocks {
                max_blocks: 67_108_863,
                ..
            }
        ));
    }

    #[test]
    fn footer_images_carry_no_trailer() {
        let mut options = PackOptions::portable();
        options.dialect = Dialect::LinuxV4Footer;
        assert!(!options.plan().unwrap().trailer);
    }

    #[test]
    fn a_length_learnt_later_is_checked_against_the_block_limit() {
        let options = PackOptions {
            block_size: 512,
            ..PackOptions::portable()
        };
        let plan = options.plan().unwrap();
        assert_eq!(plan.input_len, None);
        let sized = plan.clone().with_input_len(Some(4096)).unwrap();
        assert_eq!(sized.input_len, Some(4096));
        let too_long = plan.max_blocks * 512 + 1;
        assert!(matches!(
            plan.with_input_len(Some(too_long)),
            Err(OptionsError::TooManyBlocks { .. })
        ));
    }
}
