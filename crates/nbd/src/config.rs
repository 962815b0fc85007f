//! Server configuration: exports, limits, timeouts, TLS, client admission and the logging hook.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, Result};
use crate::log::{stderr_logger, Logger};
use crate::proto::MAX_STRING;
use crate::tls::{TlsCredentials, TlsMode};
use mkmodule_blockdev::BlockDevice;

/// One named export of the server.
#[derive(Clone)]
pub struct ExportEntry {
    /// BlockDevice name as clients request it (≤ 4096 bytes of UTF-8).
    pub name: String,
    /// Human-readable description shown by `nbdinfo` (may be empty).
    pub description: String,
    /// The data behind the export.
    pub export: Arc<dyn BlockDevice>,
}

impl fmt::Debug for ExportEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportEntry")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.export.size())
            .finish()
    }
}

/// Which export a client gets when it asks for the empty name `""`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DefaultExport {
    /// The first export in [`ServerConfig::exports`] (or one literally named `""`).
    #[default]
    First,
    /// The export with this name.
    Named(String),
    /// No default: only an export literally named `""` answers to `""`.
    None,
}

/// Everything the server needs to know; build with [`ServerConfig::new`] and the `with_*` methods.
#[derive(Clone)]
pub struct ServerConfig {
    /// Exports offered, in `NBD_OPT_LIST` order.
    pub exports: Vec<ExportEntry>,
    /// What the empty export name maps to.
    pub default_export: DefaultExport,
    /// Most simultaneous connections; further ones are closed at once.
    pub max_connections: usize,
    /// Most requests in flight per connection; the server stops reading beyond it.
    pub max_in_flight: usize,
    /// Most payload bytes in flight per connection (one request may always proceed).
    pub max_in_flight_bytes: usize,
    /// Most reply bytes in flight over all connections together; a connection with nothing
    /// in flight may always send one request of up to 1 MiB, so clients that never read their
    /// replies slow the others down but cannot stop them.
    pub max_total_in_flight_bytes: usize,
    /// Worker threads shared by all connections.
    pub workers: usize,
    /// Time allowed from accept to the end of option haggling.
    pub handshake_timeout: Duration,
    /// Whether `NBD_OPT_LIST` answers with the export list (else `ERR_POLICY`).
    pub allow_list: bool,
    /// TLS mode; `On` and `Require` need [`ServerConfig::tls`].
    pub tls_mode: TlsMode,
    /// TLS credentials used by `NBD_OPT_STARTTLS`.
    pub tls: Option<TlsCredentials>,
    /// TCP clients allowed to connect; empty: every address. Unix-socket clients are always
    /// allowed.
    pub allowed_clients: Vec<IpNet>,
    /// Most simultaneous connections from one client IP address (TCP only); no limit
    /// (`usize::MAX`) by default.
    pub max_connections_per_client: usize,
    /// Emit `Level::Trace` lines for every option and request.
    pub trace: bool,
    /// Where log lines go.
    pub logger: Logger,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("exports", &self.exports)
            .field("default_export", &self.default_export)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("max_total_in_flight_bytes", &self.max_total_in_flight_bytes)
            .field("workers", &self.workers)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("allow_list", &self.allow_list)
            .field("tls_mode", &self.tls_mode)
            .field("tls", &self.tls)
            .field("allowed_clients", &self.allowed_clients)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("trace", &self.trace)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            exports: Vec::new(),
            default_export: DefaultExport::First,
            max_connections: 128,
            max_in_flight: 128,
            max_in_flight_bytes: 128 << 20,
            max_total_in_flight_bytes: 512 << 20,
            workers: default_workers(),
            handshake_timeout: Duration::from_secs(30),
            allow_list: true,
            tls_mode: TlsMode::Off,
            tls: None,
            allowed_clients: Vec::new(),
            max_connections_per_client: usize::MAX,
            trace: false,
            logger: stderr_logger(),
        }
    }
}

/// A sensible [`ServerConfig::max_connections_per_client`] for a server on a network (the
/// default of `mkmodule serve`): room for multi-conn clients (nbdcopy and nbdfuse open 4,
/// `nbd-client -C` a few) and some reconnects, while one address cannot take every slot of
/// [`ServerConfig::max_connections`] (128 by default). The library's own default is no limit.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 16;

fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 4).clamp(8, 64)
}

