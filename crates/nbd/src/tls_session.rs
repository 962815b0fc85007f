//! The server side of `NBD_OPT_STARTTLS`: the TLS handshake, and a pump thread that carries the
//! encrypted connection on for the rest of the session.
//!
//! The handshake and transmission code work on a plain [`Stream`] that they clone into reader
//! and writer threads, which a TLS session cannot be. So once the TLS handshake is done, the
//! socket goes to a pump thread that owns the [`rustls::ServerConnection`] and relays plaintext
//! to one end of a [`UnixStream::pair`]; the connection carries on over the other end as an
//! ordinary `Stream::Unix`. The pump holds at most one buffer of plaintext in each direction
//! (plus rustls's own bounded buffers), so a client that stops reading stops the server's
//! writes, exactly as on a plain socket.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustls::ServerConnection;

use crate::listener::Stream;
use crate::log::{Level, Logger};
use crate::tls::TlsCredentials;

/// Plaintext relayed per read, in each direction (16 KiB: one TLS record).
const PUMP_CHUNK: usize = 16 << 10;

/// The pump thread of one TLS connection; join it once the plaintext end was dropped.
#[derive(Debug)]
pub(crate) struct Pump {
    thread: JoinHandle<()>,
}

impl Pump {
    /// Waits for the pump to end (it ends once either side closed).
    pub(crate) fn join(self) {
        let _ = self.thread.join();
    }
}

fn handshake_error(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
        }
        io::ErrorKind::UnexpectedEof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client closed the connection during the TLS handshake",
        ),
        _ => io::Error::new(e.kind(), format!("TLS handshake failed: {e}")),
    }
}

/// Runs the TLS handshake on `stream` (right after the `NBD_REP_ACK` to `NBD_OPT_STARTTLS`),
/// bounded by `deadline`, then hands the socket to a pump thread and replaces `*stream` by the
/// plaintext end. On error `*stream` is unchanged and the connection must be closed.
///
/// When the server side closes, the pump waits up to `linger` for the client to take the last
/// records.
pub(crate) fn start(
    stream: &mut Stream,
    creds: &TlsCredentials,
    deadline: Instant,
    linger: Duration,
    peer: &str,
    logger: Logger,
) -> io::Result<Pump> {
    let mut conn = ServerConnection::new(creds.server_config())
        .map_err(|e| io::Error::other(format!("TLS setup failed: {e}")))?;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(handshake_error(io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left))?;
        stream.set_write_timeout(Some(left))?;
        match conn.complete_io(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(handshake_error(e)),
        }
    }
    let (inner, outer) = UnixStream::pair()?;
    let socket = std::mem::replace(stream, Stream::Unix(inner));
    let peer = peer.to_string();
    let spawned = std::thread::Builder::new()
        .name("nbd-tls".into())
        .spawn(move || {
            if let Err(e) = pump(conn, socket, outer, linger) {
                if e.kind() == io::ErrorKind::InvalidData {
                    logger(Level::Warn, &format!("{peer}: TLS error: {e}"));
                }
            }
        });
    match spawned {
        Ok(thread) => Ok(Pump { thread }),
        Err(e) => Err(e),
    }
}

fn set_nonblocking(s: &Stream) -> io::Result<()> {
    match s {
        Stream::Tcp(s) => s.set_nonblocking(true),
        Stream::Unix(s) => s.set_nonblocking(true),
    }
}

