//! Reuse of large reply buffers across requests (avoids page faults on every read).

use std::sync::{Mutex, MutexGuard};

/// Buffers smaller than this are not worth pooling.
const MIN_POOLED: usize = 64 << 10;
/// Most buffers kept.
const MAX_BUFFERS: usize = 64;

#[derive(Debug, Default)]
struct State {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

/// A byte-capped stack of spare `Vec<u8>` allocations, shared by all connections.
#[derive(Debug)]
pub(crate) struct BufPool {
    state: Mutex<State>,
    max_bytes: usize,
}

impl BufPool {
    /// A pool keeping at most `max_bytes` of spare capacity.
    pub(crate) fn new(max_bytes: usize) -> Self {
        BufPool {
            state: Mutex::new(State::default()),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A vector of exactly `len` bytes whose contents are unspecified (a reused buffer keeps its
    /// old bytes; only growth is zeroed): for callers that overwrite every byte, which saves
    /// clearing large read replies.
    pub(crate) fn take_len(&self, len: usize) -> Vec<u8> {
        let mut v = if len >= MIN_POOLED {
            self.take_reused(len)
        } else {
            None
        }
        .unwrap_or_default();
        v.resize(len, 0);
        v
    }

    /// The best-fitting pooled vector of at least `cap` bytes of capacity, contents kept.
    fn take_reused(&self, cap: usize) -> Option<Vec<u8>> {
        let mut s = self.lock();
        let best = s
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= cap)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        let v = s.bufs.swap_remove(best);
        s.bytes -= v.capacity();
        Some(v)
    }

    /// Return a vector for reuse (dropped if the pool is full or it is small).
    pub(crate) fn give(&self, v: Vec<u8>) {
        let cap = v.capacity();
        if cap < MIN_POOLED {
            return;
        }
        let mut s = self.lock();
        if s.bufs.len() < MAX_BUFFERS && s.bytes + cap <= self.max_bytes {
            s.bytes += cap;
            s.bufs.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_best_fitting_buffer_and_respects_caps() {
        let p = BufPool::new(3 << 20);
        p.give(Vec::with_capacity(1 << 20));
        p.give(Vec::with_capacity(2 << 20));
        p.give(Vec::with_capacity(1 << 20)); // over the byte cap: dropped
        p.give(Vec::with_capacity(100)); // too small: dropped
        let v = p.take_len(1000 << 10);
        assert!(v.capacity() >= 1000 << 10 && v.capacity() < 2 << 20);
        let w = p.take_len(1500 << 10);
        assert!(w.capacity() >= 2 << 20);
        let x = p.take_len(1 << 20);
        assert_eq!(x.capacity(), 1 << 20); // fresh allocation
    }

    #[test]
    fn take_len_gives_exact_length_and_reuses_capacity() {
        let p = BufPool::new(4 << 20);
        let fresh = p.take_len(100 << 10);
        assert_eq!(fresh.len(), 100 << 10);
        assert!(fresh.iter().all(|&b| b == 0));
        p.give(vec![7u8; 200 << 10]);
        let reused = p.take_len(150 << 10);
        assert_eq!(reused.len(), 150 << 10);
        assert!(
            reused.capacity() >= 200 << 10,
            "the pooled buffer was reused"
        );
        p.give(reused);
        let grown = p.take_len(180 << 10);
        assert_eq!(grown.len(), 180 << 10);
        assert!(
            grown[150 << 10..].iter().all(|&b| b == 0),
            "growth is zeroed"
        );
        assert!(p.take_len(10).len() == 10);
    }
}
