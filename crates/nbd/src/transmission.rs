//! Transmission phase: request reader, dispatch to workers, reply writer thread.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::bufpool::BufPool;
use crate::error::NbdErrno;
use crate::handshake::Negotiated;
use crate::limiter::{Budget, Limiter};
use crate::listener::Stream;
use crate::log::{Level, Logger};
use crate::pool::Job;
use crate::proto::*;
use mkmodule_blockdev::BlockDevice;

/// Warnings logged per connection before further ones are suppressed.
const MAX_WARNINGS: u32 = 10;
/// Zero extents shorter than this are sent as data in structured reads.
const MIN_HOLE_CHUNK: u64 = 4096;
/// Most content chunks in one structured read reply.
const MAX_READ_CHUNKS: usize = 256;
/// Most extents in one block status reply (clients ask again for the rest).
const MAX_STATUS_EXTENTS: usize = 1 << 16;

/// Counters reported when a connection closes.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Data bytes sent to the client by successful reads.
    pub bytes_read: AtomicU64,
    /// Data bytes written to the export.
    pub bytes_written: AtomicU64,
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
}

/// Connection-scoped logging with a cap on warnings.
pub(crate) struct ConnLog {
    pub peer: String,
    pub logger: Logger,
    pub trace: bool,
    warnings: AtomicU32,
}

impl ConnLog {
    pub(crate) fn new(peer: String, logger: Logger, trace: bool) -> Self {
        ConnLog {
            peer,
            logger,
            trace,
            warnings: AtomicU32::new(0),
        }
    }

    pub(crate) fn trace(&self, msg: impl FnOnce() -> String) {
        if self.trace {
            (self.logger)(Level::Trace, &format!("{}: {}", self.peer, msg()));
        }
    }

    pub(crate) fn warn(&self, msg: &str) {
        let n = self.warnings.fetch_add(1, Ordering::Relaxed);
        if n < MAX_WARNINGS {
            (self.logger)(Level::Warn, &format!("{}: {msg}", self.peer));
        } else if n == MAX_WARNINGS {
            (self.logger)(
                Level::Warn,
                &format!("{}: further warnings suppressed", self.peer),
            );
        }
    }

    pub(crate) fn info(&self, msg: &str) {
        (self.logger)(Level::Info, msg);
    }
}

enum WriterMsg {
    Reply { bytes: Vec<u8>, permit: usize },
    Close,
}

/// State shared by the reader, the workers running this connection's jobs and the writer.
struct Conn {
    export: Arc<dyn BlockDevice>,
    bufs: Arc<BufPool>,
    neg: Negotiated,
    limiter: Limiter,
    tx: Sender<WriterMsg>,
    stats: Arc<Stats>,
    log: Arc<ConnLog>,
}

impl Conn {
    fn size(&self) -> u64 {
        self.export.size()
    }

    /// Hand a finished reply to the writer (never blocks: the queue holds at most one
    /// message per limiter slot).
    fn send(&self, bytes: Vec<u8>, permit: usize) {
        if self.tx.send(WriterMsg::Reply { bytes, permit }).is_err() {
            self.limiter.release(permit);
        }
    }

    fn error_reply(&self, cookie: u64, err: NbdErrno, msg: &str) -> Vec<u8> {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.log
            .trace(|| format!("reply cookie {cookie:#x}: {} {msg}", err.name()));
        let mut out = Vec::with_capacity(64);
        if self.neg.structured {
            put_error_chunk(&mut out, cookie, err.code(), msg);
        } else {
            put_simple_reply(&mut out, err.code(), cookie);
        }
        out
    }

    fn io_error_reply(&self, cookie: u64, what: &str, e: &io::Error) -> Vec<u8> {
        let err = NbdErrno::from_io(e);
        let message = format!("{what}: {}", mkmodule_blockdev::chain_text(e));
        if err != NbdErrno::Perm && err != NbdErrno::Inval {
            self.log.warn(&message);
        }
        self.error_reply(cookie, err, &message)
    }

    fn ok_reply(cookie: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIMPLE_REPLY_LEN);
        put_simple_reply(&mut out, 0, cookie);
        out
    }
}

/// Why a request cannot be executed: error number and message.
type Reject = (NbdErrno, String);

fn range_error(req: &Request, size: u64, err: NbdErrno) -> Reject {
    (
        err,
        format!(
            "request out of range: offset {} length {} export size {}",
            req.offset, req.len, size
        ),
    )
}

