//! A raw file or host block device used as a block device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::device::BlockDevice;
use crate::error::read_only;

/// A raw file (or block device) served with positioned reads and writes.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    writable: bool,
    preferred: u32,
}

impl FileDevice {
    /// Open `path` read-only; the size is taken once, at open time.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::from_file(File::open(path)?, false)
    }

    /// Open `path` for reading and writing.
    pub fn open_writable(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file, true)
    }

    /// Serve an already-open file; `writable` requires it to be open for writing.
    pub fn from_file(file: File, writable: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            // Block devices report length 0 in metadata: seek to the end instead.
            use std::io::Seek;
            let mut f = &file;
            f.seek(io::SeekFrom::End(0))?
        };
        let blk = u32::try_from(meta.blksize()).unwrap_or(4096);
        Ok(FileDevice {
            file,
            size,
            writable,
            preferred: if blk == 0 { 4096 } else { blk },
        })
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn preferred_block_size(&self) -> u32 {
        self.preferred
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn is_read_only(&self) -> bool {
        !self.writable
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only("write"));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    fn can_write_zeroes(&self) -> bool {
        self.writable
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> io::Result<()> {
        if !self.writable {
            return Err(read_only("write zeroes"));
        }
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let n = (end - pos).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_device_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.raw");
        std::fs::write(&p, b"hello world").unwrap();
        let e = FileDevice::open(&p).unwrap();
        assert_eq!(e.size(), 11);
        let mut b = [0u8; 5];
        e.read_at(&mut b, 6).unwrap();
        assert_eq!(&b, b"world");
        assert!(e.read_at(&mut b, 10).is_err());
        assert!(e.write_at(b"x", 0).is_err());
        let w = FileDevice::open_writable(&p).unwrap();
        w.write_at(b"J", 0).unwrap();
        w.write_zeroes(1, 2, false).unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"J\0\0lo world");
    }
}
