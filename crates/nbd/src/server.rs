//! Accept loops, connection bookkeeping and the running-server handle.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::bufpool::BufPool;
use crate::config::{DefaultExport, ExportEntry, ServerConfig};
use crate::error::{Error, Result};
use crate::handshake::{self, Ended};
use crate::limiter::Budget;
use crate::listener::{Listener, Stream};
use crate::log::Level;
use crate::pool::{Job, Pool};
use crate::transmission::{self, ConnLog, Limits, Session, Stats};

/// Longest sleep of an idle accept loop (bounds the latency of a stop request).
const ACCEPT_IDLE_MAX: Duration = Duration::from_millis(50);

/// Spare reply buffer capacity kept for reuse, per server.
const REPLY_BUFFER_POOL: usize = 64 << 20;

/// How a stop was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopMode {
    /// Close every connection now.
    Now,
    /// Stop accepting and let connections end by themselves until the deadline.
    Drain(Instant),
}

#[derive(Debug, Default)]
struct ConnTable {
    /// Per live connection: a clone of its socket (for forced close) and its thread.
    entries: HashMap<u64, (Option<Stream>, Option<JoinHandle<()>>)>,
}

/// State shared by the accept loops, the connection threads and the handles.
struct Shared {
    /// The configuration in force. Only the export table (and default export) is ever
    /// replaced, by [`ReloadHandle::replace_exports`], as a whole: each connection takes a
    /// snapshot when it is accepted and keeps it to the end, so a reload never changes the
    /// export an established connection is using, and every handshake sees one consistent
    /// table.
    config: RwLock<Arc<ServerConfig>>,
    /// Serialises reloads, so that two concurrent ones cannot interleave.
    reload: Mutex<()>,
    /// Set once a stop was requested: accept loops exit, haggling answers ERR_SHUTDOWN.
    stopping: AtomicBool,
    stop: Mutex<Option<StopMode>>,
    stop_cond: Condvar,
    active: AtomicUsize,
    next_id: AtomicU64,
    table: Mutex<ConnTable>,
    /// Open connections per TCP client address (entries removed at zero).
    per_client: Mutex<HashMap<IpAddr, usize>>,
    refused_warnings: AtomicU64,
    /// Spare reply buffers shared by all connections.
    bufs: Arc<BufPool>,
    /// Reply bytes in flight over all connections.
    budget: Arc<Budget>,
}

impl Shared {
    fn new(config: ServerConfig) -> Shared {
        let budget = Budget::new(config.max_total_in_flight_bytes);
        Shared {
            config: RwLock::new(Arc::new(config)),
            reload: Mutex::new(()),
            stopping: AtomicBool::new(false),
            stop: Mutex::new(None),
            stop_cond: Condvar::new(),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            table: Mutex::new(ConnTable::default()),
            per_client: Mutex::new(HashMap::new()),
            refused_warnings: AtomicU64::new(0),
            bufs: Arc::new(BufPool::new(REPLY_BUFFER_POOL)),
            budget,
        }
    }

    fn table(&self) -> MutexGuard<'_, ConnTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn per_client(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration in force now (a cheap snapshot).
    fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn log(&self, level: Level, msg: &str) {
        (self.config().logger)(level, msg);
    }

    /// Validates a configuration with `exports` in place of the current table, then swaps it
    /// in; on error the current table stays.
    fn replace_exports(&self, exports: Vec<ExportEntry>, default: DefaultExport) -> Result<()> {
        let _serial = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = ServerConfig::clone(&self.config());
        next.exports = exports;
        next.default_export = default;
        next.validate()?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(())
    }

    fn request_stop(&self, mode: StopMode) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut s = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        // An immediate stop overrides a drain, never the other way round.
        if !matches!(*s, Some(StopMode::Now)) {
            *s = Some(mode);
        }
        drop(s);
        self.stop_cond.notify_all();
        match mode {
            StopMode::Now => self.close_all(),
            // Each connection reads what its client already sent, answers it, then ends.
            StopMode::Drain(_) => self.stop_reading_all(),
        }
    }

    fn stop_reading_all(&self) {
        for (stream, _) in self.table().entries.values() {
            if let Some(s) = stream {
                s.stop_reading();
            }
        }
    }

    fn stop_mode(&self) -> Option<StopMode> {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_all(&self) {
        for (stream, _) in self.table().entries.values() {
            if let Some(s) = stream {
                s.shutdown();
            }
        }
    }

    /// Join the threads of connections that have ended.
    fn reap(&self) {
        let done: Vec<JoinHandle<()>> = {
            let mut t = self.table();
            let ids: Vec<u64> = t
                .entries
                .iter()
                .filter(|(_, (_, h))| h.as_ref().is_none_or(|h| h.is_finished()))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| t.entries.remove(&id).and_then(|(_, h)| h))
                .collect()
        };
        for h in done {
            let _ = h.join();
        }
    }
}