/// Check a request against the negotiated state before any work is done.
fn validate(conn: &Conn, req: &Request) -> Result<(), Reject> {
    let read_only = conn.export.is_read_only();
    let allowed = match req.cmd {
        CMD_READ => CMD_FLAG_FUA | if conn.neg.structured { CMD_FLAG_DF } else { 0 },
        CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        other => {
            return Err((NbdErrno::Inval, format!("unknown command {other}")));
        }
    };
    if req.flags & !allowed != 0 {
        return Err((
            NbdErrno::Inval,
            format!(
                "command flags {:#x} not allowed for {}",
                req.flags,
                command_name(req.cmd)
            ),
        ));
    }
    let size = conn.size();
    let in_range = req
        .offset
        .checked_add(u64::from(req.len))
        .is_some_and(|end| end <= size);
    match req.cmd {
        CMD_READ => {
            if req.len > MAX_PAYLOAD {
                return Err((
                    NbdErrno::Inval,
                    format!("read length {} over the 32 MiB limit", req.len),
                ));
            }
            if !in_range {
                return Err(range_error(req, size, NbdErrno::Inval));
            }
        }
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => {
            if read_only {
                return Err((NbdErrno::Perm, "export is read-only".into()));
            }
            if req.cmd == CMD_TRIM && !conn.export.can_trim() {
                return Err((NbdErrno::Inval, "trim is not supported".into()));
            }
            if req.cmd == CMD_WRITE_ZEROES && !conn.export.can_write_zeroes() {
                return Err((NbdErrno::Inval, "write zeroes is not supported".into()));
            }
            if !in_range {
                let e = if req.cmd == CMD_TRIM {
                    NbdErrno::Inval
                } else {
                    NbdErrno::NoSpc
                };
                return Err(range_error(req, size, e));
            }
        }
        CMD_FLUSH if req.offset != 0 || req.len != 0 => {
            return Err((NbdErrno::Inval, "flush requires offset and length 0".into()));
        }
        CMD_CACHE if !in_range => {
            return Err(range_error(req, size, NbdErrno::Inval));
        }
        CMD_BLOCK_STATUS => {
            if !conn.neg.block_status {
                return Err((
                    NbdErrno::Inval,
                    "block status requires the base:allocation context".into(),
                ));
            }
            if req.len == 0 {
                return Err((NbdErrno::Inval, "block status length 0".into()));
            }
            if !in_range {
                return Err(range_error(req, size, NbdErrno::Inval));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Run a validated request and build its complete reply.
fn execute(conn: &Conn, req: &Request, payload: Vec<u8>) -> Vec<u8> {
    let export = conn.export.as_ref();
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (req.offset, u64::from(req.len));
    let result = match req.cmd {
        CMD_READ => return read_reply(conn, req),
        CMD_BLOCK_STATUS => return block_status_reply(conn, req),
        CMD_WRITE => export.write_at(&payload, offset).map(|()| {
            conn.stats
                .bytes_written
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }),
        CMD_FLUSH => export.flush(),
        CMD_TRIM => export.trim(offset, len),
        CMD_WRITE_ZEROES => export.write_zeroes(offset, len, req.flags & CMD_FLAG_NO_HOLE == 0),
        CMD_CACHE => export.cache(offset, len),
        _ => return conn.error_reply(req.cookie, NbdErrno::Inval, "unknown command"),
    };
    let result = match result {
        Ok(()) if fua && matches!(req.cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) => {
            export.flush()
        }
        r => r,
    };
    match result {
        Ok(()) => Conn::ok_reply(req.cookie),
        Err(e) => conn.io_error_reply(
            req.cookie,
            &format!(
                "{} at offset {} length {}",
                command_name(req.cmd),
                offset,
                len
            ),
            &e,
        ),
    }
}

/// A piece of a structured read reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Data { offset: u64, len: u64 },
    Hole { offset: u64, len: u64 },
}

/// Split `[offset, offset+len)` into data and hole segments from the export's extents.
fn plan_segments(extents: &[mkmodule_blockdev::Extent], offset: u64, len: u64) -> Vec<Segment> {
    let end = offset + len;
    // First clip the extents to the request and join runs with the same zero state.
    let mut runs: Vec<(u64, bool)> = Vec::new();
    let mut pos = offset;
    for e in extents {
        if pos >= end {
            break;
        }
        let n = e.len.min(end - pos);
        if n == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((l, z)) if *z == e.zero => *l += n,
            _ => runs.push((n, e.zero)),
        }
        pos += n;
    }
    if pos < end {
        runs.push((end - pos, false));
    }
    // Then send short zero runs as data, and cap the number of chunks.
    let mut segs: Vec<Segment> = Vec::new();
    let mut pos = offset;
    for (n, zero) in runs {
        let hole = zero && n >= MIN_HOLE_CHUNK && segs.len() + 1 < MAX_READ_CHUNKS;
        match (segs.last_mut(), hole) {
            (Some(Segment::Data { len, .. }), false) => *len += n,
            (_, false) => segs.push(Segment::Data {
                offset: pos,
                len: n,
            }),
            (_, true) => segs.push(Segment::Hole {
                offset: pos,
                len: n,
            }),
        }
        pos += n;
    }
    segs
}

fn read_reply(conn: &Conn, req: &Request) -> Vec<u8> {
    let export = conn.export.as_ref();
    let (offset, len) = (req.offset, u64::from(req.len));
    let what = || format!("read at offset {offset} length {len}");
    if !conn.neg.structured {
        // Every byte is overwritten below: the header, then the data.
        let mut out = conn.bufs.take_len(SIMPLE_REPLY_LEN + req.len as usize);
        let mut head = Vec::with_capacity(SIMPLE_REPLY_LEN);
        put_simple_reply(&mut head, 0, req.cookie);
        out[..SIMPLE_REPLY_LEN].copy_from_slice(&head);
        if let Err(e) = export.read_at(&mut out[SIMPLE_REPLY_LEN..], offset) {
            conn.bufs.give(out);
            return conn.io_error_reply(req.cookie, &what(), &e);
        }
        conn.stats.bytes_read.fetch_add(len, Ordering::Relaxed);
        return out;
    }
    if len == 0 {
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN);
        put_chunk_header(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
        return out;
    }
    let segs = if req.flags & CMD_FLAG_DF != 0 {
        vec![Segment::Data { offset, len }]
    } else {
        let extents = export.extents(offset, len).unwrap_or_default();
        plan_segments(&extents, offset, len)
    };
    let total: usize = segs
        .iter()
        .map(|s| match s {
            Segment::Data { len, .. } => CHUNK_HEADER_LEN + 8 + *len as usize,
            Segment::Hole { .. } => CHUNK_HEADER_LEN + 12,
        })
        .sum();
    // The buffer may hold another reply's bytes: it is filled strictly front to back (chunk
    // headers, then data read in place) and cut where the writing stopped, so nothing stale
    // can reach the client.
    let mut out = conn.bufs.take_len(total);
    let mut at = 0;
    let mut head = Vec::with_capacity(CHUNK_HEADER_LEN + 12);
    for (i, seg) in segs.iter().enumerate() {
        let flags = if i + 1 == segs.len() {
            REPLY_FLAG_DONE
        } else {
            0
        };
        head.clear();
        match *seg {
            Segment::Data { offset: o, len: n } => {
                put_chunk_header(
                    &mut head,
                    flags,
                    REPLY_TYPE_OFFSET_DATA,
                    req.cookie,
                    8 + n as u32,
                );
                head.extend_from_slice(&o.to_be_bytes());
                out[at..at + head.len()].copy_from_slice(&head);
                at += head.len();
                let data = &mut out[at..at + n as usize];
                if let Err(e) = export.read_at(data, o) {
                    // Nothing was sent yet: answer with a single error chunk.
                    conn.bufs.give(out);
                    return conn.io_error_reply(req.cookie, &what(), &e);
                }
                at += n as usize;
            }
            Segment::Hole { offset: o, len: n } => {
                put_hole_chunk(&mut head, flags, req.cookie, o, n as u32);
                out[at..at + head.len()].copy_from_slice(&head);
                at += head.len();
            }
        }
    }
    out.truncate(at);
    conn.stats.bytes_read.fetch_add(len, Ordering::Relaxed);
    out
}

fn block_status_reply(conn: &Conn, req: &Request) -> Vec<u8> {
    let (offset, len) = (req.offset, u64::from(req.len));
    let extents = match conn.export.extents(offset, len) {
        Ok(e) => e,
        Err(e) => {
            return conn.io_error_reply(
                req.cookie,
                &format!("block status at offset {offset} length {len}"),
                &e,
            )
        }
    };
    let end = offset + len;
    let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_STATUS_EXTENTS
    };
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut pos = offset;
    for e in &extents {
        if pos >= end {
            break;
        }
        let n = e.len.min(end - pos);
        if n == 0 {
            continue;
        }
        let flags = extent_flags(e);
        let full = pairs.len() >= max;
        match pairs.last_mut() {
            Some((l, f)) if *f == flags => *l += n as u32,
            _ if full => break,
            _ => pairs.push((n as u32, flags)),
        }
        pos += n;
    }
    if pairs.is_empty() {
        pairs.push((req.len, 0));
    }
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 4 + 8 * pairs.len());
    put_chunk_header(
        &mut out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        req.cookie,
        4 + 8 * pairs.len() as u32,
    );
    out.extend_from_slice(&CONTEXT_ID_BASE_ALLOCATION.to_be_bytes());
    for (l, f) in &pairs {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&f.to_be_bytes());
    }
    out
}

