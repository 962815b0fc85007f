//! The errors of the remote source: each names the URL, the byte range and the cause.

use std::io;
use std::path::PathBuf;

/// Why an image could not be opened at, or a range fetched from, its origin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The client could not be set up (a CA certificate file, a header, TLS).
    #[error("{0}")]
    Setup(String),
    /// A CA certificate file could not be read.
    #[error("reading the CA certificate file {}", path.display())]
    CaCert {
        /// The file given.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A range could not be fetched, after the retries.
    #[error(
        "{}: bytes {start}-{end}: {cause} (after {attempts} attempts)",
        shown_url(url)
    )]
    Fetch {
        /// The image's URL.
        url: String,
        /// First byte asked for.
        start: u64,
        /// Last byte asked for (inclusive, as in a Range header).
        end: u64,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        cause: Cause,
    },
    /// The image at the origin is no longer the one that was opened.
    #[error(
        "{}: the image changed at the origin ({what}); reopen it to read the new one",
        shown_url(url)
    )]
    Changed {
        /// The image's URL.
        url: String,
        /// What showed it.
        what: String,
    },
}

/// `url` as error messages (and so a server's log) show it: its query, which in a presigned
/// URL is a credential, becomes `?…`.
pub fn shown_url(url: &str) -> String {
    match url.split_once('?') {
        Some((path, _)) => format!("{path}?…"),
        None => url.to_string(),
    }
}

/// Why one attempt at a range failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// No connection, a reset, a TLS failure or a timeout.
    #[error("{0}")]
    Transport(String),
    /// An HTTP status other than 206 Partial Content.
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The origin answered 200 with the whole file: it does not serve ranges.
    #[error("the origin ignores Range requests (HTTP 200)")]
    NoRanges,
    /// Content-Range missing or not the range asked for.
    #[error("Content-Range {got:?} does not match the request")]
    ContentRange {
        /// The header as received (empty when missing).
        got: String,
    },
    /// The body was shorter or longer than the range.
    #[error("body of {got} bytes where {want} were asked for")]
    BodyLength {
        /// Bytes received (counted up to one past the range).
        got: u64,
        /// Bytes asked for.
        want: u64,
    },
    /// A redirect that is not followed: no Location, another scheme, https to http, or too
    /// many of them.
    #[error("{0}")]
    Redirect(String),
    /// The whole request, retries included, took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl Cause {
    /// Whether another attempt may help (a 4xx other than 408 and 429 will not).
    pub fn retryable(&self) -> bool {
        match self {
            Cause::Status { status } => *status >= 500 || matches!(status, 408 | 416 | 429),
            Cause::NoRanges | Cause::Redirect(_) | Cause::Timeout(_) => false,
            Cause::Transport(_) | Cause::ContentRange { .. } | Cause::BodyLength { .. } => true,
        }
    }
}

impl From<RemoteError> for io::Error {
    /// An I/O error carrying the remote error (the NBD server turns it into EIO).
    fn from(error: RemoteError) -> io::Error {
        io::Error::other(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_leave_out_a_query() {
        let error = RemoteError::Changed {
            url: "https://cdn.example/KNOPPIX?X-Amz-Signature=feedface".into(),
            what: "412".into(),
        };
        let text = error.to_string();
        assert!(
            text.starts_with("https://cdn.example/KNOPPIX?…: "),
            "{text}"
        );
        assert!(!text.contains("feedface"), "{text}");
        assert_eq!(shown_url("http://a.test/x"), "http://a.test/x");
    }
}
