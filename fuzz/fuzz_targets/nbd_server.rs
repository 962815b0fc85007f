//! The NBD server's handshake and request stream (server side) driven by arbitrary client
//! bytes over a socket pair: `Server::serve_connection` with in-memory exports.
//!
//! Input: `[config bits, client bytes...]` (see `mkmodule_fuzz::nbd_session`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&bits, client)) = data.split_first() {
        mkmodule_fuzz::nbd_session(bits, client);
    }
});