fn writer_loop(stream: Stream, rx: Receiver<WriterMsg>, conn: Arc<Conn>) {
    let shutdown_handle = stream.try_clone().ok();
    let mut w = BufWriter::with_capacity(64 << 10, stream);
    while let Ok(msg) = rx.recv() {
        let res = match msg {
            WriterMsg::Reply { bytes, permit } => {
                let r = w.write_all(&bytes);
                conn.bufs.give(bytes);
                conn.limiter.release(permit);
                if r.is_ok() && rx.is_empty() {
                    w.flush()
                } else {
                    r
                }
            }
            WriterMsg::Close => {
                let _ = w.flush();
                break;
            }
        };
        if let Err(e) = res {
            conn.log.trace(|| format!("writing replies failed: {e}"));
            conn.limiter.close();
            if let Some(s) = &shutdown_handle {
                s.shutdown();
            }
            break;
        }
    }
}

/// How a transmission session ended.
#[derive(Debug)]
pub(crate) enum EndReason {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection between requests.
    ClientClosed,
    /// Something went wrong (I/O error, protocol violation, writer failure).
    Failed(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Disconnect => f.write_str("client disconnect"),
            EndReason::ClientClosed => f.write_str("client closed the connection"),
            EndReason::Failed(m) => f.write_str(m),
        }
    }
}

