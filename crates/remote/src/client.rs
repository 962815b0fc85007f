//! One HTTP(S) client per image: the agent (kept-alive connections, TLS roots, extra headers)
//! and a single range request checked to the byte, with no retry (that is [`crate::fetch`]).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
#[derive(Debug, Clone)]
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
            // Redirects are followed by `get`, which keeps the extra headers to the origin.
            .max_redirects(0)
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
        let len = probe_answer(
            response.status().as_u16(),
            &header(&response, "content-range").unwrap_or_default(),
        )?;
        let etag = header(&response, "etag");
        let last_modified = header(&response, "last-modified");
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
        check_range_answer(
            response.status().as_u16(),
            header(&response, "etag").as_deref(),
            &header(&response, "content-range").unwrap_or_default(),
            start,
            end,
            pin,
        )?;
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

    /// Sends a GET with `range` (and the pin's preconditions) within `timeout`, following
    /// redirects (see [`redirect_target`]): the extra headers go only to the image URL's own
    /// origin. Whatever answers last is checked by the caller, so a redirect never makes
    /// another image pass for the pinned one.
    fn get(
        &self,
        range: &str,
        pin: Option<&Pin>,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, Cause> {
        let deadline = Instant::now() + timeout;
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Cause::Timeout(timeout));
            }
            let own_origin = same_origin(&self.url, &url);
            let response = self.send(&url, own_origin, range, pin, left, timeout)?;
            if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(response);
            }
            let location = header(&response, "location").unwrap_or_default();
            url = redirect_target(&self.url, &url, &location).map_err(Cause::Redirect)?;
        }
        Err(Cause::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// One request to `url`, with the extra headers when `own_origin`.
    fn send(
        &self,
        url: &str,
        own_origin: bool,
        range: &str,
        pin: Option<&Pin>,
        left: Duration,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, Cause> {
        let mut request = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(left))
            .build();
        if own_origin {
            for (name, value) in &self.headers {
                request = request.header(name.as_str(), value.as_str());
            }
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

/// Redirects followed for one request at most.
pub const MAX_REDIRECTS: usize = 5;

/// The scheme, host and port of an http(s) URL, lowercased, the port made explicit.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host()?.to_ascii_lowercase();
    Some((scheme, host, uri.port_u16().unwrap_or(default)))
}

/// Whether two URLs have the same scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// Where a redirect from `from` (reached from the image URL `image`) with this `Location`
/// leads: an absolute http(s) URL, a path on the same origin, or a path relative to `from`'s.
/// Refused: a missing or unreadable `Location`, another scheme, and http after an https
/// image URL (the image and any credential would travel in the clear).
pub fn redirect_target(image: &str, from: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if location.is_empty() {
        return Err("a redirect without a Location".into());
    }
    let (scheme, host, port) =
        origin(from).ok_or_else(|| format!("redirected from an unreadable URL {from:?}"))?;
    let base = if (scheme == "http" && port == 80) || (scheme == "https" && port == 443) {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    };
    let lower = location.get(..8).unwrap_or(location).to_ascii_lowercase();
    let target = if lower.starts_with("http://") || lower.starts_with("https://") {
        location.to_string()
    } else if location
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|s| s.contains(':'))
    {
        return Err(format!("redirected to {location:?}, not an http(s) URL"));
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        // Relative to the directory of `from`'s path.
        let path_start = from
            .find("://")
            .and_then(|i| from[i + 3..].find('/').map(|j| i + 3 + j));
        let path = path_start.map_or("/", |i| &from[i..]);
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{base}{dir}{location}")
    };
    let (next_scheme, _, _) =
        origin(&target).ok_or_else(|| format!("redirected to {location:?}, not an http(s) URL"))?;
    if next_scheme == "http" && origin(image).is_some_and(|(s, _, _)| s == "https") {
        return Err(format!(
            "redirected from https to {location:?}: refused, it would travel in the clear"
        ));
    }
    Ok(target)
}

/// A response header as text.
fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The image's length from the answer to the one-byte probe: 206 with `bytes 0-0/LEN`, or 416
/// with `bytes */0` for an empty image. Anything else is the cause of a failed open.
pub fn probe_answer(status: u16, content_range: &str) -> Result<u64, Cause> {
    match (status, parse_content_range(content_range)) {
        (206, Some((Some((0, 0)), Some(total)))) => Ok(total),
        (206, _) => Err(Cause::ContentRange {
            got: content_range.to_string(),
        }),
        (416, Some((None, Some(0)))) => Ok(0),
        (200, _) => Err(Cause::NoRanges),
        _ => Err(Cause::Status { status }),
    }
}

/// Checks the status and headers of the answer to a request for bytes `start..=end` of the
/// image pinned as `pin`, before its body is read: 206, the same ETag (when both have one),
/// and a Content-Range of exactly that range out of the pinned length. An answer that shows
/// another image (412, another ETag or length) is [`Failure::Changed`].
pub fn check_range_answer(
    status: u16,
    etag: Option<&str>,
    content_range: &str,
    start: u64,
    end: u64,
    pin: &Pin,
) -> Result<(), Failure> {
    let parsed = parse_content_range(content_range);
    let other_length =
        |total: u64| Failure::Changed(format!("length {total} bytes, opened with {}", pin.len));
    match status {
        206 => {}
        412 => {
            return Err(Failure::Changed(
                "412 Precondition Failed for the pinned ETag or date".into(),
            ))
        }
        416 => {
            return Err(match parsed {
                Some((None, Some(total))) if total != pin.len => other_length(total),
                _ => Failure::Attempt(Cause::Status { status }),
            })
        }
        200 => return Err(Failure::Attempt(Cause::NoRanges)),
        _ => return Err(Failure::Attempt(Cause::Status { status })),
    }
    if let (Some(now), Some(then)) = (etag, &pin.etag) {
        if now != then {
            return Err(Failure::Changed(format!("ETag {now}, opened with {then}")));
        }
    }
    match parsed {
        Some((_, Some(total))) if total != pin.len => Err(other_length(total)),
        Some((Some((s, e)), Some(_))) if s == start && e == end => Ok(()),
        _ => Err(Failure::Attempt(Cause::ContentRange {
            got: content_range.to_string(),
        })),
    }
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

    #[test]
    fn redirects() {
        let image = "http://a.test:8080/isos/x.cloop?sig=1";
        let to = |location: &str| redirect_target(image, image, location);
        assert_eq!(to("/y.cloop").unwrap(), "http://a.test:8080/y.cloop");
        assert_eq!(
            to("y.cloop?s=2").unwrap(),
            "http://a.test:8080/isos/y.cloop?s=2"
        );
        assert_eq!(to("//b.test/z").unwrap(), "http://b.test/z");
        assert_eq!(to("https://b.test/z").unwrap(), "https://b.test/z");
        assert!(to("").is_err());
        assert!(to("ftp://b.test/z").is_err());
        let https = "https://a.test/x.cloop";
        assert!(redirect_target(https, https, "http://a.test/x.cloop").is_err());
        assert_eq!(
            redirect_target(https, https, "/y").unwrap(),
            "https://a.test/y"
        );
        assert!(same_origin("http://A.test/x", "http://a.test:80/y"));
        assert!(!same_origin("http://a.test/x", "https://a.test/x"));
        assert!(!same_origin("http://a.test:8080/x", "http://a.test/x"));
    }
}