/// Releases a connection slot (and its client's) when a connection thread ends (even by panic).
struct SlotGuard {
    shared: Arc<Shared>,
    id: u64,
    client: Option<IpAddr>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.shared.table().entries.get_mut(&self.id) {
            entry.0 = None;
        }
        if let Some(ip) = self.client {
            let mut counts = self.shared.per_client();
            if let Some(n) = counts.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Entry point: start serving `config` on `listeners`.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Validate the configuration, start the worker pool and one accept thread per listener.
    pub fn start(
        config: ServerConfig,
        listeners: impl IntoIterator<Item = Listener>,
    ) -> Result<ServerHandle> {
        config.validate()?;
        let listeners: Vec<Listener> = listeners.into_iter().collect();
        if listeners.is_empty() {
            return Err(crate::error::ConfigError::NoListeners.into());
        }
        let mut local_addrs = Vec::new();
        for l in &listeners {
            l.set_nonblocking(true).map_err(|source| Error::Listen {
                what: l.describe(),
                source,
            })?;
            local_addrs.extend(l.local_addr());
        }
        let pool = Pool::new(config.workers).map_err(Error::Thread)?;
        let shared = Arc::new(Shared::new(config));
        let mut handle = ServerHandle {
            shared: Arc::clone(&shared),
            accept_threads: Vec::new(),
            pool: Some(pool),
            local_addrs,
        };
        for l in listeners {
            let Some(jobs) = handle.pool.as_ref().and_then(Pool::sender) else {
                break;
            };
            let s = Arc::clone(&shared);
            let t = std::thread::Builder::new()
                .name("nbd-accept".into())
                .spawn(move || accept_loop(s, l, jobs));
            match t {
                Ok(t) => handle.accept_threads.push(t),
                Err(e) => {
                    handle.finish(StopMode::Now);
                    return Err(Error::Thread(e));
                }
            }
        }
        Ok(handle)
    }
}

impl Server {
    /// Serves one client that is already connected on `stream`, on the calling thread, until
    /// its connection ends: handshake, then transmission, with `config`'s exports, limits and
    /// timeouts, exactly as a connection accepted by [`Server::start`].
    ///
    /// A worker pool of `config.workers` threads is started for this connection and stopped
    /// before returning. Meant for a socket handed over by another process (one end of a
    /// `socketpair`) and for tests and fuzzing, which drive the server with arbitrary client
    /// bytes through [`UnixStream::pair`]: the call returns once the client has closed its end
    /// (or the handshake timeout passed) and every request in flight was answered. Returns
    /// why the connection ended, as the closing log line says it.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use std::sync::Arc;
    /// use mkmodule_nbd::{null_logger, Server, ServerConfig};
    /// use mkmodule_blockdev::MemoryDevice;
    ///
    /// let config = ServerConfig::new()
    ///     .with_export("disk", "", Arc::new(MemoryDevice::new(vec![0; 4096])))
    ///     .with_workers(1)
    ///     .with_logger(null_logger());
    /// let (server_end, mut client) = UnixStream::pair()?;
    /// client.write_all(&3u32.to_be_bytes())?; // client flags, then no option: EOF
    /// client.shutdown(std::net::Shutdown::Write)?;
    /// let reason = Server::serve_connection(config, server_end)?;
    /// assert!(reason.contains("handshake failed"), "{reason}");
    /// let mut greeting = Vec::new();
    /// client.read_to_end(&mut greeting)?;
    /// assert_eq!(&greeting[..8], b"NBDMAGIC");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn serve_connection(config: ServerConfig, stream: UnixStream) -> Result<String> {
        config.validate()?;
        let pool = Pool::new(config.workers).map_err(Error::Thread)?;
        let shared = Shared::new(config);
        let reason = match pool.sender() {
            Some(jobs) => run_connection(&shared, Stream::Unix(stream), "unix:connection", jobs),
            None => "worker pool stopped".to_string(),
        };
        pool.join();
        Ok(reason)
    }
}

