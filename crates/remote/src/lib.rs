//! Cloop-family images read over HTTP(S): an [`ImageSource`](mkmodule_image::ImageSource) that
//! fetches byte ranges from a web server or object store, with a persistent cache on disk.
//!
//! [`HttpSource::open`] asks the origin for one byte to learn the image's length, ETag and
//! Last-Modified date; every later range request carries `If-Match` (or `If-Unmodified-Since`)
//! and its answer is checked to the byte (status, Content-Range, ETag, body length), so bytes
//! of another image are never mixed in: once the origin shows a change, reads that the cache
//! cannot serve fail. Failed requests are retried with backoff within a time limit. The reader
//! opens the image on top with [`mkmodule_image::Image::open_source`], validating header and
//! index exactly as for a local file.

mod client;
mod error;
mod fetch;
mod flight;
mod source;
mod store;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use client::{
    check_range_answer, parse_content_range, probe_answer, redirect_target, ClientOptions, Failure,
    Pin, MAX_REDIRECTS,
};
pub use error::{shown_url, Cause, RemoteError};
pub use fetch::Retry;
pub use source::{HttpSource, SourceStats};
pub use store::{
    entry_data, entry_file, format_origin, parse_origin, OriginRecord, Store, StoreStats,
};

/// Whether `name` is an image URL this crate reads (`http://` or `https://`).
pub fn is_url(name: &str) -> bool {
    let lower = name.get(..8).unwrap_or(name).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Where the persistent cache lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The cache directory (created when missing).
    pub dir: PathBuf,
    /// Byte limit of its entries.
    pub size: u64,
}

/// Called with every range that failed for good (after its retries).
pub type ErrorLog = Arc<dyn Fn(&RemoteError) + Send + Sync>;

/// How to reach an image over HTTP(S).
#[derive(Clone, Default)]
pub struct RemoteOptions {
    /// Client settings: headers, CA certificates, connections.
    pub client: ClientOptions,
    /// Retries and time limit of each range.
    pub retry: Retry,
    /// The persistent cache, if any.
    pub cache: Option<CacheOptions>,
    /// Where failures are reported as they happen (a server's log), if anywhere.
    pub on_error: Option<ErrorLog>,
}

impl RemoteOptions {
    fn log(&self, error: &RemoteError) {
        if let Some(log) = &self.on_error {
            log(error);
        }
    }
}

impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("client", &self.client)
            .field("retry", &self.retry)
            .field("cache", &self.cache)
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(is_url("http://127.0.0.1:8080/a.img"));
        assert!(is_url("HTTPS://example.org/a.img"));
        assert!(!is_url("./http://x"));
        assert!(!is_url("image.img"));
        assert!(!is_url("ftp://x/y"));
    }
}