fn fd_of(s: &Stream) -> std::os::fd::BorrowedFd<'_> {
    match s {
        Stream::Tcp(s) => s.as_fd(),
        Stream::Unix(s) => s.as_fd(),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Plaintext waiting to be written to one side.
struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Writes what it can without blocking.
    fn flush_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while !self.is_empty() {
            match w.write(&self.buf[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(())
    }
}

/// Relays between the TLS socket and the plaintext end until both directions are finished or
/// either side fails. Errors of kind `InvalidData` are TLS protocol errors (worth a log line);
/// the rest are ordinary disconnects.
fn pump(
    mut conn: ServerConnection,
    mut socket: Stream,
    mut plain: UnixStream,
    linger: Duration,
) -> io::Result<()> {
    set_nonblocking(&socket)?;
    plain.set_nonblocking(true)?;
    // Client -> server plaintext decrypted but not yet written to `plain`.
    let mut inbound = Pending {
        buf: Vec::with_capacity(PUMP_CHUNK),
        start: 0,
    };
    let mut chunk = vec![0u8; PUMP_CHUNK];
    // The client's side of the TLS session ended (close_notify or EOF).
    let mut client_done = false;
    // `plain` was shut for writing after `client_done` and a drained `inbound`.
    let mut plain_write_shut = false;
    // The server side closed its end: close_notify sent, flushing what is left.
    let mut server_done = false;
    let mut finish_by: Option<Instant> = None;
    loop {
        // 1. Decrypted plaintext from rustls to the server side, for as long as the server
        //    side takes it (once that side closed, nobody wants it).
        loop {
            if server_done {
                inbound.buf.clear();
                inbound.start = 0;
                break;
            }
            if !inbound.is_empty() {
                inbound.flush_to(&mut plain)?;
                if !inbound.is_empty() {
                    break;
                }
            }
            if client_done {
                break;
            }
            match conn.reader().read(&mut chunk) {
                Ok(0) => client_done = true,
                Ok(n) => inbound.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // TCP EOF without close_notify: the client is gone all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => client_done = true,
                Err(e) => return Err(e),
            }
        }
        if client_done && inbound.is_empty() && !plain_write_shut {
            let _ = plain.shutdown(std::net::Shutdown::Write);
            plain_write_shut = true;
        }
        // 2. Server replies into rustls, only once the previous ones left (bounded buffers).
        if !server_done && !conn.wants_write() {
            match plain.read(&mut chunk) {
                Ok(0) => {
                    server_done = true;
                    conn.send_close_notify();
                    finish_by = Some(Instant::now() + linger);
                }
                Ok(n) => conn.writer().write_all(&chunk[..n])?,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        // 3. TLS records to the client.
        while conn.wants_write() {
            match conn.write_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if server_done && !conn.wants_write() {
            return Ok(());
        }
        // 4. TLS records from the client, only once the last plaintext was delivered.
        let want_tls_in = !client_done && inbound.is_empty() && !server_done;
        if want_tls_in && conn.wants_read() {
            match conn.read_tls(&mut socket) {
                Ok(0) => {
                    conn.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    // Step 1 delivers the rest (rustls reports the EOF after the plaintext).
                    continue;
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // Send the alert if possible, then give up.
                        let _ = conn.write_tls(&mut socket);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    continue;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        // 5. Nothing more to do without waiting.
        let mut socket_events = PollFlags::empty();
        if want_tls_in && conn.wants_read() {
            socket_events |= PollFlags::IN;
        }
        if conn.wants_write() {
            socket_events |= PollFlags::OUT;
        }
        let mut plain_events = PollFlags::empty();
        if !server_done && !conn.wants_write() {
            plain_events |= PollFlags::IN;
        }
        if !inbound.is_empty() {
            plain_events |= PollFlags::OUT;
        }
        if socket_events.is_empty() && plain_events.is_empty() {
            // Nothing can progress: both directions are finished.
            return Ok(());
        }
        let timeout = match finish_by {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not take the last TLS records",
                    ));
                }
                Some(Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                }))
            }
            None => None,
        };
        let mut fds = [
            PollFd::from_borrowed_fd(fd_of(&socket), socket_events),
            PollFd::new(&plain, plain_events),
        ];
        // A hang-up of the server side must not wake the loop again and again while it has
        // nothing to do there.
        let watched = if server_done || plain_events.is_empty() {
            1
        } else {
            2
        };
        match poll(&mut fds[..watched], timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        // A reset client (or a forced close by the server) reports an error or a hang-up even
        // when nothing was asked of the socket. When reading, the read says what it means;
        // otherwise the session is over (the client can take nothing more).
        if !socket_events.contains(PollFlags::IN)
            && fds[0]
                .revents()
                .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
        {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        // A hang-up of the server side shows up as a read of 0 or a failing write above.
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::log::null_logger;
    use crate::tls::testing;

    /// The pump relays a lot of data both ways, in order, through bounded buffers.
    #[test]
    fn pump_relays_both_directions_and_closes_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        testing::write_credentials(dir.path());
        let creds = TlsCredentials::load(dir.path(), true).unwrap();
        let (server_sock, client_sock) = UnixStream::pair().unwrap();
        let down: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        let client = {
            let (down, up, dir) = (down.clone(), up.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let mut tls = rustls::StreamOwned::new(testing::client(&dir, true), client_sock);
                tls.write_all(&up).unwrap();
                let mut got = vec![0u8; down.len()];
                tls.read_exact(&mut got).unwrap();
                assert!(got == down, "data from the server arrived changed");
                // The server closes after its data: a clean close_notify.
                let mut rest = Vec::new();
                tls.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty());
            })
        };
        let mut stream = Stream::Unix(server_sock);
        let deadline = Instant::now() + Duration::from_secs(30);
        let pump = start(
            &mut stream,
            &creds,
            deadline,
            Duration::from_secs(30),
            "test",
            null_logger(),
        )
        .unwrap();
        let mut got = vec![0u8; up.len()];
        stream.read_exact(&mut got).unwrap();
        assert!(got == up, "data from the client arrived changed");
        stream.write_all(&down).unwrap();
        drop(stream);
        client.join().unwrap();
        pump.join();
    }

    #[test]
    fn a_client_without_a_certificate_fails_the_handshake_when_peers_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        testing::write_credentials(dir.path());
        let creds = TlsCredentials::load(dir.path(), true).unwrap();
        let (server_sock, client_sock) = UnixStream::pair().unwrap();
        let d = dir.path().to_path_buf();
        let client = std::thread::spawn(move || {
            let mut tls = rustls::StreamOwned::new(testing::client(&d, false), client_sock);
            let mut b = [0u8; 1];
            tls.read(&mut b).is_err()
        });
        let mut stream = Stream::Unix(server_sock);
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = start(
            &mut stream,
            &creds,
            deadline,
            deadline - Instant::now(),
            "t",
            null_logger(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("TLS handshake failed"), "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
        drop(stream);
        assert!(client.join().unwrap(), "the client saw the handshake fail");
    }
}
