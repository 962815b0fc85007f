//! Concurrency, limits, shutdown and robustness of the server, driven by a raw client.

use crate::common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use mkmodule_blockdev::{BlockDevice, MemoryDevice};
use mkmodule_nbd::proto::*;
use mkmodule_nbd::{DefaultExport, Level, ServerConfig, ServerHandle};

/// Run `f` on a thread and fail if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let v = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"));
    t.join().unwrap();
    v
}

fn shutdown_within(server: ServerHandle, limit: Duration) {
    within(limit, move || server.shutdown());
}

/// True when the peer closed (EOF or reset) within the stream's read timeout.
fn peer_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn fifty_concurrent_connections() {
    let data = Arc::new(test_data());
    let (server, addr) = start_tcp(standard_config((*data).clone()));
    let threads: Vec<_> = (0..50u64)
        .map(|i| {
            let data = Arc::clone(&data);
            std::thread::spawn(move || {
                let mut c = NbdClient::connect(addr, "disk").unwrap();
                assert_eq!(c.size, SIZE as u64);
                for j in 0..20u64 {
                    let len = [512u32, 4096, 65536, 131072][(j % 4) as usize];
                    let off = ((i * 7919 + j * 104_729) * 4096) % (SIZE as u64 - u64::from(len));
                    let got = c.read(off, len).unwrap();
                    assert!(got == data[off as usize..off as usize + len as usize]);
                }
                c.hang_up();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || server
        .active_connections()
        == 0));
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn pipelined_requests_get_out_of_order_replies_with_right_data() {
    let data = test_data();
    let mut cfg = standard_config(data.clone());
    cfg.workers = 8;
    let (server, addr) = start_tcp(cfg);
    let mut c = NbdClient::connect(addr, "disk").unwrap();
    let mut want = std::collections::HashMap::new();
    for i in 0..128u64 {
        // alternate big and small reads so replies overtake each other
        let len: u32 = if i % 2 == 0 { 1 << 20 } else { 512 };
        let off = (i * 65_536 + i) % (SIZE as u64 - (1 << 20));
        c.send(CMD_READ, 1000 + i, off, len).unwrap();
        want.insert(1000 + i, (off as usize, len as usize));
    }
    let lens: std::collections::HashMap<u64, usize> = want.iter().map(|(k, v)| (*k, v.1)).collect();
    let mut order = Vec::new();
    for _ in 0..128 {
        let (err, cookie, got) = c.recv(|ck| lens[&ck]).unwrap();
        assert_eq!(err, 0);
        let (off, len) = want.remove(&cookie).expect("unknown or repeated cookie");
        assert!(got == data[off..off + len], "data for cookie {cookie}");
        order.push(cookie);
    }
    assert!(want.is_empty());
    c.hang_up();
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn client_sending_200_reads_and_vanishing_does_not_affect_others() {
    let data = test_data();
    let cfg = standard_config(data.clone()).with_max_in_flight(32);
    let (server, addr) = start_tcp(cfg);
    let mut other = NbdClient::connect(addr, "disk").unwrap();

    let mut bad = NbdClient::connect(addr, "disk").unwrap();
    for i in 0..200u64 {
        bad.send(CMD_READ, i, (i % 7) << 20, 1 << 20).unwrap();
    }
    // While the bad client reads nothing, the other one is served normally.
    for k in 0..20u64 {
        let off = k * 300_000;
        assert!(other.read(off, 65536).unwrap() == data[off as usize..off as usize + 65536]);
    }
    assert_eq!(server.active_connections(), 2);
    drop(bad); // close with unread data: the kernel sends RST
    assert!(wait_until(Duration::from_secs(10), || server
        .active_connections()
        == 1));
    for k in 0..20u64 {
        let off = k * 400_000;
        assert!(other.read(off, 4096).unwrap() == data[off as usize..off as usize + 4096]);
    }
    other.hang_up();
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn excess_connections_are_closed_promptly() {
    let cfg = standard_config(test_data()).with_max_connections(2);
    let (server, addr) = start_tcp(cfg);
    let a = NbdClient::connect(addr, "disk").unwrap();
    let mut b = NbdClient::connect(addr, "disk").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    assert!(peer_closed(&mut c), "third connection was not closed");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(b.read(0, 512).is_ok());
    a.hang_up();
    assert!(wait_until(Duration::from_secs(5), || server
        .active_connections()
        == 1));
    let d = NbdClient::connect(addr, "disk").unwrap();
    d.hang_up();
    b.hang_up();
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let cfg = standard_config(test_data()).with_handshake_timeout(Duration::from_millis(300));
    let (server, addr) = start_tcp(cfg);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    let start = Instant::now();
    assert!(peer_closed(&mut s));
    assert!(start.elapsed() < Duration::from_secs(3));
    // a client that sends half an option header is dropped too
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(b"IHAVE").unwrap();
    assert!(peer_closed(&mut s));
    // a client trickling an option one byte at a time is dropped at the deadline too
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut payload = OptionHeader {
        magic: IHAVEOPT,
        option: OPT_LIST,
        len: 1000,
    }
    .encode()
    .to_vec();
    payload.resize(16 + 1000, 0);
    let start = Instant::now();
    let mut closed = false;
    for b in payload {
        if start.elapsed() > Duration::from_secs(5) {
            break; // bounded: the assertion below reports the failure
        }
        if s.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        let mut x = [0u8; 1];
        if matches!(s.read(&mut x), Ok(0)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "trickling client was not dropped");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(wait_until(Duration::from_secs(5), || server
        .active_connections()
        == 0));
    // established (transmission) connections are not subject to the timeout
    let mut c = NbdClient::connect(addr, "disk").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(c.read(0, 512).is_ok());
    c.hang_up();
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn shutdown_closes_every_kind_of_connection_and_joins() {
    let (server, addr) = start_tcp(standard_config(test_data()));
    // one idle in transmission, one mid-handshake, one with a pile of unread replies
    let mut idle = NbdClient::connect(addr, "disk").unwrap();
    let mut haggling = TcpStream::connect(addr).unwrap();
    haggling
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut g = [0u8; 18];
    haggling.read_exact(&mut g).unwrap();
    let mut flooding = NbdClient::connect(addr, "disk").unwrap();
    for i in 0..200u64 {
        flooding.send(CMD_READ, i, 0, 1 << 20).unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || server
        .active_connections()
        == 3));
    shutdown_within(server, Duration::from_secs(10));
    assert!(peer_closed(&mut idle.s));
    assert!(peer_closed(&mut haggling));
    // nobody listens any more
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn stop_handle_from_another_thread_ends_wait() {
    let (server, addr) = start_tcp(standard_config(test_data()));
    let stop = server.stop_handle();
    let c = NbdClient::connect(addr, "disk").unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
        assert!(stop.is_stopping());
    });
    within(Duration::from_secs(10), move || server.wait());
    t.join().unwrap();
    let mut s = c.s;
    assert!(peer_closed(&mut s));
}

#[test]
fn graceful_shutdown_answers_what_was_asked_then_ends_each_connection() {
    let data = test_data();
    let (server, addr) = start_tcp(standard_config(data.clone()));
    let mut c = NbdClient::connect(addr, "disk").unwrap();
    let mut haggling = haggle(addr);
    // 32 reads sent, none of their replies read yet.
    for i in 0..32u64 {
        c.send(CMD_READ, i, i * 4096, 4096).unwrap();
    }
    let done = within(Duration::from_secs(30), move || {
        let start = Instant::now();
        server.shutdown_graceful(Duration::from_secs(20));
        let took = start.elapsed();
        // Every request sent before the drain is answered, in full...
        for _ in 0..32 {
            let (error, cookie, payload) = c.recv(|_| 4096).unwrap();
            assert_eq!(error, 0);
            let at = usize::try_from(cookie).unwrap() * 4096;
            assert_eq!(payload, data[at..at + 4096]);
        }
        // ...then the connection ends, as does the one still haggling: clients that
        // reconnect find the restarted server.
        assert!(peer_closed(&mut c.s));
        assert!(peer_closed(&mut haggling));
        // New connections are no longer accepted.
        assert!(NbdClient::connect(addr, "disk").is_err());
        took
    });
    assert!(done < Duration::from_secs(10), "drain waited {done:?}");
}

/// Connect with custom client flags and send NBD_OPT_EXPORT_NAME.
fn export_name(addr: SocketAddr, cflags: u32, name: &str) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut g = [0u8; 18];
    s.read_exact(&mut g)?;
    assert_eq!(&g[16..18], &[0, 3]);
    s.write_all(&cflags.to_be_bytes())?;
    let hdr = OptionHeader {
        magic: IHAVEOPT,
        option: OPT_EXPORT_NAME,
        len: name.len() as u32,
    };
    s.write_all(&hdr.encode())?;
    s.write_all(name.as_bytes())?;
    let want = if cflags & 2 != 0 { 10 } else { 134 };
    let mut r = vec![0u8; want];
    s.read_exact(&mut r)?;
    Ok((s, r))
}

#[test]
fn export_name_option_with_and_without_zeroes() {
    let data = test_data();
    let (server, addr) = start_tcp(standard_config(data.clone()));
    let (mut s, r) = export_name(addr, 3, "other").unwrap();
    assert_eq!(be_u64(&r[0..8]), 12345);
    assert_eq!(be_u16(&r[8..10]), 0x0507);
    // transmission starts right away
    let req = Request {
        magic: REQUEST_MAGIC,
        flags: 0,
        cmd: CMD_READ,
        cookie: 5,
        offset: 12345 - 5,
        len: 5,
    };
    s.write_all(&req.encode()).unwrap();
    let mut rep = [0u8; 21];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(be_u32(&rep[4..8]), 0);
    assert_eq!(&rep[16..], &[0x5a; 5]);

    // without NO_ZEROES: 124 zero bytes follow; "" is the default export
    let (_s, r) = export_name(addr, 1, "").unwrap();
    assert_eq!(be_u64(&r[0..8]), SIZE as u64);
    assert!(r[10..].iter().all(|&b| b == 0));
    // unknown export: closed
    assert!(export_name(addr, 3, "nope").is_err());
    shutdown_within(server, Duration::from_secs(10));
}

/// Send one option, collect replies up to the final one.
fn option(s: &mut TcpStream, opt: u32, payload: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let hdr = OptionHeader {
        magic: IHAVEOPT,
        option: opt,
        len: payload.len() as u32,
    };
    s.write_all(&hdr.encode()).unwrap();
    s.write_all(payload).unwrap();
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(be_u64(&h[0..8]), OPT_REPLY_MAGIC);
        assert_eq!(be_u32(&h[8..12]), opt);
        let rtype = be_u32(&h[12..16]);
        let mut p = vec![0u8; be_u32(&h[16..20]) as usize];
        s.read_exact(&mut p).unwrap();
        out.push((rtype, p));
        if rtype == REP_ACK || rtype & REP_FLAG_ERROR != 0 {
            return out;
        }
    }
}

fn haggle(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

#[test]
fn info_reports_canonical_name_description_and_block_size() {
    let cfg =
        standard_config(test_data()).with_default_export(DefaultExport::Named("other".into()));
    let (server, addr) = start_tcp(cfg);
    let mut s = haggle(addr);
    let req = InfoRequest {
        name: String::new(),
        requests: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 99, INFO_NAME],
    };
    let replies = option(&mut s, OPT_INFO, &req.encode());
    let infos: Vec<(u16, Vec<u8>)> = replies
        .iter()
        .filter(|(t, _)| *t == REP_INFO)
        .map(|(_, p)| (be_u16(&p[0..2]), p[2..].to_vec()))
        .collect();
    assert_eq!(infos[0].0, INFO_EXPORT);
    assert_eq!(be_u64(&infos[0].1[0..8]), 12345);
    assert!(infos.contains(&(INFO_NAME, b"other".to_vec())));
    assert!(infos.contains(&(INFO_DESCRIPTION, Vec::new())));
    let bs = infos.iter().find(|i| i.0 == INFO_BLOCK_SIZE).unwrap();
    assert_eq!(be_u32(&bs.1[0..4]), 1);
    assert_eq!(be_u32(&bs.1[4..8]), 4096);
    assert_eq!(be_u32(&bs.1[8..12]), 32 << 20);
    assert_eq!(infos.len(), 4, "each info type once, unknown types ignored");
    assert_eq!(replies.last().unwrap().0, REP_ACK);

    // meta contexts: list everything, set base:allocation
    assert_eq!(
        option(&mut s, OPT_STRUCTURED_REPLY, &[]),
        vec![(REP_ACK, vec![])]
    );
    assert_eq!(
        option(&mut s, OPT_STRUCTURED_REPLY, &[])[0].0,
        REP_ERR_INVALID
    );
    let list = MetaRequest {
        name: "disk".into(),
        queries: vec![],
    };
    let r = option(&mut s, OPT_LIST_META_CONTEXT, &list.encode());
    assert_eq!(r[0].0, REP_META_CONTEXT);
    assert_eq!(&r[0].1[4..], b"base:allocation");
    let set = MetaRequest {
        name: "disk".into(),
        queries: vec!["qemu:dirty-bitmap:x".into(), "base:allocation".into()],
    };
    let r = option(&mut s, OPT_SET_META_CONTEXT, &set.encode());
    assert_eq!(r.len(), 2);
    assert_eq!(be_u32(&r[0].1[0..4]), 1);
    let bad = MetaRequest {
        name: "nope".into(),
        queries: vec![],
    };
    assert_eq!(
        option(&mut s, OPT_SET_META_CONTEXT, &bad.encode())[0].0,
        REP_ERR_UNKNOWN
    );
    // peek export (withdrawn) and an option with payload are refused, session stays
    assert_eq!(option(&mut s, OPT_PEEK_EXPORT, b"xyz")[0].0, REP_ERR_UNSUP);
    assert_eq!(option(&mut s, OPT_LIST, &[]).len(), 3);
    shutdown_within(server, Duration::from_secs(10));
}

/// An export that fails or panics on chosen ranges.
struct Faulty;

impl BlockDevice for Faulty {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset == 4096 {
            return Err(io::Error::other("simulated media error"));
        }
        if offset == 8192 {
            panic!("simulated bug in an export");
        }
        buf.fill(1);
        Ok(())
    }
}

#[test]
fn failing_and_panicking_exports_give_eio_and_keep_the_connection() {
    let (logger, lines) = collecting_logger();
    let cfg = ServerConfig::new()
        .with_export("f", "", Arc::new(Faulty))
        .with_logger(logger)
        .with_workers(2);
    let (server, addr) = start_tcp(cfg);
    let mut c = NbdClient::connect(addr, "f").unwrap();
    assert_eq!(c.read(0, 16).unwrap(), vec![1; 16]);
    for off in [4096u64, 8192, 4096, 8192, 8192] {
        c.send(CMD_READ, 9, off, 512).unwrap();
        let (err, _, _) = c.recv(|_| 512).unwrap();
        assert_eq!(err, 5, "EIO expected at {off}");
    }
    assert_eq!(c.read(0, 16).unwrap(), vec![1; 16]);
    c.hang_up();
    shutdown_within(server, Duration::from_secs(10));
    let lines = lines.lock().unwrap();
    assert!(lines
        .iter()
        .any(|(l, m)| *l == Level::Warn && m.contains("simulated media error")));
}

#[test]
fn garbage_never_hurts_the_server() {
    let data = test_data();
    let (server, addr) = start_tcp(standard_config(data.clone()));
    let mut x: u64 = 12345;
    for round in 0..30 {
        let mut junk = vec![0u8; 64 + round * 37];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if round % 3 == 0 {
            // garbage in transmission phase, after a valid handshake
            let mut c = NbdClient::connect(addr, "disk").unwrap();
            let _ = c.s.write_all(&junk);
            let _ = peer_closed(&mut c.s);
        } else if round % 3 == 1 {
            // garbage after a valid IHAVEOPT header for an unknown option
            let mut g = [0u8; 18];
            s.read_exact(&mut g).unwrap();
            let _ = s.write_all(&3u32.to_be_bytes());
            let _ = s.write_all(&junk);
        } else {
            // garbage instead of client flags
            let _ = s.write_all(&junk);
        }
        drop(s);
    }
    let mut c = NbdClient::connect(addr, "disk").unwrap();
    assert!(c.read(0, 65536).unwrap() == data[..65536]);
    c.hang_up();
    assert!(wait_until(Duration::from_secs(10), || server
        .active_connections()
        == 0));
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn logs_one_summary_line_per_connection_and_traces_on_request() {
    let (logger, lines) = collecting_logger();
    let cfg = standard_config(test_data())
        .with_logger(logger)
        .with_trace(true);
    let (server, addr) = start_tcp(cfg);
    let mut c = NbdClient::connect(addr, "disk").unwrap();
    c.read(0, 1000).unwrap();
    c.read(5000, 24).unwrap();
    c.hang_up();
    let _ = haggle(addr); // a client that leaves during haggling
    assert!(wait_until(Duration::from_secs(5), || server
        .active_connections()
        == 0));
    shutdown_within(server, Duration::from_secs(10));
    let lines = lines.lock().unwrap();
    let summaries: Vec<&String> = lines
        .iter()
        .filter(|(l, m)| *l == Level::Info && m.starts_with("connection closed"))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    let s = summaries
        .iter()
        .find(|m| m.contains("export=\"disk\""))
        .unwrap();
    assert!(s.contains("peer=127.0.0.1:"), "{s}");
    assert!(s.contains("read=1024 "), "{s}");
    assert!(s.contains("requests=3 "), "{s}");
    assert!(s.contains("duration="), "{s}");
    assert!(s.contains("client disconnect"), "{s}");
    assert!(lines
        .iter()
        .any(|(l, m)| *l == Level::Trace && m.contains("request READ")));
    assert!(lines
        .iter()
        .any(|(l, m)| *l == Level::Trace && m.contains("option GO")));
}

#[test]
fn writes_on_a_writable_export_over_the_raw_protocol() {
    let export = Arc::new(MemoryDevice::new(vec![0u8; 1 << 20]).writable());
    let (logger, _) = collecting_logger();
    let cfg = ServerConfig::new()
        .with_export("rw", "", Arc::clone(&export) as Arc<dyn BlockDevice>)
        .with_logger(logger);
    let (server, addr) = start_tcp(cfg);
    let mut c = NbdClient::connect(addr, "rw").unwrap();
    assert_eq!(c.flags & TFLAG_READ_ONLY, 0);
    let req = Request {
        magic: REQUEST_MAGIC,
        flags: CMD_FLAG_FUA,
        cmd: CMD_WRITE,
        cookie: 1,
        offset: 100,
        len: 3,
    };
    c.s.write_all(&req.encode()).unwrap();
    c.s.write_all(b"abc").unwrap();
    let (err, cookie, _) = c.recv(|_| 0).unwrap();
    assert_eq!((err, cookie), (0, 1));
    // past the end: ENOSPC, payload still consumed
    let req = Request {
        offset: (1 << 20) - 1,
        cookie: 2,
        ..req
    };
    c.s.write_all(&req.encode()).unwrap();
    c.s.write_all(b"xyz").unwrap();
    let (err, cookie, _) = c.recv(|_| 0).unwrap();
    assert_eq!((err, cookie), (28, 2));
    c.send(CMD_FLUSH, 3, 0, 0).unwrap();
    assert_eq!(c.recv(|_| 0).unwrap().0, 0);
    c.send(CMD_TRIM, 4, 0, 4096).unwrap();
    assert_eq!(c.recv(|_| 0).unwrap().0, 0);
    assert_eq!(c.read(99, 5).unwrap(), b"\0abc\0");
    c.hang_up();
    assert_eq!(&export.snapshot()[100..103], b"abc");
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn many_requests_in_flight_are_capped_but_all_answered() {
    // A slow export makes requests pile up; with a cap of 4 every one still completes.
    struct Slow(AtomicUsize);
    impl BlockDevice for Slow {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], _: u64) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            buf.fill(7);
            Ok(())
        }
    }
    let slow = Arc::new(Slow(AtomicUsize::new(0)));
    let (logger, _) = collecting_logger();
    let cfg = ServerConfig::new()
        .with_export("s", "", Arc::clone(&slow) as Arc<dyn BlockDevice>)
        .with_logger(logger)
        .with_max_in_flight(4)
        .with_max_in_flight_bytes(8192);
    let (server, addr) = start_tcp(cfg);
    let mut c = NbdClient::connect(addr, "s").unwrap();
    for i in 0..100u64 {
        c.send(CMD_READ, i, i * 512, 4096).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let (err, cookie, data) = c.recv(|_| 4096).unwrap();
        assert_eq!(err, 0);
        assert!(data.iter().all(|&b| b == 7));
        assert!(seen.insert(cookie));
    }
    assert_eq!(slow.0.load(Ordering::SeqCst), 100);
    c.hang_up();
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn a_client_that_never_reads_replies_cannot_make_the_server_read_ahead() {
    // Counts the export reads: with 4 requests in flight and 4 MiB replies the server
    // may only get as far ahead as the in-flight cap plus what the socket buffers hold.
    struct Counting(AtomicUsize);
    impl BlockDevice for Counting {
        fn size(&self) -> u64 {
            64 << 20
        }
        fn read_at(&self, buf: &mut [u8], _: u64) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            buf.fill(3);
            Ok(())
        }
    }
    let export = Arc::new(Counting(AtomicUsize::new(0)));
    let (logger, _) = collecting_logger();
    let cfg = ServerConfig::new()
        .with_export("c", "", Arc::clone(&export) as Arc<dyn BlockDevice>)
        .with_logger(logger)
        .with_max_in_flight(4);
    let (server, addr) = start_tcp(cfg);
    let mut c = NbdClient::connect(addr, "c").unwrap();
    for i in 0..200u64 {
        c.send(CMD_READ, i, (i % 16) << 22, 4 << 20).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let reads = export.0.load(Ordering::SeqCst);
    assert!(
        reads < 40,
        "server read {reads} x 4 MiB ahead of a client that reads nothing"
    );
    // the client still gets correct replies once it starts reading
    eprintln!("export reads while the client was not reading: {reads}");
    let (err, cookie, data) = c.recv(|_| 4 << 20).unwrap();
    assert_eq!(err, 0);
    assert!(cookie < 200);
    assert!(data.iter().all(|&b| b == 3));
    drop(c);
    assert!(wait_until(Duration::from_secs(10), || server
        .active_connections()
        == 0));
    shutdown_within(server, Duration::from_secs(10));
}

#[test]
fn listing_can_be_disabled() {
    let mut cfg = standard_config(test_data());
    cfg.allow_list = false;
    let (server, addr) = start_tcp(cfg);
    let mut s = haggle(addr);
    let r = option(&mut s, OPT_LIST, &[]);
    assert_eq!(r[0].0, REP_ERR_POLICY);
    assert!(!r[0].1.is_empty(), "error replies carry a message");
    // GO still works afterwards
    let go = InfoRequest {
        name: "other".into(),
        requests: vec![],
    };
    assert_eq!(
        option(&mut s, OPT_GO, &go.encode()).last().unwrap().0,
        REP_ACK
    );
    shutdown_within(server, Duration::from_secs(10));
}
