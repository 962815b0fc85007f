//! Server configuration: exports, limits, timeouts and the logging hook.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::export::Export;
use crate::proto::MAX_STRING;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Protocol tracing (only emitted when [`ServerConfig::trace`] is set).
    Trace,
    /// Normal events: one line per closed connection.
    Info,
    /// Something went wrong for one client (rate-limited per connection).
    Warn,
}

/// Logging hook: receives every log line with its level.
pub type Logger = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// A logger printing `nbd: LEVEL message` lines on standard error.
pub fn stderr_logger() -> Logger {
    Arc::new(|level, msg| {
        let tag = match level {
            Level::Trace => "trace",
            Level::Info => "info",
            Level::Warn => "warn",
        };
        eprintln!("nbd: {tag}: {msg}");
    })
}

/// A logger that discards everything.
pub fn null_logger() -> Logger {
    Arc::new(|_, _| {})
}

/// One named export of the server.
#[derive(Clone)]
pub struct ExportEntry {
    /// Export name as clients request it (≤ 4096 bytes of UTF-8).
    pub name: String,
    /// Human-readable description shown by `nbdinfo` (may be empty).
    pub description: String,
    /// The data behind the export.
    pub export: Arc<dyn Export>,
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
    /// Worker threads shared by all connections.
    pub workers: usize,
    /// Time allowed from accept to the end of option haggling.
    pub handshake_timeout: Duration,
    /// Whether `NBD_OPT_LIST` answers with the export list (else `ERR_POLICY`).
    pub allow_list: bool,
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
            .field("workers", &self.workers)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("allow_list", &self.allow_list)
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
            workers: default_workers(),
            handshake_timeout: Duration::from_secs(30),
            allow_list: true,
            trace: false,
            logger: stderr_logger(),
        }
    }
}

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
        export: Arc<dyn Export>,
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
            return Err(Error::Config("no exports configured".into()));
        }
        for (i, e) in self.exports.iter().enumerate() {
            if e.name.len() > MAX_STRING || e.name.contains('\0') {
                return Err(Error::Config(format!(
                    "export name {:?} is longer than 4096 bytes or contains NUL",
                    e.name
                )));
            }
            if e.description.len() > MAX_STRING || e.description.contains('\0') {
                return Err(Error::Config(format!(
                    "description of export {:?} is longer than 4096 bytes or contains NUL",
                    e.name
                )));
            }
            if self.exports[..i].iter().any(|o| o.name == e.name) {
                return Err(Error::Config(format!(
                    "export name {:?} is used twice",
                    e.name
                )));
            }
        }
        if let DefaultExport::Named(n) = &self.default_export {
            if !self.exports.iter().any(|e| &e.name == n) {
                return Err(Error::Config(format!(
                    "default export {n:?} is not among the exports"
                )));
            }
        }
        for (what, v) in [
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
            ("workers", self.workers),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{what} must be at least 1")));
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config("handshake_timeout must not be zero".into()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MemoryExport;

    fn mem() -> Arc<dyn Export> {
        Arc::new(MemoryExport::new(vec![0; 512]))
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
