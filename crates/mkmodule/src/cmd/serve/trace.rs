//! `serve --trace FILE`: a machine-readable record of the read requests clients send, for
//! replaying a real boot's reads later (`cargo xtask storm`).
//!
//! The file starts with one `#` comment line naming the columns, then holds one line per
//! `NBD_CMD_READ` in the order the server read the requests off the sockets:
//! `MICROSECONDS OFFSET LENGTH`, the time counted from the first read request. The lines come
//! from the NBD server's request tracing, so the server traces requests while this is on; they
//! reach standard error only with `--verbose`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use mkmodule_nbd::{Level, Logger};

/// The first line of a trace file.
pub const TRACE_HEADER: &str = "# mkmodule serve trace: microseconds offset length";

/// The open trace file and the time of its first request.
struct TraceFile {
    out: BufWriter<File>,
    start: Option<Instant>,
}

/// Wraps `inner` in a logger that writes every read request to a new trace file at `path`;
/// other request tracing goes on to `inner` only when `verbose`.
pub fn tracing_logger(path: &Path, inner: Logger, verbose: bool) -> Result<Logger> {
    let mut out = BufWriter::new(
        File::create(path).with_context(|| format!("creating the trace {}", path.display()))?,
    );
    writeln!(out, "{TRACE_HEADER}")
        .and_then(|()| out.flush())
        .with_context(|| format!("writing the trace {}", path.display()))?;
    let file = Arc::new(Mutex::new(TraceFile { out, start: None }));
    Ok(Arc::new(move |level, msg: &str| {
        if level == Level::Trace {
            if let Some((offset, length)) = read_request(msg) {
                let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let micros = now.duration_since(*f.start.get_or_insert(now)).as_micros();
                // Each line is flushed: the server is usually stopped by a signal, and a trace
                // that lost its tail would replay a shorter boot. A failed write loses the line.
                let _ = writeln!(f.out, "{micros} {offset} {length}").and_then(|()| f.out.flush());
            }
            if !verbose {
                return;
            }
        }
        inner(level, msg);
    }))
}

/// Offset and length of a traced read request: the server's request trace line reads
/// `PEER: request READ flags F cookie C offset O length L`.
fn read_request(msg: &str) -> Option<(u64, u32)> {
    let (_, rest) = msg.split_once(": request READ ")?;
    let mut words = rest.split_whitespace();
    let mut offset = None;
    let mut length = None;
    while let Some(word) = words.next() {
        match word {
            "offset" => offset = words.next()?.parse().ok(),
            "length" => length = words.next()?.parse().ok(),
            _ => {}
        }
    }
    Some((offset?, length?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_requests_are_picked_out() {
        assert_eq!(
            read_request(
                "127.0.0.1:5000: request READ flags 0x0 cookie 0x7 offset 4096 length 131072"
            ),
            Some((4096, 131072))
        );
        assert_eq!(
            read_request("[::1]:9: request WRITE flags 0x0 cookie 0x1 offset 0 length 512"),
            None
        );
        assert_eq!(read_request("unix: client flags 0x3"), None);
        assert_eq!(read_request("p: request READ offset x length 1"), None);
    }

    #[test]
    fn the_file_holds_one_line_per_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.trace");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let inner: Logger = Arc::new(move |_, m: &str| seen2.lock().unwrap().push(m.to_string()));
        let log = tracing_logger(&path, inner, false).unwrap();
        log(
            Level::Trace,
            "p: request READ flags 0x0 cookie 0x1 offset 0 length 4096",
        );
        log(Level::Trace, "p: client flags 0x3");
        log(Level::Info, "p: closed");
        log(
            Level::Trace,
            "p: request READ flags 0x0 cookie 0x2 offset 65536 length 512",
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], TRACE_HEADER);
        assert!(lines[1].starts_with("0 0 4096"), "{text}");
        assert!(lines[2].ends_with(" 65536 512"), "{text}");
        // Without --verbose only the non-trace line reaches the inner logger.
        assert_eq!(*seen.lock().unwrap(), ["p: closed"]);
    }
}
