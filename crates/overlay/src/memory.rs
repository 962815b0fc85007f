//! In-memory storage of overlay chunks: lost when the process ends, bounded only by what
//! clients write (one chunk-sized buffer per written chunk; zeroed chunks hold nothing).

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

/// Shards of the chunk table (the overlay's stripe lock already serialises each chunk; the
/// shards only keep different chunks from contending on one mutex).
const SHARDS: usize = 64;

/// Written chunks, each a whole chunk of bytes.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    shards: Vec<Mutex<HashMap<u64, Box<[u8]>>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, c: u64) -> MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        self.shards[(c % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn missing(c: u64) -> io::Error {
        io::Error::other(format!(
            "overlay chunk {c} is marked written but has no data"
        ))
    }

    /// Copies bytes of written chunk `c` from `offset` into `buf`.
    pub fn read(&self, c: u64, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let shard = self.shard(c);
        let data = shard.get(&c).ok_or_else(|| Self::missing(c))?;
        buf.copy_from_slice(&data[offset..offset + buf.len()]);
        Ok(())
    }

    /// Overwrites bytes of written chunk `c` at `offset`.
    pub fn write(&self, c: u64, offset: usize, data: &[u8]) -> io::Result<()> {
        let mut shard = self.shard(c);
        let chunk = shard.get_mut(&c).ok_or_else(|| Self::missing(c))?;
        chunk[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Stores the whole of chunk `c`.
    pub fn put(&self, c: u64, data: &[u8]) {
        self.shard(c).insert(c, data.into());
    }

    /// Forgets chunk `c` (it became zero).
    pub fn discard(&self, c: u64) {
        self.shard(c).remove(&c);
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|v| v.len() as u64)
                    .sum::<u64>()
            })
            .sum()
    }
}
