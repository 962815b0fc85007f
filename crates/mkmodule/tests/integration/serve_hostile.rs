//! Hostile clients against the real `mkmodule serve` binary: many
//! connections, slow-loris handshakes, a client that never reads its replies, oversized and
//! overflowing requests, a client vanishing with requests in flight, the image truncated while
//! it is served, and the shared malformed-traffic probe script.
//!
//! Every server binds 127.0.0.1 on a port the kernel picks, is killed by its own pid when its
//! guard drops, and every client socket has a read timeout; every loop has a bound. Assertions
//! are on behaviour (what the client receives, what the server logs, whether it is alive, how
//! much memory and CPU it uses), never on how long something took. All clients come from
//! 127.0.0.1, so tests that need more than the per-address cap (`--max-connections-per-client`,
//! 16 by default) lift it.
//!
//! Bounds asserted, and why:
//!
//! * Connections: with `--max-connections 128`, of 500 simultaneous connections exactly 128
//!   get the greeting and 372 are closed at once without one (the cap refuses cleanly); with a
//!   cap of 600, 500 idle connections (half of them past the handshake) do not keep a
//!   well-behaved client (our raw client reading and comparing bytes, and `nbdinfo`) from being
//!   served, during and after. The test process holds at most about 510 sockets, under the
//!   usual soft limit of 1024 descriptors, so it needs no `setrlimit` (neither libc nor rustix
//!   is a dependency of the mkmodule crate); the server holds at most its cap plus a few.
//! * Slow-loris: clients that stay silent, trickle one byte every 250 ms, or stop halfway
//!   through an option header are all closed by the server's handshake timeout (the log gives
//!   `handshake timed out` for each) while a normal client is served (the server runs with
//!   `--handshake-timeout 4`).
//! * A client sending READs (32 MiB and 1 MiB ones, 64 Mi request headers at most) and never
//!   reading a reply: the server stops reading from it (the client's writes stall; the server
//!   read at most 1024 of its requests), its peak resident memory (`VmHWM` of the server
//!   process) stays below 272 MiB, the sum of 128 MiB (the per-connection cap on reply bytes
//!   in flight), 64 MiB (spare reply buffers the server keeps for reuse), 16 MiB
//!   (`--cache-size`) and 64 MiB for everything else (the process starts at about 9 MiB;
//!   measured peak: about 190 MiB); other clients are served meanwhile and afterwards. The
//!   brief's "128 MiB + cache" cannot hold: the server's design admits 128 MiB of replies per
//!   connection. That cap is per connection: k such clients may hold k × 128 MiB (4 of them
//!   measured 560 MiB).
//! * Requests: a 32 MiB READ (the advertised and enforced maximum) is served; 32 MiB + 1 and
//!   4 GiB − 1 are refused with EINVAL and the connection stays usable, with the server's
//!   `VmHWM` still below 256 MiB (the 4 GiB is never allocated); `offset + length` past 2^64,
//!   straddling or at the end: EINVAL, connection kept; a WRITE header claiming 4 GiB − 1 (on
//!   the read-only export) makes the server close that connection, nothing else.
//! * Disconnect with 128 requests in flight (1 MiB READs, one worker thread): each such
//!   connection gets its closing log line, no work is left behind for it (the idle server uses
//!   under 20 clock ticks of CPU in the second after the last closing line; before the fix in
//!   transmission.rs it went on decoding the abandoned reads: 47 ticks), its slot is released
//!   (with `--max-connections 4`, 4 clients are served at once afterwards and a fifth is
//!   refused), and NBD_CMD_DISC after 128 requests gets all 128 replies first.
//! * Image truncated to half while served (default `pread` I/O; `serve` has no mmap option, it
//!   never maps images): reads of blocks past the new end get EIO, the connection and the
//!   process stay up, every read that succeeds returns the original bytes, the intact first
//!   quarter is served; then the file grown back with zeros: still EIO or correct bytes, never
//!   wrong data. Same for a raw file export.
//! * `nbd_malformed.py` (the shared probe script, copied into crates/nbd/tests/scripts) run
//!   against `mkmodule serve` on a cloop image: exit 0, every probe followed by
//!   `[server alive]`, and the answers the reference column of nbd-testing.md asks for.

