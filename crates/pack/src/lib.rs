//! Parallel, streaming, bounded-memory writer of cloop-family images.
//!
//! [`pack`] reads an input stream once, cuts it into blocks, compresses them on N threads and
//! writes them in input order (see the `pipeline` module for the conveyor). Memory is a function
//! of threads x block size, never of the input size, with two exceptions that grow by a few bytes
//! per block: the index (8 bytes per block, kept until the end because header-first images put
//! it before the blocks and footer images after them) and, for `uzip-*-dedup` images, the dedup
//! table (a 16-byte key and an offset per distinct block). The output depends only on the input
//! and the options, never on the thread count.
//!
//! Layout rules (docs/FORMAT.md §11):
//!
//! * Linux dialects (v2, v4, v4-footer): the final partial block is zero-padded to a whole block,
//!   so every block decodes to exactly the block size. uzip dialects: the final block is
//!   compressed at its real length, as FreeBSD mkuzip does.
//! * At least one block, even for an empty input (Linux cannot attach a 0-block image).
//! * All-zero blocks are never compressed: their bytes are computed once per image, or, with
//!   [`PackOptions::zero_blocks`] (uzip), they become zero-length blocks.
//! * A block that does not shrink is stored as level-0 zlib where the dialect has zlib (V4's
//!   flag 1 is unreadable by cloop.ko); xz and zstd dialects keep the codec's output.
//! * Header-first images end with the trailer (docs/FORMAT.md §12: exact input length and its
//!   `blake3-blocks` digest),
//!   zero-padded before it so the file is a multiple of 512 bytes. Without the trailer, Linux
//!   dialects end exactly at `index[n]` (as `create_compressed_fs` writes them) and uzip images
//!   are zero-padded to 512 (as `mkuzip` writes them). Footer images end with their header.
//!   The trailer records the block encoder and points to a table of one 16-byte digest per
//!   block (docs/FORMAT.md §12.4), kept in memory until the end like the index.
//! * With a [`Reuse`] (an older image written with the same dialect, block size and encoder),
//!   whole blocks whose digest matches a block of the older image are copied from it after a
//!   check by decoding; the image is the same as without it.

mod block;
mod choice;
mod encode;
mod error;
mod options;
mod pipeline;
mod reuse;
mod sink;
mod summary;
pub mod verity;
mod writer;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::Instant;

use mkmodule_codec::CodecKind;

pub use choice::{
    choose_dialect, codec_choices, CodecChoice, FormatChoice, ACCEPTED_CODECS, DEFAULT_ZLIB_LEVEL,
    DEFAULT_ZSTD_LEVEL, WRITTEN_DIALECTS,
};
pub use error::{ImagePart, NearestBlockSizes, OptionsError, PackError};
pub use options::{
    check_block_size, PackOptions, Plan, MAX_SLOTS_PER_THREAD, MIN_SLOTS_PER_THREAD,
    WINDOW_BYTES_PER_THREAD,
};
pub use reuse::{Reuse, ReuseCheck, ReuseError};
pub use sink::{OutputKind, SeekWrite, Sink, SinkKind, Spool};
pub use summary::{PackSummary, ProgressEvent};

use pipeline::Input;
use verity::{check_verity_block_size, HashTreeBuilder};
use writer::ImageBuilder;

