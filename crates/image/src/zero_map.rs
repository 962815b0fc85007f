//! Which blocks are known to hold only zeros, found cheaply when an image is opened.
//!
//! A block is *known zero* when
//!
//! * it has zero compressed length (uzip's sparse blocks), or is a back-reference to such a
//!   block or to a known-zero block; or
//! * its compressed bytes are identical (same codec, same length, same bytes) to those of a block
//!   that was decoded at open time and found to be all zeros.
//!
//! The second rule catches the zero blocks of every other writer: codecs are deterministic, so a
//! writer turns every all-zero block into the same short byte string, and an image's zero blocks
//! form one large group of equal short lengths. At open, stored blocks are grouped by codec and
//! compressed length, looking only at lengths a compressed zero block can have (at most
//! `block_size / 128 + 256` bytes: deflate reaches about 1:1000, LZ4 about 1:255). For each of
//! the [`MAX_GROUPS`] largest groups standing for two blocks or more (back-references count for
//! the block they point to), the member with the lowest block number is decoded (never the final
//! block, which may legitimately decode short: a later member or a later back-reference exists);
//! if it is all zeros the other members' bytes are read (adjacent members in one read) and
//! compared with its bytes. Equal bytes decode to equal data, so every block marked is zero for
//! certain. Zero blocks compressed differently are not marked: the map is a sound subset, never a
//! guess.
//!
//! The cost is one decode per group and one read per run of adjacent members, a few milliseconds
//! for an 800 MB root filesystem. Any read or decode failure just leaves blocks unmarked; the
//! error surfaces when the block itself is read.

use std::collections::HashMap;

use mkmodule_format::{BlockKind, CodecKind};

use crate::decode::Blocks;

/// At most this many groups of equal compressed length are examined.
pub(crate) const MAX_GROUPS: usize = 8;
/// Adjacent members are compared in reads of at most this many bytes.
const SPAN_BYTES: u64 = 1 << 20;

/// A bit per block: set when the block is known to be all zeros.
pub(crate) struct ZeroMap {
    bits: Vec<u64>,
    count: u64,
}

impl ZeroMap {
    /// Builds the map; `scan` enables the comparison of compressed bytes (else only zero-length
    /// blocks and references to them are known).
    pub(crate) fn build(blocks: Blocks<'_>, scan: bool) -> ZeroMap {
        let entries = blocks.index.blocks();
        let mut map = ZeroMap {
            bits: vec![0; entries.len().div_ceil(64)],
            count: 0,
        };
        for (i, entry) in entries.iter().enumerate() {
            if entry.kind == BlockKind::Zero {
                map.set(i);
            }
        }
        if scan {
            map.scan_groups(blocks);
        }
        for (i, entry) in entries.iter().enumerate() {
            if let BlockKind::Shared { of } = entry.kind {
                if map.is_zero(of) {
                    map.set(i);
                }
            }
        }
        map
    }

    fn set(&mut self, block: usize) {
        let (word, bit) = (block / 64, block % 64);
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.count += 1;
        }
    }

    /// Whether `block` is known to be all zeros (false for blocks out of range).
    pub(crate) fn is_zero(&self, block: u32) -> bool {
        let block = block as usize;
        self.bits
            .get(block / 64)
            .is_some_and(|word| word & (1 << (block % 64)) != 0)
    }

    /// How many blocks are known zero.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The comparison of compressed bytes described in the module documentation.
    fn scan_groups(&mut self, blocks: Blocks<'_>) {
        let entries = blocks.index.blocks();
        let block_size = blocks.index.block_size();
        let short = block_size / 128 + 256;
        // Back-references count for the block they point to: a dedup image stores its zero
        // block once and points every other zero block at it.
        let mut references: HashMap<u32, u64> = HashMap::new();
        for entry in entries {
            if let BlockKind::Shared { of } = entry.kind {
                *references.entry(of).or_default() += 1;
            }
        }
        let mut groups: HashMap<(CodecKind, u32), (u64, Vec<u32>)> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if entry.kind == BlockKind::Stored && entry.len <= short {
                let weight = 1 + references.get(&(i as u32)).copied().unwrap_or(0);
                let group = groups.entry((entry.codec, entry.len)).or_default();
                group.0 += weight;
                group.1.push(i as u32);
            }
        }
        let mut groups: Vec<(u64, Vec<u32>)> = groups
            .into_values()
            .filter(|(weight, _)| *weight >= 2)
            .collect();
        groups.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
        let groups: Vec<Vec<u32>> = groups.into_iter().map(|(_, members)| members).collect();
        let mut decoded = Vec::new();
        for group in groups.iter().take(MAX_GROUPS) {
            decoded.resize(block_size as usize, 0);
            // Members are in block order; a later member or a back-reference follows the first,
            // so it is never the final block.
            let representative = group[0];
            if blocks.decode(representative, &mut decoded).is_err()
                || decoded.iter().any(|&b| b != 0)
            {
                continue;
            }
            self.mark_equal(blocks, group);
        }
    }

    /// Marks `group[0]` (known zero) and every member whose bytes equal its bytes.
    fn mark_equal(&mut self, blocks: Blocks<'_>, group: &[u32]) {
        let entries = blocks.index.blocks();
        let first = entries[group[0] as usize];
        let len = u64::from(first.len);
        let mut reference = vec![0u8; first.len as usize];
        if blocks
            .source
            .read_exact_at(&mut reference, first.offset)
            .is_err()
        {
            return;
        }
        self.set(group[0] as usize);
        let mut members: Vec<(u64, u32)> = group[1..]
            .iter()
            .map(|&b| (entries[b as usize].offset, b))
            .collect();
        members.sort_unstable();
        let mut span = Vec::new();
        let mut at = 0;
        while at < members.len() {
            // A run of members lying back to back in the file, read at once.
            let start = members[at].0;
            let mut end = at + 1;
            while end < members.len()
                && members[end].0 == start + len * (end - at) as u64
                && len * (end - at + 1) as u64 <= SPAN_BYTES
            {
                end += 1;
            }
            span.resize(len as usize * (end - at), 0);
            if blocks.source.read_exact_at(&mut span, start).is_ok() {
                for (k, chunk) in span.chunks_exact(len as usize).enumerate() {
                    if chunk == reference.as_slice() {
                        self.set(members[at + k].1 as usize);
                    }
                }
            }
            at = end;
        }
    }
}
