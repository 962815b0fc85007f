//! Mounting block exports (cloop images, above all) on hosts without `nbd.ko` or `cloop.ko`:
//!
//! 1. a FUSE server ([`fuse_file`]) shows each export as a regular file;
//! 2. a loop device ([`loopdev`]) turns each file into a block device;
//! 3. the filesystem on it is detected (blkid) and mounted, read-only unless the export is
//!    writable; or, for a union, each module is mounted read-only on a layer directory and the
//!    layers are stacked with overlayfs under a writable changes layer (tmpfs or a directory
//!    that persists), the paper's Slax layout.
//!
//! Every step is written to a record ([`state`]) under the run directory before the next
//! starts, so [`undo`] takes down exactly what was set up, in reverse, even after a crash or a
//! failure half-way. The FUSE server runs in a background process that outlives the command
//! ([`server::SpawnServer`]) or in the caller's process ([`server::InProcess`]).
//!
//! Needs root, `/dev/fuse`, the `loop`, `fuse` and `overlay` kernel modules, and util-linux's
//! `losetup`, `blkid`, `mount`, `umount` and `setsid`. No `fusermount` and no libfuse: as root
//! the FUSE mount is made with `mount(2)` directly.

mod error;
pub mod fuse_file;
pub mod loopdev;
pub mod server;
mod stack;
pub mod state;
pub mod sys;

pub use error::MountError;
pub use stack::{detect_fstype, file_names, mount, overlay_options, undo, Plan};
pub use state::{Kind, Record, RunDir, Step};
