//! Accept loops, connection bookkeeping and the running-server handle.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::bufpool::BufPool;
use crate::config::{Level, ServerConfig};
use crate::error::{Error, Result};
use crate::handshake::{self, Ended};
use crate::listener::{Listener, Stream};
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
    config: ServerConfig,
    /// Set once a stop was requested: accept loops exit, haggling answers ERR_SHUTDOWN.
    stopping: AtomicBool,
    stop: Mutex<Option<StopMode>>,
    stop_cond: Condvar,
    active: AtomicUsize,
    next_id: AtomicU64,
    table: Mutex<ConnTable>,
    refused_warnings: AtomicU64,
    /// Spare reply buffers shared by all connections.
    bufs: Arc<BufPool>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, ConnTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, level: Level, msg: &str) {
        (self.config.logger)(level, msg);
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
        if mode == StopMode::Now {
            self.close_all();
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

/// Releases a connection slot when a connection thread ends (even by panic).
struct SlotGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.shared.table().entries.get_mut(&self.id) {
            entry.0 = None;
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
            return Err(Error::Config("no listeners given".into()));
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
        let shared = Arc::new(Shared {
            config,
            stopping: AtomicBool::new(false),
            stop: Mutex::new(None),
            stop_cond: Condvar::new(),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            table: Mutex::new(ConnTable::default()),
            refused_warnings: AtomicU64::new(0),
            bufs: Arc::new(BufPool::new(REPLY_BUFFER_POOL)),
        });
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
    if shared.active.load(Ordering::SeqCst) >= shared.config.max_connections {
        warn_limited(
            shared,
            &format!(
                "refusing connection from {peer}: {} connections already open",
                shared.config.max_connections
            ),
        );
        stream.shutdown();
        return;
    }
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    shared.active.fetch_add(1, Ordering::SeqCst);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let guard = SlotGuard {
        shared: Arc::clone(shared),
        id,
    };
    let s = Arc::clone(shared);
    let jobs = jobs.clone();
    let spawned = std::thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || {
            let _guard = guard;
            run_connection(&s, stream, peer, jobs);
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

fn run_connection(shared: &Shared, mut stream: Stream, peer: String, jobs: Sender<Job>) {
    let cfg = &shared.config;
    let start = Instant::now();
    let log = Arc::new(ConnLog::new(peer.clone(), cfg.logger.clone(), cfg.trace));
    let stats = Arc::new(Stats::default());
    let stopping = || shared.stopping.load(Ordering::SeqCst);
    let (export_name, reason) = match handshake::negotiate(&mut stream, cfg, &peer, &stopping) {
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
                        },
                        jobs,
                        bufs: Arc::clone(&shared.bufs),
                        stats: Arc::clone(&stats),
                        log: Arc::clone(&log),
                    },
                )
                .to_string(),
                Err(e) => format!("socket setup failed: {e}"),
            };
            (format!("{:?}", entry.name), reason)
        }
        Err(Ended::Orderly(m)) => ("-".to_string(), m.to_string()),
        Err(Ended::Failed(e)) => {
            stream.shutdown();
            ("-".to_string(), format!("handshake failed: {e}"))
        }
    };
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

    /// Stop accepting, let open connections finish for up to `grace`, then close them.
    pub fn drain(&self, grace: Duration) {
        self.shared
            .request_stop(StopMode::Drain(Instant::now() + grace));
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

impl ServerHandle {
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

    /// Stop accepting, wait up to `grace` for connections to end, then close the rest and join.
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
