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

    /// An empty vector with at least `cap` bytes of capacity.
    pub(crate) fn take(&self, cap: usize) -> Vec<u8> {
        if cap >= MIN_POOLED {
            let mut s = self.lock();
            let best = s
                .bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= cap)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut v = s.bufs.swap_remove(i);
                s.bytes -= v.capacity();
                v.clear();
                return v;
            }
        }
        Vec::with_capacity(cap)
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
        let v = p.take(1000 << 10);
        assert!(v.capacity() >= 1000 << 10 && v.capacity() < 2 << 20);
        assert!(v.is_empty());
        let w = p.take(1500 << 10);
        assert!(w.capacity() >= 2 << 20);
        let x = p.take(1 << 20);
        assert_eq!(x.capacity(), 1 << 20); // fresh allocation
    }
}
