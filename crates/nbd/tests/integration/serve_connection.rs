//! `Server::serve_connection`: one already-connected stream served on the calling thread, as
//! the fuzz target `nbd_server` drives it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mkmodule_blockdev::MemoryDevice;
use mkmodule_nbd::proto::*;
use mkmodule_nbd::{null_logger, Server, ServerConfig};

fn config(data: Vec<u8>) -> ServerConfig {
    ServerConfig::new()
        .with_export("disk", "test disk", Arc::new(MemoryDevice::new(data)))
        .with_workers(1)
        .with_handshake_timeout(Duration::from_secs(5))
        .with_logger(null_logger())
}

/// Sends `client` bytes, closes the sending side, and returns the server's reason and every
/// byte it sent.
fn session(config: ServerConfig, client: Vec<u8>) -> (String, Vec<u8>) {
    let (server_end, mut client_end) = UnixStream::pair().unwrap();
    let talker = thread::spawn(move || {
        let _ = client_end.write_all(&client);
        let _ = client_end.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = client_end.read_to_end(&mut got);
        got
    });
    let reason = Server::serve_connection(config, server_end).unwrap();
    (reason, talker.join().unwrap())
}

fn option(opt: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = OptionHeader {
        magic: IHAVEOPT,
        option: opt,
        len: payload.len() as u32,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(payload);
    b
}

fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    Request {
        magic: REQUEST_MAGIC,
        flags: 0,
        cmd,
        cookie,
        offset,
        len,
    }
    .encode()
    .to_vec()
}

#[test]
fn a_whole_session_over_a_stream_pair_reads_the_export() {
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut client = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    let go = InfoRequest {
        name: "disk".into(),
        requests: vec![],
    }
    .encode();
    client.extend(option(OPT_GO, &go));
    client.extend(request(CMD_READ, 7, 4096, 512));
    client.extend(request(CMD_DISC, 8, 0, 0));
    let (reason, replies) = session(config(data.clone()), client);
    assert_eq!(reason, "client disconnect");
    assert_eq!(&replies[..8], b"NBDMAGIC");
    // The read's simple reply is the last thing sent: header then 512 bytes of data.
    let tail = &replies[replies.len() - 512 - SIMPLE_REPLY_LEN..];
    assert_eq!(&tail[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&tail[4..8], &[0; 4], "read error");
    assert_eq!(&tail[8..16], &7u64.to_be_bytes());
    assert_eq!(&tail[SIMPLE_REPLY_LEN..], &data[4096..4608]);
}

#[test]
fn garbage_and_early_eof_end_the_call_promptly() {
    let started = Instant::now();
    for client in [
        Vec::new(),
        vec![0xff; 3],
        b"NBDMAGICIHAVEOPT garbage".to_vec(),
        3u32.to_be_bytes().to_vec(),
    ] {
        let (reason, replies) = session(config(vec![0; 4096]), client);
        assert!(reason.starts_with("handshake failed"), "{reason}");
        assert_eq!(&replies[..8], b"NBDMAGIC");
    }
    // EOF in transmission, in the middle of a request header.
    let mut client = 3u32.to_be_bytes().to_vec();
    client.extend(option(OPT_EXPORT_NAME, b"disk"));
    client.extend(&request(CMD_READ, 1, 0, 512)[..10]);
    let (reason, _) = session(config(vec![0; 4096]), client);
    assert!(reason.contains("request header"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no timeout waited"
    );
}

#[test]
fn an_invalid_config_is_refused_before_serving() {
    let (server_end, _client) = UnixStream::pair().unwrap();
    let empty = ServerConfig::new().with_logger(null_logger());
    assert!(Server::serve_connection(empty, server_end).is_err());
}
