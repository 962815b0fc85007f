//! Copy-on-write overlay over a read-only NBD export: in memory, or in a sparse file that
//! survives restarts and crashes.
//!
//! An [`Overlay`] wraps any base `Arc<dyn mkmodule_blockdev::BlockDevice>` (a cloop image, a raw file)
//! and is itself a writable `BlockDevice`: writes land in the overlay, reads merge overlay and base,
//! the base is never written. One overlay is shared by every connection of an export, so
//! multi-conn clients see one coherent device.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mkmodule_blockdev::{BlockDevice, FileDevice};
//! use mkmodule_overlay::{Overlay, OverlayOptions};
//!
//! let base: Arc<dyn BlockDevice> = Arc::new(FileDevice::open("root.img")?);
//! let options = OverlayOptions::default().with_label("root.img");
//! let overlay = Overlay::open_or_create("root.cow".as_ref(), base, &options)?;
//! overlay.write_at(b"hello", 4096)?;
//! overlay.flush()?; // durable from here on, crash or not
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! * **Chunks.** The export is cut into fixed chunks of [`DEFAULT_CHUNK_SIZE`] (64 KiB, any
//!   power of two from 4 KiB to 1 MiB). A chunk is *base* (read from the base), *zero* (trimmed
//!   or zeroed: reads as zeros, stores nothing) or *data* (the overlay holds all of it). The
//!   first write to a base chunk copies it: a partial write reads the rest of the chunk from the
//!   base (read-modify-write); later writes to a data chunk go in place. 64 KiB matches the
//!   usual cloop block, so a copy decodes exactly one base block; it keeps per-chunk costs (one
//!   state byte, one lock round, one journal run) 16 times lower than 4 KiB chunks, and the
//!   write amplification of small writes is paid only on a chunk's first write.
//! * **Memory overlays** ([`Overlay::in_memory`]) hold one chunk buffer per data chunk: memory
//!   is bounded only by what the clients write (up to the export size), and everything is lost
//!   when the process ends.
//! * **File overlays** ([`Overlay::create`], [`Overlay::open`]) keep chunk `c` at a fixed
//!   offset of a sparse file and the chunk states in a checksummed checkpoint plus a log of
//!   records (module `journal`). [`BlockDevice::flush`](mkmodule_blockdev::BlockDevice::flush) (and so NBD FLUSH and FUA) syncs the data
//!   first, then appends the records of every chunk whose state changed and syncs them: the
//!   metadata never points at unwritten data, a crash after a flush loses nothing that was
//!   flushed, and a torn record at the end of the log is ignored on open. The header records
//!   the base's size and a fingerprint of its content; opening over another base is refused.
//!   One process at a time may open a file for writing (`flock`).
//! * **Trim and write-zeroes** mark whole chunks zero (partly covered chunks are zero-filled),
//!   so trimmed ranges read as zeros and are reported as `HOLE|ZERO` extents; a file overlay
//!   punches the chunks' space out of the file once the zero state is durable.
//! * **Extents**: zero chunks `HOLE|ZERO`, data chunks data, base chunks whatever the base
//!   reports.

mod chunk_map;
mod error;
mod file;
mod identity;
mod journal;
mod memory;
mod overlay;

#[cfg(test)]
mod tests;

pub use chunk_map::ChunkState;
pub use error::{Damage, OverlayError};
pub use identity::fingerprint;
pub use overlay::{Overlay, OverlayStats};

/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size.
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;

/// How an overlay is made or opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Chunk size for a new overlay (an existing file keeps its own).
    pub chunk_size: u32,
    /// Who the base is (usually its path), recorded in a new overlay file for error messages.
    pub label: String,
    /// Refuse writes; a file is opened read-only with a shared lock and left untouched.
    pub read_only: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            label: String::new(),
            read_only: false,
        }
    }
}

impl OverlayOptions {
    /// Sets the chunk size of a new overlay.
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Sets the base label recorded in a new overlay file.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Opens the overlay read-only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }
}

pub(crate) fn chunk_size_ok(size: u64) -> bool {
    size.is_power_of_two()
        && (u64::from(MIN_CHUNK_SIZE)..=u64::from(MAX_CHUNK_SIZE)).contains(&size)
}

/// Checks a chunk size: a power of two from [`MIN_CHUNK_SIZE`] to [`MAX_CHUNK_SIZE`].
pub fn check_chunk_size(size: u32) -> Result<u64, OverlayError> {
    let size = u64::from(size);
    if chunk_size_ok(size) {
        Ok(size)
    } else {
        Err(OverlayError::ChunkSize(size))
    }
}
