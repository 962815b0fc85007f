//! A persistent overlay: chunk data in a sparse file at fixed offsets, chunk states in a
//! checkpoint plus a log of records (see `journal` for the layout).
//!
//! Crash consistency rests on one ordering, kept by [`FileStore::flush`]: the data file is
//! synced *before* any record that maps a chunk to its data is written, and a flush returns
//! only after that record is synced too. A chunk's bytes live at a fixed offset, written only
//! with that chunk's content, so a durable record can never point at bytes that were not
//! written for it. Records are checksummed and numbered; replay stops at the first torn or
//! stale one, which leaves every chunk in a state it had at some flush.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{FallocateFlags, FlockOperation};

use crate::chunk_map::{ChunkMap, ChunkState};
use crate::error::Damage;
use crate::identity::hex;
use crate::journal::{
    decode_checkpoint, decode_record, encode_checkpoint, encode_record, to_runs, Header,
    HeaderProblem, Layout, Run, StateTable, HEADER_LEN, MAX_RUNS_PER_RECORD,
};
use crate::OverlayError;

/// Metadata state, guarded by the flush lock.
#[derive(Debug)]
struct Meta {
    /// Every chunk's state as the file's metadata records it.
    durable: StateTable,
    /// Generation of the current checkpoint.
    generation: u64,
    /// Region holding the current checkpoint and log (0 or 1).
    active: usize,
    /// Sequence number of the next record.
    seq: u64,
    /// Bytes of log used in the active region.
    tail: u64,
    /// File offset and length of the last record written (for crash tests).
    last_record: Option<(u64, u64)>,
}

/// The overlay file.
#[derive(Debug)]
pub(crate) struct FileStore {
    file: File,
    path: PathBuf,
    layout: Layout,
    header: Header,
    meta: Mutex<Meta>,
}