fn accept_loop(shared: Arc<Shared>, listener: Listener, jobs: Sender<Job>) {
    let mut idle = Duration::from_millis(1);
    while !shared.stopping.load(Ordering::SeqCst) {
        shared.reap();
        match listener.accept() {
            Ok((stream, peer)) => {
                idle = Duration::from_millis(1);
                admit(&shared, stream, peer, &jobs);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(idle);
                idle = (idle * 2).min(ACCEPT_IDLE_MAX);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn_limited(&shared, &format!("accept on {}: {e}", listener.describe()));
                std::thread::sleep(ACCEPT_IDLE_MAX);
            }
        }
    }
    listener.cleanup();
}

fn warn_limited(shared: &Shared, msg: &str) {
    let n = shared.refused_warnings.fetch_add(1, Ordering::Relaxed);
    if n < 20 || n.is_power_of_two() {
        shared.log(Level::Warn, msg);
    }
}

fn admit(shared: &Arc<Shared>, stream: Stream, peer: String, jobs: &Sender<Job>) {
    let config = shared.config();
    // Unix-socket clients have no address and are always allowed.
    let client = match &stream {
        Stream::Tcp(s) => match s.peer_addr() {
            Ok(a) => Some(a.ip().to_canonical()),
            // Already gone.
            Err(_) => return,
        },
        Stream::Unix(_) => None,
    };
    if let Some(ip) = client {
        if !config.is_allowed(ip) {
            warn_limited(
                shared,
                &format!("refusing connection from {peer}: address not in the allowed list"),
            );
            stream.shutdown();
            return;
        }
    }
    let max_connections = config.max_connections;
    if shared.active.load(Ordering::SeqCst) >= max_connections {
        warn_limited(
            shared,
            &format!("refusing connection from {peer}: {max_connections} connections already open"),
        );
        stream.shutdown();
        return;
    }
    if let Some(ip) = client {
        let per_client = config.max_connections_per_client;
        let mut counts = shared.per_client();
        let n = counts.entry(ip).or_insert(0);
        if *n >= per_client {
            drop(counts);
            warn_limited(
                shared,
                &format!(
                    "refusing connection from {peer}: {per_client} connections from {ip} \
                     already open"
                ),
            );
            stream.shutdown();
            return;
        }
        *n += 1;
    }
    shared.active.fetch_add(1, Ordering::SeqCst);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    // From here the guard gives the slots back, whatever happens.
    let guard = SlotGuard {
        shared: Arc::clone(shared),
        id,
        client,
    };
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let s = Arc::clone(shared);
    let jobs = jobs.clone();
    let spawned = std::thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || {
            let _guard = guard;
            run_connection(&s, stream, &peer, jobs);
        });
    match spawned {
        // If the thread already ended, `reap` removes this entry on its next pass.
        Ok(h) => {
            shared.table().entries.insert(id, (Some(clone), Some(h)));
        }
        // The closure (and its guard) was dropped: the slot is already released.
        Err(e) => shared.log(Level::Warn, &format!("cannot start connection thread: {e}")),
    }
}

