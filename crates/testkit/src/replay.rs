//! Replays a recorded block-read trace (`mkmodule serve --trace FILE`) from many NBD clients at
//! once, as a boot storm: every client opens its own connection, all start together, and each
//! sends the trace's reads one at a time in the recorded order, as fast as the server answers.
//! It measures what the clients see (bytes, wall time, per-request latency); given a checker,
//! client 0 checks every reply it gets (one client's check covers the whole trace without
//! slowing the storm down much).

use std::io;
use std::net::SocketAddr;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::nbd::NbdClient;

/// One read of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRead {
    /// Microseconds after the trace's first read.
    pub micros: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

/// Parses a trace file: `#` comment lines and empty lines are skipped, every other line is
/// `MICROSECONDS OFFSET LENGTH`. Errors name the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRead>, String> {
    let mut reads = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("trace line {}: {line:?} is not MICROS OFFSET LENGTH", n + 1);
        let mut words = line.split_whitespace();
        let mut next = || words.next().ok_or_else(bad);
        let micros = next()?.parse().map_err(|_| bad())?;
        let offset = next()?.parse().map_err(|_| bad())?;
        let len = next()?.parse().map_err(|_| bad())?;
        if words.next().is_some() {
            return Err(bad());
        }
        reads.push(TraceRead {
            micros,
            offset,
            len,
        });
    }
    Ok(reads)
}

/// The distinct blocks of `block_size` bytes that a trace's reads touch, in ascending order.
pub fn distinct_blocks(trace: &[TraceRead], block_size: u64) -> Vec<u64> {
    let mut blocks: Vec<u64> = trace
        .iter()
        .filter(|r| r.len > 0)
        .flat_map(|r| r.offset / block_size..=(r.offset + u64::from(r.len) - 1) / block_size)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// Checks one reply: given the offset and the bytes received, whether they are right.
pub type Checker<'a> = &'a (dyn Fn(u64, &[u8]) -> bool + Sync);

/// What a replay measured.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Clients (connections) that replayed the trace.
    pub clients: usize,
    /// Read requests answered, over all clients.
    pub requests: u64,
    /// Data bytes received, over all clients.
    pub bytes: u64,
    /// From the moment all clients started to the last reply.
    pub wall: Duration,
    /// Every request's latency (request sent to reply read), ascending.
    pub latencies: Vec<Duration>,
    /// Replies of client 0 whose bytes the checker refused.
    pub mismatches: u64,
}

impl ReplayReport {
    /// Aggregate throughput in MB/s (10^6 bytes) of data received.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The latency below which a share `q` (0..=1) of the requests completed (nearest rank).
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Replays `trace` from `clients` connections to the NBD server at `addr` (export `export`,
/// negotiated with `NBD_OPT_GO`). Every client connects first; then all start at once. A
/// connection or read error of any client fails the replay (the test client's read timeout
/// bounds every wait); with `check`, client 0 checks every reply and refusals are counted.
pub fn replay(
    addr: SocketAddr,
    export: &str,
    trace: &[TraceRead],
    clients: usize,
    check: Option<Checker<'_>>,
) -> io::Result<ReplayReport> {
    let start_line = Barrier::new(clients + 1);
    let started = Mutex::new(None::<Instant>);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|i| {
                let start_line = &start_line;
                let check = if i == 0 { check } else { None };
                scope.spawn(move || {
                    let connected = NbdClient::connect(addr, export);
                    // Everyone waits at the line, connected or not, so nobody is left behind.
                    start_line.wait();
                    one_client(connected?, trace, check)
                })
            })
            .collect();
        start_line.wait();
        *started.lock().unwrap() = Some(Instant::now());
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("client panicked")))
            })
            .collect::<Vec<_>>()
    });
    let started = started.into_inner().unwrap().unwrap_or_else(Instant::now);
    let mut report = ReplayReport {
        clients,
        requests: 0,
        bytes: 0,
        wall: Duration::ZERO,
        latencies: Vec::with_capacity(clients * trace.len()),
        mismatches: 0,
    };
    for result in results {
        let one = result?;
        report.wall = report
            .wall
            .max(one.finished.saturating_duration_since(started));
        report.requests += one.latencies.len() as u64;
        report.bytes += one.bytes;
        report.mismatches += one.mismatches;
        report.latencies.extend(one.latencies);
    }
    report.latencies.sort_unstable();
    Ok(report)
}

/// What one client measured.
struct ClientResult {
    bytes: u64,
    latencies: Vec<Duration>,
    mismatches: u64,
    finished: Instant,
}

fn one_client(
    mut client: NbdClient,
    trace: &[TraceRead],
    check: Option<Checker<'_>>,
) -> io::Result<ClientResult> {
    let mut result = ClientResult {
        bytes: 0,
        latencies: Vec::with_capacity(trace.len()),
        mismatches: 0,
        finished: Instant::now(),
    };
    let mut buf = Vec::new();
    for read in trace {
        buf.resize(read.len as usize, 0);
        let t0 = Instant::now();
        client.read_into(read.offset, &mut buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("read of {} bytes at {}: {e}", read.len, read.offset),
            )
        })?;
        result.latencies.push(t0.elapsed());
        result.bytes += u64::from(read.len);
        if let Some(check) = check {
            if !check(read.offset, &buf) {
                result.mismatches += 1;
            }
        }
    }
    result.finished = Instant::now();
    client.hang_up();
    Ok(result)
}
