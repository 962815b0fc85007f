//! Decoding every block on several threads, for extract and verify.
//!
//! These passes bypass the block cache (streaming a whole image through it would only evict
//! what random readers need) and decode into per-thread buffers. [`Image::par_blocks`] hands
//! blocks to a callback on the worker threads in any order, for output that can be written at
//! any offset; [`Image::par_blocks_ordered`] hands them to the calling thread in block order
//! (for pipes and digests) while at most a small window of decoded blocks waits in memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::{self, Scope};

use crate::cache::lock;
use crate::{Image, ImageError};

/// How a parallel pass over all blocks runs.
#[derive(Debug, Clone, Copy)]
pub struct ParallelOptions {
    /// Decoding threads; 0 means one per core.
    pub threads: usize,
    /// Hand known-zero blocks over as [`Decoded::Zero`] without decoding them.
    pub skip_zero: bool,
}

impl Default for ParallelOptions {
    fn default() -> Self {
        ParallelOptions {
            threads: 0,
            skip_zero: true,
        }
    }
}

impl ParallelOptions {
    fn thread_count(&self, num_blocks: u32) -> usize {
        let wanted = if self.threads == 0 {
            thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads
        };
        wanted.clamp(1, (num_blocks as usize).max(1))
    }
}

/// One block's contents in a parallel pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Known to be all zeros; not decoded (only with [`ParallelOptions::skip_zero`]).
    Zero,
    /// The decoded block, one block size long (a short final block zero-filled).
    Data(&'a [u8]),
}

/// Ordered passes keep at most this many decoded bytes waiting (but at least two chunks per
/// thread).
const ORDERED_WINDOW_BYTES: u64 = 64 << 20;
/// Ordered passes hand blocks to the consumer in chunks of about this many bytes, so threads
/// wake each other once per chunk rather than once per block.
const CHUNK_BYTES: u64 = 1 << 20;

/// One decoded block: `Ok(true)` for a skipped zero block, and its buffer.
type Item = (Result<bool, ImageError>, Vec<u8>);
/// A chunk of consecutive decoded blocks travelling to the ordered consumer.
type Message = (u64, Vec<Item>);

impl Image {
    /// Decodes blocks `0..n` on several threads and calls `sink` with each, on the worker
    /// threads, in no particular order. Decoding stops soon after `sink` returns an error, which
    /// is then returned. A failed block is handed to `sink` as its error; the pass goes on
    /// unless `sink` returns one.
    pub fn par_blocks<E, F>(&self, options: ParallelOptions, sink: F) -> Result<(), E>
    where
        E: Send,
        F: Fn(u32, Result<Decoded<'_>, ImageError>) -> Result<(), E> + Sync,
    {
        let num_blocks = self.num_blocks();
        let threads = options.thread_count(num_blocks);
        let next = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let failure: Mutex<Option<E>> = Mutex::new(None);
        let work = || {
            let mut buf = vec![0u8; self.block_size() as usize];
            while !stop.load(Ordering::Relaxed) {
                let block = next.fetch_add(1, Ordering::Relaxed);
                if block >= u64::from(num_blocks) {
                    break;
                }
                let block = block as u32;
                let result = self.decode_pass(block, &mut buf, options.skip_zero);
                let decoded = result.map(|zero| {
                    if zero {
                        Decoded::Zero
                    } else {
                        Decoded::Data(&buf)
                    }
                });
                if let Err(e) = sink(block, decoded) {
                    stop.store(true, Ordering::Relaxed);
                    lock(&failure).get_or_insert(e);
                    break;
                }
            }
        };
        thread::scope(|scope| {
            spawn_helpers(scope, threads - 1, &work);
            work();
        });
        match failure.into_inner() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(poisoned) => poisoned.into_inner().map_or(Ok(()), Err),
        }
    }