/// Limits applied to one connection.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    /// Reply bytes in flight over the whole server.
    pub budget: Arc<Budget>,
}

/// Read the 28-byte header; `Ok(None)` on a clean end of stream before it.
fn read_header(r: &mut impl Read) -> io::Result<Option<[u8; REQUEST_LEN]>> {
    let mut b = [0u8; REQUEST_LEN];
    let mut got = 0;
    while got < REQUEST_LEN {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a request header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(b))
}

/// Counts one job of a connection from its dispatch until it has run or was dropped unrun
/// (see [`Limiter::wait_jobs`]).
struct JobGuard(Arc<Conn>);

impl JobGuard {
    fn new(conn: Arc<Conn>) -> JobGuard {
        conn.limiter.job_started();
        JobGuard(conn)
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.0.limiter.job_finished();
    }
}

/// Everything a transmission session needs besides the socket.
pub(crate) struct Session {
    pub export: Arc<dyn BlockDevice>,
    pub neg: Negotiated,
    pub limits: Limits,
    pub jobs: Sender<Job>,
    pub bufs: Arc<BufPool>,
    pub stats: Arc<Stats>,
    pub log: Arc<ConnLog>,
}

/// Serve requests on `stream` until the client leaves or the connection fails.
pub(crate) fn serve(stream: Stream, session: Session) -> EndReason {
    let Session {
        export,
        neg,
        limits,
        jobs,
        bufs,
        stats,
        log,
    } = session;
    let (wtx, wrx) = crossbeam_channel::unbounded::<WriterMsg>();
    let conn = Arc::new(Conn {
        export,
        bufs,
        neg,
        limiter: Limiter::new(
            limits.max_in_flight,
            limits.max_in_flight_bytes,
            Arc::clone(&limits.budget),
        ),
        tx: wtx,
        stats,
        log,
    });
    let write_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return EndReason::Failed(format!("cannot clone socket: {e}")),
    };
    let wconn = Arc::clone(&conn);
    let writer = match std::thread::Builder::new()
        .name("nbd-writer".into())
        .spawn(move || writer_loop(write_stream, wrx, wconn))
    {
        Ok(t) => t,
        Err(e) => return EndReason::Failed(format!("cannot start writer thread: {e}")),
    };
    let shutdown_handle = stream.try_clone().ok();
    let mut reader = BufReader::with_capacity(64 << 10, stream);

    // The writer must always get its Close, even if the reader hits a bug.
    let (reason, graceful) =
        catch_unwind(AssertUnwindSafe(|| read_loop(&conn, &mut reader, &jobs))).unwrap_or_else(
            |_| {
                (
                    EndReason::Failed("internal error in the request reader".into()),
                    false,
                )
            },
        );
    if graceful {
        conn.limiter.wait_idle();
    } else {
        conn.limiter.close();
        if let Some(s) = &shutdown_handle {
            s.shutdown();
        }
    }
    let _ = conn.tx.send(WriterMsg::Close);
    let _ = writer.join();
    if let Some(s) = &shutdown_handle {
        s.shutdown();
    }
    // The writer is gone, so the limiter is closed or idle: jobs still queued skip their work.
    // Only once none is left does the connection end and give back its slot.
    conn.limiter.close();
    conn.limiter.wait_jobs();
    conn.limiter.finish();
    reason
}

