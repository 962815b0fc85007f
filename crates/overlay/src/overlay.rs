//! The copy-on-write engine: chunk-wise reads, read-modify-writes, zeroing and extents over a
//! base export and a store, with one lock stripe per group of chunks.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use mkmodule_blockdev::{is_zero, BlockDevice, Extent};

use crate::chunk_map::{ChunkMap, ChunkState, Geometry, Piece};
use crate::file::FileStore;
use crate::journal::Header;
use crate::memory::MemoryStore;
use crate::{identity, OverlayError, OverlayOptions};

/// Lock stripes: chunk `c` is guarded by stripe `c % STRIPES`.
const STRIPES: usize = 256;

/// Most extents returned by one [`Overlay::extents`] call.
const MAX_EXTENTS: usize = 1 << 16;

/// Where written chunks live.
#[derive(Debug)]
enum Store {
    Memory(MemoryStore),
    File(Box<FileStore>),
}

/// A writable copy-on-write view of a read-only base export.
///
/// Reads of chunks never written come from the base; the first write to a chunk copies it
/// (read-modify-write for partial writes) into the store, which is memory or a file; the base
/// is never written. Trim and write-zeroes mark chunks as zero without storing anything. All
/// methods take `&self` and may run on many threads: one overlay serves every connection of an
/// export, so multi-conn clients see one coherent device.
///
/// Dropping a file overlay flushes it (errors ignored); call [`BlockDevice::flush`] to know.
pub struct Overlay {
    base: Arc<dyn BlockDevice>,
    geo: Geometry,
    map: ChunkMap,
    locks: Vec<RwLock<()>>,
    store: Store,
    read_only: bool,
    /// Set by tests that simulate a crash: skip the flush on drop.
    abandoned: AtomicBool,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("size", &self.geo.size)
            .field("chunk_size", &self.geo.chunk)
            .field("store", &self.store)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// How much an overlay holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayStats {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunks in the export.
    pub chunks: u64,
    /// Chunks holding written data.
    pub data_chunks: u64,
    /// Chunks trimmed or zeroed.
    pub zero_chunks: u64,
}

impl Overlay {
    /// An overlay kept in memory: lost when dropped, and holding one chunk-sized buffer per
    /// written chunk, so its memory is bounded only by what clients write (at most the base
    /// size plus a few bytes per chunk).
    pub fn in_memory(
        base: Arc<dyn BlockDevice>,
        options: &OverlayOptions,
    ) -> Result<Overlay, OverlayError> {
        let chunk = crate::check_chunk_size(options.chunk_size)?;
        let geo = Geometry::new(base.size(), chunk);
        let map = ChunkMap::new((0..geo.n_chunks).map(|_| ChunkState::Base), false);
        Ok(Self::assemble(
            base,
            geo,
            map,
            Store::Memory(MemoryStore::new()),
            options.read_only,
        ))
    }

    /// Creates a new overlay file at `path` for `base` (refused if `path` exists).
    pub fn create(
        path: &Path,
        base: Arc<dyn BlockDevice>,
        options: &OverlayOptions,
    ) -> Result<Overlay, OverlayError> {
        let chunk = crate::check_chunk_size(options.chunk_size)?;
        let header = Header {
            chunk_size: chunk as u32,
            base_size: base.size(),
            fingerprint: identity::fingerprint(base.as_ref())?,
            label: options.label.clone(),
        };
        let store = FileStore::create(path, header)?;
        Ok(Self::from_file(base, store, false))
    }

    /// Opens an existing overlay file; refused when it was made for another base. The chunk
    /// size is the file's; `options.read_only` opens it for reading only (shared lock).
    pub fn open(
        path: &Path,
        base: Arc<dyn BlockDevice>,
        options: &OverlayOptions,
    ) -> Result<Overlay, OverlayError> {
        let fingerprint = identity::fingerprint(base.as_ref())?;
        let store = FileStore::open(path, &fingerprint, base.size(), options.read_only)?;
        Ok(Self::from_file(base, store, options.read_only))
    }

    /// Opens `path` if it exists, else creates it.
    pub fn open_or_create(
        path: &Path,
        base: Arc<dyn BlockDevice>,
        options: &OverlayOptions,
    ) -> Result<Overlay, OverlayError> {
        if path.exists() {
            Self::open(path, base, options)
        } else {
            Self::create(path, base, options)
        }
    }

    fn from_file(base: Arc<dyn BlockDevice>, store: FileStore, read_only: bool) -> Overlay {
        let geo = Geometry::new(base.size(), u64::from(store.header().chunk_size));
        let map = ChunkMap::new(store.durable_states(), true);
        Self::assemble(base, geo, map, Store::File(Box::new(store)), read_only)
    }

