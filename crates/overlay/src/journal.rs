//! The overlay file's on-disk structures, as pure encoders and decoders (no I/O).
//!
//! ```text
//! offset 0            header (4 KiB, written once when the file is created)
//! data_offset         chunk c at data_offset + c * chunk_size (sparse: only written chunks
//!                     take space)
//! regions[0], [1]     two metadata regions, each: a checkpoint (every chunk's state, 2 bits
//!                     each, CRC32) followed by a log of records appended at each flush
//! ```
//!
//! All integers are little-endian. A checkpoint carries a generation; the valid checkpoint with
//! the higher generation is current, and only records of that generation with consecutive
//! sequence numbers and a good CRC32 are replayed after it: a torn or stale record ends the log.

use crate::chunk_map::ChunkState;
use crate::error::Damage;

/// Signature at offset 0.
pub const MAGIC: [u8; 8] = *b"MKMODCOW";
/// Format version written and read.
pub const VERSION: u32 = 1;
/// Bytes reserved for the header.
pub const HEADER_LEN: u64 = 4096;
/// Signature of a checkpoint.
const CKPT_MAGIC: [u8; 8] = *b"MKMOCKPT";
/// Bytes before a checkpoint's table.
const CKPT_HEAD: usize = 32;
/// Signature of a log record.
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"MKOJ");
/// Bytes before a record's runs.
const RECORD_HEAD: usize = 24;
/// Bytes per run in a record.
const RUN_LEN: usize = 16;
/// Most runs in one record.
pub const MAX_RUNS_PER_RECORD: usize = 4096;
/// Longest base label kept in the header.
pub const MAX_LABEL: usize = 1024;
/// Smallest log area per region.
const MIN_LOG: u64 = 1 << 20;

/// `n` rounded up to a multiple of `to`, or `None` past `u64::MAX`.
fn align(n: u64, to: u64) -> Option<u64> {
    n.div_ceil(to).checked_mul(to)
}

/// Where everything lives in an overlay file, derived from the chunk size and the base size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Base (and export) size in bytes.
    pub base_size: u64,
    /// Number of chunks.
    pub n_chunks: u64,
    /// File offset of chunk 0.
    pub data_offset: u64,
    /// File offsets of the two metadata regions.
    pub regions: [u64; 2],
    /// Bytes of the packed state table in a checkpoint.
    pub table_len: u64,
    /// Offset of the log inside a region (after the checkpoint).
    pub log_offset: u64,
    /// Bytes available to the log of a region.
    pub log_capacity: u64,
}

impl Layout {
    /// The layout for a base of `base_size` bytes cut into `chunk_size` chunks (a power of
    /// two, see [`crate::check_chunk_size`]), or `None` when the file's offsets would not fit in
    /// 64 bits.
    ///
    /// Fuzzing found that this was computed unchecked: a header with a valid checksum but a
    /// base size near 2^64 (a damaged or crafted overlay file) overflowed and panicked while
    /// the header was decoded, before the base size was compared with the base's. Every offset
    /// of the file is now checked here, once, so everything derived from a layout fits.
    pub fn new(chunk_size: u64, base_size: u64) -> Option<Layout> {
        let n_chunks = base_size.div_ceil(chunk_size);
        let data_offset = chunk_size.max(HEADER_LEN);
        let table_len = n_chunks.div_ceil(4);
        let log_offset = align(CKPT_HEAD as u64 + table_len + 4, 4096)?;
        let log_capacity = align(MIN_LOG.max(table_len.checked_mul(4)?), 4096)?;
        let first = align(
            data_offset.checked_add(n_chunks.checked_mul(chunk_size)?)?,
            4096,
        )?;
        let region_len = log_offset.checked_add(log_capacity)?;
        // The end of the second region, i.e. `file_len()`, must fit too.
        first.checked_add(region_len)?.checked_add(region_len)?;
        Some(Layout {
            chunk_size,
            base_size,
            n_chunks,
            data_offset,
            regions: [first, first + region_len],
            table_len,
            log_offset,
            log_capacity,
        })
    }

