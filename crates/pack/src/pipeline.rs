//! The conveyor: a reader thread cuts the input into blocks, N compressor threads encode them,
//! and the calling thread hands them to the writer in input order.
//!
//! ```text
//!  reader --jobs (bounded)--> compressor 1..N --done--> reorder window --> writer callback
//!    ^                                                                         |
//!    +--------------------------- slot pool (K slots) <------------------------+
//! ```
//!
//! A file whose length is known (a regular file, a block device) needs no reader thread: each
//! compressor takes a slot, claims the next block number and reads that block itself at its
//! offset, so reading is spread over the compressors and a block changes threads once, not twice.
//!
//! A *slot* is one block's input buffer plus its output buffer. There are exactly K =
//! [`Plan::slots`] slots (2 MiB of blocks per thread, 4 to 32 blocks); the reader (or a
//! compressor) takes one before reading a block, claiming block numbers in order, and the writer
//! returns it after writing that block. So at most K blocks are in flight, the blocks in flight
//! are always `next .. next + K`, and the reorder window is a ring of K places. Memory
//! is K x (block size + largest compressed block) plus the codec contexts, whatever the input
//! size. Nothing depends on which thread compresses which block, so the output does not depend on
//! the thread count.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use mkmodule_blockdev::is_zero;
use mkmodule_format::{blake3_block_hash, blake3_table_digest, stored_check, BlockHashChain};
use mkmodule_image::CopyCheck;

use crate::block::{dedup_key, Done, Encoded, Reused, Slot};
use crate::encode::{BlockEncoder, Encoding};
use crate::error::PackError;
use crate::options::Plan;
use crate::reuse::{Fetch, Reuse};
use crate::verity::leaf_digests;

/// A block to compress.
#[derive(Debug)]
struct Job {
    block: u64,
    /// Input offset of the block.
    offset: u64,
    /// Real input bytes in the block.
    real_len: usize,
    /// Bytes to compress (`real_len`, or the block size when the final block is padded).
    data_len: usize,
    slot: Slot,
}

/// Where the blocks come from.
pub(crate) enum Input<'f, R> {
    /// A stream, cut into blocks by a reader thread.
    Stream(R),
    /// `len` bytes of a file from offset `start`, read by the compressors at their offsets.
    File {
        /// The file.
        file: &'f File,
        /// Offset of the input's first byte in the file.
        start: u64,
        /// Bytes of input.
        len: u64,
    },
}

/// What the reader saw of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputStats {
    /// Exact input length.
    pub len: u64,
    /// Blocks produced.
    pub blocks: u64,
    /// The trailer's digest of the input (`blake3-blocks`, when a trailer is written).
    pub digest: Option<Vec<u8>>,
}