    fn assemble(
        base: Arc<dyn BlockDevice>,
        geo: Geometry,
        map: ChunkMap,
        store: Store,
        read_only: bool,
    ) -> Overlay {
        Overlay {
            base,
            geo,
            map,
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            store,
            read_only,
            abandoned: AtomicBool::new(false),
        }
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.geo.chunk as u32
    }

    /// The overlay file, for a file overlay.
    pub fn path(&self) -> Option<&Path> {
        match &self.store {
            Store::File(f) => Some(f.path()),
            Store::Memory(_) => None,
        }
    }

    /// The base label recorded when the overlay file was created.
    pub fn base_label(&self) -> Option<&str> {
        match &self.store {
            Store::File(f) => Some(&f.header().label),
            Store::Memory(_) => None,
        }
    }

    /// How many chunks hold data or zeros.
    pub fn stats(&self) -> OverlayStats {
        let (zero_chunks, data_chunks) = self.map.counts();
        OverlayStats {
            chunk_size: self.chunk_size(),
            chunks: self.map.len(),
            data_chunks,
            zero_chunks,
        }
    }

    /// Bytes of chunk data held in memory (0 for a file overlay).
    pub fn memory_bytes(&self) -> u64 {
        match &self.store {
            Store::Memory(m) => m.bytes(),
            Store::File(_) => 0,
        }
    }

