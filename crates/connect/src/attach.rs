//! Attaching an export to a kernel NBD device and keeping it attached: dial, negotiate and
//! check the image's identity for each connection, configure the device, then replace every
//! connection the kernel declares dead (the same server with backoff, then the next one).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::address::ServerAddress;
use crate::error::{HandshakeError, NetlinkError};
use crate::handshake::{negotiate, ExportInfo};
use crate::identity::{probe, Identity};
use crate::netlink::{DeviceSetup, NbdNetlink};

/// The longest pause between two attempts: a restarted server is found within this much of
/// its start.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What to attach and how.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// The servers, in the order to try them; all must serve the same image.
    pub servers: Vec<ServerAddress>,
    /// The export name.
    pub export: String,
    /// `/dev/nbdN` to use, or `None` for the first free one.
    pub index: Option<u32>,
    /// Connections per device (more than one only when the server allows multi-conn).
    pub connections: usize,
    /// The device's block size; `None`: the server's preferred size, clamped to 512..=4096.
    pub block_size: Option<u64>,
    /// Per request: past it the connection counts as dead and the request is sent again.
    pub request_timeout: Duration,
    /// How long requests wait for a reconnection when every connection is dead.
    pub dead_connection_timeout: Duration,
    /// Bound on connecting, negotiating and probing one connection.
    pub handshake_timeout: Duration,
    /// Attempts on one server before moving to the next.
    pub attempts_per_server: u32,
}

/// Why attaching or reconnecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// No server could be used; each one's failure is listed.
    #[error("no server could be used: {}", failures.join("; "))]
    NoServer {
        /// `SERVER: reason` for each server tried.
        failures: Vec<String>,
    },
    /// The kernel refused.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl AttachError {
    /// What kind of failure this is.
    pub fn kind(&self) -> mkmodule_blockdev::ErrorKind {
        match self {
            AttachError::NoServer { .. } => mkmodule_blockdev::ErrorKind::Io,
            AttachError::Netlink(e) => e.kind(),
        }
    }
}

/// One negotiated connection, ready for the kernel.
#[derive(Debug)]
pub struct Connection {
    /// The socket.
    pub socket: OwnedFd,
    /// What the server said about the export.
    pub info: ExportInfo,
    /// What the export holds.
    pub identity: Identity,
}

/// Why one server could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// No connection.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The handshake or the identity probe failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server serves another image than the one attached.
    #[error("serves a different image ({found}, expected {expected}): refused")]
    DifferentImage {
        /// What this server serves.
        found: Identity,
        /// What the device holds.
        expected: Identity,
    },
}

/// Connects to `server`, negotiates `export` and probes its identity.
pub fn dial(
    server: &ServerAddress,
    export: &str,
    limit: Duration,
) -> Result<Connection, DialError> {
    let mut stream = server.open(limit).map_err(DialError::Connect)?;
    stream
        .set_timeouts(Some(limit))
        .map_err(DialError::Connect)?;
    let info = negotiate(&mut stream, export)?;
    let identity = probe(&mut stream, info.size)?;
    // The kernel sets its own timeouts; ours must not stay on the socket.
    stream.set_timeouts(None).map_err(DialError::Connect)?;
    Ok(Connection {
        socket: stream.into_fd(),
        info,
        identity,
    })
}

