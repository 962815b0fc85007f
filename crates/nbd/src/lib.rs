//! NBD (Network Block Device) protocol and a threaded server over a small [`BlockDevice`] trait.
//!
//! The server speaks fixed newstyle with `NO_ZEROES`, the options `EXPORT_NAME`,
//! `GO`, `INFO`, `LIST`, `ABORT`, `STRUCTURED_REPLY` and `LIST/SET_META_CONTEXT`
//! (`base:allocation`), `STARTTLS` (rustls; optional or required, client certificates
//! optionally verified), simple and structured replies, and the commands READ,
//! WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS and DISC. Each
//! connection has a reader thread, a writer thread and a bounded number of
//! requests in flight; reads run on a worker pool shared by all connections.
//!
//! The export table can be replaced while the server runs ([`ReloadHandle::replace_exports`]):
//! each connection keeps the table it was accepted with, so established connections keep their
//! export and new ones see the new table; nothing is dropped.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mkmodule_nbd::{Listener, Server, ServerConfig};
//! use mkmodule_blockdev::MemoryDevice;
//!
//! let export = Arc::new(MemoryDevice::new(vec![0; 1 << 20]).with_zero_extents(4096));
//! let config = ServerConfig::new().with_export("disk", "an empty disk", export);
//! let listener = Listener::bind_tcp("127.0.0.1:10809".parse().unwrap()).unwrap();
//! let server = Server::start(config, [listener]).unwrap();
//! let stop = server.stop_handle(); // give this to a signal-handling thread
//! # stop.stop();
//! server.wait();
//! ```

mod bufpool;
mod config;
mod error;
mod handshake;
mod limiter;
mod listener;
mod log;
mod pool;
pub mod proto;
mod server;
mod tls;
mod tls_session;
mod transmission;

pub use config::{
    DefaultExport, ExportEntry, IpNet, IpNetError, ServerConfig, DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
};
pub use error::{ConfigError, Error, NbdErrno, Result};

pub use listener::Listener;
pub use log::{null_logger, stderr_logger, Level, Logger};
pub use server::{ReloadHandle, Server, ServerHandle, StopHandle};
pub use tls::{TlsCredentials, TlsError, TlsMode, CA_CERT, SERVER_CERT, SERVER_KEY};
