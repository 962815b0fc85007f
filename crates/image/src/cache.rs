//! The shared cache of decoded blocks.
//!
//! Blocks are spread over up to 16 shards by a hash of their number; each shard is one mutex
//! around a small LRU list (a slab with a doubly linked list, O(1) per operation) and a table of
//! blocks being decoded right now. Threads touching different shards never meet, and a lock is
//! held only for a few pointer updates, never while decoding.
//!
//! The table of blocks in flight lets concurrent readers of one missing block share a single
//! decode: the first registers the block and decodes it, the others wait for its result. Read-ahead
//! registers blocks *unclaimed*; whoever claims such an entry first (a read-ahead worker, or a
//! reader that got there before the worker) decodes it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// One decoded block: block-size bytes, shared between the cache and its readers.
pub type Block = Arc<[u8]>;

/// Most shards; a power of two.
const MAX_SHARDS: usize = 16;
/// Fewer shards are used when the cache is small, so each still holds this many blocks.
const MIN_ENTRIES_PER_SHARD: usize = 4;
/// Fibonacci hashing constant: spreads consecutive block numbers over shards and buckets.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Counters of one image's cache, summed over shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that found no decoded block.
    pub misses: u64,
    /// Blocks decoded for a reader and put into the cache.
    pub decoded: u64,
    /// Blocks decoded ahead of time by the read-ahead pool.
    pub prefetched: u64,
    /// Decoded blocks the cache holds now.
    pub resident: u64,
}

/// A multiplicative hasher for block numbers (the default SipHash is needlessly slow here).
#[derive(Default)]
struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(GOLDEN);
    }
}

type BlockMap<V> = HashMap<u32, V, BuildHasherDefault<BlockHasher>>;

const NIL: usize = usize::MAX;

/// One slot of the LRU slab.
struct Node {
    key: u32,
    value: Option<Block>,
    prev: usize,
    next: usize,
}

/// A least-recently-used map from block number to block with a fixed number of entries.
struct Lru {
    map: BlockMap<usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used: evicted first.
    tail: usize,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            map: BlockMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains(&self, key: u32) -> bool {
        self.map.contains_key(&key)
    }

    /// The block under `key`, now marked most recently used.
    fn get(&mut self, key: u32) -> Option<Block> {
        let slot = *self.map.get(&key)?;
        self.unlink(slot);
        self.push_front(slot);
        self.nodes[slot].value.clone()
    }

