//! Block devices for mkmodule: the one trait every block source and consumer shares.
//!
//! A [`BlockDevice`] is a fixed-size, randomly readable (optionally writable) run of bytes.
//! The NBD server serves one, the copy-on-write overlay stacks over one and is one, the FUSE
//! mount exposes one as a file, and the image reader presents a cloop-family image as one.
//! This crate knows nothing of NBD, FUSE or cloop, so each of those depends on it and not on
//! each other.
//!
//! It also holds the [`ErrorKind`] that every mkmodule library error reports, and the mapping
//! from a kind to the [`std::io::ErrorKind`] a device returns (and so to the errno an NBD
//! client sees).
//!
//! ```
//! use mkmodule_blockdev::{BlockDevice, DeviceReader, MemoryDevice};
//! use std::io::Read;
//!
//! let device = MemoryDevice::new(b"hello, world".to_vec());
//! let mut word = [0u8; 5];
//! device.read_at(&mut word, 7).unwrap();
//! assert_eq!(&word, b"world");
//!
//! let mut all = Vec::new();
//! DeviceReader::new(&device).read_to_end(&mut all).unwrap();
//! assert_eq!(all, b"hello, world");
//! ```

mod device;
mod error;
mod file;
mod memory;
mod reader;
mod zero;

pub use device::{BlockDevice, Extent};
pub use error::{chain_text, io_error, read_only, ErrorKind};
pub use file::FileDevice;
pub use memory::MemoryDevice;
pub use reader::DeviceReader;
pub use zero::is_zero;
