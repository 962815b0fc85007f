//! The one place that maps an image into memory (opt-in: `OpenOptions::mmap`).
//!
//! Mapping a file is the only `unsafe` operation in this crate, so it lives alone here.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A read-only mapping of a whole image file.
pub(crate) struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `file` read-only.
    pub(crate) fn map(file: &File) -> io::Result<MappedFile> {
        // SAFETY: the map is read-only and only ever read through shared slices, so Rust's
        // aliasing rules hold as long as no one changes the file underneath. That is the caller's
        // contract, documented on `OpenOptions::mmap`: an image must not be modified while it is
        // open. If it is truncated anyway, touching a page past the new end raises SIGBUS (the
        // process dies; memory is never silently wrong), which is why mapping is opt-in.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(MappedFile { map })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}