/// Runs the conveyor over `input`, calling `on_block` for every block in input order; blocks
/// found in `reuse` are copied from there instead of compressed.
pub(crate) fn run<R, F>(
    input: Input<'_, R>,
    plan: &Plan,
    reuse: Option<&Reuse<'_>>,
    on_block: F,
) -> Result<InputStats, PackError>
where
    R: Read + Send,
    F: FnMut(&Done) -> Result<(), PackError>,
{
    // The trailer's digest of the input, from the block hashes the compressors made.
    let mut chain = plan.trailer.then(BlockHashChain::new);
    let mut on_block = on_block;
    let on_block = |done: &Done| {
        if let (Some(chain), Some(hash)) = (chain.as_mut(), &done.digest) {
            // The all-zero block of an empty input holds no input byte.
            if done.real_len > 0 {
                chain.push(hash);
            }
        }
        on_block(done)
    };
    let slots = plan.slots();
    let bs = plan.block_size as usize;
    let (pool_tx, pool_rx) = bounded::<Slot>(slots);
    for _ in 0..slots {
        let slot = Slot {
            input: vec![0; bs],
            output: Vec::new(),
            leaves: Vec::new(),
        };
        pool_tx
            .send(slot)
            .expect("the pool has room for every slot");
    }
    let (job_tx, job_rx) = bounded::<Job>(slots);
    let (done_tx, done_rx) = unbounded::<Result<Done, PackError>>();
    let cancel = AtomicBool::new(false);
    let cancel = &cancel;
    let claims = match &input {
        Input::File { file, start, len } => {
            Some(Claims::new(file, *start, *len, plan, pool_rx.clone())?)
        }
        Input::Stream(_) => None,
    };
    let claims = claims.as_ref();
    let stats = thread::scope(|s| {
        let reader = match input {
            Input::Stream(input) => Some(
                thread::Builder::new()
                    .name("mkmodule-read".into())
                    .spawn_scoped(s, move || read_blocks(input, plan, pool_rx, job_tx, cancel))
                    .map_err(|_| PackError::Internal("cannot start the reader thread")),
            ),
            Input::File { .. } => {
                drop((pool_rx, job_tx));
                None
            }
        };
        let mut workers = Vec::with_capacity(plan.threads);
        for i in 0..plan.threads {
            let feed = match claims {
                Some(claims) => Feed::Claims { claims, cancel },
                None => Feed::Jobs(job_rx.clone()),
            };
            let done = done_tx.clone();
            let worker = thread::Builder::new()
                .name(format!("mkmodule-zip{i}"))
                .spawn_scoped(s, move || compress_blocks(plan, reuse, feed, done));
            workers.push(worker);
        }
        drop((job_rx, done_tx));
        let written = write_in_order(done_rx, pool_tx, slots, on_block);
        if written.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let read = match (reader, claims) {
            (Some(Ok(handle)), _) => handle
                .join()
                .unwrap_or(Err(PackError::Internal("the reader thread panicked"))),
            (Some(Err(e)), _) => Err(e),
            (None, Some(claims)) => Ok(claims.stats()),
            (None, None) => Err(PackError::Internal("no reader for the input")),
        };
        let mut workers_ok = true;
        for worker in workers {
            workers_ok &= worker.map(|h| h.join().is_ok()).unwrap_or(false);
        }
        let written = written?;
        let stats = read?;
        if !workers_ok {
            return Err(PackError::Internal("a compressor thread failed"));
        }
        if written != stats.blocks {
            return Err(PackError::Internal("a compressor thread stopped early"));
        }
        Ok(stats)
    })?;
    if let Some(claims) = claims {
        claims.check_no_more()?;
    }
    Ok(InputStats {
        digest: chain.map(|c| c.finish(stats.len, plan.block_size).to_vec()),
        ..stats
    })
}

/// Receives compressed blocks in any order and passes them on in input order, returning each
/// slot to the pool once its block is written. Returns the number of blocks written.
fn write_in_order<F>(
    done: Receiver<Result<Done, PackError>>,
    pool: Sender<Slot>,
    window: usize,
    mut on_block: F,
) -> Result<u64, PackError>
where
    F: FnMut(&Done) -> Result<(), PackError>,
{
    let mut ring: Vec<Option<Done>> = (0..window).map(|_| None).collect();
    let mut next = 0u64;
    for result in done {
        let block = result?;
        let place = (block.block % window as u64) as usize;
        debug_assert!(ring[place].is_none(), "more blocks in flight than slots");
        ring[place] = Some(block);
        loop {
            let place = (next % window as u64) as usize;
            let Some(ready) = ring[place].take() else {
                break;
            };
            on_block(&ready)?;
            next += 1;
            // The reader may have stopped; a slot nobody takes is simply dropped.
            let _ = pool.send(ready.slot);
        }
    }
    if ring.iter().any(Option::is_some) {
        return Err(PackError::Internal("a block is missing from the conveyor"));
    }
    Ok(next)
}

/// Reads `buf.len()` bytes unless the input ends first; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<usize, PackError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(PackError::Read {
                    offset: offset + got as u64,
                    source,
                })
            }
        }
    }
    Ok(got)
}

