//! Random-access reader of cloop-family images with a shared block cache.
//!
//! [`Image::open`] detects the dialect (Linux V2.0 and V4.0, header first or last, FreeBSD uzip
//! with zlib, xz or zstd and dedup), reads and validates the whole index and mkmodule's trailer
//! before serving a byte, and then answers [`Image::read_at`] from any number of threads.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mkmodule_image::Image;
//!
//! let image = Arc::new(Image::open("KNOPPIX")?);
//! let mut sector = [0u8; 512];
//! image.read_at(&mut sector, 32768)?;
//! # Ok::<(), mkmodule_image::ImageError>(())
//! ```
//!
//! * **Leniency** (docs/FORMAT.md §8): a final block that decodes short is zero-filled (mkuzip and
//!   vndcompress write it so, even under the `V2.0` signature); zero-length blocks read as zeros;
//!   dedup back-references are followed; `index[n]` of 0 in old uzip images, trailing padding,
//!   slack after a stream and Knoppix's extra zero block are all accepted. A short block anywhere
//!   else is corruption.
//! * **Errors** name the block and the file offset of its compressed bytes ([`ImageError`]);
//!   nothing panics on a hostile file, and buffers are sized from the block size and the codec
//!   bounds the format crate enforces.
//! * **I/O** goes through an [`ImageSource`]: `pread` on a local file by default; [`OpenOptions::mmap`] maps the file instead (see its risk).
//!   [`Image::from_bytes`] reads an image held in memory, with the same checks.
//! * **Cache**: decoded blocks live in a sharded LRU cache with a byte limit
//!   ([`OpenOptions::cache_bytes`]); concurrent readers of one missing block share one decode.
//! * **Read-ahead**: a reader moving from block `i` to `i + 1` gets the next blocks decoded on a
//!   small thread pool ([`OpenOptions::readahead`]).
//! * **Zero map**: blocks known to be all zeros ([`Image::is_zero_block`], [`Image::extents`],
//!   [`Image::zero_extents`]) for sparse output and NBD block status. Known zero are zero-length
//!   blocks, back-references to them, and blocks whose compressed bytes are identical to those
//!   of a block decoded at open and found all zero: writers compress every zero block to the same
//!   bytes, so at open the stored blocks are grouped by codec and (short) compressed length, one
//!   member of each large group is decoded, and the others' bytes are compared with it. Equal
//!   bytes decode equally, so the map never guesses; zero blocks compressed differently are
//!   simply not in it. The cost is a few small reads at open.
//! * **Block digests** ([`Image::block_digests`]): the block-digest table of mkmodule's trailer
//!   when it is valid, else computed by decoding every block; a damaged table is reported, never
//!   trusted.
//! * **Whole-image passes** for extract and verify: [`Image::par_blocks`] and
//!   [`Image::par_blocks_ordered`] decode every block on several threads.

mod cache;
mod copy_check;
mod decode;
mod device;
mod digests;
mod error;
mod image;
mod image_core;
mod mmap;
mod open;
mod parallel;
mod read;
mod readahead;
mod source;
mod zero_map;

pub use cache::{Block, CacheStats};
pub use copy_check::{CopyCheck, Wanted};
pub use device::ImageDevice;
pub use digests::{BlockDigests, DigestOrigin, DigestTable};
pub use error::ImageError;
pub use image::{Image, MAX_EXTENTS};
pub use open::{ExposedSize, OpenOptions, DEFAULT_CACHE_BYTES, DEFAULT_READAHEAD};
pub use parallel::{Decoded, ParallelOptions};
pub use read::ImageReader;
pub use source::{FileSource, ImageSource, MemorySource};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn image_is_send_and_sync() {
        assert_send_sync::<Image>();
        assert_send_sync::<ImageError>();
    }

    /// A dedup image whose block 2 is a back-reference to a corrupt block 0: reading block 2
    /// names block 2 (at block 0's offset), whether block 0 was tried first or not, and
    /// whatever path reads it (found by the read_adapter fuzz target).
    #[test]
    fn a_bad_shared_block_is_named_as_asked() {
        use mkmodule_format::{Dialect, Header};
        let header = Header {
            block_size: 4096,
            num_blocks: 3,
        };
        let s = 136 + header.index_len();
        let mut bytes = header.encode(Dialect::UzipZlibDedup).to_vec();
        for entry in [s, s + 10, s, s + 20] {
            bytes.extend_from_slice(&entry.to_be_bytes());
        }
        bytes.extend_from_slice(&[0x55; 20]);
        let image = Image::from_bytes(bytes, &OpenOptions::default()).unwrap();
        for order in [[2, 0], [0, 2]] {
            for block in order {
                let err = image.block(block).unwrap_err();
                assert_eq!(err.block(), Some(block), "{err}");
                assert_eq!(err.offset(), Some(s));
                assert!(err
                    .to_string()
                    .starts_with(&format!("block {block} at offset {s}")));
            }
        }
        let mut buf = [0u8; 100];
        let err = image.read_at(&mut buf, 2 * 4096).unwrap_err();
        assert_eq!(err.block(), Some(2), "{err}");
        let pass = ParallelOptions {
            threads: 1,
            skip_zero: false,
        };
        image
            .par_blocks(pass, |i, decoded| {
                if i != 1 {
                    assert_eq!(decoded.unwrap_err().block(), Some(i));
                }
                Ok::<(), ()>(())
            })
            .unwrap();
    }
}
