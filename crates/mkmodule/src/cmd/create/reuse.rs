//! `create --reuse OLD_IMAGE` (and `commit`): opening the older image, checking that its blocks
//! can be copied, and telling the user what was copied and what was not.

use std::path::Path;

use anyhow::{Context, Result};
use mkmodule_image::{Image, OpenOptions};
use mkmodule_pack::{PackSummary, Plan, Reuse};

/// Opens the older image. Its blocks are read once each at most, so it gets no cache.
pub(crate) fn open_old(path: &Path) -> Result<Image> {
    let options = OpenOptions {
        cache_bytes: 0,
        readahead: 0,
        ..OpenOptions::default()
    };
    Image::open_with(path, &options)
        .with_context(|| format!("cannot open the image to reuse, {}", path.display()))
}

/// Checks that `old`'s blocks can be copied into an image written by `plan` and reads its
/// block digests (decoding it when it has no valid digest table, which is said unless quiet).
pub(crate) fn prepare<'a>(
    old: &'a Image,
    path: &Path,
    plan: &Plan,
    quiet: bool,
) -> Result<Reuse<'a>> {
    let reuse = Reuse::new(old, plan, plan.threads)
        .with_context(|| format!("cannot reuse the blocks of {}", path.display()))?;
    if let Some(problem) = reuse.table_problem() {
        eprintln!(
            "mkmodule: warning: {}: {problem}; its block digests were computed by decoding it",
            path.display()
        );
    } else if !reuse.from_table() && !quiet {
        eprintln!(
            "mkmodule: {} has no block-digest table: its block digests were computed by \
             decoding it",
            path.display()
        );
    }
    if let Some(problem) = reuse.checks_problem() {
        eprintln!(
            "mkmodule: warning: {}: {problem}; its blocks are decoded before they are copied",
            path.display()
        );
    }
    Ok(reuse)
}

/// The warning for a block of the older image that had the digest but whose bytes did not
/// check out.
pub(crate) fn warn_rejected(block: u64, old_block: u32, old: Option<&Path>) {
    let old = old.map_or_else(
        || "the older image".to_string(),
        |p| p.display().to_string(),
    );
    eprintln!(
        "mkmodule: warning: block {old_block} of {old} does not match the new block {block} \
         (damaged, or another block with the same digest): compressed it instead"
    );
}

/// Blocks that went through a compressor: neither copied nor all zeros.
pub(crate) fn compressed_blocks(summary: &PackSummary) -> u64 {
    u64::from(summary.num_blocks).saturating_sub(summary.reused_blocks + summary.zero_blocks)
}

/// The summary line of a run with reuse.
pub(crate) fn line(summary: &PackSummary, old: &Path) -> String {
    format!(
        "mkmodule: {} blocks copied from {}, {} compressed, {} all zeros",
        summary.reused_blocks,
        old.display(),
        compressed_blocks(summary),
        summary.zero_blocks
    )
}