/// The reader thread: cuts the input into blocks, hashes it, checks the announced length.
fn read_blocks<R: Read>(
    mut input: R,
    plan: &Plan,
    pool: Receiver<Slot>,
    jobs: Sender<Job>,
    cancel: &AtomicBool,
) -> Result<InputStats, PackError> {
    let bs = plan.block_size as usize;
    let mut offset = 0u64;
    let mut block = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let want = match plan.input_len {
            Some(len) => (len - offset).min(bs as u64) as usize,
            None => bs,
        };
        let mut got = 0;
        let mut slot = None;
        if want > 0 {
            let Ok(mut taken) = pool.recv() else {
                break; // the writer stopped; it reports why
            };
            got = fill(&mut input, &mut taken.input[..want], offset)?;
            slot = Some(taken);
        }
        if got < want {
            if let Some(expected) = plan.input_len {
                return Err(PackError::InputShorter {
                    expected,
                    actual: offset + got as u64,
                });
            }
        }
        if plan.input_len == Some(offset + got as u64) {
            // Everything announced has been read: the input must end here.
            let mut probe = [0u8; 1];
            if fill(&mut input, &mut probe, offset + got as u64)? > 0 {
                return Err(PackError::InputLonger {
                    expected: offset + got as u64,
                });
            }
        }
        let last = got < bs || plan.input_len == Some(offset + got as u64);
        if got == 0 && block > 0 {
            break;
        }
        // An empty input still gets one (all-zero) block: Linux cannot attach 0 blocks.
        let mut slot = match slot {
            Some(slot) => slot,
            None => match pool.recv() {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        if block >= plan.max_blocks {
            return Err(PackError::TooManyBlocks {
                max_blocks: plan.max_blocks,
                block_size: plan.block_size,
                dialect: plan.dialect,
                reason: plan.limit_reason,
            });
        }
        let data_len = bytes_to_compress(&mut slot, got, last && plan.pad_final);
        let job = Job {
            block,
            offset,
            real_len: got,
            data_len,
            slot,
        };
        if jobs.send(job).is_err() {
            break; // the compressors stopped; the writer reports why
        }
        block += 1;
        offset += got as u64;
        if last {
            break;
        }
    }
    Ok(InputStats {
        len: offset,
        blocks: block,
        digest: None,
    })
}

/// Bytes of a block to compress, `got` of them read into the slot: a whole zero-padded block
/// when it is empty (the one block of an empty input) or is a final block to pad, else `got`.
fn bytes_to_compress(slot: &mut Slot, got: usize, pad: bool) -> usize {
    if got == 0 || pad {
        slot.input[got..].fill(0);
        slot.input.len()
    } else {
        got
    }
}

/// Blocks of a file of known length that the compressors read themselves: each takes a slot,
/// then the next block number, then reads the block at its offset.
struct Claims<'f> {
    file: &'f File,
    start: u64,
    len: u64,
    blocks: u64,
    block_size: u64,
    pad_final: bool,
    next: AtomicU64,
    pool: Receiver<Slot>,
}

impl<'f> Claims<'f> {
    /// Claims over `len` bytes of `file` from `start`, taking slots from `pool`; refuses an
    /// input of more blocks than the plan's dialect can index.
    fn new(
        file: &'f File,
        start: u64,
        len: u64,
        plan: &Plan,
        pool: Receiver<Slot>,
    ) -> Result<Claims<'f>, PackError> {
        let block_size = u64::from(plan.block_size);
        // An empty input still gets one (all-zero) block: Linux cannot attach 0 blocks.
        let blocks = len.div_ceil(block_size).max(1);
        if blocks > plan.max_blocks {
            return Err(PackError::TooManyBlocks {
                max_blocks: plan.max_blocks,
                block_size: plan.block_size,
                dialect: plan.dialect,
                reason: plan.limit_reason,
            });
        }
        Ok(Claims {
            file,
            start,
            len,
            blocks,
            block_size,
            pad_final: plan.pad_final,
            next: AtomicU64::new(0),
            pool,
        })
    }

    /// Takes a slot, claims the next block and reads it; `None` when every block is claimed or
    /// the writer has stopped.
    fn next_job(&self) -> Option<Result<Job, PackError>> {
        let mut slot = self.pool.recv().ok()?;
        let block = self.next.fetch_add(1, Ordering::Relaxed);
        if block >= self.blocks {
            return None;
        }
        let offset = block * self.block_size;
        let want = (self.len - offset).min(self.block_size) as usize;
        let mut got = 0;
        while got < want {
            let at = self.start + offset + got as u64;
            match self.file.read_at(&mut slot.input[got..want], at) {
                Ok(0) => {
                    return Some(Err(PackError::InputShorter {
                        expected: self.len,
                        actual: offset + got as u64,
                    }))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Some(Err(PackError::Read {
                        offset: offset + got as u64,
                        source,
                    }))
                }
            }
        }
        let last = block + 1 == self.blocks;
        let data_len = bytes_to_compress(&mut slot, got, last && self.pad_final);
        Some(Ok(Job {
            block,
            offset,
            real_len: got,
            data_len,
            slot,
        }))
    }

    /// What was read: the whole announced length.
    fn stats(&self) -> InputStats {
        InputStats {
            len: self.len,
            blocks: self.blocks,
            digest: None,
        }
    }

    /// Checks that the file did not grow past the announced length while it was read.
    fn check_no_more(&self) -> Result<(), PackError> {
        let mut probe = [0u8; 1];
        loop {
            return match self.file.read_at(&mut probe, self.start + self.len) {
                Ok(0) => Ok(()),
                Ok(_) => Err(PackError::InputLonger { expected: self.len }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => Err(PackError::Read {
                    offset: self.len,
                    source,
                }),
            };
        }
    }
}

