//! Per-connection cap on requests and payload bytes in flight (back-pressure).

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    count: usize,
    bytes: usize,
    closed: bool,
}

/// Counts requests between "read from the socket" and "reply written".
///
/// The reader acquires before dispatching; the writer releases after the
/// reply left. When the cap is reached the reader blocks, so a client that
/// never reads its replies cannot make the server buffer more.
#[derive(Debug)]
pub(crate) struct Limiter {
    max_count: usize,
    max_bytes: usize,
    state: Mutex<State>,
    cond: Condvar,
}

impl Limiter {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        Limiter {
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for room for one request of `bytes`; false once the connection is closed.
    ///
    /// A request larger than the byte cap proceeds when nothing else is in flight.
    pub(crate) fn acquire(&self, bytes: usize) -> bool {
        let mut s = self.lock();
        loop {
            if s.closed {
                return false;
            }
            let fits_count = s.count < self.max_count;
            let fits_bytes = s.count == 0 || s.bytes.saturating_add(bytes) <= self.max_bytes;
            if fits_count && fits_bytes {
                s.count += 1;
                s.bytes = s.bytes.saturating_add(bytes);
                return true;
            }
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Return the room taken by one request.
    pub(crate) fn release(&self, bytes: usize) {
        let mut s = self.lock();
        s.count = s.count.saturating_sub(1);
        s.bytes = s.bytes.saturating_sub(bytes);
        drop(s);
        self.cond.notify_all();
    }

    /// Mark the connection dead and wake every waiter.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
    }

    /// Wait until nothing is in flight (or the connection is closed).
    pub(crate) fn wait_idle(&self) {
        let mut s = self.lock();
        while s.count > 0 && !s.closed {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Requests currently in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn count_cap_blocks_until_release() {
        let l = Arc::new(Limiter::new(2, 1 << 20));
        assert!(l.acquire(10));
        assert!(l.acquire(10));
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || l2.acquire(10));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        l.release(10);
        assert!(t.join().unwrap());
        assert_eq!(l.in_flight(), 2);
    }

    #[test]
    fn byte_cap_allows_one_oversized_request() {
        let l = Limiter::new(10, 100);
        assert!(l.acquire(1000));
        l.release(1000);
        assert!(l.acquire(60));
        let l = Arc::new(l);
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || l2.acquire(60));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        l.close();
        assert!(!t.join().unwrap());
        l.wait_idle();
    }
}
