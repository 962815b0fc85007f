//! Adapts an opened cloop image (or a raw file) to the NBD server's `Export` trait.

use std::io;
use std::sync::Arc;

use mkmodule_image::{Image, ImageError};
use mkmodule_nbd::{Export, Extent};

/// A cloop-family image served read-only over NBD, holes reported for zero blocks.
pub struct ImageExport {
    image: Arc<Image>,
}

impl ImageExport {
    /// Wraps an opened image.
    pub fn new(image: Arc<Image>) -> Self {
        ImageExport { image }
    }
}

/// Maps a reader error to the errno the client sees: damage is EIO with the block named in
/// the server log, a bad range is EINVAL.
fn to_io(error: ImageError) -> io::Error {
    io::Error::other(error.to_string())
}

impl Export for ImageExport {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn preferred_block_size(&self) -> u32 {
        self.image.block_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read_exact_at(buf, offset).map_err(to_io)
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(self
            .image
            .extents(offset, len)
            .into_iter()
            .map(|e| {
                if e.zero {
                    Extent::zeroes(e.len)
                } else {
                    Extent::data(e.len)
                }
            })
            .collect())
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.image.prefetch(offset, len);
        Ok(())
    }
}
