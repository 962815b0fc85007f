//! Shared helpers for the integration tests: test data, an in-process server,
//! bounded external-tool runs and a tiny raw NBD client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mkmodule_blockdev::MemoryDevice;
use mkmodule_nbd::proto::*;
use mkmodule_nbd::{Level, Listener, Logger, Server, ServerConfig, ServerHandle};

/// Size of the main test export (8 MiB).
pub const SIZE: usize = 8 << 20;
/// Zero regions inside the test data: (offset, length), 64 KiB aligned.
pub const ZERO_REGIONS: &[(usize, usize)] = &[(1 << 20, 2 << 20), (5 << 20, 512 << 10)];
/// A region filled with the byte 0xAB (for qemu-io pattern checks): (offset, length).
pub const PATTERN_REGION: (usize, usize) = (7 << 20, 64 << 10);
/// Granularity of the zero map.
pub const GRANULE: u32 = 64 << 10;

/// Deterministic pseudo-random bytes with the zero regions cleared.
pub fn test_data() -> Vec<u8> {
    let mut d = vec![0u8; SIZE];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in d.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    for &(o, l) in ZERO_REGIONS {
        d[o..o + l].fill(0);
    }
    let (o, l) = PATTERN_REGION;
    d[o..o + l].fill(0xab);
    d
}

/// Bytes of the test data that are in zero regions.
pub fn zero_bytes() -> usize {
    ZERO_REGIONS.iter().map(|r| r.1).sum()
}

/// Log lines kept by [`collecting_logger`].
pub type LogLines = Arc<Mutex<Vec<(Level, String)>>>;

/// A logger that keeps every line (for assertions) and echoes warnings.
pub fn collecting_logger() -> (Logger, LogLines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = Arc::clone(&lines);
    let logger: Logger = Arc::new(move |level, msg: &str| {
        if level == Level::Warn {
            eprintln!("server warn: {msg}");
        }
        l2.lock().unwrap().push((level, msg.to_string()));
    });
    (logger, lines)
}

/// The standard configuration: export "disk" (read-only, zero extents, preferred 64 KiB)
/// as the default, plus "other" (a small odd-sized export).
pub fn standard_config(data: Vec<u8>) -> ServerConfig {
    let disk = MemoryDevice::new(data)
        .with_zero_extents(GRANULE)
        .with_preferred_block_size(64 << 10);
    let other = MemoryDevice::new(vec![0x5a; 12345]);
    let (logger, _) = collecting_logger();
    ServerConfig::new()
        .with_export("disk", "test disk with zero regions", Arc::new(disk))
        .with_export("other", "", Arc::new(other))
        .with_logger(logger)
}

/// Start `config` on 127.0.0.1 with an ephemeral port.
pub fn start_tcp(config: ServerConfig) -> (ServerHandle, SocketAddr) {
    let l = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let h = Server::start(config, [l]).unwrap();
    let addr = h.local_addr().unwrap();
    (h, addr)
}

/// Write the test data to `dir/ref.raw` and return its path.
pub fn reference_file(dir: &Path, data: &[u8]) -> PathBuf {
    let p = dir.join("ref.raw");
    std::fs::write(&p, data).unwrap();
    p
}

/// Output of a finished external command.
#[derive(Debug)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
}

/// Fail loudly when a tool the tests need is not installed.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new(tool).is_file();
    assert!(
        found,
        "required tool {tool:?} is not installed (apt-get install libnbd-bin python3-libnbd qemu-utils)"
    );
}

/// Run a command with a hard time limit; the child is killed and waited on timeout.
pub fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    require_tool(program);
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .env("LIBNBD_DEBUG", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().unwrap() {
            Some(st) => break st.code(),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{program} {args:?} did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let out = Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    eprintln!(
        "$ {program} {}\n--- rc={:?}\n{}{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// Path of a script copied into tests/scripts/.
pub fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------
// A minimal raw client for tests that need control over the wire.

/// A raw NBD connection in transmission phase (simple replies).
pub struct RawClient {
    pub s: TcpStream,
    pub size: u64,
    pub flags: u16,
}

fn read_exact(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    Ok(b)
}

impl RawClient {
    /// Connect, negotiate with NBD_OPT_GO for `export`, no structured replies.
    pub fn connect(addr: SocketAddr, export: &str) -> std::io::Result<RawClient> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        let g = read_exact(&mut s, 18)?;
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes())?;
        let payload = InfoRequest {
            name: export.into(),
            requests: vec![],
        }
        .encode();
        let hdr = OptionHeader {
            magic: IHAVEOPT,
            option: OPT_GO,
            len: payload.len() as u32,
        };
        s.write_all(&hdr.encode())?;
        s.write_all(&payload)?;
        let (mut size, mut flags) = (0, 0);
        loop {
            let h = read_exact(&mut s, 20)?;
            let rtype = be_u32(&h[12..16]);
            let len = be_u32(&h[16..20]) as usize;
            let p = read_exact(&mut s, len)?;
            if rtype == REP_INFO && be_u16(&p[0..2]) == INFO_EXPORT {
                size = be_u64(&p[2..10]);
                flags = be_u16(&p[10..12]);
            } else if rtype == REP_ACK {
                break;
            } else if rtype & REP_FLAG_ERROR != 0 {
                return Err(std::io::Error::other(format!("GO failed: {rtype:#x}")));
            }
        }
        Ok(RawClient { s, size, flags })
    }

    /// Send one request header (and payload).
    pub fn send(&mut self, cmd: u16, cookie: u64, offset: u64, len: u32) -> std::io::Result<()> {
        let r = Request {
            magic: REQUEST_MAGIC,
            flags: 0,
            cmd,
            cookie,
            offset,
            len,
        };
        self.s.write_all(&r.encode())
    }

    /// Read one simple reply; returns (error, cookie, data) where data has `len_of(cookie)` bytes.
    pub fn recv(&mut self, len_of: impl Fn(u64) -> usize) -> std::io::Result<(u32, u64, Vec<u8>)> {
        let h = read_exact(&mut self.s, 16)?;
        assert_eq!(be_u32(&h[0..4]), SIMPLE_REPLY_MAGIC, "simple reply magic");
        let err = be_u32(&h[4..8]);
        let cookie = be_u64(&h[8..16]);
        let data = if err == 0 {
            read_exact(&mut self.s, len_of(cookie))?
        } else {
            Vec::new()
        };
        Ok((err, cookie, data))
    }

    /// One synchronous read.
    pub fn read(&mut self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        self.send(CMD_READ, 0x77, offset, len)?;
        let (err, cookie, data) = self.recv(|_| len as usize)?;
        assert_eq!(cookie, 0x77);
        if err != 0 {
            return Err(std::io::Error::other(format!("NBD error {err}")));
        }
        Ok(data)
    }

    /// Send NBD_CMD_DISC and wait for the server to close.
    pub fn disconnect(mut self) {
        let _ = self.send(CMD_DISC, 0, 0, 0);
        let mut b = [0u8; 1];
        let _ = self.s.read(&mut b);
    }
}

/// Wait (bounded) until `cond` holds.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}