    /// Stores `value` under `key`, evicting the least recently used entry when full; returns
    /// the block that left the cache, if any.
    fn insert(&mut self, key: u32, value: Block) -> Option<Block> {
        if self.capacity == 0 {
            return Some(value);
        }
        if let Some(&slot) = self.map.get(&key) {
            let old = self.nodes[slot].value.replace(value);
            self.unlink(slot);
            self.push_front(slot);
            return old;
        }
        let mut evicted = None;
        if self.map.len() >= self.capacity && self.tail != NIL {
            let victim = self.tail;
            self.unlink(victim);
            self.map.remove(&self.nodes[victim].key);
            evicted = self.nodes[victim].value.take();
            self.free.push(victim);
        }
        let node = Node {
            key,
            value: Some(value),
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.push_front(slot);
        self.map.insert(key, slot);
        evicted
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.nodes[slot].prev, self.nodes[slot].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.nodes[slot].prev = NIL;
        self.nodes[slot].next = self.head;
        if self.head == NIL {
            self.tail = slot;
        } else {
            self.nodes[self.head].prev = slot;
        }
        self.head = slot;
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A block being decoded (or queued for read-ahead): readers wait here for its result.
pub(crate) struct Pending {
    claimed: AtomicBool,
    /// `Some(result)` once finished; the inner `None` means the decode failed.
    result: Mutex<Option<Option<Block>>>,
    ready: Condvar,
}

impl Pending {
    fn new(claimed: bool) -> Arc<Pending> {
        Arc::new(Pending {
            claimed: AtomicBool::new(claimed),
            result: Mutex::new(None),
            ready: Condvar::new(),
        })
    }

    /// Takes the job of decoding this block; false when someone already has it.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Waits for the decode and returns its block, or `None` if it failed.
    pub(crate) fn wait(&self) -> Option<Block> {
        let mut result = lock(&self.result);
        loop {
            if let Some(done) = &*result {
                return done.clone();
            }
            result = self
                .ready
                .wait(result)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn finish(&self, value: Option<Block>) {
        *lock(&self.result) = Some(value);
        self.ready.notify_all();
    }
}

/// What a lookup found.
pub(crate) enum Lookup<'a> {
    /// The decoded block.
    Hit(Block),
    /// Someone registered the block already: claim it or wait for it.
    Wait(Arc<Pending>),
    /// The block was missing and is now registered to the caller, who must decode it.
    Owner(Claim<'a>),
}

/// The duty to decode one registered block; finishing (or dropping) it wakes the waiters.
pub(crate) struct Claim<'a> {
    cache: &'a BlockCache,
    block: u32,
    pending: Arc<Pending>,
    prefetch: bool,
    done: bool,
}

impl Claim<'_> {
    /// Stores the decoded block (or records the failure) and wakes everyone waiting for it.
    pub(crate) fn finish(mut self, value: Option<Block>) {
        self.done = true;
        self.cache
            .complete(self.block, &self.pending, value, self.prefetch);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // Dropped unfinished (an early return or a panic while decoding): unregister the block
        // and wake the waiters, who then decode it for themselves.
        if !self.done {
            self.cache
                .complete(self.block, &self.pending, None, self.prefetch);
        }
    }
}

/// One shard: an LRU list, the blocks in flight and counters.
struct Shard {
    lru: Lru,
    pending: BlockMap<Arc<Pending>>,
    stats: CacheStats,
}

/// Most evicted buffers kept for reuse by later decodes.
const MAX_SPARE: usize = 64;

/// The sharded cache of decoded blocks of one image.
pub(crate) struct BlockCache {
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
    /// Evicted blocks nobody else holds: reused as decode buffers, which saves an allocation,
    /// its page faults and the zeroing of a fresh buffer on every decode.
    spare: Mutex<Vec<Block>>,
}

impl BlockCache {
    /// A cache holding at most `limit_bytes` of decoded blocks of `block_size` bytes.
    pub(crate) fn new(limit_bytes: u64, block_size: u32) -> BlockCache {
        let entries =
            usize::try_from(limit_bytes / u64::from(block_size.max(1))).unwrap_or(usize::MAX);
        let wanted = (entries / MIN_ENTRIES_PER_SHARD).clamp(1, MAX_SHARDS);
        let mut shards = 1;
        while shards * 2 <= wanted {
            shards *= 2;
        }
        let per_shard = entries / shards;
        let shards: Box<[Mutex<Shard>]> = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    lru: Lru::new(per_shard),
                    pending: BlockMap::default(),
                    stats: CacheStats::default(),
                })
            })
            .collect();
        BlockCache {
            capacity: per_shard * shards.len(),
            shards,
            spare: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of `len` bytes that only this caller holds, with unspecified contents: the
    /// caller overwrites every byte.
    pub(crate) fn take_spare(&self, len: usize) -> Option<Block> {
        let mut spare = lock(&self.spare);
        while let Some(mut block) = spare.pop() {
            if block.len() == len && Arc::get_mut(&mut block).is_some() {
                return Some(block);
            }
        }
        None
    }

    /// Keeps an evicted block for reuse when nobody else holds it.
    fn recycle(&self, mut block: Block) {
        if Arc::get_mut(&mut block).is_none() {
            return; // a reader still uses it; it is freed when they drop it
        }
        let mut spare = lock(&self.spare);
        if spare.len() < MAX_SPARE {
            spare.push(block);
        }
    }

    /// How many decoded blocks the cache can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn shard(&self, block: u32) -> MutexGuard<'_, Shard> {
        let hash = u64::from(block).wrapping_mul(GOLDEN) >> 32;
        let at = (hash as usize) & (self.shards.len() - 1);
        lock(&self.shards[at])
    }

