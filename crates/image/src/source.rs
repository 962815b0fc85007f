//! Where an image's compressed bytes come from: the [`ImageSource`] trait and its local kinds.
//!
//! The reader never touches a file directly; it asks a source for byte ranges. A local file
//! read with positioned reads (`pread`) is the default, a memory map and an in-memory buffer
//! are the others. A new kind of storage (a remote object, say) is one more implementation of
//! the trait, handed to [`crate::Image::open_source`]; the reader above it does not change.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::mmap::MappedFile;

/// Random-access bytes of an image, readable from many threads at once.
pub trait ImageSource: Send + Sync {
    /// The current length in bytes (it may shrink under the reader: a truncated file).
    fn len(&self) -> io::Result<u64>;

    /// Whether the source holds no bytes at all.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a range past the end gives
    /// [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Reads several ranges, each exactly, as [`ImageSource::read_exact_at`] would. Read-ahead
    /// calls it with the compressed bytes of consecutive blocks, in file order, so a source for
    /// which each read is costly (a remote one) can fetch adjacent ranges with one request.
    /// Default: one `read_exact_at` per range.
    fn read_many_at(&self, reads: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        for (offset, buf) in reads.iter_mut() {
            self.read_exact_at(buf, *offset)?;
        }
        Ok(())
    }

    /// All the bytes, when the source already holds them in memory (a map or a buffer), so
    /// blocks can be decoded without a copy. Default: none.
    fn bytes(&self) -> Option<&[u8]> {
        None
    }

    /// Whether the source wants to be asked only for bytes readers need: each byte it reads
    /// costs a transfer from elsewhere (a remote origin). The reader then never reads blocks
    /// ahead of a sequential reader; it reads the blocks one read spans together instead (one
    /// [`ImageSource::read_many_at`] call). Default: false (read-ahead as configured).
    fn asked_only(&self) -> bool {
        false
    }
}

/// A local file or block device, read with positioned reads: safe whatever happens to it.
pub struct FileSource {
    file: File,
}

impl FileSource {
    /// Reads `file` (positioned reads only, so sharing it with others is harmless).
    pub fn new(file: File) -> Self {
        FileSource { file }
    }
}

impl ImageSource for FileSource {
    fn len(&self) -> io::Result<u64> {
        file_len(&self.file)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// An image held in memory.
pub struct MemorySource {
    bytes: Vec<u8>,
}

impl MemorySource {
    /// Serves `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemorySource { bytes }
    }
}

impl ImageSource for MemorySource {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(slice(&self.bytes, offset, buf.len())?);
        Ok(())
    }

    fn bytes(&self) -> Option<&[u8]> {
        Some(&self.bytes)
    }
}

impl ImageSource for MappedFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes().len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(slice(self.bytes(), offset, buf.len())?);
        Ok(())
    }

    fn bytes(&self) -> Option<&[u8]> {
        Some(MappedFile::bytes(self))
    }
}

/// The reader's handle on its source, with the block-reading helper every path shares.
pub(crate) struct Source(Box<dyn ImageSource>);

impl Source {
    /// Wraps `source`.
    pub(crate) fn new(source: Box<dyn ImageSource>) -> Self {
        Source(source)
    }

    /// Current length of the source.
    pub(crate) fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short source gives `UnexpectedEof`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    /// Reads several ranges (see [`ImageSource::read_many_at`]).
    pub(crate) fn read_many_at(&self, reads: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        self.0.read_many_at(reads)
    }

    /// Whether the source wants reads of asked-for blocks only (see
    /// [`ImageSource::asked_only`]).
    pub(crate) fn asked_only(&self) -> bool {
        self.0.asked_only()
    }

    /// Whether the source holds all its bytes in memory (reads cost no I/O).
    pub(crate) fn in_memory(&self) -> bool {
        self.0.bytes().is_some()
    }

    /// Calls `f` with the `len` bytes at `offset`: borrowed when the source holds them in
    /// memory, else read into `scratch` (grown as needed and reused between calls).
    pub(crate) fn with_bytes<R>(
        &self,
        offset: u64,
        len: usize,
        scratch: &mut Vec<u8>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        if let Some(bytes) = self.0.bytes() {
            return Ok(f(slice(bytes, offset, len)?));
        }
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let buf = &mut scratch[..len];
        self.0.read_exact_at(buf, offset)?;
        Ok(f(buf))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &dyn ImageSource) {
        assert_eq!(source.len().unwrap(), 10);
        let mut buf = [0u8; 4];
        source.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"6789");
        let past = source.read_exact_at(&mut buf, 7).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        // Far past the end: an error (the kernel refuses such a file offset outright).
        assert!(source.read_exact_at(&mut buf, u64::MAX - 1).is_err());
    }

    #[test]
    fn every_local_source_reads_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"0123456789").unwrap();
        check(&FileSource::new(File::open(&path).unwrap()));
        check(&MemorySource::new(b"0123456789".to_vec()));
        check(&MappedFile::map(&File::open(&path).unwrap()).unwrap());
    }

    #[test]
    fn with_bytes_borrows_or_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = Source::new(Box::new(FileSource::new(File::open(&path).unwrap())));
        let memory = Source::new(Box::new(MemorySource::new(b"0123456789".to_vec())));
        let mut scratch = Vec::new();
        for source in [&file, &memory] {
            let got = source
                .with_bytes(2, 3, &mut scratch, |b| b.to_vec())
                .unwrap();
            assert_eq!(got, b"234");
            assert!(source.with_bytes(8, 3, &mut scratch, |_| ()).is_err());
        }
    }
}