impl ServerConfig {
    /// A configuration with default limits and no exports.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an export under `name` with a description.
    pub fn with_export(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        export: Arc<dyn BlockDevice>,
    ) -> Self {
        self.exports.push(ExportEntry {
            name: name.into(),
            description: description.into(),
            export,
        });
        self
    }

    /// Choose what the empty export name maps to.
    pub fn with_default_export(mut self, default: DefaultExport) -> Self {
        self.default_export = default;
        self
    }

    /// Set the connection cap.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Set the per-connection cap on requests in flight.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Set the per-connection cap on payload bytes in flight.
    pub fn with_max_in_flight_bytes(mut self, n: usize) -> Self {
        self.max_in_flight_bytes = n;
        self
    }

    /// Set the server-wide cap on reply bytes in flight.
    pub fn with_max_total_in_flight_bytes(mut self, n: usize) -> Self {
        self.max_total_in_flight_bytes = n;
        self
    }

    /// Set the number of shared worker threads.
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Set the handshake timeout.
    pub fn with_handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// Set the TLS mode and credentials (`TlsMode::Off` ignores the credentials).
    pub fn with_tls(mut self, mode: TlsMode, credentials: Option<TlsCredentials>) -> Self {
        self.tls_mode = mode;
        self.tls = credentials;
        self
    }

    /// Allow TCP clients from these networks only (empty: from everywhere).
    pub fn with_allowed_clients(mut self, nets: Vec<IpNet>) -> Self {
        self.allowed_clients = nets;
        self
    }

    /// Set the cap on simultaneous connections from one client address.
    pub fn with_max_connections_per_client(mut self, n: usize) -> Self {
        self.max_connections_per_client = n;
        self
    }

    /// Whether a TCP client at `ip` may connect (by the allow-list).
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.allowed_clients.is_empty() || self.allowed_clients.iter().any(|n| n.contains(ip))
    }

    /// The credentials, when TLS is on or required.
    pub(crate) fn tls_credentials(&self) -> Option<&TlsCredentials> {
        match self.tls_mode {
            TlsMode::Off => None,
            TlsMode::On | TlsMode::Require => self.tls.as_ref(),
        }
    }

    /// Enable or disable protocol tracing.
    pub fn with_trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Set the logging hook.
    pub fn with_logger(mut self, logger: Logger) -> Self {
        self.logger = logger;
        self
    }

    /// Check names, descriptions and limits; called by the server before it starts.
    pub fn validate(&self) -> Result<()> {
        if self.exports.is_empty() {
            return Err(ConfigError::NoExports.into());
        }
        for (i, e) in self.exports.iter().enumerate() {
            if e.name.len() > MAX_STRING || e.name.contains('\0') {
                return Err(ConfigError::ExportName {
                    name: e.name.clone(),
                    max: MAX_STRING,
                }
                .into());
            }
            if e.description.len() > MAX_STRING || e.description.contains('\0') {
                return Err(ConfigError::ExportDescription {
                    name: e.name.clone(),
                    max: MAX_STRING,
                }
                .into());
            }
            if self.exports[..i].iter().any(|o| o.name == e.name) {
                return Err(ConfigError::DuplicateExport {
                    name: e.name.clone(),
                }
                .into());
            }
        }
        if let DefaultExport::Named(n) = &self.default_export {
            if !self.exports.iter().any(|e| &e.name == n) {
                return Err(ConfigError::UnknownDefaultExport { name: n.clone() }.into());
            }
        }
        for (what, v) in [
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
            ("workers", self.workers),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit { setting: what }.into());
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroHandshakeTimeout.into());
        }
        if self.tls_mode != TlsMode::Off && self.tls.is_none() {
            return Err(ConfigError::TlsWithoutCertificates.into());
        }
        Ok(())
    }

    /// Index of the export a client asking for `name` gets, if any.
    pub fn resolve(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.exports.iter().position(|e| e.name == name) {
            return Some(i);
        }
        if !name.is_empty() {
            return None;
        }
        match &self.default_export {
            DefaultExport::First => Some(0).filter(|_| !self.exports.is_empty()),
            DefaultExport::Named(n) => self.exports.iter().position(|e| &e.name == n),
            DefaultExport::None => None,
        }
    }
}

/// An IP network, `ADDR/PREFIX` (IPv4 or IPv6); a bare `ADDR` is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address (host bits cleared).
    addr: IpAddr,
    /// Prefix length in bits.
    prefix: u8,
}

/// Why an `ADDR[/PREFIX]` text is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IP address or network (ADDR or ADDR/PREFIX): {reason}")]
pub struct IpNetError {
    text: String,
    reason: &'static str,
}

