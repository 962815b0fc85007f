//! Test support shared by mkmodule's tests, benchmarks, fuzz targets and xtask.
//!
//! * [`image`]: builds cloop-family images of every dialect with the format crate's encoders
//!   and the codec crate, with the quirks other writers have, and leaves room for hand-made
//!   malformed ones.
//! * [`data`]: deterministic test inputs and digests.
//! * [`fixtures`]: the reference images in `testdata/cloop-utils` and their manifest.
//! * [`nbd`]: a raw NBD client written from the protocol specification (not with the server's
//!   own encoders), for tests that need control over the wire.
//! * [`replay`]: replays a recorded block-read trace from many NBD clients at once (the boot
//!   storm of `cargo xtask storm`) and measures throughput and latency.
//! * [`nginx`]: nginx as a web origin on 127.0.0.1 with a parsed access log.
//! * [`tools`]: runs peer tools (qemu-img, nbdinfo, create_compressed_fs, zstd, ...); a missing
//!   tool fails the test with the Debian package to install, it never skips it.
//! * [`process`]: child processes: bounded waits, stopping by pid, peak memory via `wait4`.
//! * [`live_iso`]: a bootable live ISO (grub-mkrescue) around images compressed by mkmodule,
//!   with a busybox initramfs running `dist/lib/mkmodule-live` (`cargo xtask live-iso`).
//!
//! This crate is a dev-dependency only: no library and not the binary may depend on it.

pub mod data;
pub mod fixtures;
pub mod image;
pub mod live_iso;
pub mod nbd;
pub mod nginx;
pub mod process;
pub mod replay;
pub mod tools;
