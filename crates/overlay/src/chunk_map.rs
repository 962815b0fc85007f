//! Chunk geometry and the in-memory state of every chunk (base, zero or overlay data), with
//! the dirty bits a file overlay turns into journal records at the next flush.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Where a chunk's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkState {
    /// Unchanged: read from the base.
    Base = 0,
    /// Trimmed or zeroed: reads as zeros, nothing stored.
    Zero = 1,
    /// Written: the overlay holds the whole chunk.
    Data = 2,
}

impl ChunkState {
    /// The state with this numeric value, if any.
    pub fn from_u8(v: u8) -> Option<ChunkState> {
        match v {
            0 => Some(ChunkState::Base),
            1 => Some(ChunkState::Zero),
            2 => Some(ChunkState::Data),
            _ => None,
        }
    }
}

/// How an export of `size` bytes is cut into chunks of a power-of-two size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// BlockDevice size in bytes.
    pub size: u64,
    /// Chunk size in bytes (a power of two).
    pub chunk: u64,
    /// Number of chunks (the last may be short).
    pub n_chunks: u64,
}

/// One chunk's share of a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Chunk index.
    pub chunk: u64,
    /// Offset inside the chunk.
    pub offset: usize,
    /// Bytes in this piece.
    pub len: usize,
    /// Offset of the piece inside the caller's range.
    pub pos: usize,
}

impl Geometry {
    pub fn new(size: u64, chunk: u64) -> Geometry {
        Geometry {
            size,
            chunk,
            n_chunks: size.div_ceil(chunk),
        }
    }

    /// First byte of chunk `c`.
    pub fn start(&self, c: u64) -> u64 {
        c * self.chunk
    }

    /// Bytes in chunk `c` (the last chunk may be short).
    pub fn chunk_len(&self, c: u64) -> usize {
        (self.size - self.start(c)).min(self.chunk) as usize
    }

    /// The chunk holding byte `offset`.
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset / self.chunk
    }

    /// Cuts `[offset, offset + len)` (inside the export) into per-chunk pieces.
    pub fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = Piece> + '_ {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = self.chunk_of(pos);
            let in_chunk = pos - self.start(chunk);
            let n = (self.chunk - in_chunk).min(end - pos);
            let piece = Piece {
                chunk,
                offset: in_chunk as usize,
                len: n as usize,
                pos: (pos - offset) as usize,
            };
            pos += n;
            Some(piece)
        })
    }
}

/// The state of every chunk, readable without locks; each chunk's state is changed only under
/// that chunk's stripe lock (see `overlay`).
#[derive(Debug)]
pub(crate) struct ChunkMap {
    states: Vec<AtomicU8>,
    /// One bit per chunk whose state changed since the last flush (file overlays only).
    dirty: Option<Vec<AtomicU64>>,
}

impl ChunkMap {
    /// A map with the given initial states; `track_dirty` keeps dirty bits for a journal.
    pub fn new(initial: impl IntoIterator<Item = ChunkState>, track_dirty: bool) -> ChunkMap {
        let states: Vec<AtomicU8> = initial
            .into_iter()
            .map(|s| AtomicU8::new(s as u8))
            .collect();
        let dirty = track_dirty.then(|| {
            (0..states.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect()
        });
        ChunkMap { states, dirty }
    }

    /// Number of chunks.
    pub fn len(&self) -> u64 {
        self.states.len() as u64
    }

    /// The current state of chunk `c`.
    pub fn get(&self, c: u64) -> ChunkState {
        let v = self.states[c as usize].load(Ordering::Acquire);
        ChunkState::from_u8(v).unwrap_or(ChunkState::Data)
    }

    /// Sets chunk `c`'s state (after its data, if any, is in the store) and marks it dirty.
    pub fn set(&self, c: u64, state: ChunkState) {
        self.states[c as usize].store(state as u8, Ordering::Release);
        self.mark_dirty(c);
    }

    fn mark_dirty(&self, c: u64) {
        if let Some(dirty) = &self.dirty {
            dirty[(c / 64) as usize].fetch_or(1 << (c % 64), Ordering::AcqRel);
        }
    }

    /// Clears every dirty bit and returns the dirty chunks with their current states, in
    /// chunk order. Every state returned was set after its data reached the store.
    pub fn take_dirty(&self) -> Vec<(u64, ChunkState)> {
        let mut out = Vec::new();
        let Some(dirty) = &self.dirty else {
            return out;
        };
        for (i, word) in dirty.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let c = i as u64 * 64 + b;
                out.push((c, self.get(c)));
            }
        }
        out
    }

    /// Marks these chunks dirty again (their journal record could not be written).
    pub fn redirty(&self, changes: &[(u64, ChunkState)]) {
        for &(c, _) in changes {
            self.mark_dirty(c);
        }
    }

    /// How many chunks are in each state: (zero, data).
    pub fn counts(&self) -> (u64, u64) {
        let (mut zero, mut data) = (0, 0);
        for s in &self.states {
            match ChunkState::from_u8(s.load(Ordering::Relaxed)) {
                Some(ChunkState::Zero) => zero += 1,
                Some(ChunkState::Data) => data += 1,
                _ => {}
            }
        }
        (zero, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_ranges() {
        let g = Geometry::new(10_000, 4096);
        assert_eq!(g.n_chunks, 3);
        assert_eq!(g.chunk_len(2), 10_000 - 8192);
        let p: Vec<Piece> = g.pieces(4000, 5000).collect();
        assert_eq!(
            p,
            vec![
                Piece {
                    chunk: 0,
                    offset: 4000,
                    len: 96,
                    pos: 0
                },
                Piece {
                    chunk: 1,
                    offset: 0,
                    len: 4096,
                    pos: 96
                },
                Piece {
                    chunk: 2,
                    offset: 0,
                    len: 808,
                    pos: 4192
                },
            ]
        );
        assert_eq!(g.pieces(0, 0).count(), 0);
    }

    #[test]
    fn dirty_bits_round_trip() {
        let m = ChunkMap::new(vec![ChunkState::Base; 130], true);
        m.set(3, ChunkState::Data);
        m.set(129, ChunkState::Zero);
        m.set(64, ChunkState::Data);
        assert_eq!(
            m.take_dirty(),
            vec![
                (3, ChunkState::Data),
                (64, ChunkState::Data),
                (129, ChunkState::Zero)
            ]
        );
        assert!(m.take_dirty().is_empty());
        m.redirty(&[(5, ChunkState::Data)]);
        assert_eq!(m.take_dirty(), vec![(5, ChunkState::Base)]);
        assert_eq!(m.counts(), (1, 2));
    }
}