    /// Decodes blocks `0..n` on several threads and calls `sink` with each on the calling
    /// thread, in block order. Stops after `sink` returns an error, which is then returned.
    pub fn par_blocks_ordered<E, F>(&self, options: ParallelOptions, mut sink: F) -> Result<(), E>
    where
        F: FnMut(u32, Result<Decoded<'_>, ImageError>) -> Result<(), E>,
    {
        let num_blocks = u64::from(self.num_blocks());
        if num_blocks == 0 {
            return Ok(());
        }
        let bs = self.block_size() as usize;
        let threads = options.thread_count(self.num_blocks());
        let chunk = (CHUNK_BYTES / bs as u64).clamp(1, num_blocks);
        let chunks = num_blocks.div_ceil(chunk);
        let window = (ORDERED_WINDOW_BYTES / (chunk * bs as u64)).max(2 * threads as u64);
        let next = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        // Chunks handed to `sink` so far; a worker may start chunk c once c < consumed + window.
        let consumed = Mutex::new(0u64);
        let progressed = Condvar::new();
        let (results, received) = crossbeam_channel::unbounded::<Message>();
        let (recycle, spare) = crossbeam_channel::unbounded::<Vec<u8>>();
        let work = |results: crossbeam_channel::Sender<Message>| {
            while !stop.load(Ordering::Relaxed) {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                {
                    let mut done = lock(&consumed);
                    while c >= *done + window && !stop.load(Ordering::Relaxed) {
                        done = progressed
                            .wait(done)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                }
                let first = c * chunk;
                let items = (first..(first + chunk).min(num_blocks))
                    .map(|block| {
                        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0u8; bs]);
                        let result = self.decode_pass(block as u32, &mut buf, options.skip_zero);
                        (result, buf)
                    })
                    .collect();
                if results.send((c, items)).is_err() {
                    break;
                }
            }
        };
        thread::scope(|scope| {
            let mut started = 0;
            for k in 0..threads {
                let results = results.clone();
                let work = &work;
                let spawned = thread::Builder::new()
                    .name(format!("mkmodule-decode-{k}"))
                    .spawn_scoped(scope, move || work(results));
                started += usize::from(spawned.is_ok());
            }
            // The workers hold the only senders now: the channel closes when they are done.
            drop(results);
            if started == 0 {
                return self.blocks_in_order_here(options, &mut sink);
            }
            let outcome = consume(chunks, chunk, &received, &recycle, &mut sink, |done| {
                *lock(&consumed) = done;
                progressed.notify_all();
            });
            stop.store(true, Ordering::Relaxed);
            {
                let _guard = lock(&consumed);
                progressed.notify_all();
            }
            drop(received);
            outcome
        })
    }

    /// The ordered pass on the calling thread alone (when no thread could be started).
    fn blocks_in_order_here<E, F>(&self, options: ParallelOptions, sink: &mut F) -> Result<(), E>
    where
        F: FnMut(u32, Result<Decoded<'_>, ImageError>) -> Result<(), E>,
    {
        let mut buf = vec![0u8; self.block_size() as usize];
        for block in 0..self.num_blocks() {
            let result = self.decode_pass(block, &mut buf, options.skip_zero);
            sink(
                block,
                result.map(|zero| {
                    if zero {
                        Decoded::Zero
                    } else {
                        Decoded::Data(&buf)
                    }
                }),
            )?;
        }
        Ok(())
    }

    /// Decodes `block` into `buf` for a pass; `Ok(true)` when it was skipped as known zero.
    fn decode_pass(&self, block: u32, buf: &mut [u8], skip_zero: bool) -> Result<bool, ImageError> {
        if skip_zero && self.core.zero.is_zero(block) {
            return Ok(true);
        }
        // A shared block decodes as the block it shares bytes with, as `Image::block` (and the
        // cache) has it: the final block may be a back-reference, and the leniency reserved
        // for a final block must not make the two disagree.
        let key = self.core.cache_key(block);
        self.core
            .blocks()
            .decode(key, buf)
            .map_err(|e| e.for_block(block))?;
        Ok(false)
    }
}

/// Starts `count` scoped threads running `work`; a thread that cannot be started is skipped
/// (the caller's own share of the work still gets everything done).
fn spawn_helpers<'scope, 'env, W>(scope: &'scope Scope<'scope, 'env>, count: usize, work: &'scope W)
where
    W: Fn() + Sync,
{
    for k in 0..count {
        let _ = thread::Builder::new()
            .name(format!("mkmodule-decode-{k}"))
            .spawn_scoped(scope, work);
    }
}

/// The ordered consumer: puts chunks back in order and feeds their blocks to `sink`;
/// `progress` learns how many chunks are done.
fn consume<E, F>(
    chunks: u64,
    chunk: u64,
    received: &crossbeam_channel::Receiver<Message>,
    recycle: &crossbeam_channel::Sender<Vec<u8>>,
    sink: &mut F,
    mut progress: impl FnMut(u64),
) -> Result<(), E>
where
    F: FnMut(u32, Result<Decoded<'_>, ImageError>) -> Result<(), E>,
{
    let mut waiting: BTreeMap<u64, Vec<Item>> = BTreeMap::new();
    let mut expected: u64 = 0;
    while expected < chunks {
        let Ok((c, items)) = received.recv() else {
            break;
        };
        waiting.insert(c, items);
        while let Some(items) = waiting.remove(&expected) {
            for (k, (result, buf)) in items.into_iter().enumerate() {
                let decoded = result.map(|zero| {
                    if zero {
                        Decoded::Zero
                    } else {
                        Decoded::Data(&buf)
                    }
                });
                let outcome = sink((expected * chunk + k as u64) as u32, decoded);
                let _ = recycle.send(buf);
                outcome?;
            }
            expected += 1;
            progress(expected);
        }
    }
    Ok(())
}