use crate::common_tools;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common_tools::{
    mkmodule, nbd_greeted, repo, run, run_ok, NbdClient, ServedTcp, NBD_CMD_CACHE, NBD_CMD_DISC,
    NBD_CMD_READ, NBD_CMD_WRITE, NBD_EINVAL, NBD_EIO,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The cloop block size used by `mkmodule create` by default.
const BLOCK: usize = 64 * KIB;

/// Deterministic test data: per 64 KiB block, two random-looking blocks, one patterned, one
/// zero (so images have incompressible, compressible and zero blocks).
fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; len];
    let mut x = seed | 1;
    for (i, block) in d.chunks_mut(BLOCK).enumerate() {
        match i % 4 {
            0 | 1 => {
                for c in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
                }
            }
            2 => {
                for (j, b) in block.iter_mut().enumerate() {
                    *b = ((i * 7 + j / 100) % 251) as u8;
                }
            }
            _ => {}
        }
    }
    d
}

/// Random-looking data only (compressed blocks as large as the input: an image truncated to
/// half loses about the second half of the blocks).
fn random_data(len: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; len];
    let mut x = seed | 1;
    for c in d.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    d
}

/// Writes `bytes` to `DIR/NAME.raw` and makes `DIR/NAME.cloop` of it with `mkmodule create`.
fn make_cloop(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    std::fs::write(&raw, bytes).unwrap();
    let image = dir.join(format!("{name}.cloop"));
    let out = mkmodule(&[
        "create",
        "-q",
        raw.to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "mkmodule create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

fn export_arg(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

/// Reads `len` bytes at `offset` over a fresh connection and compares them with `expected`.
fn check_read(addr: SocketAddr, export: &str, expected: &[u8], offset: usize, len: usize) {
    let mut c = NbdClient::connect(addr, export).expect("a well-behaved client is served");
    assert_eq!(c.size, expected.len() as u64);
    let got = c
        .read_reply(offset as u64, len as u32)
        .unwrap()
        .expect("read");
    assert!(
        got == expected[offset..offset + len],
        "wrong data at {offset}"
    );
    c.disconnect().unwrap();
}

/// Connects (bounded retries) until the server greets instead of refusing: a slot freed by a
/// closed connection is released by the server shortly after the close.
fn connect_retrying(addr: SocketAddr, export: &str) -> NbdClient {
    for _ in 0..400 {
        if let Some(s) = nbd_greeted(addr).unwrap() {
            return NbdClient::go(s, export).unwrap();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the server kept refusing connections");
}

/// Whether the server greeted (`true`) or closed without a greeting (`false`).
fn greeted(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut g = [0u8; 18];
    let mut got = 0;
    while got < g.len() {
        match s.read(&mut g[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("reading the greeting: {e}"),
        }
    }
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    true
}

/// Whether the server has closed `s`: reads until EOF or reset (bounded by `limit`), discarding
/// what it sent.
fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = vec![0u8; 256 * KIB];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Number of closing log lines for a client whose local address is `local`.
fn closing_lines(log: &str, local: SocketAddr) -> Vec<String> {
    let tag = format!("connection closed: peer={local} ");
    log.lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until `cond` holds on the server log; returns the last log text.
fn wait_for_log(server: &ServedTcp, what: &str, cond: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        let text = server.log_text();
        if cond(&text) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server log never showed {what}:\n{}", server.log_text());
}

#[test]
fn five_hundred_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = test_data(4 * MIB, 1);
    let image = make_cloop(dir.path(), "many", &bytes);
    let export = export_arg("many", &image);

    // All clients here come from 127.0.0.1: the per-address cap (16 by default) is lifted so
    // that the global cap is what is tested.
    let per_client = ["--max-connections-per-client", "0"];

    // Phase A: the default cap of 128. 500 connections that connect and say nothing.
    let mut server = ServedTcp::start(
        dir.path(),
        "cap128",
        &[
            &export,
            "--max-connections",
            "128",
            per_client[0],
            per_client[1],
        ],
    );
    let addr = server.socket_addr();
    let mut conns: Vec<TcpStream> = (0..500)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}")))
        .collect();
    let greeted_count = conns.iter_mut().map(greeted).filter(|&g| g).count();
    assert_eq!(
        greeted_count, 128,
        "exactly the cap is admitted, the rest closed without a greeting"
    );
    server.assert_alive();
    // While the cap is full a newcomer is refused cleanly too: closed, no greeting.
    assert!(nbd_greeted(addr).unwrap().is_none());
    let log = server.log_text();
    assert!(
        log.contains("connections already open"),
        "refusals are logged: {log}"
    );
    drop(conns);
    // After they close, a well-behaved client is served (slots come back).
    let mut c = connect_retrying(addr, "many");
    assert_eq!(
        c.read_reply(MIB as u64, 256 * KIB as u32).unwrap().unwrap(),
        bytes[MIB..MIB + 256 * KIB]
    );
    c.disconnect().unwrap();
    let info = run_ok("nbdinfo", &["--size", &format!("nbd://{addr}/many")]);
    assert_eq!(info.trim(), (4 * MIB).to_string());
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();

    // Phase B: a cap above 500. 250 idle in the handshake and 250 idle after NBD_OPT_GO,
    // all at once; a well-behaved client is served while they are open and after.
    let mut server = ServedTcp::start(
        dir.path(),
        "cap600",
        &[
            &export,
            "--max-connections",
            "600",
            per_client[0],
            per_client[1],
        ],
    );
    let addr = server.socket_addr();
    let mut idle: Vec<TcpStream> = (0..250)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut ready: Vec<NbdClient> = (0..250)
        .map(|_| NbdClient::connect(addr, "many").unwrap())
        .collect();
    assert!(idle.iter_mut().all(greeted), "all 250 idle ones admitted");
    check_read(addr, "many", &bytes, 0, 64 * KIB);
    check_read(addr, "many", &bytes, 3 * MIB - 1000, 100 * KIB);
    let info = run_ok("nbdinfo", &[&format!("nbd://{addr}/many")]);
    assert!(info.contains("export-size: 4194304"), "{info}");
    // The idle transmission-phase connections work too, each one read.
    for (i, c) in ready.iter_mut().enumerate() {
        let off = (i * 12_345) % (4 * MIB - 4096);
        assert_eq!(
            c.read_reply(off as u64, 4096).unwrap().unwrap(),
            bytes[off..off + 4096]
        );
    }
    server.assert_alive();
    drop(idle);
    drop(ready);
    check_read(addr, "many", &bytes, 2 * MIB, 512 * KIB);
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();
}

/// The server runs with a 4 s handshake timeout, so the test lasts a few seconds.
#[test]
fn slow_loris_handshakes_are_dropped_by_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = test_data(2 * MIB, 2);
    let image = make_cloop(dir.path(), "loris", &bytes);
    let mut server = ServedTcp::start(
        dir.path(),
        "loris",
        &[
            &export_arg("loris", &image),
            "--max-connections",
            "64",
            "--max-connections-per-client",
            "0",
            "--handshake-timeout",
            "4",
        ],
    );
    let addr = server.socket_addr();

    // Silent: greeted, then nothing.
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| nbd_greeted(addr).unwrap().unwrap())
        .collect();
    // Stalled: client flags and 10 of the 16 bytes of an option header, then nothing.
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = nbd_greeted(addr).unwrap().unwrap();
            s.write_all(&3u32.to_be_bytes()).unwrap();
            s.write_all(&b"IHAVEOPT"[..]).unwrap();
            s.write_all(&[0, 0]).unwrap();
            s
        })
        .collect();
    // Trickling: a NBD_OPT_GO with a 1000-byte name, one byte per round, forever.
    let mut go = Vec::new();
    go.extend_from_slice(&3u32.to_be_bytes());
    go.extend_from_slice(b"IHAVEOPT");
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&1006u32.to_be_bytes());
    go.extend_from_slice(&1000u32.to_be_bytes());
    go.extend_from_slice(&[b'x'; 1000]);
    go.extend_from_slice(&0u16.to_be_bytes());
    let trickle: Vec<TcpStream> = (0..4)
        .map(|_| nbd_greeted(addr).unwrap().unwrap())
        .collect();
    let trickler = std::thread::spawn(move || {
        let mut trickle = trickle;
        let mut cut = vec![false; trickle.len()];
        // 600 rounds of 250 ms: far past the 4 s timeout, but bounded.
        for round in 0..600 {
            for (i, s) in trickle.iter_mut().enumerate() {
                if !cut[i] && s.write_all(&go[round..round + 1]).is_err() {
                    cut[i] = true;
                }
            }
            if cut.iter().all(|&c| c) {
                return (trickle, round);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (trickle, 600)
    });

    // While they hang on, normal clients are served (several times, bounded).
    for i in 0..5 {
        check_read(addr, "loris", &bytes, i * 300 * KIB, 64 * KIB);
        std::thread::sleep(Duration::from_millis(500));
    }
    let info = run_ok("nbdinfo", &["--size", &format!("nbd://{addr}/loris")]);
    assert_eq!(info.trim(), (2 * MIB).to_string());

    for s in silent.iter_mut().chain(stalled.iter_mut()) {
        assert!(
            closed_by_server(s, Duration::from_secs(90)),
            "a stalled handshake was never dropped"
        );
    }
    let (mut trickle, rounds) = trickler.join().unwrap();
    assert!(rounds < 600, "a trickling handshake was never dropped");
    for s in &mut trickle {
        assert!(closed_by_server(s, Duration::from_secs(10)));
    }
    let log = wait_for_log(&server, "12 handshake timeouts", |l| {
        l.matches("handshake timed out").count() >= 12
    });
    assert_eq!(log.matches("handshake timed out").count(), 12, "{log}");
    server.assert_alive();
    check_read(addr, "loris", &bytes, MIB, 128 * KIB);
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();
}

#[test]
fn a_client_that_never_reads_replies_is_held_back_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = test_data(48 * MIB, 3);
    let image = make_cloop(dir.path(), "big", &bytes);
    let mut server = ServedTcp::start(
        dir.path(),
        "unread",
        &[&export_arg("big", &image), "--cache-size", "16M"],
    );
    let addr = server.socket_addr();
    let start_kib = server.status_kib("VmRSS");

    let mut hostile = NbdClient::connect(addr, "big").unwrap();
    let hostile_addr = hostile.s.local_addr().unwrap();
    hostile
        .s
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // Batches of 1024 READs, alternately 32 MiB and 1 MiB, until the server stops taking
    // them (the write times out) or 64 Mi requests were sent.
    let mut sent = 0u64;
    let mut stalled = false;
    for _ in 0..(64 << 10) {
        let mut batch = Vec::with_capacity(1024 * 28);
        for _ in 0..1024 {
            let len = if sent % 2 == 0 { 32 * MIB } else { MIB };
            let off = (sent * 4096) % (16 * MIB as u64);
            batch.extend_from_slice(&NbdClient::request(NBD_CMD_READ, sent, off, len as u32));
            sent += 1;
        }
        if let Err(e) = hostile.s.write_all(&batch) {
            assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "the server dropped the connection instead of pushing back: {e}"
            );
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the server kept reading requests it cannot answer");

    // Other clients are served while it hangs on.
    check_read(addr, "big", &bytes, 20 * MIB, MIB);
    check_read(addr, "big", &bytes, 47 * MIB, MIB);
    let mut big = NbdClient::connect(addr, "big").unwrap();
    assert!(
        big.read_reply(8 * MIB as u64, 32 * MIB as u32)
            .unwrap()
            .unwrap()
            == bytes[8 * MIB..40 * MIB]
    );
    big.disconnect().unwrap();

    server.assert_alive();
    let hwm_mib = server.status_kib("VmHWM") / 1024;
    eprintln!(
        "server memory: {} MiB at start, peak {hwm_mib} MiB; {sent} requests sent",
        start_kib / 1024
    );
    assert!(
        hwm_mib < 128 + 64 + 16 + 64,
        "peak resident memory {hwm_mib} MiB, bound 272 MiB"
    );

    // The hostile client leaves; its connection is cleaned up and the server still serves.
    drop(hostile);
    let log = wait_for_log(&server, "the hostile client's closing line", |l| {
        !closing_lines(l, hostile_addr).is_empty()
    });
    let line = &closing_lines(&log, hostile_addr)[0];
    let requests: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("requests="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        requests <= 1024,
        "the server read {requests} of the requests (back-pressure after 128 in flight): {line}"
    );
    check_read(addr, "big", &bytes, 0, MIB);
    assert!(server.status_kib("VmHWM") / 1024 < 128 + 64 + 16 + 64);
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();
}

#[test]
fn oversized_and_overflowing_requests_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = test_data(48 * MIB, 4);
    let size = bytes.len() as u64;
    let image = make_cloop(dir.path(), "sizes", &bytes);
    let mut server = ServedTcp::start(
        dir.path(),
        "sizes",
        &[&export_arg("sizes", &image), "--cache-size", "16M"],
    );
    let addr = server.socket_addr();
    let mut c = NbdClient::connect(addr, "sizes").unwrap();

    // 32 MiB: the largest request nbd.md says must be served, and the advertised maximum.
    let got = c
        .read_reply(4 * MIB as u64, 32 * MIB as u32)
        .unwrap()
        .unwrap();
    assert!(got == bytes[4 * MIB..36 * MIB], "32 MiB read");
    // Refused with EINVAL, the connection kept: one byte more than 32 MiB, 4 GiB - 1,
    // offset + length past 2^64, straddling the end, at the end.
    for (offset, len) in [
        (0, (32 * MIB + 1) as u32),
        (0, u32::MAX),
        (size - 512, u32::MAX),
        (u64::MAX - 511, 1024),
        (u64::MAX, 1),
        (size - 512, 1024),
        (size, 1),
    ] {
        assert_eq!(
            c.read_reply(offset, len).unwrap(),
            Err(NBD_EINVAL),
            "READ offset {offset} length {len}"
        );
    }
    // CACHE (a prefetch hint) with an overflowing range: EINVAL too.
    c.send(NBD_CMD_CACHE, 42, u64::MAX - 100, u32::MAX).unwrap();
    assert_eq!(c.recv(|_| 0).unwrap().0, NBD_EINVAL);
    // Many 4 GiB requests back to back: each answered, none allocated.
    for i in 0..64 {
        c.send(NBD_CMD_READ, 1000 + i, i * 4096, u32::MAX).unwrap();
    }
    for i in 0..64 {
        let (error, cookie, _) = c.recv(|_| 0).unwrap();
        assert_eq!((error, cookie), (NBD_EINVAL, 1000 + i));
    }
    // The connection still serves normal reads.
    assert!(c.read_reply(size - 4096, 4096).unwrap().unwrap() == bytes[bytes.len() - 4096..]);
    let hwm_mib = server.status_kib("VmHWM") / 1024;
    assert!(hwm_mib < 256, "peak resident memory {hwm_mib} MiB");

    // A WRITE header claiming 4 GiB - 1 of payload that never comes: the server closes that
    // connection (it cannot skip the payload) and nothing else.
    c.s.write_all(&NbdClient::request(NBD_CMD_WRITE, 7, 0, u32::MAX))
        .unwrap();
    assert!(closed_by_server(&mut c.s, Duration::from_secs(30)));
    // An option of 4 GiB - 1 during the handshake: closed as well.
    let mut s = nbd_greeted(addr).unwrap().unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(b"IHAVEOPT").unwrap();
    s.write_all(&7u32.to_be_bytes()).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(closed_by_server(&mut s, Duration::from_secs(30)));

    server.assert_alive();
    check_read(addr, "sizes", &bytes, 40 * MIB, MIB);
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();
}

#[test]
fn disconnect_with_128_requests_in_flight_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = test_data(32 * MIB, 5);
    let image = make_cloop(dir.path(), "vanish", &bytes);
    // One worker and a cache smaller than the image: every read decodes blocks, so work left
    // behind by vanished clients would show as CPU time.
    let mut server = ServedTcp::start(
        dir.path(),
        "vanish",
        &[
            &export_arg("vanish", &image),
            "--max-connections",
            "4",
            "--threads",
            "1",
            "--cache-size",
            "4M",
        ],
    );
    let addr = server.socket_addr();
    let span = (bytes.len() - MIB) as u64;
    let offset_of = |cookie: u64| (cookie * 1_234_567) % span;
    // 128 READs of 1 MiB: the per-connection caps (128 requests, 128 MiB) exactly.
    let requests = |first: u64| -> Vec<u8> {
        (first..first + 128)
            .flat_map(|cookie| {
                NbdClient::request(NBD_CMD_READ, cookie, offset_of(cookie), MIB as u32)
            })
            .collect()
    };

    // Eight clients in turn send 128 READs and vanish without reading a reply.
    let mut gone = Vec::new();
    for round in 0..8u64 {
        let mut c = connect_retrying(addr, "vanish");
        gone.push(c.s.local_addr().unwrap());
        c.s.write_all(&requests(round * 1000)).unwrap();
        drop(c);
    }
    // Each gets its closing line, printed once the connection is cleaned up (its queued
    // requests finished or skipped, its slot released).
    let log = wait_for_log(&server, "a closing line per vanished client", |l| {
        gone.iter().all(|a| !closing_lines(l, *a).is_empty())
    });
    for a in &gone {
        assert_eq!(closing_lines(&log, *a).len(), 1, "{log}");
    }
    // And no work for them is left behind: the idle server uses (next to) no CPU. Before the
    // fix in transmission.rs the one worker went on decoding the ~1000 abandoned 1 MiB reads
    // for seconds after the last closing line.
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = server.cpu_ticks() - before;
    assert!(
        used < 20,
        "the server used {used} ticks of CPU after every client had gone"
    );
    server.assert_alive();

    // Every slot came back: 4 clients (the cap) are served at once, a fifth is refused.
    let mut four: Vec<NbdClient> = (0..4).map(|_| connect_retrying(addr, "vanish")).collect();
    assert!(
        nbd_greeted(addr).unwrap().is_none(),
        "a fifth connection is over the cap"
    );
    for (i, c) in four.iter_mut().enumerate() {
        let off = i * MIB + 777;
        assert!(c.read_reply(off as u64, 100_000).unwrap().unwrap() == bytes[off..off + 100_000]);
    }
    // NBD_CMD_DISC right behind 128 requests: all 128 replies come first, then the close.
    let mut c = four.pop().unwrap();
    let mut batch = requests(50_000);
    batch.extend_from_slice(&NbdClient::request(NBD_CMD_DISC, 0, 0, 0));
    c.s.write_all(&batch).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..128 {
        let (error, cookie, data) = c.recv(|_| MIB).unwrap();
        assert_eq!(error, 0);
        let off = offset_of(cookie) as usize;
        assert!(data == bytes[off..off + MIB], "reply {cookie}");
        assert!(
            (50_000..50_128).contains(&cookie) && seen.insert(cookie),
            "cookie {cookie}"
        );
    }
    assert!(closed_by_server(&mut c.s, Duration::from_secs(30)));
    drop(four);
    server.assert_alive();
    let mut c = connect_retrying(addr, "vanish");
    assert!(c.read_reply(0, BLOCK as u32).unwrap().unwrap() == bytes[..BLOCK]);
    c.disconnect().unwrap();
    server.terminate();
}

/// Reads every 64 KiB block; returns per block `Some(true)` (served, right bytes) or
/// `None` (EIO). Wrong bytes or any other error fail the test.
fn survey(c: &mut NbdClient, bytes: &[u8]) -> Vec<bool> {
    bytes
        .chunks(BLOCK)
        .enumerate()
        .map(
            |(i, want)| match c.read_reply((i * BLOCK) as u64, want.len() as u32).unwrap() {
                Ok(got) => {
                    assert!(got == want, "block {i} served with wrong data");
                    true
                }
                Err(e) => {
                    assert_eq!(e, NBD_EIO, "block {i}");
                    false
                }
            },
        )
        .collect()
}

#[test]
fn an_image_truncated_while_served_gives_eio_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_data(8 * MIB, 6);
    let image = make_cloop(dir.path(), "trunc", &bytes);
    let raw = dir.path().join("plain.img");
    std::fs::write(&raw, &bytes).unwrap();
    // A small cache, and no read below is sequential, so nothing past the cut is cached early.
    let mut server = ServedTcp::start(
        dir.path(),
        "trunc",
        &[
            &export_arg("trunc", &image),
            &export_arg("plain", &raw),
            "--cache-size",
            "1M",
        ],
    );
    let addr = server.socket_addr();
    let mut c = NbdClient::connect(addr, "trunc").unwrap();
    let mut p = NbdClient::connect(addr, "plain").unwrap();
    assert!(c.read_reply(0, 4096).unwrap().unwrap() == bytes[..4096]);
    assert!(p.read_reply(0, 4096).unwrap().unwrap() == bytes[..4096]);

    let image_len = std::fs::metadata(&image).unwrap().len();
    let truncate = |path: &Path, len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    truncate(&image, image_len / 2);
    truncate(&raw, bytes.len() as u64 / 2);

    let quarter = bytes.len() / 4;
    // The cloop export: past the cut EIO, the intact part served, never wrong bytes.
    let blocks = survey(&mut c, &bytes);
    let n = blocks.len();
    assert!(blocks[..n / 4].iter().all(|&ok| ok), "first quarter served");
    assert!(
        blocks[3 * n / 4..].iter().all(|&ok| !ok),
        "last quarter EIO"
    );
    assert_eq!(
        c.read_reply((bytes.len() - MIB) as u64, MIB as u32)
            .unwrap(),
        Err(NBD_EIO)
    );
    assert!(c.read_reply(1000, 100_000).unwrap().unwrap() == bytes[1000..101_000]);
    // The raw export: past the new end EIO, before it the bytes.
    assert_eq!(
        p.read_reply((bytes.len() - 4096) as u64, 4096).unwrap(),
        Err(NBD_EIO)
    );
    assert_eq!(
        p.read_reply((bytes.len() / 2 - 100) as u64, 200).unwrap(),
        Err(NBD_EIO)
    );
    assert!(p.read_reply(quarter as u64, 4096).unwrap().unwrap() == bytes[quarter..quarter + 4096]);
    server.assert_alive();
    // New connections still negotiate the export and read the intact part.
    check_read(addr, "trunc", &bytes, 3 * BLOCK, BLOCK);

    // Grown back with zeros: the lost blocks are now garbage to the decoder, still EIO.
    truncate(&image, image_len);
    truncate(&raw, bytes.len() as u64);
    let blocks = survey(&mut c, &bytes);
    assert!(blocks[..n / 4].iter().all(|&ok| ok));
    assert!(blocks[3 * n / 4..].iter().all(|&ok| !ok));
    // (The raw file now reads as zeros past the cut: it is a raw file, that is its content.)
    assert!(p.read_reply(0, 4096).unwrap().unwrap() == bytes[..4096]);
    assert!(p
        .read_reply((bytes.len() - 4096) as u64, 4096)
        .unwrap()
        .unwrap()
        .iter()
        .all(|&b| b == 0));

    server.assert_alive();
    let log = server.log_text();
    assert!(log.contains("warn"), "read errors are logged: {log}");
    c.disconnect().unwrap();
    p.disconnect().unwrap();
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();
}

