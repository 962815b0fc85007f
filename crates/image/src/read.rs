//! Reading decoded bytes: positioned reads from any thread, and a `Read + Seek` adapter.

use std::io::{self, Read, Seek, SeekFrom};

use crate::cache::Block;
use crate::{Image, ImageError};

impl Image {
    /// Reads decoded bytes at `offset` of the exposed device into `buf`; returns how many.
    ///
    /// Fills all of `buf` unless the read reaches the end of the image (then it returns fewer
    /// bytes, and 0 at or past the end). Safe to call from many threads at once; blocks come
    /// from the shared cache or are decoded once for all threads asking. On error nothing is
    /// promised about `buf`'s contents.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, ImageError> {
        let size = self.size();
        if buf.is_empty() || offset >= size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let bs = u64::from(self.block_size());
        let first = (offset / bs) as u32;
        let last = ((offset + len as u64 - 1) / bs) as u32;
        let loaded = self.ahead.observe(&self.core, first, last);
        let mut done = 0usize;
        for block in first..=last {
            let at = offset + done as u64;
            let within = (at - u64::from(block) * bs) as usize;
            let take = (bs as usize - within).min(len - done);
            let dst = &mut buf[done..done + take];
            if self.core.zero.is_zero(block) {
                dst.fill(0);
            } else {
                let key = self.core.cache_key(block);
                let data = match loaded.iter().find(|(k, _)| *k == key) {
                    Some((_, data)) => std::sync::Arc::clone(data),
                    None => self.core.get_block(block)?,
                };
                dst.copy_from_slice(&data[within..within + take]);
            }
            done += take;
        }
        Ok(len)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; reading past the end is an
    /// [`ImageError::NoSuchBlock`] error naming the first missing block.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            let block = (offset + n as u64) / u64::from(self.block_size());
            return Err(ImageError::NoSuchBlock {
                block,
                num_blocks: self.num_blocks(),
            });
        }
        Ok(())
    }

    /// A `Read + Seek` view of the exposed device, starting at offset 0.
    pub fn reader(&self) -> ImageReader<'_> {
        ImageReader {
            image: self,
            pos: 0,
            current: None,
        }
    }
}

/// Reads an [`Image`] like a file: `Read + Seek` over its exposed device.
///
/// Keeps the block it last read, so many small reads do not go back to the cache every time.
/// Errors are [`io::Error`]s wrapping the [`ImageError`] (kind `InvalidData` for damage).
pub struct ImageReader<'a> {
    image: &'a Image,
    pos: u64,
    current: Option<(u32, Block)>,
}

impl ImageReader<'_> {
    /// The current position.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.image.size();
        if buf.is_empty() || self.pos >= size {
            return Ok(0);
        }
        let bs = u64::from(self.image.block_size());
        let block = (self.pos / bs) as u32;
        let within = (self.pos % bs) as usize;
        let fits = (within as u64 + buf.len() as u64) <= bs;
        if !fits {
            // Spans blocks: let read_at do it (and let read-ahead see it).
            let n = self.image.read_at(buf, self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let data = match &self.current {
            Some((held, data)) if *held == block => data.clone(),
            _ => {
                // Go through read_at's bookkeeping once per block, then serve from the block.
                // One block: nothing is loaded for it here.
                let _ = self.image.ahead.observe(&self.image.core, block, block);
                let data = self.image.block(block)?;
                self.current = Some((block, data.clone()));
                data
            }
        };
        let n = buf.len().min((size - self.pos) as usize);
        buf[..n].copy_from_slice(&data[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(at) => {
                self.pos = at;
                return Ok(at);
            }
            SeekFrom::End(delta) => (self.image.size(), delta),
            SeekFrom::Current(delta) => (self.pos, delta),
        };
        match base.checked_add_signed(delta) {
            Some(at) => {
                self.pos = at;
                Ok(at)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }
}