impl FileStore {
    /// Creates a new overlay file atomically (written under a temporary name, then linked into
    /// place without replacing anything), then opens it.
    pub fn create(path: &Path, header: Header) -> Result<FileStore, OverlayError> {
        if path.exists() {
            return Err(OverlayError::Exists {
                path: path.to_path_buf(),
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "overlay".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = Self::write_new(&tmp, &header).and_then(|()| {
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    OverlayError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    OverlayError::io("creating", path, e)
                }
            })
        });
        let _ = std::fs::remove_file(&tmp);
        result?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| OverlayError::io("syncing the directory of", path, e))?;
        Self::open(path, &header.fingerprint, header.base_size, false)
    }

    fn write_new(tmp: &Path, header: &Header) -> Result<(), OverlayError> {
        let io = |e| OverlayError::io("writing", tmp, e);
        let layout = Layout::new(u64::from(header.chunk_size), header.base_size).ok_or(
            OverlayError::BaseTooLarge {
                base_size: header.base_size,
            },
        )?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io)?;
        file.write_all_at(&header.encode(&layout), 0).map_err(io)?;
        let table = StateTable::new(layout.n_chunks);
        file.write_all_at(&encode_checkpoint(1, &table), layout.regions[0])
            .map_err(io)?;
        file.set_len(layout.file_len()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Opens an overlay file made for a base of `base_size` bytes with this fingerprint,
    /// replays its metadata and, unless `read_only`, starts a fresh checkpoint.
    pub fn open(
        path: &Path,
        fingerprint: &[u8; 32],
        base_size: u64,
        read_only: bool,
    ) -> Result<FileStore, OverlayError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| OverlayError::io("opening", path, e))?;
        let lock = if read_only {
            FlockOperation::NonBlockingLockShared
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        if let Err(e) = rustix::fs::flock(&file, lock) {
            if e == rustix::io::Errno::WOULDBLOCK {
                return Err(OverlayError::Locked {
                    path: path.to_path_buf(),
                });
            }
            return Err(OverlayError::io("locking", path, e.into()));
        }
        let file_len = file
            .metadata()
            .map_err(|e| OverlayError::io("reading the size of", path, e))?
            .len();
        let mut head = vec![0u8; HEADER_LEN.min(file_len) as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| OverlayError::io("reading the header of", path, e))?;
        let (header, layout) = Header::decode(&head).map_err(|p| match p {
            HeaderProblem::NotOverlay => OverlayError::NotOverlay {
                path: path.to_path_buf(),
            },
            HeaderProblem::Version(found) => OverlayError::Version {
                path: path.to_path_buf(),
                found,
                supported: crate::journal::VERSION,
            },
            HeaderProblem::Damaged(what) => OverlayError::corrupt(path, what),
        })?;
        if header.base_size != base_size || &header.fingerprint != fingerprint {
            return Err(OverlayError::BaseMismatch {
                path: path.to_path_buf(),
                expected_label: header.label,
                expected_size: header.base_size,
                expected_fingerprint: hex(&header.fingerprint),
                actual_size: base_size,
                actual_fingerprint: hex(fingerprint),
            });
        }
        if file_len < layout.file_len() {
            return Err(OverlayError::corrupt(
                path,
                Damage::Truncated {
                    file_len,
                    needed: layout.file_len(),
                },
            ));
        }
        let meta = Self::replay(&file, path, &layout)?;
        let store = FileStore {
            file,
            path: path.to_path_buf(),
            layout,
            header,
            meta: Mutex::new(meta),
        };
        if !read_only {
            let mut meta = store.lock_meta();
            let table = meta.durable.clone();
            store
                .checkpoint(&mut meta, table)
                .map_err(|e| OverlayError::io("writing a checkpoint to", path, e))?;
        }
        Ok(store)
    }

    /// Reads both checkpoints, takes the newest intact one and replays its log.
    fn replay(file: &File, path: &Path, layout: &Layout) -> Result<Meta, OverlayError> {
        let mut best: Option<(u64, StateTable, usize)> = None;
        for (i, &region) in layout.regions.iter().enumerate() {
            let mut buf = vec![0u8; layout.log_offset as usize];
            file.read_exact_at(&mut buf, region)
                .map_err(|e| OverlayError::io("reading a checkpoint of", path, e))?;
            if let Some((generation, table)) = decode_checkpoint(&buf, layout.n_chunks) {
                if best.as_ref().is_none_or(|(g, _, _)| generation > *g) {
                    best = Some((generation, table, i));
                }
            }
        }
        let Some((generation, mut durable, active)) = best else {
            return Err(OverlayError::corrupt(
                path,
                Damage::Checkpoints {
                    first: layout.regions[0],
                    second: layout.regions[1],
                },
            ));
        };
        let mut log = vec![0u8; layout.log_capacity as usize];
        file.read_exact_at(&mut log, layout.regions[active] + layout.log_offset)
            .map_err(|e| OverlayError::io("reading the log of", path, e))?;
        let (mut tail, mut seq) = (0usize, 0u64);
        while let Some((runs, n)) = decode_record(&log[tail..], generation, seq, layout.n_chunks) {
            durable.apply(&runs);
            tail += n;
            seq += 1;
        }
        Ok(Meta {
            durable,
            generation,
            active,
            seq,
            tail: tail as u64,
            last_record: None,
        })
    }

    fn lock_meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The header read at open.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every chunk's state as recorded in the file.
    pub fn durable_states(&self) -> Vec<ChunkState> {
        let meta = self.lock_meta();
        (0..meta.durable.len())
            .map(|c| meta.durable.get(c))
            .collect()
    }

    /// Reads bytes of written chunk `c`.
    pub fn read(&self, c: u64, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        self.file
            .read_exact_at(buf, self.layout.chunk_offset(c) + offset as u64)
    }

    /// Writes bytes of chunk `c` in place.
    pub fn write(&self, c: u64, offset: usize, data: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(data, self.layout.chunk_offset(c) + offset as u64)
    }

    /// Releases the space of `count` chunks from `start` (they are durably zero).
    pub fn punch(&self, start: u64, count: u64) {
        // Only space is at stake: a file system without hole punching keeps the bytes.
        let _ = rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            self.layout.chunk_offset(start),
            count * self.layout.chunk_size,
        );
    }

    /// Makes everything written so far durable: syncs the data, then records the state of
    /// every chunk changed since the last flush and syncs that. Returns the runs of chunks that
    /// became durably zero (their space may now be released).
    pub fn flush(&self, map: &ChunkMap) -> io::Result<Vec<Run>> {
        let mut meta = self.lock_meta();
        let changes = map.take_dirty();
        let result = self
            .file
            .sync_data()
            .and_then(|()| self.commit(&mut meta, &changes));
        match result {
            Ok(runs) => Ok(runs
                .into_iter()
                .filter(|r| r.state == ChunkState::Zero)
                .collect()),
            Err(e) => {
                map.redirty(&changes);
                Err(e)
            }
        }
    }

    /// Records `changes` (whose data is already synced): appended to the log when they fit,
    /// else folded into a checkpoint in the other region.
    fn commit(&self, meta: &mut Meta, changes: &[(u64, ChunkState)]) -> io::Result<Vec<Run>> {
        let runs = to_runs(changes);
        if runs.is_empty() {
            return Ok(runs);
        }
        let mut bytes = Vec::new();
        let mut seq = meta.seq;
        let mut last_start = 0;
        for group in runs.chunks(MAX_RUNS_PER_RECORD) {
            last_start = bytes.len() as u64;
            bytes.extend_from_slice(&encode_record(meta.generation, seq, group));
            seq += 1;
        }
        if meta.tail + bytes.len() as u64 <= self.layout.log_capacity {
            let at = self.layout.regions[meta.active] + self.layout.log_offset + meta.tail;
            self.file.write_all_at(&bytes, at)?;
            self.file.sync_data()?;
            meta.durable.apply(&runs);
            meta.last_record = Some((at + last_start, bytes.len() as u64 - last_start));
            meta.tail += bytes.len() as u64;
            meta.seq = seq;
        } else {
            let mut table = meta.durable.clone();
            table.apply(&runs);
            self.checkpoint(meta, table)?;
        }
        Ok(runs)
    }

    /// Writes `table` as the next generation's checkpoint into the inactive region, syncs it,
    /// and makes that region current with an empty log.
    fn checkpoint(&self, meta: &mut Meta, table: StateTable) -> io::Result<()> {
        let next = 1 - meta.active;
        // Replay never yields u64::MAX (decode_checkpoint refuses it); checked all the same.
        let generation = meta.generation.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the checkpoint generation cannot grow any further",
            )
        })?;
        self.file.write_all_at(
            &encode_checkpoint(generation, &table),
            self.layout.regions[next],
        )?;
        self.file.sync_data()?;
        *meta = Meta {
            durable: table,
            generation,
            active: next,
            seq: 0,
            tail: 0,
            last_record: None,
        };
        Ok(())
    }

    /// File offset and length of the last log record written (for crash tests).
    #[cfg(test)]
    pub fn last_record(&self) -> Option<(u64, u64)> {
        self.lock_meta().last_record
    }
}