/// A device attached to an export, with the sockets the kernel uses.
pub struct Attachment {
    netlink: NbdNetlink,
    options: AttachOptions,
    /// N of /dev/nbdN.
    pub index: u32,
    /// The image the device shows.
    pub identity: Identity,
    /// What the first server said about the export.
    pub info: ExportInfo,
    /// Our copies of the sockets the kernel holds, to see which ones died.
    sockets: Vec<OwnedFd>,
    /// The server now in use (index into `options.servers`).
    current: usize,
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("index", &self.index)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn block_size(options: &AttachOptions, info: &ExportInfo) -> u64 {
    options.block_size.unwrap_or_else(|| {
        let preferred = info
            .block_sizes
            .map_or(4096, |(_, preferred, _)| u64::from(preferred));
        preferred.clamp(512, 4096).next_power_of_two().min(4096)
    })
}

impl Attachment {
    /// Tries the servers in order until one gives `connections` good connections, then
    /// configures the device over netlink.
    pub fn attach(
        netlink: NbdNetlink,
        options: AttachOptions,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Attachment, AttachError> {
        let mut failures = Vec::new();
        for (at, server) in options.servers.iter().enumerate() {
            let first = match dial(server, &options.export, options.handshake_timeout) {
                Ok(c) => c,
                Err(e) => {
                    let failure = format!("{server}: {}", mkmodule_blockdev::chain_text(&e));
                    log(&failure);
                    failures.push(failure);
                    continue;
                }
            };
            let wanted = if first.info.can_multi_conn() {
                options.connections.max(1)
            } else {
                1
            };
            let mut connections = vec![first];
            while connections.len() < wanted {
                match dial(server, &options.export, options.handshake_timeout) {
                    Ok(c) if c.identity == connections[0].identity => connections.push(c),
                    Ok(_) => break,
                    Err(e) => {
                        log(&format!(
                            "{server}: extra connection: {}",
                            mkmodule_blockdev::chain_text(&e)
                        ));
                        break;
                    }
                }
            }
            let info = connections[0].info.clone();
            let identity = connections[0].identity.clone();
            let setup = DeviceSetup {
                index: options.index,
                size: info.size,
                block_size: block_size(&options, &info),
                server_flags: info.flags,
                request_timeout: options.request_timeout,
                dead_connection_timeout: options.dead_connection_timeout,
            };
            let fds: Vec<_> = connections.iter().map(|c| c.socket.as_raw_fd()).collect();
            let index = netlink.connect(&setup, &fds)?;
            let sockets = connections.into_iter().map(|c| c.socket).collect();
            return Ok(Attachment {
                netlink,
                options,
                index,
                identity,
                info,
                sockets,
                current: at,
                log,
            });
        }
        Err(AttachError::NoServer { failures })
    }

    /// The server in use now.
    pub fn server(&self) -> &ServerAddress {
        &self.options.servers[self.current]
    }

    /// How many connections the device has.
    pub fn connections(&self) -> usize {
        self.sockets.len()
    }

    /// Keeps the device attached until `stop` is set: each connection the kernel declares
    /// dead is replaced by a new one to a server with the same image; `on_reconnect` hears of
    /// each replacement with the server now in use.
    pub fn supervise(
        mut self,
        stop: &AtomicBool,
        on_reconnect: impl Fn(&ServerAddress),
    ) -> Result<(), AttachError> {
        let events = self.netlink.link_dead_events()?;
        // Our copies of sockets that hung up, and since when (the kernel marks a connection
        // dead when it reads the end of the stream; the event says it did).
        let mut hung_since: Vec<Option<Instant>> = vec![None; self.sockets.len()];
        let mut dead_reported = 0usize;
        while !stop.load(Ordering::SeqCst) {
            match events.recv_timeout(Duration::from_millis(500)) {
                Ok(index) if index == self.index => dead_reported += 1,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(NetlinkError::Socket("the event reader stopped".into()).into())
                }
            }
            let hung = self.hung_up();
            for (slot, is_hung) in hung.iter().enumerate() {
                match (*is_hung, hung_since[slot]) {
                    (true, None) => hung_since[slot] = Some(Instant::now()),
                    (false, _) => hung_since[slot] = None,
                    _ => {}
                }
            }
            // Replace a hung-up socket once the kernel said a link died, or when no word
            // came for a while (an event can be lost when the socket buffer overflows).
            #[allow(clippy::needless_range_loop)] // the slot indexes two vectors and is logged
            for slot in 0..self.sockets.len() {
                let Some(since) = hung_since[slot] else {
                    continue;
                };
                if dead_reported == 0 && since.elapsed() < Duration::from_secs(3) {
                    continue;
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let replacement = self.reconnect(stop);
                let Some(connection) = replacement else { break };
                match self
                    .netlink
                    .reconfigure(self.index, &[connection.socket.as_raw_fd()])
                {
                    Ok(()) => {
                        (self.log)(&format!(
                            "/dev/nbd{}: connection {} replaced by one to {}",
                            self.index,
                            slot + 1,
                            self.server()
                        ));
                        self.sockets[slot] = connection.socket;
                        hung_since[slot] = None;
                        on_reconnect(self.server());
                        dead_reported = dead_reported.saturating_sub(1);
                    }
                    Err(e) => (self.log)(&format!(
                        "/dev/nbd{}: the kernel refused the new connection: {e}",
                        self.index
                    )),
                }
            }
        }
        Ok(())
    }

    /// Which of our socket copies have hung up or failed.
    fn hung_up(&self) -> Vec<bool> {
        let mut fds: Vec<PollFd<'_>> = self
            .sockets
            .iter()
            .map(|s| PollFd::new(s, PollFlags::RDHUP))
            .collect();
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&zero)).is_err() {
            return vec![false; self.sockets.len()];
        }
        fds.iter()
            .map(|p| {
                p.revents().intersects(
                    PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL,
                )
            })
            .collect()
    }

    /// A new connection with the same image: the current server with backoff, then the next
    /// ones in turn, for as long as it takes (until `stop`).
    fn reconnect(&mut self, stop: &AtomicBool) -> Option<Connection> {
        let servers = self.options.servers.len();
        let mut delay = Duration::from_millis(100);
        loop {
            for attempt in 0..self.options.attempts_per_server.max(1) {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
                let server = self.options.servers[self.current].clone();
                match dial(
                    &server,
                    &self.options.export,
                    self.options.handshake_timeout,
                ) {
                    Ok(c) if c.identity == self.identity => return Some(c),
                    Ok(c) => {
                        (self.log)(&format!(
                            "{server}: {}",
                            DialError::DifferentImage {
                                found: c.identity,
                                expected: self.identity.clone()
                            }
                        ));
                        break;
                    }
                    Err(e) => (self.log)(&format!(
                        "{server}: attempt {}: {}",
                        attempt + 1,
                        mkmodule_blockdev::chain_text(&e)
                    )),
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            self.current = (self.current + 1) % servers;
            if servers > 1 {
                (self.log)(&format!("trying {}", self.options.servers[self.current]));
            }
        }
    }
}
