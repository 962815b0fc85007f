//! One HTTP(S) client per image: the agent (kept-alive connections, TLS roots, extra headers)
//! and a single range request checked to the byte, with no retry (that is [`crate::fetch`]).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

use crate::error::{Cause, RemoteError};

/// How the origin identified the image when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The image's length in bytes.
    pub len: u64,
    /// The entity tag, when the origin sends one.
    pub etag: Option<String>,
    /// The Last-Modified date, when the origin sends one.
    pub last_modified: Option<String>,
}

impl Pin {
    /// A string that changes when the image does (the ETag, else the date), if any.
    pub fn validator(&self) -> Option<String> {
        match (&self.etag, &self.last_modified) {
            (Some(tag), _) => Some(format!("etag:{tag}")),
            (None, Some(date)) => Some(format!("date:{date}")),
            (None, None) => None,
        }
    }
}

/// What went wrong with one attempt.
#[derive(Debug)]
pub enum Failure {
    /// This attempt failed; another may not.
    Attempt(Cause),
    /// The origin now holds another image (412, another length or ETag).
    Changed(String),
}

/// The settings of a client.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Extra request headers, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// PEM files of CA certificates trusted besides the system's.
    pub ca_certs: Vec<PathBuf>,
    /// Connections kept alive to the origin.
    pub connections: usize,
}

/// An HTTP(S) client bound to one URL.
pub struct Client {
    agent: Agent,
    url: String,
    headers: Vec<(String, String)>,
}

impl Client {
    /// A client for `url` with `options`.
    pub fn new(url: &str, options: &ClientOptions) -> Result<Client, RemoteError> {
        let mut roots: Vec<Certificate<'static>> = Vec::new();
        let system = rustls_native_certs::load_native_certs();
        roots.extend(
            system
                .certs
                .iter()
                .map(|der| Certificate::from_der(der.as_ref()).to_owned()),
        );
        for path in &options.ca_certs {
            let pem = std::fs::read(path).map_err(|source| RemoteError::CaCert {
                path: path.clone(),
                source,
            })?;
            let before = roots.len();
            for item in ureq::tls::parse_pem(&pem) {
                if let Ok(PemItem::Certificate(cert)) = item {
                    roots.push(cert.to_owned());
                }
            }
            if roots.len() == before {
                return Err(RemoteError::CaCert {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no PEM certificate in it",
                    ),
                });
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build();
        let connections = options.connections.max(1);
        let agent: Agent = Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_idle_connections(connections)
            .max_idle_connections_per_host(connections)
            .user_agent(concat!("mkmodule/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client {
            agent,
            url: url.to_string(),
            headers: options.headers.clone(),
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Asks for the first byte to learn the image's length and identity.
    pub fn probe(&self, timeout: Duration) -> Result<Pin, Cause> {
        let response = self.get("bytes=0-0", None, timeout)?;
        let status = response.status().as_u16();
        let etag = header(&response, "etag");
        let last_modified = header(&response, "last-modified");
        let len = match status {
            206 => {
                let range = header(&response, "content-range").unwrap_or_default();
                match parse_content_range(&range) {
                    Some((Some((0, 0)), Some(total))) => total,
                    _ => return Err(Cause::ContentRange { got: range }),
                }
            }
            // An empty image: nothing to range over.
            416 => {
                match parse_content_range(&header(&response, "content-range").unwrap_or_default()) {
                    Some((None, Some(0))) => 0,
                    _ => return Err(Cause::Status { status }),
                }
            }
            200 => return Err(Cause::NoRanges),
            _ => return Err(Cause::Status { status }),
        };
        Ok(Pin {
            len,
            etag,
            last_modified,
        })
    }

    /// Fetches bytes `start..=end` of the image pinned as `pin`, checking status,
    /// Content-Range, ETag and body length.
    pub fn range(
        &self,
        start: u64,
        end: u64,
        pin: &Pin,
        timeout: Duration,
    ) -> Result<Vec<u8>, Failure> {
        let response = self
            .get(&format!("bytes={start}-{end}"), Some(pin), timeout)
            .map_err(Failure::Attempt)?;
        let status = response.status().as_u16();
        let content_range = header(&response, "content-range").unwrap_or_default();
        let parsed = parse_content_range(&content_range);
        match status {
            206 => {}
            412 => {
                return Err(Failure::Changed(
                    "412 Precondition Failed for the pinned ETag or date".into(),
                ))
            }
            416 => {
                if let Some((None, Some(total))) = parsed {
                    if total != pin.len {
                        return Err(Failure::Changed(format!(
                            "length {total} bytes, opened with {}",
                            pin.len
                        )));
                    }
                }
                return Err(Failure::Attempt(Cause::Status { status }));
            }
            200 => return Err(Failure::Attempt(Cause::NoRanges)),
            _ => return Err(Failure::Attempt(Cause::Status { status })),
        }
        if let (Some(now), Some(then)) = (header(&response, "etag"), &pin.etag) {
            if &now != then {
                return Err(Failure::Changed(format!("ETag {now}, opened with {then}")));
            }
        }
        match parsed {
            Some((Some((s, e)), Some(total))) if s == start && e == end => {
                if total != pin.len {
                    return Err(Failure::Changed(format!(
                        "length {total} bytes, opened with {}",
                        pin.len
                    )));
                }
            }
            Some((_, Some(total))) if total != pin.len => {
                return Err(Failure::Changed(format!(
                    "length {total} bytes, opened with {}",
                    pin.len
                )))
            }
            _ => {
                return Err(Failure::Attempt(Cause::ContentRange { got: content_range }));
            }
        }
        let want = end - start + 1;
        let mut body = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        let read = response
            .into_body()
            .into_reader()
            .take(want + 1)
            .read_to_end(&mut body);
        match read {
            Ok(_) if body.len() as u64 == want => Ok(body),
            Ok(_) => Err(Failure::Attempt(Cause::BodyLength {
                got: body.len() as u64,
                want,
            })),
            Err(error) => Err(Failure::Attempt(Cause::Transport(format!(
                "reading the body after {} bytes: {error}",
                body.len()
            )))),
        }
    }

    /// Sends a GET with `range` (and the pin's preconditions) within `timeout`.
    fn get(
        &self,
        range: &str,
        pin: Option<&Pin>,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, Cause> {
        let mut request = self
            .agent
            .get(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build();
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        request = request.header("Range", range);
        if let Some(pin) = pin {
            match (&pin.etag, &pin.last_modified) {
                // If-Match compares strongly: a weak tag never matches, so use the date then.
                (Some(tag), _) if !tag.starts_with("W/") => {
                    request = request.header("If-Match", tag.as_str());
                }
                (_, Some(date)) => request = request.header("If-Unmodified-Since", date.as_str()),
                _ => {}
            }
        }
        request.call().map_err(|error| match error {
            ureq::Error::Timeout(_) => Cause::Timeout(timeout),
            other => Cause::Transport(other.to_string()),
        })
    }
}

/// A response header as text.
fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Parses `bytes START-END/TOTAL` (either side may be `*`): the range and the total.
type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// Reads a Content-Range header value; `None` when it is not of the `bytes` form.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (s, e) = r.split_once('-')?;
            let (s, e): (u64, u64) = (s.parse().ok()?, e.parse().ok()?);
            if e < s {
                return None;
            }
            Some((s, e))
        }
    };
    Some((range, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((Some((0, 9)), Some(100)))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, Some(100))));
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some((Some((5, 9)), None))
        );
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
        assert_eq!(parse_content_range("bytes 0-x/100"), None);
        assert_eq!(parse_content_range(""), None);
    }
}