    fn read_lock(&self, c: u64) -> RwLockReadGuard<'_, ()> {
        self.locks[(c % STRIPES as u64) as usize]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self, c: u64) -> RwLockWriteGuard<'_, ()> {
        self.locks[(c % STRIPES as u64) as usize]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range at offset {offset} length {len} is outside the {}-byte export",
                    self.geo.size
                ),
            )),
        }
    }

    fn check_writable(&self, what: &str) -> io::Result<()> {
        if self.read_only {
            Err(mkmodule_blockdev::read_only(what))
        } else {
            Ok(())
        }
    }

    fn store_read(&self, c: u64, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        match &self.store {
            Store::Memory(m) => m.read(c, offset, buf),
            Store::File(f) => f.read(c, offset, buf),
        }
    }

    fn store_write(&self, c: u64, offset: usize, data: &[u8]) -> io::Result<()> {
        match &self.store {
            Store::Memory(m) => m.write(c, offset, data),
            Store::File(f) => f.write(c, offset, data),
        }
    }

    /// Stores a whole chunk and marks it written (caller holds its write lock).
    fn store_put(&self, c: u64, data: &[u8]) -> io::Result<()> {
        match &self.store {
            Store::Memory(m) => m.put(c, data),
            Store::File(f) => f.write(c, 0, data)?,
        }
        self.map.set(c, ChunkState::Data);
        Ok(())
    }

    /// Marks a chunk zero, dropping stored data (caller holds its write lock).
    fn set_zero(&self, c: u64) {
        match self.map.get(c) {
            ChunkState::Zero => return,
            ChunkState::Data => {
                if let Store::Memory(m) = &self.store {
                    m.discard(c);
                }
                // A file chunk's bytes stay until its zero state is durable (see flush).
            }
            ChunkState::Base => {}
        }
        self.map.set(c, ChunkState::Zero);
    }

    /// The whole of chunk `c` as it reads now (caller holds its lock).
    fn current_chunk(&self, c: u64, state: ChunkState) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.geo.chunk_len(c)];
        match state {
            ChunkState::Base => self.base.read_at(&mut buf, self.geo.start(c))?,
            ChunkState::Zero => {}
            ChunkState::Data => self.store_read(c, 0, &mut buf)?,
        }
        Ok(buf)
    }

    /// Writes one piece: in place for a written chunk, else a read-modify-write of the chunk.
    /// `data` of `None` means zeros.
    fn write_piece(&self, p: Piece, data: Option<&[u8]>) -> io::Result<()> {
        let _guard = self.write_lock(p.chunk);
        let state = self.map.get(p.chunk);
        let whole = p.offset == 0 && p.len == self.geo.chunk_len(p.chunk);
        let zeros = data.is_none_or(is_zero);
        if whole && zeros {
            self.set_zero(p.chunk);
            return Ok(());
        }
        match (state, data) {
            (ChunkState::Zero, None) => Ok(()),
            (ChunkState::Data, Some(d)) => self.store_write(p.chunk, p.offset, d),
            (ChunkState::Data, None) => self.store_write(p.chunk, p.offset, &vec![0u8; p.len]),
            (_, Some(d)) if whole => self.store_put(p.chunk, d),
            _ => {
                let mut buf = self.current_chunk(p.chunk, state)?;
                match data {
                    Some(d) => buf[p.offset..p.offset + p.len].copy_from_slice(d),
                    None => buf[p.offset..p.offset + p.len].fill(0),
                }
                if is_zero(&buf) {
                    self.set_zero(p.chunk);
                    Ok(())
                } else {
                    self.store_put(p.chunk, &buf)
                }
            }
        }
    }

    fn zero_range(&self, offset: u64, len: u64, what: &str) -> io::Result<()> {
        self.check_writable(what)?;
        self.check_range(offset, len)?;
        for p in self.geo.pieces(offset, len) {
            self.write_piece(p, None)?;
        }
        Ok(())
    }

    /// Releases file space of chunks that just became durably zero and still are.
    fn punch(&self, store: &FileStore, runs: &[crate::journal::Run]) {
        // Every stripe, in order: no chunk can be rewritten while its space is released.
        let _all: Vec<RwLockWriteGuard<'_, ()>> = self
            .locks
            .iter()
            .map(|l| l.write().unwrap_or_else(|e| e.into_inner()))
            .collect();
        for run in runs {
            let mut start = None;
            for c in run.start..=run.start + u64::from(run.len) {
                let zero =
                    c < run.start + u64::from(run.len) && self.map.get(c) == ChunkState::Zero;
                match (zero, start) {
                    (true, None) => start = Some(c),
                    (false, Some(s)) => {
                        store.punch(s, c - s);
                        start = None;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Simulates a crash: drops the overlay without flushing.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn file_store(&self) -> Option<&FileStore> {
        match &self.store {
            Store::File(f) => Some(f.as_ref()),
            Store::Memory(_) => None,
        }
    }
}

fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.zero == e.zero && last.hole == e.hole => last.len += e.len,
        _ => out.push(e),
    }
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.geo.size
    }

    fn preferred_block_size(&self) -> u32 {
        self.base.preferred_block_size().max(self.chunk_size())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        for p in self.geo.pieces(offset, buf.len() as u64) {
            let out = &mut buf[p.pos..p.pos + p.len];
            let _guard = self.read_lock(p.chunk);
            match self.map.get(p.chunk) {
                ChunkState::Base => self
                    .base
                    .read_at(out, self.geo.start(p.chunk) + p.offset as u64)?,
                ChunkState::Zero => out.fill(0),
                ChunkState::Data => self.store_read(p.chunk, p.offset, out)?,
            }
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < MAX_EXTENTS {
            let first = self.geo.chunk_of(pos);
            let state = self.map.get(first);
            let mut next = first + 1;
            while next < self.geo.n_chunks
                && self.geo.start(next) < end
                && self.map.get(next) == state
            {
                next += 1;
            }
            let run_end = self.geo.start(next).min(end);
            match state {
                ChunkState::Zero => push_extent(&mut out, Extent::zeroes(run_end - pos)),
                ChunkState::Data => push_extent(&mut out, Extent::data(run_end - pos)),
                ChunkState::Base => {
                    let mut p = pos;
                    while p < run_end && out.len() < MAX_EXTENTS {
                        let before = p;
                        for e in self.base.extents(p, run_end - p)? {
                            let n = e.len.min(run_end - p);
                            push_extent(&mut out, Extent { len: n, ..e });
                            p += n;
                            if p >= run_end {
                                break;
                            }
                        }
                        if p == before {
                            // The base said nothing useful: call the rest data.
                            push_extent(&mut out, Extent::data(run_end - p));
                            p = run_end;
                        }
                    }
                }
            }
            pos = run_end;
        }
        Ok(out)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.base.cache(offset, len)
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        true
    }

    fn can_trim(&self) -> bool {
        !self.read_only
    }

    fn can_write_zeroes(&self) -> bool {
        !self.read_only
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable("write")?;
        self.check_range(offset, buf.len() as u64)?;
        for p in self.geo.pieces(offset, buf.len() as u64) {
            self.write_piece(p, Some(&buf[p.pos..p.pos + p.len]))?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        match &self.store {
            Store::Memory(_) => Ok(()),
            Store::File(f) => {
                let zeroed = f.flush(&self.map)?;
                if !zeroed.is_empty() {
                    self.punch(f, &zeroed);
                }
                Ok(())
            }
        }
    }

    /// Trimmed ranges read as zeros afterwards (whole chunks are recorded as zero, the edges of
    /// partly covered chunks are zero-filled), so trim behaves like write-zeroes.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len, "trim")
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> io::Result<()> {
        self.zero_range(offset, len, "write zeroes")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if !self.read_only && !self.abandoned.load(Ordering::Relaxed) {
            let _ = self.flush();
        }
    }
}
