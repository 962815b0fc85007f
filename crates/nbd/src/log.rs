//! The logging hook of the server: severities, the hook type and two ready-made hooks.

use std::sync::Arc;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Protocol tracing (only emitted when [`crate::ServerConfig::trace`] is set).
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