/// The reader loop; returns the end reason and whether to drain in-flight work.
fn read_loop(conn: &Arc<Conn>, reader: &mut impl Read, jobs: &Sender<Job>) -> (EndReason, bool) {
    loop {
        let hdr = match read_header(reader) {
            Ok(Some(h)) => h,
            Ok(None) => return (EndReason::ClientClosed, true),
            Err(e) => return (EndReason::Failed(format!("reading request: {e}")), false),
        };
        let req = Request::decode(&hdr);
        if req.magic != REQUEST_MAGIC {
            conn.log
                .warn(&format!("bad request magic {:#x}, closing", req.magic));
            return (
                EndReason::Failed(format!("bad request magic {:#x}", req.magic)),
                false,
            );
        }
        conn.stats.requests.fetch_add(1, Ordering::Relaxed);
        conn.log.trace(|| {
            format!(
                "request {} flags {:#x} cookie {:#x} offset {} length {}",
                command_name(req.cmd),
                req.flags,
                req.cookie,
                req.offset,
                req.len
            )
        });
        if req.cmd == CMD_DISC {
            return (EndReason::Disconnect, true);
        }
        if req.cmd == CMD_WRITE && req.len > MAX_PAYLOAD {
            conn.log.warn(&format!(
                "write payload of {} bytes over the 32 MiB limit, closing",
                req.len
            ));
            return (
                EndReason::Failed(format!("write payload of {} bytes too large", req.len)),
                false,
            );
        }
        let permit = match req.cmd {
            CMD_READ | CMD_WRITE if req.len <= MAX_PAYLOAD => req.len as usize,
            _ => 0,
        };
        if !conn.limiter.acquire(permit) {
            return (
                EndReason::Failed("connection closed by the writer".into()),
                false,
            );
        }
        let payload = if req.cmd == CMD_WRITE {
            let mut p = vec![0u8; req.len as usize];
            if let Err(e) = reader.read_exact(&mut p) {
                conn.limiter.release(permit);
                return (
                    EndReason::Failed(format!("reading write payload: {e}")),
                    false,
                );
            }
            p
        } else {
            Vec::new()
        };
        if let Err((err, msg)) = validate(conn, &req) {
            conn.send(conn.error_reply(req.cookie, err, &msg), permit);
            continue;
        }
        let job_guard = JobGuard::new(Arc::clone(conn));
        let job: Job = Box::new(move || {
            let jconn = &job_guard.0;
            if jconn.limiter.is_closed() {
                // The client is gone (its replies can no longer be written): skip the work, or
                // a client that vanishes with many requests in flight, again and again, would
                // keep the workers busy for nobody while real clients wait.
                jconn.limiter.release(permit);
                return;
            }
            let reply = catch_unwind(AssertUnwindSafe(|| execute(jconn, &req, payload)))
                .unwrap_or_else(|_| {
                    jconn.log.warn("export panicked while serving a request");
                    jconn.error_reply(req.cookie, NbdErrno::Io, "internal error")
                });
            jconn.send(reply, permit);
        });
        if jobs.send(job).is_err() {
            conn.limiter.release(permit);
            return (EndReason::Failed("worker pool stopped".into()), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_blockdev::Extent;
    use std::os::unix::net::UnixStream;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// An export whose first read waits until the test opens a gate; counts reads.
    #[derive(Default)]
    struct GatedExport {
        reads: AtomicU64,
        /// (first read entered, gate open)
        state: Mutex<(bool, bool)>,
        cond: Condvar,
    }

    impl GatedExport {
        fn wait_entered(&self) {
            let mut s = self.state.lock().unwrap();
            while !s.0 {
                s = self.cond.wait(s).unwrap();
            }
        }

        fn open_gate(&self) {
            self.state.lock().unwrap().1 = true;
            self.cond.notify_all();
        }
    }

    impl BlockDevice for GatedExport {
        fn size(&self) -> u64 {
            1 << 20
        }

        fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
            if self.reads.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut s = self.state.lock().unwrap();
                s.0 = true;
                self.cond.notify_all();
                while !s.1 {
                    s = self.cond.wait(s).unwrap();
                }
            }
            buf.fill(1);
            Ok(())
        }
    }

    #[test]
    fn a_dead_connection_skips_its_queued_requests_and_ends_after_its_jobs() {
        let export = Arc::new(GatedExport::default());
        let pool = crate::pool::Pool::new(1).unwrap();
        let (server_end, mut client) = UnixStream::pair().unwrap();
        let session = Session {
            export: Arc::clone(&export) as Arc<dyn BlockDevice>,
            neg: Negotiated {
                export: 0,
                structured: false,
                block_status: false,
                flags: 0,
            },
            limits: Limits {
                max_in_flight: 16,
                max_in_flight_bytes: 1 << 20,
                budget: Budget::new(usize::MAX),
            },
            jobs: pool.sender().unwrap(),
            bufs: Arc::new(BufPool::new(1 << 20)),
            stats: Arc::new(Stats::default()),
            log: Arc::new(ConnLog::new(
                "test".into(),
                crate::log::null_logger(),
                false,
            )),
        };
        let server =
            std::thread::spawn(move || serve(Stream::Unix(server_end), session).to_string());
        // Eight reads: the first one runs (held at the gate) while the other seven wait in the
        // pool's queue behind it.
        let mut bytes = Vec::new();
        for cookie in 0..8 {
            let r = Request {
                magic: REQUEST_MAGIC,
                flags: 0,
                cmd: CMD_READ,
                cookie,
                offset: 0,
                len: 4096,
            };
            bytes.extend_from_slice(&r.encode());
        }
        client.write_all(&bytes).unwrap();
        export.wait_entered();
        // Then a bad magic: the connection ends at once, not gracefully; the server shuts the
        // socket down without a reply (the first one is still held at the gate).
        client.write_all(&[0u8; REQUEST_LEN]).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !server.is_finished(),
            "the connection ended while one of its requests was still being served"
        );
        export.open_gate();
        let reason = server.join().unwrap();
        assert!(reason.contains("bad request magic"), "{reason}");
        // The queued reads were skipped, not run for a client that is gone.
        assert_eq!(export.reads.load(Ordering::SeqCst), 1);
        pool.join();
        assert_eq!(export.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn segments_merge_and_cover() {
        let ex = [
            Extent::data(100),
            Extent::zeroes(8192),
            Extent::zeroes(100),
            Extent::data(50),
            Extent::zeroes(10),
        ];
        let s = plan_segments(&ex, 0, 8452);
        assert_eq!(
            s,
            vec![
                Segment::Data {
                    offset: 0,
                    len: 100
                },
                Segment::Hole {
                    offset: 100,
                    len: 8292
                },
                Segment::Data {
                    offset: 8392,
                    len: 60
                },
            ]
        );
        // short extent list: the rest is data
        let s = plan_segments(&[Extent::zeroes(5000)], 0, 10000);
        assert_eq!(
            s,
            vec![
                Segment::Hole {
                    offset: 0,
                    len: 5000
                },
                Segment::Data {
                    offset: 5000,
                    len: 5000
                }
            ]
        );
        // empty extent list
        assert_eq!(
            plan_segments(&[], 7, 3),
            vec![Segment::Data { offset: 7, len: 3 }]
        );
        // extents running past the request are clipped
        assert_eq!(
            plan_segments(&[Extent::zeroes(1 << 40)], 4096, 8192),
            vec![Segment::Hole {
                offset: 4096,
                len: 8192
            }]
        );
    }

    #[test]
    fn header_reader_distinguishes_clean_eof() {
        let mut empty: &[u8] = &[];
        assert!(read_header(&mut empty).unwrap().is_none());
        let mut short: &[u8] = &[1, 2, 3];
        assert!(read_header(&mut short).is_err());
        let bytes = [7u8; REQUEST_LEN];
        let mut full: &[u8] = &bytes;
        assert_eq!(read_header(&mut full).unwrap(), Some(bytes));
    }
}