impl IpNetError {
    /// What kind of failure this is: always a bad setting.
    pub fn kind(&self) -> mkmodule_blockdev::ErrorKind {
        mkmodule_blockdev::ErrorKind::Config
    }
}

impl IpNet {
    /// The network of `addr` with `prefix` bits; host bits beyond the prefix are cleared.
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are taken as the IPv4 address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                _ => (addr, prefix),
            },
            IpAddr::V4(_) => (addr, prefix),
        };
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        Some(IpNet { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> std::result::Result<IpNet, IpNetError> {
        let err = |reason| IpNetError {
            text: text.to_string(),
            reason,
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| err("not an IPv4 or IPv6 address"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= bits).ok_or_else(|| {
                    err(if bits == 32 {
                        "an IPv4 prefix is 0 to 32"
                    } else {
                        "an IPv6 prefix is 0 to 128"
                    })
                })?
            }
            Some(_) => return Err(err("the prefix is not a number")),
        };
        IpNet::new(addr, prefix).ok_or_else(|| err("prefix too long"))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_blockdev::MemoryDevice;

    fn mem() -> Arc<dyn BlockDevice> {
        Arc::new(MemoryDevice::new(vec![0; 512]))
    }

    #[test]
    fn resolve_default() {
        let c = ServerConfig::new()
            .with_export("a", "", mem())
            .with_export("b", "", mem());
        assert_eq!(c.resolve(""), Some(0));
        assert_eq!(c.resolve("b"), Some(1));
        assert_eq!(c.resolve("c"), None);
        let c = c.with_default_export(DefaultExport::Named("b".into()));
        assert_eq!(c.resolve(""), Some(1));
        let c = c.with_default_export(DefaultExport::None);
        assert_eq!(c.resolve(""), None);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn ip_networks_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.3.4".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        // IPv4-mapped IPv6 peers (dual-stack listeners) match IPv4 networks.
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert_eq!(net.to_string(), "10.0.0.0/8");

        let host: IpNet = "127.0.0.1".parse().unwrap();
        assert_eq!(host.prefix(), 32);
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));

        // Host bits beyond the prefix are cleared.
        let net: IpNet = "192.168.7.9/24".parse().unwrap();
        assert_eq!(net.to_string(), "192.168.7.0/24");
        assert!(net.contains("192.168.7.200".parse().unwrap()));

        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));

        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let v6host: IpNet = "[::1]".parse().unwrap();
        assert_eq!(
            (v6host.to_string().as_str(), v6host.prefix()),
            ("::1/128", 128)
        );
        let any6: IpNet = "::/0".parse().unwrap();
        assert!(any6.contains("fe80::1".parse().unwrap()));
        // A mapped network is the IPv4 network.
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");

        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/-1",
            "host.example",
            "10.0.0.0/8/8",
            "::1/+5",
        ] {
            let e = bad.parse::<IpNet>().unwrap_err().to_string();
            assert!(e.contains("not an IP address or network"), "{bad}: {e}");
        }
    }

    #[test]
    fn allow_list_and_tls_validation() {
        let c = ServerConfig::new().with_export("a", "", mem());
        assert!(c.is_allowed("192.0.2.1".parse().unwrap()));
        let c = c.with_allowed_clients(vec![
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(c.is_allowed("127.0.0.1".parse().unwrap()));
        assert!(c.is_allowed("fd12::3".parse().unwrap()));
        assert!(!c.is_allowed("127.0.0.2".parse().unwrap()));
        assert!(c.validate().is_ok());
        let c = c.with_tls(TlsMode::Require, None);
        assert!(c.validate().is_err());
        let c = c
            .with_tls(TlsMode::Off, None)
            .with_max_connections_per_client(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn validation() {
        assert!(ServerConfig::new().validate().is_err());
        let c = ServerConfig::new()
            .with_export("a", "", mem())
            .with_export("a", "", mem());
        assert!(c.validate().is_err());
        let c = ServerConfig::new()
            .with_export("a", "", mem())
            .with_default_export(DefaultExport::Named("zz".into()));
        assert!(c.validate().is_err());
        let c = ServerConfig::new().with_export("x".repeat(5000), "", mem());
        assert!(c.validate().is_err());
        let c = ServerConfig::new()
            .with_export("a", "", mem())
            .with_workers(0);
        assert!(c.validate().is_err());
    }
}
