//! An opened image as a [`BlockDevice`], for the NBD server, the overlay and the FUSE mount.

use std::io;
use std::sync::Arc;

use mkmodule_blockdev::{BlockDevice, Extent};

use crate::image::Image;

/// A cloop-family image as a read-only block device; zero blocks are reported as holes.
///
/// Reader errors become I/O errors of the kind their [`crate::ImageError::kind`] says: a range
/// past the end is `InvalidInput` (NBD's `EINVAL`), damage `InvalidData` and operating-system
/// failures keep their own kind (both `EIO` to an NBD client). The message names the block
/// and its file offset.
pub struct ImageDevice {
    image: Arc<Image>,
}

impl ImageDevice {
    /// Wraps an opened image.
    pub fn new(image: Arc<Image>) -> Self {
        ImageDevice { image }
    }

    /// The image this device reads.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }
}

impl BlockDevice for ImageDevice {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn preferred_block_size(&self) -> u32 {
        self.image.block_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image
            .read_exact_at(buf, offset)
            .map_err(io::Error::from)
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(self.image.extents(offset, len))
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.image.prefetch(offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;
    use mkmodule_codec::{BlockCompressor, CodecSpec};
    use mkmodule_format::{CodecKind, Dialect, Header};

    /// A two-block V2 image with zlib blocks: block 0 all zeros, block 1 bytes 1 to 251.
    fn image() -> Arc<Image> {
        let bs = 4096usize;
        let mut zlib =
            BlockCompressor::new(CodecSpec::with_default_level(CodecKind::Zlib)).unwrap();
        let (mut zero, mut data) = (Vec::new(), Vec::new());
        zlib.compress(&vec![0u8; bs], &mut zero).unwrap();
        let bytes: Vec<u8> = (0..bs).map(|i| (i % 251) as u8 + 1).collect();
        zlib.compress(&bytes, &mut data).unwrap();
        let header = Header {
            block_size: bs as u32,
            num_blocks: 2,
        };
        let s = 136 + header.index_len();
        let mut image = header.encode(Dialect::LinuxV2).to_vec();
        for entry in [
            s,
            s + zero.len() as u64,
            s + (zero.len() + data.len()) as u64,
        ] {
            image.extend_from_slice(&entry.to_be_bytes());
        }
        image.extend_from_slice(&zero);
        image.extend_from_slice(&data);
        Arc::new(Image::from_bytes(image, &OpenOptions::default()).unwrap())
    }

    #[test]
    fn errors_carry_the_kind_a_client_should_see() {
        let device = ImageDevice::new(image());
        let mut buf = [0u8; 16];
        device.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf[0], 1);
        let past = device.read_at(&mut buf, 8190).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::InvalidInput, "{past}");
        assert!(past.to_string().contains("block 2"), "{past}");
        let write = device.write_at(&buf, 0).unwrap_err();
        assert_eq!(write.kind(), io::ErrorKind::PermissionDenied);
    }
}