#[test]
fn nbd_malformed_probes_leave_mkmodule_serve_alive() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = test_data(4 * MIB, 7);
    let image = make_cloop(dir.path(), "probe", &bytes);
    let mut server = ServedTcp::start(dir.path(), "probe", &[&export_arg("probe", &image)]);
    let addr = server.socket_addr();
    let script = repo().join("crates/nbd/tests/scripts/nbd_malformed.py");
    let out = run(
        "/usr/bin/python3",
        &[
            script.to_str().unwrap(),
            "127.0.0.1",
            &addr.port().to_string(),
            "--export",
            "probe",
        ],
        Duration::from_secs(300),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the server did not survive every probe:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut results = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.ends_with("[server alive]"), "{line}");
        let (name, rest) = line.split_once(' ').unwrap();
        results.insert(name.to_string(), rest.to_string());
    }
    // The "what we should do" column of nbd-testing.md §10.
    for (probe, want) in [
        ("bad_client_flags", "closed"),
        ("bad_option_magic", "closed"),
        (
            "unknown_option",
            "reply ERR_UNSUP; following NBD_OPT_LIST -> SERVER",
        ),
        ("list_with_data", "reply ERR_INVALID"),
        ("huge_option_length", "closed"),
        ("go_unknown_export", "reply ERR_UNKNOWN"),
        ("go_bad_namelen", "reply ERR_INVALID"),
        ("export_name_unknown", "closed"),
        ("abort", "reply ACK, then closed"),
        ("meta_without_structured", "reply ERR_INVALID"),
        ("extended_headers", "reply ERR_UNSUP"),
        ("bad_request_magic", "closed"),
        (
            "unknown_command",
            "simple error=EINVAL; next READ -> simple error=0",
        ),
        ("unknown_command_flag", "simple error=EINVAL"),
        (
            "read_past_end_simple",
            "straddling end: simple error=EINVAL",
        ),
        ("offset_overflow", "simple error=EINVAL"),
        ("huge_read_length", "simple error=EINVAL"),
        ("huge_write_header", "closed"),
        ("write_read_only", "simple error=EPERM"),
        ("disc", "after NBD_CMD_DISC: closed"),
    ] {
        let got = results
            .get(probe)
            .unwrap_or_else(|| panic!("probe {probe} did not run:\n{text}"));
        assert!(
            got.contains(want),
            "probe {probe}: want {want:?}, got {got:?}"
        );
    }
    server.assert_alive();
    check_read(addr, "probe", &bytes, MIB, 64 * KIB);
    eprintln!("=== LOG\n{}", server.log_text());
    server.terminate();
}
