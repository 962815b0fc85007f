//! Listening sockets (TCP, Unix, inherited) and the connected stream type.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// A listening socket the server accepts connections on.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix-domain listener; `path` is removed at shutdown when set.
    Unix {
        /// The listening socket.
        listener: UnixListener,
        /// Socket file to remove at shutdown (set by [`Listener::bind_unix`]).
        cleanup: Option<PathBuf>,
    },
}

impl Listener {
    /// Bind a TCP listener (use port 0 for an ephemeral port).
    pub fn bind_tcp(addr: SocketAddr) -> Result<Self> {
        TcpListener::bind(addr)
            .map(Listener::Tcp)
            .map_err(|source| Error::Listen {
                what: addr.to_string(),
                source,
            })
    }

    /// Bind a Unix-domain socket at `path` (fails if the path exists).
    pub fn bind_unix(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        UnixListener::bind(path)
            .map(|listener| Listener::Unix {
                listener,
                cleanup: Some(path.to_path_buf()),
            })
            .map_err(|source| Error::Listen {
                what: path.display().to_string(),
                source,
            })
    }

    /// Use an inherited listening socket (e.g. from systemd socket activation).
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let unix = UnixListener::from(fd);
        if unix.local_addr().is_ok() {
            return Ok(Listener::Unix {
                listener: unix,
                cleanup: None,
            });
        }
        let tcp = TcpListener::from(OwnedFd::from(unix));
        match tcp.local_addr() {
            Ok(_) => Ok(Listener::Tcp(tcp)),
            Err(e) => Err(Error::NotASocket(e)),
        }
    }

    /// The bound TCP address, if this is a TCP listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// A printable description of the listening address.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp:?".into(), |a| a.to_string()),
            Listener::Unix { listener, .. } => match listener.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".into(),
                },
                Err(_) => "unix:?".into(),
            },
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix { listener, .. } => listener.set_nonblocking(on),
        }
    }

    /// Accept one connection; returns the stream and a peer description.
    pub(crate) fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                s.set_nonblocking(false)?;
                // Latency matters more than packet count for request/reply traffic.
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept()?;
                s.set_nonblocking(false)?;
                Ok((Stream::Unix(s), self.describe()))
            }
        }
    }

    pub(crate) fn cleanup(&self) {
        if let Listener::Unix {
            cleanup: Some(p), ..
        } = self
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix {
            listener: l,
            cleanup: None,
        }
    }
}

/// A connected client socket.
pub(crate) enum Stream {
    /// TCP connection.
    Tcp(TcpStream),
    /// Unix-domain connection.
    Unix(UnixStream),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Tcp(_) => f.write_str("Stream::Tcp"),
            Stream::Unix(_) => f.write_str("Stream::Unix"),
        }
    }
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Stops the reading side only: a reader gets the end of the stream once it has read what
    /// arrived, while replies can still be written (a drain).
    pub(crate) fn stop_reading(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Read),
            Stream::Unix(s) => s.shutdown(Shutdown::Read),
        };
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_fd_detects_the_socket_family() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let l = Listener::from_fd(OwnedFd::from(tcp)).unwrap();
        assert_eq!(l.local_addr(), Some(addr));
        assert!(matches!(l, Listener::Tcp(_)));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let unix = UnixListener::bind(&path).unwrap();
        let l = Listener::from_fd(OwnedFd::from(unix)).unwrap();
        assert!(matches!(l, Listener::Unix { cleanup: None, .. }));
        assert_eq!(l.describe(), format!("unix:{}", path.display()));

        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            Listener::from_fd(OwnedFd::from(file)),
            Err(Error::NotASocket(_))
        ));
    }

    #[test]
    fn bind_unix_refuses_an_existing_path_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let l = Listener::bind_unix(&path).unwrap();
        assert!(Listener::bind_unix(&path).is_err());
        l.cleanup();
        assert!(!path.exists());
    }
}
