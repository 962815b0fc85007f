//! Where compressed bytes come from: positioned reads (`pread`) by default, a memory map, or a
//! buffer the caller handed over.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::mmap::MappedFile;

/// The backing file of an image.
pub(crate) enum Source {
    /// Positioned reads on the open file; safe whatever happens to the file.
    File(File),
    /// A read-only map of the whole file (see `OpenOptions::mmap` for its risk).
    Mapped(MappedFile),
    /// The whole image in memory (`Image::from_bytes`).
    Memory(Vec<u8>),
}

impl Source {
    /// Current length of the backing file (block devices included).
    pub(crate) fn len(&self) -> io::Result<u64> {
        match self {
            Source::File(file) => file_len(file),
            Source::Mapped(map) => Ok(map.bytes().len() as u64),
            Source::Memory(bytes) => Ok(bytes.len() as u64),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short file gives `UnexpectedEof`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Source::File(file) => file.read_exact_at(buf, offset),
            Source::Mapped(map) => {
                buf.copy_from_slice(slice(map.bytes(), offset, buf.len())?);
                Ok(())
            }
            Source::Memory(bytes) => {
                buf.copy_from_slice(slice(bytes, offset, buf.len())?);
                Ok(())
            }
        }
    }

    /// Calls `f` with the `len` bytes at `offset`: borrowed from the map, or read into `scratch`
    /// (grown as needed and reused between calls).
    pub(crate) fn with_bytes<R>(
        &self,
        offset: u64,
        len: usize,
        scratch: &mut Vec<u8>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        match self {
            Source::File(file) => {
                if scratch.len() < len {
                    scratch.resize(len, 0);
                }
                let buf = &mut scratch[..len];
                file.read_exact_at(buf, offset)?;
                Ok(f(buf))
            }
            Source::Mapped(map) => Ok(f(slice(map.bytes(), offset, len)?)),
            Source::Memory(bytes) => Ok(f(slice(bytes, offset, len)?)),
        }
    }
}

/// Length of a file or block device (whose metadata says 0), found by seeking to its end.
///
/// Only positioned reads are used on the file, so moving its cursor is harmless.
pub(crate) fn file_len(file: &File) -> io::Result<u64> {
    let mut handle = file;
    handle.seek(SeekFrom::End(0))
}

/// `bytes[offset..offset + len]`, or `UnexpectedEof` when that runs past the end.
fn slice(bytes: &[u8], offset: u64, len: usize) -> io::Result<&[u8]> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            )
        })
}