/// Runs one connection to its end and logs its closing line; returns why it ended.
fn run_connection(shared: &Shared, mut stream: Stream, peer: &str, jobs: Sender<Job>) -> String {
    // This connection's view of the exports, fixed from here on (see `Shared::config`).
    let snapshot = shared.config();
    let cfg = &*snapshot;
    let start = Instant::now();
    let log = Arc::new(ConnLog::new(
        peer.to_string(),
        cfg.logger.clone(),
        cfg.trace,
    ));
    let stats = Arc::new(Stats::default());
    let stopping = || shared.stopping.load(Ordering::SeqCst);
    let mut tls_pump = None;
    let negotiated = handshake::negotiate(&mut stream, cfg, peer, &stopping, &mut tls_pump);
    // Every arm lets go of the stream, so that a TLS pump sees its plaintext end close.
    let (export_name, reason) = match negotiated {
        Ok(neg) => {
            let entry = &cfg.exports[neg.export];
            let ready = stream
                .set_read_timeout(None)
                .and_then(|()| stream.set_write_timeout(None));
            let reason = match ready {
                Ok(()) => transmission::serve(
                    stream,
                    Session {
                        export: Arc::clone(&entry.export),
                        neg,
                        limits: Limits {
                            max_in_flight: cfg.max_in_flight,
                            max_in_flight_bytes: cfg.max_in_flight_bytes,
                            budget: Arc::clone(&shared.budget),
                        },
                        jobs,
                        bufs: Arc::clone(&shared.bufs),
                        stats: Arc::clone(&stats),
                        log: Arc::clone(&log),
                    },
                )
                .to_string(),
                Err(e) => {
                    drop(stream);
                    format!("socket setup failed: {e}")
                }
            };
            (format!("{:?}", entry.name), reason)
        }
        Err(Ended::Orderly(m)) => {
            drop(stream);
            ("-".to_string(), m.to_string())
        }
        Err(Ended::Failed(e)) => {
            stream.shutdown();
            drop(stream);
            ("-".to_string(), format!("handshake failed: {e}"))
        }
    };
    if let Some(pump) = tls_pump {
        pump.join();
    }
    let reason = if stopping() {
        format!("{reason}; server stopping")
    } else {
        reason
    };
    log.info(&format!(
        "connection closed: peer={peer} export={export_name} duration={:.3}s requests={} \
         read={} written={} errors={} ({reason})",
        start.elapsed().as_secs_f64(),
        stats.requests.load(Ordering::Relaxed),
        stats.bytes_read.load(Ordering::Relaxed),
        stats.bytes_written.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    ));
    reason
}

/// A running server: query it, stop it, wait for it.
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    accept_threads: Vec<JoinHandle<()>>,
    pool: Option<Pool>,
    local_addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stopping", &self.stopping)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// A cloneable, `Send` trigger that stops the server from any thread (e.g. a signal handler thread).
#[derive(Debug, Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl StopHandle {
    /// Stop accepting and close every connection now; [`ServerHandle::wait`] then returns.
    pub fn stop(&self) {
        self.shared.request_stop(StopMode::Now);
    }

    /// Stop accepting and drain: each connection stops reading new requests, answers those it
    /// has read, then ends; whatever is still open after `grace` is closed.
    pub fn drain(&self, grace: Duration) {
        self.shared
            .request_stop(StopMode::Drain(Instant::now() + grace));
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

/// A cloneable, `Send` handle that replaces the export table of a running server (e.g. from a
/// SIGHUP handler thread).
///
/// A replacement is atomic: a connection accepted afterwards negotiates against the new table
/// only, one accepted before keeps the table it started with, and a connection already in
/// transmission keeps its export (and the open image behind it) until it ends. Nothing is
/// closed; an export dropped from the table lives on as long as a connection uses it.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    shared: Arc<Shared>,
}

impl ReloadHandle {
    /// Replace the exports (in `NBD_OPT_LIST` order) and what the empty name maps to. The new
    /// table is validated like [`ServerConfig::validate`] first; on error (an empty table, a
    /// name used twice, ...) the current table stays in force.
    pub fn replace_exports(&self, exports: Vec<ExportEntry>, default: DefaultExport) -> Result<()> {
        self.shared.replace_exports(exports, default)
    }

    /// The export table new connections see now.
    pub fn exports(&self) -> Vec<ExportEntry> {
        self.shared.config().exports.clone()
    }
}

impl ServerHandle {
    /// A handle that replaces the export table while the server runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Replace the export table now; see [`ReloadHandle::replace_exports`].
    pub fn replace_exports(&self, exports: Vec<ExportEntry>, default: DefaultExport) -> Result<()> {
        self.shared.replace_exports(exports, default)
    }

