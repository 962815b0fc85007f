//! `mkmodule connect`'s client side of the NBD handshake and its identity probe, against a
//! server that answers with arbitrary bytes (the boot network is not trusted: anyone on it can
//! answer in place of the server).
//!
//! The input is everything the "server" sends; what the client writes is discarded. Checks: no
//! panic, no hang, no allocation beyond the 64 KiB reply bound; an accepted export's identity
//! covers the size the server announced.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use mkmodule_connect::handshake::negotiate;
use mkmodule_connect::identity::probe;

/// A connection whose incoming bytes are the fuzzer's input and whose outgoing bytes vanish.
struct ScriptedServer<'a> {
    incoming: &'a [u8],
}

impl Read for ScriptedServer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.incoming.read(buf)
    }
}

impl Write for ScriptedServer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut server = ScriptedServer { incoming: data };
    let Ok(info) = negotiate(&mut server, "root") else {
        return;
    };
    if let Ok(identity) = probe(&mut server, info.size) {
        assert_eq!(identity.size, info.size);
    }
});