    /// Looks `block` up; registers it to the caller when it is neither cached nor in flight.
    pub(crate) fn lookup(&self, block: u32) -> Lookup<'_> {
        let mut shard = self.shard(block);
        if let Some(hit) = shard.lru.get(block) {
            shard.stats.hits += 1;
            return Lookup::Hit(hit);
        }
        shard.stats.misses += 1;
        if let Some(pending) = shard.pending.get(&block) {
            return Lookup::Wait(Arc::clone(pending));
        }
        let pending = Pending::new(true);
        shard.pending.insert(block, Arc::clone(&pending));
        Lookup::Owner(Claim {
            cache: self,
            block,
            pending,
            prefetch: false,
            done: false,
        })
    }

    /// Registers `block` for read-ahead, unclaimed, unless it is cached or in flight already.
    pub(crate) fn queue(&self, block: u32) -> Option<Arc<Pending>> {
        let mut shard = self.shard(block);
        if shard.lru.contains(block) || shard.pending.contains_key(&block) {
            return None;
        }
        let pending = Pending::new(false);
        shard.pending.insert(block, Arc::clone(&pending));
        Some(pending)
    }

    /// Turns a successful [`Pending::claim`] on a registered block into a [`Claim`].
    pub(crate) fn claimed(&self, block: u32, pending: Arc<Pending>, prefetch: bool) -> Claim<'_> {
        Claim {
            cache: self,
            block,
            pending,
            prefetch,
            done: false,
        }
    }

    /// Whether `block` is cached or being decoded.
    #[cfg(test)]
    pub(crate) fn is_present(&self, block: u32) -> bool {
        let shard = self.shard(block);
        shard.lru.contains(block) || shard.pending.contains_key(&block)
    }

    fn complete(&self, block: u32, pending: &Arc<Pending>, value: Option<Block>, prefetch: bool) {
        let evicted = {
            let mut shard = self.shard(block);
            if shard
                .pending
                .get(&block)
                .is_some_and(|p| Arc::ptr_eq(p, pending))
            {
                shard.pending.remove(&block);
            }
            match &value {
                Some(value) => {
                    if prefetch {
                        shard.stats.prefetched += 1;
                    } else {
                        shard.stats.decoded += 1;
                    }
                    shard.lru.insert(block, Arc::clone(value))
                }
                None => None,
            }
        };
        pending.finish(value);
        if let Some(old) = evicted {
            self.recycle(old);
        }
    }

    /// Counters summed over all shards.
    pub(crate) fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            total.hits += shard.stats.hits;
            total.misses += shard.stats.misses;
            total.decoded += shard.stats.decoded;
            total.prefetched += shard.stats.prefetched;
            total.resident += shard.lru.len() as u64;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Block {
        Arc::from(vec![byte; 4])
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut lru = Lru::new(3);
        for key in 0..3 {
            lru.insert(key, block(key as u8));
        }
        assert!(lru.get(0).is_some()); // 0 is now the most recent; 1 the least
        lru.insert(3, block(3));
        assert!(!lru.contains(1));
        assert!(lru.contains(0) && lru.contains(2) && lru.contains(3));
        lru.insert(4, block(4));
        assert!(!lru.contains(2));
        assert_eq!(lru.len(), 3);
        assert_eq!(&*lru.get(4).unwrap(), &[4, 4, 4, 4]);
        lru.insert(4, block(9));
        assert_eq!(&*lru.get(4).unwrap(), &[9, 9, 9, 9]);
        assert_eq!(lru.len(), 3);
    }

    #[test]
    fn evicted_blocks_are_reused_only_when_nobody_holds_them() {
        let cache = BlockCache::new(4, 4); // one shard of one entry
        let fill = |key: u32, byte: u8| match cache.lookup(key) {
            Lookup::Owner(claim) => claim.finish(Some(block(byte))),
            _ => panic!("block {key} should be new"),
        };
        fill(0, 0);
        let held = match cache.lookup(0) {
            Lookup::Hit(b) => b,
            _ => panic!("block 0 should be cached"),
        };
        fill(1, 1); // evicts block 0, which `held` still uses
        assert!(cache.take_spare(4).is_none());
        assert_eq!(&*held, &[0, 0, 0, 0]);
        fill(2, 2); // evicts block 1, held by nobody
        assert!(
            cache.take_spare(8).is_none(),
            "a buffer of another size is not handed out"
        );
        fill(3, 3);
        let mut spare = cache.take_spare(4).expect("the evicted block 2 is reused");
        assert!(Arc::get_mut(&mut spare).is_some());
        assert!(cache.take_spare(4).is_none());
    }

    #[test]
    fn lru_of_capacity_zero_holds_nothing() {
        let mut lru = Lru::new(0);
        lru.insert(1, block(1));
        assert_eq!(lru.len(), 0);
        assert!(lru.get(1).is_none());
    }

    #[test]
    fn lru_survives_long_random_use() {
        let mut lru = Lru::new(17);
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = ((x >> 33) % 40) as u32;
            if x & 1 == 0 {
                lru.insert(key, block(key as u8));
            } else if let Some(v) = lru.get(key) {
                assert_eq!(v[0], key as u8);
            }
            assert!(lru.len() <= 17);
        }
    }

    #[test]
    fn byte_limit_sets_capacity() {
        assert_eq!(BlockCache::new(32 << 20, 65536).capacity(), 512);
        assert_eq!(BlockCache::new(0, 65536).capacity(), 0);
        assert_eq!(BlockCache::new(3 * 65536, 65536).capacity(), 3);
        let cache = BlockCache::new(32 << 20, 65536);
        assert_eq!(cache.shards.len(), 16);
    }

    #[test]
    fn second_reader_waits_for_the_first() {
        let cache = BlockCache::new(1 << 20, 4);
        let Lookup::Owner(claim) = cache.lookup(7) else {
            panic!("first lookup must own the block");
        };
        let Lookup::Wait(pending) = cache.lookup(7) else {
            panic!("second lookup must wait");
        };
        assert!(!pending.claim(), "an owned block is claimed already");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pending.wait());
            claim.finish(Some(block(7)));
            assert_eq!(&*waiter.join().unwrap().unwrap(), &[7, 7, 7, 7]);
        });
        assert!(matches!(cache.lookup(7), Lookup::Hit(_)));
        assert_eq!(cache.stats().decoded, 1);
    }

    #[test]
    fn queued_blocks_can_be_claimed_once() {
        let cache = BlockCache::new(1 << 20, 4);
        let pending = cache.queue(3).unwrap();
        assert!(cache.queue(3).is_none());
        let Lookup::Wait(seen) = cache.lookup(3) else {
            panic!("queued block must be waited for");
        };
        assert!(seen.claim());
        assert!(!pending.claim());
        drop(cache.claimed(3, seen, false));
        assert_eq!(pending.wait(), None);
        assert!(!cache.is_present(3));
    }
}