/// Where a compressor gets its blocks.
enum Feed<'c, 'f> {
    /// From the reader thread.
    Jobs(Receiver<Job>),
    /// By claiming and reading them itself.
    Claims {
        claims: &'c Claims<'f>,
        cancel: &'c AtomicBool,
    },
}

impl Feed<'_, '_> {
    /// The next block to compress; `None` when there is none left or the conveyor stopped.
    fn next_job(&self) -> Option<Result<Job, PackError>> {
        match self {
            Feed::Jobs(jobs) => jobs.recv().ok().map(Ok),
            Feed::Claims { claims, cancel } => {
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                claims.next_job()
            }
        }
    }
}

/// A compressor thread: one encoder, reused for every block it takes.
fn compress_blocks(
    plan: &Plan,
    reuse: Option<&Reuse<'_>>,
    feed: Feed<'_, '_>,
    done: Sender<Result<Done, PackError>>,
) {
    let mut encoder = match BlockEncoder::new(plan) {
        Ok(encoder) => encoder,
        Err((spec, source)) => {
            let _ = done.send(Err(PackError::Compress {
                block: 0,
                offset: 0,
                codec: spec.kind(),
                source,
            }));
            return;
        }
    };
    let bs = plan.block_size as usize;
    let digests = plan.trailer || reuse.is_some();
    let zero_digest = blake3_block_hash(&[], plan.block_size);
    let mut checker = reuse.map(|_| CopyCheck::new(plan.block_size));
    while let Some(job) = feed.next_job() {
        let job = match job {
            Ok(job) => job,
            Err(error) => {
                let _ = done.send(Err(error));
                return;
            }
        };
        let Job {
            block,
            offset,
            real_len,
            data_len,
            mut slot,
        } = job;
        let data = &slot.input[..data_len];
        if let Some(salt) = &plan.verity_salt {
            slot.leaves.clear();
            leaf_digests(salt, data, bs, &mut slot.leaves);
        }
        let zero = is_zero(data) && (data_len == bs || plan.zero_length);
        let digest = match (digests, zero) {
            (false, _) => None,
            (true, true) => Some(zero_digest),
            (true, false) => Some(blake3_block_hash(data, plan.block_size)),
        };
        let mut reused = Reused::No;
        let mut check = None;
        let encoded = if zero {
            Ok(Encoded::Zero)
        } else {
            // Only whole blocks are copied: a short final block compresses to other bytes.
            let fetched = match (reuse, &digest, checker.as_mut()) {
                (Some(reuse), Some(digest), Some(checker)) if data_len == bs => reuse.fetch(
                    &blake3_table_digest(digest),
                    data,
                    &mut slot.output,
                    checker,
                ),
                _ => Fetch::Miss,
            };
            match fetched {
                Fetch::Copied {
                    codec,
                    check: known,
                } => {
                    reused = Reused::Copied;
                    check = Some(known);
                    // The encoder flags a block whose output is not smaller than its input, and
                    // its fallback never makes one smaller: the same test on the copy agrees.
                    Ok(Encoded::Data(Encoding {
                        codec,
                        incompressible: slot.output.len() >= data_len,
                    }))
                }
                miss_or_rejected => {
                    if let Fetch::Rejected { old_block } = miss_or_rejected {
                        reused = Reused::Rejected { old_block };
                    }
                    encoder
                        .encode(data, &mut slot.output)
                        .map(Encoded::Data)
                        .map_err(|source| PackError::Compress {
                            block,
                            offset,
                            codec: encoder.primary(),
                            source,
                        })
                }
            }
        };
        let result = encoded.map(|encoded| Done {
            block,
            real_len,
            key: match encoded {
                Encoded::Data(_) if plan.dedup => Some(dedup_key(&slot.output)),
                _ => None,
            },
            // The check of an all-zero block is the writer's: it knows which bytes it uses.
            stored_check: match (encoded, check) {
                (Encoded::Data(_), Some(known)) => known,
                (Encoded::Data(_), None) if plan.trailer => stored_check(&slot.output),
                _ => 0,
            },
            encoded,
            digest,
            reused,
            slot,
        });
        if done.send(result).is_err() {
            return;
        }
    }
}
