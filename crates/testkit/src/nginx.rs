//! nginx (Debian's package) as a web origin for tests and benchmarks: started on 127.0.0.1 in
//! the foreground with a configuration of its own, serving one directory, with an access log
//! that records each response's body bytes; stopped by its process id.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, kill_child, wait_until};
use crate::tools::debian_package;

/// One line of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The request's path.
    pub uri: String,
    /// The HTTP status sent.
    pub status: u16,
    /// Bytes of the response body sent (nginx's `$body_bytes_sent`).
    pub body_bytes: u64,
    /// The request's `Range` header when it asked for one range `bytes=FIRST-LAST`: the first
    /// and last byte asked for.
    pub range: Option<(u64, u64)>,
}

/// The access log's format: `$request_uri $status $body_bytes_sent $http_range` (nginx writes
/// `-` for a request without a Range header).
const LOG_FORMAT: &str = "'$request_uri $status $body_bytes_sent $http_range'";

/// `bytes=FIRST-LAST` as `(FIRST, LAST)`; anything else (no header, suffix or open ranges,
/// several ranges) is `None`.
fn parse_range(header: &str) -> Option<(u64, u64)> {
    let (first, last) = header.strip_prefix("bytes=")?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Parses the access log written with this module's format (the range field may be absent);
/// lines that do not fit are errors naming the line.
pub fn parse_access_log(text: &str) -> Result<Vec<LogEntry>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let bad = || format!("access log line {}: {line:?}", n + 1);
            let mut words = line.split(' ');
            let uri = words.next().ok_or_else(bad)?.to_string();
            let status = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let body_bytes = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let range = words.next().and_then(parse_range);
            if words.next().is_some() {
                return Err(bad());
            }
            Ok(LogEntry {
                uri,
                status,
                body_bytes,
                range,
            })
        })
        .collect()
}

/// A running nginx; dropping it stops it.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Nginx {
    /// Starts nginx on a free port of 127.0.0.1 serving the files of `root`, its configuration,
    /// logs and temporary files in `work`. Waits (bounded, 10 s) until it accepts connections.
    pub fn start(root: &Path, work: &Path) -> Result<Nginx, String> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                format!(
                    "nginx not found: install the Debian package {}",
                    debian_package("nginx")
                )
            })?;
        let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(work).map_err(|e| err("creating nginx's directory", e))?;
        let work = work
            .canonicalize()
            .map_err(|e| err("nginx's directory", e))?;
        let root = root.canonicalize().map_err(|e| err("nginx's root", e))?;
        let port = free_port();
        let log = work.join("access.log");
        let _ = std::fs::remove_file(&log);
        // Workers run as root only when the master does (the tests and benchmarks run as root
        // and read files under target/); otherwise nginx ignores the directive with a warning.
        let user = if run_as_root() { "user root;\n" } else { "" };
        let conf = format!(
            "daemon off;\nworker_processes 2;\n{user}pid {work}/nginx.pid;\n\
             error_log {work}/error.log;\nevents {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  log_format storm {LOG_FORMAT};\n\
             client_body_temp_path {work}/tmp;\n  proxy_temp_path {work}/tmp;\n\
             fastcgi_temp_path {work}/tmp;\n  uwsgi_temp_path {work}/tmp;\n\
             scgi_temp_path {work}/tmp;\n  keepalive_requests 100000;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
             access_log {log} storm;\n  }}\n}}\n",
            work = work.display(),
            root = root.display(),
            log = log.display(),
        );
        let conf_path = work.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| err("writing nginx.conf", e))?;
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("starting nginx", e))?;
        let mut server = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(server.addr).is_ok()
        });
        if !up || server.child.try_wait().ok().flatten().is_some() {
            let errors = std::fs::read_to_string(work.join("error.log")).unwrap_or_default();
            kill_child(&mut server.child);
            return Err(format!("nginx did not start on port {port}: {errors}"));
        }
        Ok(server)
    }

    /// The URL of `name` in the served directory.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// The access log so far (nginx writes a line as each request completes).
    pub fn log(&self) -> Result<Vec<LogEntry>, String> {
        let text = std::fs::read_to_string(&self.log)
            .map_err(|e| format!("reading {}: {e}", self.log.display()))?;
        parse_access_log(&text)
    }

    /// Response body bytes over the whole access log so far.
    pub fn body_bytes(&self) -> Result<u64, String> {
        Ok(self.log()?.iter().map(|e| e.body_bytes).sum())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT is nginx's graceful stop; the kill that follows (after a bounded wait) is for
        // a master that did not listen.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        let child = &mut self.child;
        wait_until(Duration::from_secs(5), || {
            child.try_wait().ok().flatten().is_some()
        });
        kill_child(&mut self.child);
    }
}

fn run_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fetches `len` bytes at `offset` of `url`'s path from the server at `addr` with one HTTP/1.0
/// Range request; returns the status and the body (for checking an origin in tests).
pub fn get_range(
    addr: SocketAddr,
    path: &str,
    offset: u64,
    len: u64,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nRange: bytes={offset}-{}\r\n\r\n",
        offset + len - 1
    )?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, response[split + 4..].to_vec()))
}
