//! Server addresses (`HOST[:PORT]`, `[IPV6]:PORT`, `unix:PATH`) and opening a socket to one.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::AddressError;

/// The NBD port registered with IANA.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    /// A host name or address and a TCP port.
    Tcp {
        /// Name or address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ServerAddress::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for ServerAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError::Empty);
            }
            return Ok(ServerAddress::Unix(PathBuf::from(path)));
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| AddressError::Port(text.to_string()))
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| AddressError::Bracket(text.to_string()))?;
            match after {
                "" => (host, DEFAULT_PORT),
                p => (
                    host,
                    port(
                        p.strip_prefix(':')
                            .ok_or_else(|| AddressError::Port(text.to_string()))?,
                    )?,
                ),
            }
        } else if text.matches(':').count() > 1 {
            (text, DEFAULT_PORT) // a bare IPv6 address
        } else if let Some((host, p)) = text.split_once(':') {
            (host, port(p)?)
        } else {
            (text, DEFAULT_PORT)
        };
        if host.is_empty() {
            return Err(AddressError::Empty);
        }
        Ok(ServerAddress::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

/// A connected stream of either kind.
#[derive(Debug)]
pub enum Stream {
    /// TCP, with Nagle off.
    Tcp(TcpStream),
    /// A Unix socket.
    Unix(UnixStream),
}

impl Stream {
    /// Bounds each read and write (`None`: blocking forever).
    pub fn set_timeouts(&self, limit: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s
                .set_read_timeout(limit)
                .and_then(|()| s.set_write_timeout(limit)),
            Stream::Unix(s) => s
                .set_read_timeout(limit)
                .and_then(|()| s.set_write_timeout(limit)),
        }
    }

    /// The socket, for the kernel.
    pub fn into_fd(self) -> OwnedFd {
        match self {
            Stream::Tcp(s) => s.into(),
            Stream::Unix(s) => s.into(),
        }
    }
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl std::io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

impl ServerAddress {
    /// Opens a connection, trying each resolved address for up to `limit`.
    pub fn open(&self, limit: Duration) -> std::io::Result<Stream> {
        match self {
            ServerAddress::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            ServerAddress::Tcp { host, port } => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, limit) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address"))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ServerAddress {
        ServerAddress::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn addresses_parse_like_the_boot_helper_reads_them() {
        assert_eq!("10.0.2.2".parse(), Ok(tcp("10.0.2.2", 10809)));
        assert_eq!("boot.example:10900".parse(), Ok(tcp("boot.example", 10900)));
        assert_eq!("[2001:db8::1]:99".parse(), Ok(tcp("2001:db8::1", 99)));
        assert_eq!("[2001:db8::1]".parse(), Ok(tcp("2001:db8::1", 10809)));
        assert_eq!("2001:db8::1".parse(), Ok(tcp("2001:db8::1", 10809)));
        assert_eq!(
            "unix:/run/nbd.sock".parse(),
            Ok(ServerAddress::Unix("/run/nbd.sock".into()))
        );
        assert_eq!(tcp("2001:db8::1", 99).to_string(), "[2001:db8::1]:99");
        for bad in [
            "",
            "host:",
            "host:0",
            "host:70000",
            "[::1",
            "[::1]x",
            ":10809",
            "unix:",
        ] {
            assert!(bad.parse::<ServerAddress>().is_err(), "{bad:?}");
        }
    }
}