    /// Length of the whole file.
    pub fn file_len(&self) -> u64 {
        self.regions[1] + self.log_offset + self.log_capacity
    }

    /// File offset of chunk `c`.
    pub fn chunk_offset(&self, c: u64) -> u64 {
        self.data_offset + c * self.chunk_size
    }
}

/// What the header records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Base size in bytes.
    pub base_size: u64,
    /// Fingerprint of the base's content (see `identity`).
    pub fingerprint: [u8; 32],
    /// Who the base was (a path, for error messages; not compared).
    pub label: String,
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// No signature.
    NotOverlay,
    /// Another format version.
    Version(u32),
    /// Anything else.
    Damaged(Damage),
}

impl Header {
    /// The 4 KiB header block, recording `layout` (the layout of this header's chunk size and
    /// base size).
    pub fn encode(&self, layout: &Layout) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.base_size.to_le_bytes());
        b[24..32].copy_from_slice(&layout.n_chunks.to_le_bytes());
        b[32..40].copy_from_slice(&layout.data_offset.to_le_bytes());
        b[40..48].copy_from_slice(&layout.regions[0].to_le_bytes());
        b[48..56].copy_from_slice(&layout.regions[1].to_le_bytes());
        b[56..64].copy_from_slice(&layout.log_capacity.to_le_bytes());
        b[64..96].copy_from_slice(&self.fingerprint);
        let label = truncate_utf8(&self.label, MAX_LABEL);
        b[96..98].copy_from_slice(&(label.len() as u16).to_le_bytes());
        b[98..98 + label.len()].copy_from_slice(label.as_bytes());
        let crc = crc32fast::hash(&b[..HEADER_LEN as usize - 4]);
        b[HEADER_LEN as usize - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header block, including that its layout is the one its chunk size
    /// and base size imply.
    pub fn decode(b: &[u8]) -> Result<(Header, Layout), HeaderProblem> {
        if b.len() < HEADER_LEN as usize || b[0..8] != MAGIC {
            return Err(HeaderProblem::NotOverlay);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(HeaderProblem::Version(version));
        }
        let n = HEADER_LEN as usize;
        let crc = u32_at(b, n - 4);
        let actual = crc32fast::hash(&b[..n - 4]);
        if crc != actual {
            return Err(HeaderProblem::Damaged(Damage::HeaderChecksum {
                stored: crc,
                computed: actual,
            }));
        }
        let chunk_size = u32_at(b, 12);
        if !crate::chunk_size_ok(u64::from(chunk_size)) {
            return Err(HeaderProblem::Damaged(Damage::ChunkSize { chunk_size }));
        }
        let base_size = u64_at(b, 16);
        let layout = Layout::new(u64::from(chunk_size), base_size)
            .ok_or(HeaderProblem::Damaged(Damage::BaseSize { base_size }))?;
        let recorded = [
            u64_at(b, 24),
            u64_at(b, 32),
            u64_at(b, 40),
            u64_at(b, 48),
            u64_at(b, 56),
        ];
        let expected = [
            layout.n_chunks,
            layout.data_offset,
            layout.regions[0],
            layout.regions[1],
            layout.log_capacity,
        ];
        if recorded != expected {
            return Err(HeaderProblem::Damaged(Damage::Layout {
                chunk_size,
                base_size,
                recorded,
                expected,
            }));
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(&b[64..96]);
        let label_len = usize::from(u16::from_le_bytes([b[96], b[97]])).min(MAX_LABEL);
        let label = String::from_utf8_lossy(&b[98..98 + label_len]).into_owned();
        Ok((
            Header {
                chunk_size,
                base_size,
                fingerprint,
                label,
            },
            layout,
        ))
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Every chunk's state, 2 bits each (the durable state of a file overlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTable {
    bytes: Vec<u8>,
    n_chunks: u64,
}

impl StateTable {
    /// All chunks [`ChunkState::Base`].
    pub fn new(n_chunks: u64) -> StateTable {
        StateTable {
            bytes: vec![0; n_chunks.div_ceil(4) as usize],
            n_chunks,
        }
    }

    /// Number of chunks.
    pub fn len(&self) -> u64 {
        self.n_chunks
    }

    /// State of chunk `c`.
    pub fn get(&self, c: u64) -> ChunkState {
        let v = (self.bytes[(c / 4) as usize] >> ((c % 4) * 2)) & 3;
        ChunkState::from_u8(v).unwrap_or(ChunkState::Data)
    }

    /// Sets chunk `c`.
    pub fn set(&mut self, c: u64, s: ChunkState) {
        let byte = &mut self.bytes[(c / 4) as usize];
        let shift = (c % 4) * 2;
        *byte = (*byte & !(3 << shift)) | ((s as u8) << shift);
    }

    /// Applies runs (already checked to lie inside the table).
    pub fn apply(&mut self, runs: &[Run]) {
        for run in runs {
            for c in run.start..run.start + u64::from(run.len) {
                self.set(c, run.state);
            }
        }
    }
}

/// Encodes a checkpoint: generation, the table, CRC32.
pub fn encode_checkpoint(generation: u64, table: &StateTable) -> Vec<u8> {
    let mut b = Vec::with_capacity(CKPT_HEAD + table.bytes.len() + 4);
    b.extend_from_slice(&CKPT_MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&table.n_chunks.to_le_bytes());
    b.extend_from_slice(&(table.bytes.len() as u64).to_le_bytes());
    b.extend_from_slice(&table.bytes);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a checkpoint of a table of `n_chunks` chunks; `None` when it is torn, damaged or
/// absent. `b` may run past the checkpoint.
///
/// A generation of `u64::MAX` counts as damaged: no writer gets there (generations count
/// checkpoints), and fuzzing found that accepting it made the next checkpoint's generation
/// overflow and panic when such a file was opened for writing.
pub fn decode_checkpoint(b: &[u8], n_chunks: u64) -> Option<(u64, StateTable)> {
    if b.len() < CKPT_HEAD || b[0..8] != CKPT_MAGIC {
        return None;
    }
    let generation = u64_at(b, 8);
    if generation == u64::MAX {
        return None;
    }
    let table_len = n_chunks.div_ceil(4) as usize;
    if u64_at(b, 16) != n_chunks || u64_at(b, 24) != table_len as u64 {
        return None;
    }
    let end = CKPT_HEAD + table_len;
    if b.len() < end + 4 || crc32fast::hash(&b[..end]) != u32_at(b, end) {
        return None;
    }
    let table = StateTable {
        bytes: b[CKPT_HEAD..end].to_vec(),
        n_chunks,
    };
    // A state value of 3 does not exist: treat the checkpoint as damaged.
    if (0..n_chunks).any(|c| (table.bytes[(c / 4) as usize] >> ((c % 4) * 2)) & 3 == 3) {
        return None;
    }
    Some((generation, table))
}

/// A run of chunks that took the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First chunk.
    pub start: u64,
    /// Number of chunks.
    pub len: u32,
    /// Their new state.
    pub state: ChunkState,
}

/// Joins sorted per-chunk changes into runs.
pub fn to_runs(changes: &[(u64, ChunkState)]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &(c, state) in changes {
        match runs.last_mut() {
            Some(r) if r.state == state && r.start + u64::from(r.len) == c && r.len < u32::MAX => {
                r.len += 1
            }
            _ => runs.push(Run {
                start: c,
                len: 1,
                state,
            }),
        }
    }
    runs
}

/// Encodes one log record.
pub fn encode_record(generation: u64, seq: u64, runs: &[Run]) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_HEAD + runs.len() * RUN_LEN + 4);
    b.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    for run in runs {
        b.extend_from_slice(&run.start.to_le_bytes());
        b.extend_from_slice(&run.len.to_le_bytes());
        b.extend_from_slice(&[run.state as u8, 0, 0, 0]);
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the record at the start of `b` if it is complete, intact, of `generation` with
/// sequence number `seq`, and names only chunks below `n_chunks`; returns its runs and length.
pub fn decode_record(
    b: &[u8],
    generation: u64,
    seq: u64,
    n_chunks: u64,
) -> Option<(Vec<Run>, usize)> {
    if b.len() < RECORD_HEAD + 4 || u32_at(b, 0) != RECORD_MAGIC {
        return None;
    }
    let count = u32_at(b, 4) as usize;
    if count == 0 || count > MAX_RUNS_PER_RECORD {
        return None;
    }
    if u64_at(b, 8) != generation || u64_at(b, 16) != seq {
        return None;
    }
    let end = RECORD_HEAD + count * RUN_LEN;
    if b.len() < end + 4 || crc32fast::hash(&b[..end]) != u32_at(b, end) {
        return None;
    }
    let mut runs = Vec::with_capacity(count);
    for i in 0..count {
        let at = RECORD_HEAD + i * RUN_LEN;
        let run = Run {
            start: u64_at(b, at),
            len: u32_at(b, at + 8),
            state: ChunkState::from_u8(b[at + 12])?,
        };
        let end_chunk = run.start.checked_add(u64::from(run.len))?;
        if run.len == 0 || end_chunk > n_chunks {
            return None;
        }
        runs.push(run);
    }
    Some((runs, end + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            chunk_size: 65536,
            base_size: 10 << 20,
            fingerprint: [7; 32],
            label: "/srv/KNOPPIX".into(),
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = header();
        let b = h.encode(&Layout::new(u64::from(h.chunk_size), h.base_size).unwrap());
        let (back, layout) = Header::decode(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(layout.n_chunks, 160);
        assert_eq!(layout.data_offset, 65536);
        assert_eq!(layout.regions[0], 65536 + (10 << 20));
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert!(matches!(
            Header::decode(&bad),
            Err(HeaderProblem::Damaged(_))
        ));
        bad = b.clone();
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(HeaderProblem::NotOverlay));
        bad = b;
        bad[8] = 9;
        assert_eq!(Header::decode(&bad), Err(HeaderProblem::Version(9)));
    }

    #[test]
    fn checkpoint_round_trip_and_torn() {
        let mut t = StateTable::new(10);
        t.set(0, ChunkState::Data);
        t.set(9, ChunkState::Zero);
        let b = encode_checkpoint(5, &t);
        let (generation, back) = decode_checkpoint(&b, 10).unwrap();
        assert_eq!((generation, &back), (5, &t));
        assert_eq!(back.get(9), ChunkState::Zero);
        assert!(decode_checkpoint(&b[..b.len() - 1], 10).is_none());
        assert!(decode_checkpoint(&b, 11).is_none());
        let mut bad = b;
        bad[33] ^= 4;
        assert!(decode_checkpoint(&bad, 10).is_none());
    }

    #[test]
    fn records_round_trip_and_reject_torn_stale_or_wild() {
        let changes = [
            (1, ChunkState::Data),
            (2, ChunkState::Data),
            (3, ChunkState::Zero),
            (7, ChunkState::Zero),
        ];
        let runs = to_runs(&changes);
        assert_eq!(runs.len(), 3);
        assert_eq!(
            runs[0],
            Run {
                start: 1,
                len: 2,
                state: ChunkState::Data
            }
        );
        let b = encode_record(3, 4, &runs);
        assert_eq!(decode_record(&b, 3, 4, 8), Some((runs.clone(), b.len())));
        for cut in 0..b.len() {
            assert!(decode_record(&b[..cut], 3, 4, 8).is_none(), "cut at {cut}");
        }
        assert!(decode_record(&b, 2, 4, 8).is_none(), "stale generation");
        assert!(decode_record(&b, 3, 5, 8).is_none(), "wrong sequence");
        assert!(decode_record(&b, 3, 4, 7).is_none(), "chunk out of range");
        let mut bad = b;
        bad[30] ^= 1;
        assert!(decode_record(&bad, 3, 4, 8).is_none());
    }
}
