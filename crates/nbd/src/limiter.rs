//! Caps on requests and payload bytes in flight (back-pressure): per connection, and a
//! byte budget shared by all connections of a server.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A request this small always gets its bytes when its connection has nothing else in flight,
/// whatever the shared budget says, so a server whose budget is held by clients that do not
/// read their replies still answers everyone else, one request at a time. It covers what the
/// Linux kernel (up to 640 KiB by default) and nbdcopy (256 KiB) send.
pub(crate) const GUARANTEED_BYTES: usize = 1 << 20;

/// How often a reader waiting for the shared budget checks whether its connection died.
const BUDGET_RECHECK: Duration = Duration::from_millis(50);

/// Reply bytes in flight over all connections of a server.
#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: usize,
    used: Mutex<usize>,
    cond: Condvar,
}

impl Budget {
    /// A budget of `max_bytes` (at least one guaranteed request).
    pub(crate) fn new(max_bytes: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max_bytes: max_bytes.max(GUARANTEED_BYTES),
            used: Mutex::new(0),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` if they fit, waiting up to [`BUDGET_RECHECK`] for room.
    fn take(&self, bytes: usize, forced: bool) -> bool {
        let mut used = self.lock();
        if !forced && used.saturating_add(bytes) > self.max_bytes {
            used = self
                .cond
                .wait_timeout(used, BUDGET_RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if used.saturating_add(bytes) > self.max_bytes {
                return false;
            }
        }
        *used = used.saturating_add(bytes);
        true
    }

    fn give(&self, bytes: usize) {
        let mut used = self.lock();
        *used = used.saturating_sub(bytes);
        drop(used);
        self.cond.notify_all();
    }

    /// Bytes currently taken.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        *self.lock()
    }
}

#[derive(Debug, Default)]
struct State {
    count: usize,
    bytes: usize,
    closed: bool,
    /// Jobs handed to the worker pool and not finished (run or dropped) yet.
    jobs: usize,
    /// Bytes this connection holds in the server-wide budget.
    held: usize,
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
    budget: Arc<Budget>,
}

impl Limiter {
    /// A connection's limiter; its bytes also count against the server-wide `budget`.
    pub(crate) fn new(max_count: usize, max_bytes: usize, budget: Arc<Budget>) -> Self {
        Limiter {
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for room for one request of `bytes`; false once the connection is closed.
    ///
    /// A request larger than the byte cap proceeds when nothing else is in flight.
    ///
    /// Then the bytes are taken from the server-wide budget, waiting for room there unless
    /// the request is the connection's only one in flight and at most [`GUARANTEED_BYTES`].
    pub(crate) fn acquire(&self, bytes: usize) -> bool {
        {
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
                    break;
                }
                s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
        loop {
            // Alone means this request is the connection's only one in flight; that can
            // become true while it waits, as the connection's earlier replies leave.
            let (closed, alone) = {
                let s = self.lock();
                (s.closed, s.count == 1)
            };
            if closed {
                self.release_local(bytes);
                return false;
            }
            if self.budget.take(bytes, alone && bytes <= GUARANTEED_BYTES) {
                break;
            }
        }
        self.lock().held += bytes;
        true
    }

    /// Return the room taken by one request.
    pub(crate) fn release(&self, bytes: usize) {
        let give = {
            let mut s = self.lock();
            let give = bytes.min(s.held);
            s.held -= give;
            give
        };
        self.budget.give(give);
        self.release_local(bytes);
    }

    /// Gives back to the server-wide budget whatever this connection still holds: replies
    /// that were queued when its writer stopped are dropped unreleased. Call once the
    /// connection has ended (no reader, writer or job left).
    pub(crate) fn finish(&self) {
        let held = std::mem::take(&mut self.lock().held);
        self.budget.give(held);
    }

    fn release_local(&self, bytes: usize) {
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

    /// Whether the connection is dead (no reply can reach the client any more).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Count a job handed to the worker pool; pair with [`Limiter::job_finished`].
    pub(crate) fn job_started(&self) {
        self.lock().jobs += 1;
    }

    /// A job counted by [`Limiter::job_started`] ran to its end, or was dropped unrun.
    pub(crate) fn job_finished(&self) {
        let mut s = self.lock();
        s.jobs = s.jobs.saturating_sub(1);
        drop(s);
        self.cond.notify_all();
    }

    /// Wait until every job of this connection has finished, whether or not the connection is
    /// closed: a connection ends (and gives back its slot) only once the worker pool holds no
    /// more of its work, so the pool's queue stays bounded by connections × in-flight cap even
    /// when clients vanish with requests in flight and reconnect at once.
    pub(crate) fn wait_jobs(&self) {
        let mut s = self.lock();
        while s.jobs > 0 {
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
        let l = Arc::new(Limiter::new(2, 1 << 20, Budget::new(usize::MAX)));
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
    fn jobs_are_waited_for_even_after_close() {
        let l = Arc::new(Limiter::new(4, 1 << 20, Budget::new(usize::MAX)));
        l.wait_jobs(); // nothing started: returns at once
        l.job_started();
        l.job_started();
        l.close();
        assert!(l.is_closed());
        let l2 = Arc::clone(&l);
        let t = std::thread::spawn(move || l2.wait_jobs());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "closing must not end the wait for jobs");
        l.job_finished();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        l.job_finished();
        t.join().unwrap();
    }

    #[test]
    fn byte_cap_allows_one_oversized_request() {
        let l = Limiter::new(10, 100, Budget::new(usize::MAX));
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

    #[test]
    fn shared_budget_holds_back_other_connections_but_guarantees_one_small_request() {
        let budget = Budget::new(2 << 20);
        let hog = Limiter::new(100, 64 << 20, Arc::clone(&budget));
        assert!(hog.acquire(1 << 20));
        assert!(hog.acquire(1 << 20)); // the budget is now used up
        assert_eq!(budget.used(), 2 << 20);
        let other = Arc::new(Limiter::new(100, 64 << 20, Arc::clone(&budget)));
        // Its first small request goes through regardless...
        assert!(other.acquire(512 << 10));
        // ...a second one waits for the budget,
        let o2 = Arc::clone(&other);
        let t = std::thread::spawn(move || o2.acquire(512 << 10));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!t.is_finished());
        // and proceeds once its own first reply has left (it is then alone), although the
        // hog still holds the whole budget.
        other.release(512 << 10);
        assert!(t.join().unwrap());
        assert_eq!(budget.used(), (2 << 20) + (512 << 10));
        hog.release(1 << 20);
        // A request over the guarantee waits even when alone, and gives up when closed.
        let big = Arc::new(Limiter::new(100, 64 << 20, Arc::clone(&budget)));
        let b2 = Arc::clone(&big);
        let t = std::thread::spawn(move || b2.acquire(8 << 20));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!t.is_finished());
        big.close();
        assert!(!t.join().unwrap());
        assert_eq!(big.in_flight(), 0);
        other.release(512 << 10);
        assert_eq!(budget.used(), 1 << 20);
        // A connection that ends with a reply never released gives its bytes back.
        hog.finish();
        assert_eq!(budget.used(), 0);
        hog.release(1 << 20); // a late release cannot give back twice
        assert_eq!(budget.used(), 0);
    }
}
