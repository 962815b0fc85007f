//! Sequential read-ahead: when reads move from block `i` to block `i + 1` (or one read spans
//! several blocks), the next blocks are decoded on a small pool of threads, so a sequential reader
//! finds them in the cache and every core is busy decoding.
//!
//! Up to [`STREAMS`] sequential streams are tracked at once (several NBD connections, or several
//! readers of one image, each reading its own region in order). A stream keeps up to `window`
//! blocks queued or decoded ahead of its position and tops the window up when half of it has been
//! consumed. Bookkeeping takes one small lock with `try_lock`: a reader that finds it busy skips
//! read-ahead for that call instead of waiting.
//!
//! Blocks are registered in the cache unclaimed before they are queued; whoever claims one first
//! decodes it, so a reader that overtakes the pool decodes a block itself instead of waiting
//! behind a queue, and no block is ever decoded twice at once.
//!
//! Blocks are queued in batches of consecutive blocks (a window shared among the threads); a
//! worker reads the compressed bytes of the blocks it claimed in a batch with one
//! [`crate::ImageSource::read_many_at`] call, which a remote source turns into one request.
//!
//! A source whose every byte is a transfer from elsewhere ([`crate::ImageSource::asked_only`]:
//! a web origin) gets no speculative read-ahead: a boot reads scattered pieces of files, and
//! blocks decoded ahead of them are mostly blocks nobody reads, fetched for nothing. There a
//! read that spans several blocks has its missing blocks read together instead (one request
//! for adjacent ones), and only explicit hints ([`ReadAhead::queue`], NBD's `CACHE`) reach the
//! pool: what is fetched is exactly what readers asked for.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::cache::{Block, Pending};
use crate::image_core::Core;

/// Sequential streams tracked at once.
pub(crate) const STREAMS: usize = 8;

/// One reader's position as read-ahead sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    /// Last block it read.
    last: u32,
    /// Highest block queued for it.
    ahead: u32,
    /// It has moved forward block by block (or read several blocks at once).
    sequential: bool,
    /// Clock value of its last read; the least recently used stream is replaced.
    used: u64,
    live: bool,
}

#[derive(Debug, Default)]
struct Streams {
    slots: [Stream; STREAMS],
    clock: u64,
}

/// Consecutive blocks to decode, each with its registration in the cache.
type Job = Vec<(u32, Arc<Pending>)>;

/// The worker threads, started on first use.
struct Pool {
    jobs: Sender<Job>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// Read-ahead state of one image.
pub(crate) struct ReadAhead {
    window: u32,
    threads: usize,
    /// Read only what readers ask for (no blocks ahead of sequential readers).
    asked_only: bool,
    streams: Mutex<Streams>,
    pool: OnceLock<Option<Pool>>,
}

impl ReadAhead {
    /// Read-ahead of `window` blocks on `threads` threads (`window` 0 disables it); with
    /// `asked_only`, none ahead of sequential readers, the window bounding only hints.
    pub(crate) fn new(window: u32, threads: usize, asked_only: bool) -> ReadAhead {
        ReadAhead {
            window: if threads == 0 { 0 } else { window },
            threads,
            asked_only,
            streams: Mutex::new(Streams::default()),
            pool: OnceLock::new(),
        }
    }

    /// Blocks it keeps decoded ahead of a sequential reader (0: read-ahead is off).
    pub(crate) fn window(&self) -> u32 {
        if self.asked_only {
            0
        } else {
            self.window
        }
    }

    /// Most blocks one hint may queue (0: hints are ignored).
    pub(crate) fn hint_window(&self) -> u32 {
        self.window
    }

    /// Notes a read of blocks `first..=last`, before the reader fetches them. Queues blocks
    /// ahead when the reader is sequential; for a source that wants asked-for reads only,
    /// decodes the blocks of a read that spans several together instead and returns them (by
    /// cache key) for the reader to use.
    pub(crate) fn observe(&self, core: &Arc<Core>, first: u32, last: u32) -> Vec<(u32, Block)> {
        if self.asked_only {
            return if last > first {
                core.load_together(first, last)
            } else {
                Vec::new()
            };
        }
        if self.window == 0 {
            return Vec::new();
        }
        let num_blocks = core.index.header().num_blocks;
        if let Some(range) = self.plan(first, last, num_blocks) {
            self.queue(core, range);
        }
        Vec::new()
    }

    /// Queues blocks on the pool (a hint, e.g. NBD's `CACHE` command): each block that is
    /// neither cached, in flight nor known zero gets decoded in the background.
    pub(crate) fn queue(&self, core: &Arc<Core>, range: RangeInclusive<u32>) {
        let Some(pool) = self.pool(core) else {
            return;
        };
        let batch_len = (self.window as usize / self.threads.max(1)).max(1);
        let mut batch: Job = Vec::new();
        for block in range {
            let key = core.cache_key(block);
            if core.zero.is_zero(block) {
                continue;
            }
            if let Some(pending) = core.cache.queue(key) {
                batch.push((key, pending));
            }
            if batch.len() >= batch_len && pool.jobs.send(std::mem::take(&mut batch)).is_err() {
                return;
            }
        }
        if !batch.is_empty() {
            // A closed pool drops the batch; its blocks are then decoded by their readers.
            let _ = pool.jobs.send(batch);
        }
    }