/// Packs `input` into an image in `sink` according to `options`, reporting progress.
///
/// Validates the options and the sink first (no byte is read or written when they are refused),
/// then runs the conveyor. On error the sink holds a partial image: the caller removes it.
pub fn pack<R: Read + Send>(
    input: R,
    sink: Sink<'_>,
    options: &PackOptions,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PackSummary, PackError> {
    pack_with_plan(input, sink, &options.plan()?, progress)
}

/// Packs `input` into an image in `sink` by a plan already made with [`PackOptions::plan`]
/// (and [`Plan::with_input_len`]); the sink is best chosen with [`SinkKind::choose`].
///
/// Refuses a sink that cannot hold the plan's layout before a byte is read or written. On error
/// the sink holds a partial image: the caller removes it.
pub fn pack_with_plan<R: Read + Send>(
    input: R,
    sink: Sink<'_>,
    plan: &Plan,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PackSummary, PackError> {
    pack_image(Input::Stream(input), sink, plan, None, None, progress)
}

/// Packs like [`pack_with_plan`], copying from `reuse` the compressed bytes of every whole
/// block an older image already holds (see [`Reuse`]); the image is byte-identical to one
/// packed without it. With `None`, the same as [`pack_with_plan`].
pub fn pack_with_reuse<R: Read + Send>(
    input: R,
    sink: Sink<'_>,
    plan: &Plan,
    reuse: Option<&Reuse<'_>>,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PackSummary, PackError> {
    pack_image(Input::Stream(input), sink, plan, None, reuse, progress)
}

/// Packs like [`pack_with_plan`] and feeds every uncompressed byte the image exposes (the
/// padded device: blocks x block size) to `tree`, whose hashes the compressor threads compute.
/// The plan's block size must be a multiple of 4096 ([`check_verity_block_size`]); the caller
/// finishes the tree with [`HashTreeBuilder::finish`]. `reuse` is as for [`pack_with_reuse`].
pub fn pack_with_verity<R: Read + Send, S: Read + Write + Seek>(
    input: R,
    sink: Sink<'_>,
    plan: &Plan,
    tree: &mut HashTreeBuilder<S>,
    reuse: Option<&Reuse<'_>>,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PackSummary, PackError> {
    let plan = verity_plan(plan, tree)?;
    pack_image(
        Input::Stream(input),
        sink,
        &plan,
        Some(tree),
        reuse,
        progress,
    )
}

/// Packs like [`pack_with_reuse`], or [`pack_with_verity`] when given a `tree`, reading the
/// plan's `input_len` bytes from offset `start` of `file` (a regular file or block device):
/// the compressor threads read their blocks at their offsets, with no reader thread. Reading is
/// then spread over the compressors and a block changes threads once instead of twice, which
/// matters when most blocks are copied (`reuse`) rather than compressed.
pub fn pack_file<S: Read + Write + Seek>(
    file: &File,
    start: u64,
    sink: Sink<'_>,
    plan: &Plan,
    tree: Option<&mut HashTreeBuilder<S>>,
    reuse: Option<&Reuse<'_>>,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PackSummary, PackError> {
    let len = plan.input_len.ok_or(PackError::Internal(
        "reading a file at its offsets needs the input length in the plan",
    ))?;
    let input: Input<'_, std::io::Empty> = Input::File { file, start, len };
    match tree {
        Some(tree) => {
            let plan = verity_plan(plan, tree)?;
            pack_image(input, sink, &plan, Some(tree), reuse, progress)
        }
        None => pack_image(input, sink, plan, None, reuse, progress),
    }
}

/// The plan with the tree's salt, for the compressors to hash the dm-verity leaves.
fn verity_plan<S: Read + Write + Seek>(
    plan: &Plan,
    tree: &HashTreeBuilder<S>,
) -> Result<Plan, PackError> {
    if check_verity_block_size(plan.block_size).is_err() {
        return Err(PackError::Internal(
            "a dm-verity tree needs a block size that is a multiple of 4096",
        ));
    }
    Ok(Plan {
        verity_salt: Some(tree.params().salt().to_vec()),
        ..plan.clone()
    })
}

fn pack_image<R: Read + Send>(
    input: Input<'_, R>,
    sink: Sink<'_>,
    plan: &Plan,
    verity: Option<&mut dyn verity::DigestSink>,
    reuse: Option<&Reuse<'_>>,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PackSummary, PackError> {
    let started = Instant::now();
    sink.kind().check(plan)?;
    let zero = block::zero_block(plan)?;
    let mut builder = ImageBuilder::new(plan, zero);
    if let Some(tree) = verity {
        builder = builder.with_verity(tree);
    }
    let (stats, data_end, image_len) =
        sink::write_image(input, sink, plan, &mut builder, reuse, progress)?;
    let counts = builder.counts();
    Ok(PackSummary {
        dialect: plan.dialect,
        block_size: plan.block_size,
        num_blocks: counts.blocks as u32,
        input_len: stats.len,
        image_len,
        data_end,
        zero_blocks: counts.zero_blocks,
        shared_blocks: counts.shared_blocks,
        incompressible_blocks: counts.incompressible_blocks,
        reused_blocks: counts.reused_blocks,
        rejected_blocks: counts.rejected_blocks,
        blocks_per_codec: CodecKind::ALL
            .iter()
            .zip(counts.per_codec)
            .filter(|(_, n)| *n > 0)
            .map(|(&k, n)| (k, n))
            .collect(),
        input_digest: stats.digest,
        trailer: plan.trailer,
        elapsed: started.elapsed(),
    })
}
