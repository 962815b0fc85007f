//! Shared helpers for the integration tests: test data, an in-process server,
//! bounded external-tool runs; the raw NBD client and the tool lookup come from the testkit.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mkmodule_blockdev::MemoryDevice;
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

pub use mkmodule_testkit::process::wait_until;
pub use mkmodule_testkit::tools::require_tool;

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

pub use mkmodule_testkit::nbd::NbdClient;