    /// The blocks to queue after a read of `first..=last`, if any.
    fn plan(&self, first: u32, last: u32, num_blocks: u32) -> Option<RangeInclusive<u32>> {
        let mut streams = match self.streams.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        streams.clock += 1;
        let clock = streams.clock;
        let found = streams
            .slots
            .iter()
            .position(|s| s.live && (s.last == first || s.last.checked_add(1) == Some(first)));
        let slot = match found {
            Some(k) => {
                let stream = &mut streams.slots[k];
                if stream.last != first {
                    stream.sequential = true;
                }
                k
            }
            None => {
                let k = (0..STREAMS)
                    .min_by_key(|&k| {
                        let s = streams.slots[k];
                        if s.live {
                            s.used
                        } else {
                            0
                        }
                    })
                    .unwrap_or(0);
                streams.slots[k] = Stream {
                    last: first,
                    ahead: first,
                    sequential: false,
                    used: 0,
                    live: true,
                };
                k
            }
        };
        let window = self.window;
        let stream = &mut streams.slots[slot];
        if last > first {
            stream.sequential = true;
        }
        stream.last = last;
        stream.used = clock;
        if !stream.sequential {
            return None;
        }
        if stream.ahead > last && stream.ahead - last > window / 2 {
            return None;
        }
        let target = last
            .saturating_add(window)
            .min(num_blocks.saturating_sub(1));
        let from = stream.ahead.max(first).saturating_add(1);
        stream.ahead = stream.ahead.max(target);
        (from <= target).then_some(from..=target)
    }

    /// The pool, started on first use; `None` when no thread could be started.
    fn pool(&self, core: &Arc<Core>) -> Option<&Pool> {
        self.pool
            .get_or_init(|| start_pool(core, self.threads))
            .as_ref()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(Some(pool)) = self.pool.take() {
            pool.stop.store(true, Ordering::Relaxed);
            drop(pool.jobs);
            for worker in pool.workers {
                // A worker that panicked has nothing left to clean up.
                let _ = worker.join();
            }
        }
    }
}

fn start_pool(core: &Arc<Core>, threads: usize) -> Option<Pool> {
    let (jobs, receiver) = crossbeam_channel::unbounded::<Job>();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<JoinHandle<()>> = (0..threads)
        .filter_map(|k| {
            let core = Arc::clone(core);
            let receiver = receiver.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("mkmodule-readahead-{k}"))
                .spawn(move || work(&core, &receiver, &stop))
                .ok()
        })
        .collect();
    (!workers.is_empty()).then_some(Pool {
        jobs,
        stop,
        workers,
    })
}

/// A worker: decodes queued blocks nobody has claimed yet, until the image is dropped. The
/// compressed bytes of the blocks it claims in a batch are read at once, unless the source
/// holds them in memory anyway.
fn work(core: &Core, jobs: &Receiver<Job>, stop: &AtomicBool) {
    for batch in jobs.iter() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let claims: Vec<_> = batch
            .into_iter()
            .filter(|(_, pending)| pending.claim())
            .map(|(block, pending)| (block, core.cache.claimed(block, pending, true)))
            .collect();
        core.decode_claimed(claims);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_reads_queue_nothing() {
        let ra = ReadAhead::new(8, 1, false);
        for block in [5, 90, 17, 3, 60, 44] {
            assert_eq!(ra.plan(block, block, 100), None);
        }
    }

    #[test]
    fn sequential_reads_queue_a_window_and_top_it_up() {
        let ra = ReadAhead::new(8, 1, false);
        assert_eq!(ra.plan(10, 10, 100), None);
        assert_eq!(ra.plan(10, 10, 100), None); // same block again: not yet sequential
        assert_eq!(ra.plan(11, 11, 100), Some(12..=19));
        assert_eq!(ra.plan(12, 12, 100), None); // 7 blocks still ahead
        assert_eq!(ra.plan(13, 13, 100), None);
        assert_eq!(ra.plan(14, 14, 100), None);
        assert_eq!(ra.plan(15, 15, 100), Some(20..=23)); // 4 left: top up
        assert_eq!(ra.plan(97, 97, 100), None); // a jump starts a new stream
        assert_eq!(ra.plan(98, 98, 100), Some(99..=99)); // clipped at the last block
    }

    #[test]
    fn a_read_spanning_blocks_is_sequential() {
        let ra = ReadAhead::new(4, 1, false);
        assert_eq!(ra.plan(0, 3, 100), Some(1..=7));
    }

    #[test]
    fn several_streams_are_tracked() {
        let ra = ReadAhead::new(4, 1, false);
        assert_eq!(ra.plan(0, 0, 1000), None);
        assert_eq!(ra.plan(500, 500, 1000), None);
        assert_eq!(ra.plan(1, 1, 1000), Some(2..=5));
        assert_eq!(ra.plan(501, 501, 1000), Some(502..=505));
    }
}