    /// TCP address of the first TCP listener (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs.first().copied()
    }

    /// TCP addresses of all TCP listeners.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Number of connections currently open (including ones still haggling).
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// A trigger that stops the server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stop now: stop accepting, close every connection, join all threads.
    pub fn shutdown(mut self) {
        self.finish(StopMode::Now);
    }

    /// Stop accepting, drain every connection (see [`StopHandle::drain`]) for up to `grace`,
    /// then close the rest and join.
    pub fn shutdown_graceful(mut self, grace: Duration) {
        self.finish(StopMode::Drain(Instant::now() + grace));
    }

    /// Block until a [`StopHandle`] requests a stop, then finish it and join all threads.
    pub fn wait(mut self) {
        let mode = {
            let mut s = self.shared.stop.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(m) = *s {
                    break m;
                }
                s = self
                    .shared
                    .stop_cond
                    .wait(s)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        self.finish(mode);
    }

    fn finish(&mut self, mode: StopMode) {
        self.shared.request_stop(mode);
        for t in self.accept_threads.drain(..) {
            let _ = t.join();
        }
        if let StopMode::Drain(deadline) = mode {
            // Bounded by the deadline; an immediate stop request cuts it short.
            while self.shared.active.load(Ordering::SeqCst) > 0
                && Instant::now() < deadline
                && self.shared.stop_mode() != Some(StopMode::Now)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.shared.close_all();
        let handles: Vec<JoinHandle<()>> = self
            .shared
            .table()
            .entries
            .drain()
            .filter_map(|(_, (_, h))| h)
            .collect();
        for h in handles {
            let _ = h.join();
        }
        if let Some(pool) = self.pool.take() {
            pool.join();
        }
    }
}

impl Drop for ServerHandle {
    /// Dropping the handle stops the server (a no-op after `shutdown` or `wait`).
    fn drop(&mut self) {
        if self.pool.is_some() {
            self.finish(StopMode::Now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use super::*;
    use crate::listener::Listener;
    use crate::log::null_logger;
    use crate::proto::*;
    use mkmodule_blockdev::{BlockDevice, MemoryDevice};

    fn entry(name: &str, fill: u8) -> ExportEntry {
        ExportEntry {
            name: name.into(),
            description: format!("filled with {fill}"),
            export: Arc::new(MemoryDevice::new(vec![fill; 4096])) as Arc<dyn BlockDevice>,
        }
    }

    fn start(exports: Vec<ExportEntry>) -> (ServerHandle, SocketAddr) {
        let mut config = ServerConfig::new()
            .with_logger(null_logger())
            .with_workers(2)
            .with_handshake_timeout(Duration::from_secs(10));
        config.exports = exports;
        let l = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let h = Server::start(config, [l]).unwrap();
        let addr = h.local_addr().unwrap();
        (h, addr)
    }

    fn take(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    /// Connects and reads the greeting (the server has taken its snapshot once it greets).
    fn greeted(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(&take(&mut s, 18)[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        s
    }

    /// Sends one option; returns the replies up to and including the final one.
    fn option(s: &mut TcpStream, opt: u32, payload: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let hdr = OptionHeader {
            magic: IHAVEOPT,
            option: opt,
            len: payload.len() as u32,
        };
        s.write_all(&hdr.encode()).unwrap();
        s.write_all(payload).unwrap();
        let mut replies = Vec::new();
        loop {
            let h = take(s, 20);
            let rtype = be_u32(&h[12..16]);
            let p = take(s, be_u32(&h[16..20]) as usize);
            replies.push((rtype, p));
            if rtype == REP_ACK || rtype & REP_FLAG_ERROR != 0 {
                return replies;
            }
        }
    }

    /// NBD_OPT_GO for `name` on a greeted stream: Ok in transmission, Err(reply type) if refused.
    fn go(s: &mut TcpStream, name: &str) -> std::result::Result<(), u32> {
        let payload = InfoRequest {
            name: name.into(),
            requests: vec![],
        }
        .encode();
        let replies = option(s, OPT_GO, &payload);
        match replies.last() {
            Some((REP_ACK, _)) => Ok(()),
            Some((t, _)) => Err(*t),
            None => unreachable!(),
        }
    }

    fn read_first_byte(s: &mut TcpStream) -> u8 {
        let r = Request {
            magic: REQUEST_MAGIC,
            flags: 0,
            cmd: CMD_READ,
            cookie: 9,
            offset: 0,
            len: 512,
        };
        s.write_all(&r.encode()).unwrap();
        let h = take(s, 16);
        assert_eq!(be_u32(&h[0..4]), SIMPLE_REPLY_MAGIC);
        assert_eq!(be_u32(&h[4..8]), 0, "read error");
        let data = take(s, 512);
        assert!(data.iter().all(|&b| b == data[0]));
        data[0]
    }

    /// A 4096-byte device whose reads fail with an error of `kind`, as a library error of that
    /// kind reaches a block device's caller.
    struct FailingDevice(mkmodule_blockdev::ErrorKind);

    impl BlockDevice for FailingDevice {
        fn size(&self) -> u64 {
            4096
        }

        fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
            let cause = io::Error::other("simulated media error");
            Err(mkmodule_blockdev::io_error(self.0, &cause))
        }
    }

    /// Sends one request on a stream in transmission; returns the simple reply's error number.
    fn request_errno(s: &mut TcpStream, cmd: u16, offset: u64, len: u32) -> u32 {
        let r = Request {
            magic: REQUEST_MAGIC,
            flags: 0,
            cmd,
            cookie: 7,
            offset,
            len,
        };
        s.write_all(&r.encode()).unwrap();
        if cmd == CMD_WRITE {
            s.write_all(&vec![0; len as usize]).unwrap();
        }
        let h = take(s, 16);
        assert_eq!(be_u32(&h[0..4]), SIMPLE_REPLY_MAGIC);
        let errno = be_u32(&h[4..8]);
        if errno == 0 && cmd == CMD_READ {
            take(s, len as usize);
        }
        errno
    }

    #[test]
    fn the_errno_a_client_sees_follows_the_error_kind() {
        use crate::error::NbdErrno;
        use mkmodule_blockdev::ErrorKind;
        let failing = |name: &str, kind| ExportEntry {
            name: name.into(),
            description: String::new(),
            export: Arc::new(FailingDevice(kind)) as Arc<dyn BlockDevice>,
        };
        let (server, addr) = start(vec![
            failing("corrupt", ErrorKind::Corrupt),
            failing("io", ErrorKind::Io),
            failing("range", ErrorKind::OutOfRange),
            entry("plain", 3),
        ]);
        for (name, expected) in [
            ("corrupt", NbdErrno::Io),
            ("io", NbdErrno::Io),
            ("range", NbdErrno::Inval),
        ] {
            let mut s = greeted(addr);
            go(&mut s, name).unwrap();
            assert_eq!(
                request_errno(&mut s, CMD_READ, 0, 512),
                expected.code(),
                "{name}"
            );
        }
        let mut s = greeted(addr);
        go(&mut s, "plain").unwrap();
        assert_eq!(request_errno(&mut s, CMD_READ, 0, 512), 0);
        assert_eq!(
            request_errno(&mut s, CMD_READ, 4096, 512),
            NbdErrno::Inval.code(),
            "a read past the end"
        );
        assert_eq!(
            request_errno(&mut s, CMD_WRITE, 0, 512),
            NbdErrno::Perm.code(),
            "a write to a read-only export"
        );
        server.shutdown();
    }

    fn list(addr: SocketAddr) -> Vec<String> {
        let mut s = greeted(addr);
        option(&mut s, OPT_LIST, &[])
            .into_iter()
            .filter(|(t, _)| *t == REP_SERVER)
            .map(|(_, p)| {
                let n = be_u32(&p[0..4]) as usize;
                String::from_utf8(p[4..4 + n].to_vec()).unwrap()
            })
            .collect()
    }

    #[test]
    fn replacing_exports_keeps_established_connections_and_serves_new_ones_the_new_table() {
        let (server, addr) = start(vec![entry("a", 1)]);
        let mut old = greeted(addr);
        go(&mut old, "a").unwrap();
        assert_eq!(read_first_byte(&mut old), 1);
        // Greeted before the reload, haggling after it: still the table it started with.
        let mut haggling = greeted(addr);

        let reload = server.reload_handle();
        reload
            .replace_exports(vec![entry("b", 2), entry("c", 3)], DefaultExport::First)
            .unwrap();
        assert_eq!(
            reload
                .exports()
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );

        // The established connection still reads export "a", which left the table.
        assert_eq!(read_first_byte(&mut old), 1);
        assert_eq!(server.active_connections(), 2);
        go(&mut haggling, "a").unwrap();
        assert_eq!(read_first_byte(&mut haggling), 1);

        // New connections see the new table only.
        assert_eq!(list(addr), ["b", "c"]);
        let mut s = greeted(addr);
        assert_eq!(go(&mut s, "a"), Err(REP_ERR_UNKNOWN));
        go(&mut s, "c").unwrap();
        assert_eq!(read_first_byte(&mut s), 3);
        let mut s = greeted(addr);
        go(&mut s, "").unwrap();
        assert_eq!(read_first_byte(&mut s), 2);
        assert_eq!(read_first_byte(&mut old), 1);
        server.shutdown();
    }

    #[test]
    fn an_invalid_table_is_refused_and_the_old_one_stays() {
        let (server, addr) = start(vec![entry("a", 1)]);
        assert!(server
            .replace_exports(Vec::new(), DefaultExport::First)
            .is_err());
        assert!(server
            .replace_exports(vec![entry("x", 1), entry("x", 2)], DefaultExport::First)
            .is_err());
        assert!(server
            .replace_exports(vec![entry("x", 1)], DefaultExport::Named("missing".into()))
            .is_err());
        assert_eq!(list(addr), ["a"]);
        let mut s = greeted(addr);
        go(&mut s, "").unwrap();
        assert_eq!(read_first_byte(&mut s), 1);
        // The default export follows the new table.
        server
            .replace_exports(
                vec![entry("x", 5), entry("y", 6)],
                DefaultExport::Named("y".into()),
            )
            .unwrap();
        let mut s = greeted(addr);
        go(&mut s, "").unwrap();
        assert_eq!(read_first_byte(&mut s), 6);
        server.shutdown();
    }

    /// A TLS client reads through the pump; stopping the server ends its connection (pump
    /// included) and `shutdown` returns.
    #[test]
    fn tls_connections_are_served_and_closed_by_a_stop() {
        use crate::tls::{testing, TlsCredentials, TlsMode};
        let dir = tempfile::tempdir().unwrap();
        testing::write_credentials(dir.path());
        let creds = TlsCredentials::load(dir.path(), true).unwrap();
        let config = ServerConfig::new()
            .with_logger(null_logger())
            .with_workers(2)
            .with_tls(TlsMode::Require, Some(creds))
            .with_export("a", "", Arc::new(MemoryDevice::new(vec![7; 4 << 20])));
        let l = Listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let server = Server::start(config, [l]).unwrap();
        let addr = server.local_addr().unwrap();
        let mut s = greeted(addr);
        assert_eq!(go(&mut s, "a"), Err(REP_ERR_TLS_REQD));
        let replies = option(&mut s, OPT_STARTTLS, &[]);
        assert_eq!(replies, [(REP_ACK, vec![])]);
        let mut tls = rustls::StreamOwned::new(testing::client(dir.path(), true), s);
        let payload = InfoRequest {
            name: "a".into(),
            requests: vec![],
        }
        .encode();
        let hdr = OptionHeader {
            magic: IHAVEOPT,
            option: OPT_GO,
            len: payload.len() as u32,
        };
        tls.write_all(&hdr.encode()).unwrap();
        tls.write_all(&payload).unwrap();
        loop {
            let mut h = [0u8; 20];
            tls.read_exact(&mut h).unwrap();
            let mut p = vec![0; be_u32(&h[16..20]) as usize];
            tls.read_exact(&mut p).unwrap();
            if be_u32(&h[12..16]) == REP_ACK {
                break;
            }
        }
        // 64 reads of 64 KiB in one go, answered through the pump.
        for i in 0..64u64 {
            let r = Request {
                magic: REQUEST_MAGIC,
                flags: 0,
                cmd: CMD_READ,
                cookie: i,
                offset: i << 16,
                len: 64 << 10,
            };
            tls.write_all(&r.encode()).unwrap();
        }
        for _ in 0..64 {
            let mut h = [0u8; 16];
            tls.read_exact(&mut h).unwrap();
            assert_eq!(be_u32(&h[4..8]), 0);
            let mut data = vec![0; 64 << 10];
            tls.read_exact(&mut data).unwrap();
            assert!(data.iter().all(|&b| b == 7));
        }
        assert_eq!(server.active_connections(), 1);
        server.shutdown();
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }

    #[test]
    fn reloads_racing_with_connections_always_give_a_whole_table() {
        let (server, addr) = start(vec![entry("a", 1), entry("b", 1)]);
        let reload = server.reload_handle();
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0u8;
                while !stop.load(Ordering::SeqCst) {
                    n = n % 200 + 1;
                    // Both exports always carry the same generation byte.
                    reload
                        .replace_exports(vec![entry("a", n), entry("b", n)], DefaultExport::First)
                        .unwrap();
                    std::thread::yield_now();
                }
            })
        };
        for _ in 0..40 {
            let mut a = greeted(addr);
            let names = {
                let mut s = greeted(addr);
                let got = option(&mut s, OPT_LIST, &[]);
                got.iter().filter(|(t, _)| *t == REP_SERVER).count()
            };
            assert_eq!(names, 2);
            go(&mut a, "a").unwrap();
            let first = read_first_byte(&mut a);
            assert!((1..=200).contains(&first));
            // The connection's export never changes under it.
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(read_first_byte(&mut a), first);
        }
        stop.store(true, Ordering::SeqCst);
        flipper.join().unwrap();
        server.shutdown();
    }
}
