//! The integration tests of the mkmodule command line, in one test binary (one link instead of one per file).
//!
//! Each file of this directory is a module; a test's name starts with its module
//! (`cargo test -p mkmodule -- MODULE::` runs one group). To add tests, put them in a new file
//! here and list it below with `mod NAME;`; a file left directly in `tests/` would become a
//! binary of its own. Shared helpers live in `mkmodule-testkit` or in a module of this binary.
//! Tests here run as threads of one process: anything process-wide (environment variables, the
//! current directory, signal handlers, fixed ports) must be serialised explicitly.

mod bench;
mod boot;
mod boot_connect;
mod boot_distro;
mod boot_live;
mod boot_verity;
mod cli_words;
mod common_create;
mod common_read;
mod common_tools;
mod connect;
mod convert_fetch;
mod cow;
mod create_errors;
mod create_interop;
mod create_roundtrip;
mod deb;
mod docs;
mod earlier_images;
mod extract;
mod faults;
mod hostile_images;
mod info;
mod interrupt;
mod mount;
mod mount_url;
mod progress;
mod remote;
mod reuse;
mod serve;
mod serve_guest;
mod serve_hostile;
mod serve_tls;
mod storm;
mod verify;
mod verity;
mod wrong_input;

use std::sync::{Mutex, MutexGuard};

/// Guests boot one at a time: two TCG guests on two shared cores would skew the figures.
static GUEST: Mutex<()> = Mutex::new(());

/// Mounts (FUSE, loop devices, overlayfs) are made by one test at a time.
static MOUNTS: Mutex<()> = Mutex::new(());

/// Holds the guest lock of this binary (the `boot` and `serve_guest` tests take it).
pub fn guest_lock() -> MutexGuard<'static, ()> {
    GUEST.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds the mount lock of this binary (the `mount` tests and every `common_tools::Cleanup`).
pub fn mount_lock() -> MutexGuard<'static, ()> {
    MOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The go-between that measures mkmodule's memory (`common_tools::mkmodule_measured`); it does
/// nothing in a normal run. Its name is fixed (`mkmodule_testkit::process::MEASURE_HELPER_TEST`).
#[test]
fn measure_helper() {
    mkmodule_testkit::process::measure_helper_main();
}
