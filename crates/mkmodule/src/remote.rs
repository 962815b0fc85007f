//! The options of images given as `http://` or `https://` URLs, shared by every command that
//! reads an image, and how they are handed to the remote source and to a background daemon.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mkmodule_remote::{CacheOptions, ClientOptions, RemoteOptions, Retry};

use crate::units::parse_size;

/// Options for an IMAGE given as an `http://` or `https://` URL.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Images over HTTP(S)")]
pub struct RemoteArgs {
    /// Extra header on every request for an image URL, as 'Name: value' (repeatable): an
    /// authorization token, say.
    #[arg(long = "http-header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    pub http_headers: Vec<(String, String)>,

    /// Also trust the CA certificates in this PEM file for https (repeatable); the system's
    /// roots are always trusted.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,

    /// Time limit of one range request, retries included, in seconds: past it the read fails
    /// (EIO to an NBD client).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub http_timeout: f64,

    /// Connections kept alive to the origin, and requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub http_connections: usize,

    /// Keep the compressed blocks fetched from an image URL in this directory, across runs
    /// (created when missing; several images may share it).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Byte limit of --cache-dir, e.g. 2G; the least recently used entries go first.
    #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = parse_size)]
    pub cache_dir_size: u64,
}

impl Default for RemoteArgs {
    fn default() -> Self {
        RemoteArgs {
            http_headers: Vec::new(),
            ca_certs: Vec::new(),
            http_timeout: 30.0,
            http_connections: 4,
            cache_dir: None,
            cache_dir_size: 2 << 30,
        }
    }
}

impl RemoteArgs {
    /// The remote source's options; failures are logged on standard error as they happen.
    pub fn options(&self) -> RemoteOptions {
        let timeout = Duration::try_from_secs_f64(self.http_timeout.max(0.001))
            .unwrap_or(Duration::from_secs(30));
        RemoteOptions {
            client: ClientOptions {
                headers: self.http_headers.clone(),
                ca_certs: self.ca_certs.clone(),
                connections: self.http_connections.max(1),
            },
            retry: Retry {
                timeout,
                ..Retry::default()
            },
            cache: self.cache_dir.as_ref().map(|dir| CacheOptions {
                dir: dir.clone(),
                size: self.cache_dir_size,
            }),
            on_error: Some(Arc::new(|error| {
                eprintln!("mkmodule: error: {error}");
            })),
        }
    }

    /// The arguments that pass these options on to a background daemon, but for the extra
    /// headers, which may be secrets (`cmd::daemon_secrets` hands them over).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        for file in &self.ca_certs {
            args.push("--ca-cert".into());
            args.push(absolute(file).into());
        }
        args.push("--http-timeout".into());
        args.push(self.http_timeout.to_string().into());
        args.push("--http-connections".into());
        args.push(self.http_connections.to_string().into());
        if let Some(dir) = &self.cache_dir {
            args.push("--cache-dir".into());
            args.push(absolute(dir).into());
        }
        args.push("--cache-dir-size".into());
        args.push(self.cache_dir_size.to_string().into());
        args
    }
}

/// `path` made absolute (a daemon runs from `/`).
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Parses `Name: value`.
fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not a header: write 'Name: value'"))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(format!("{name:?} is not a header name"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("the value of header {name} has a line break"));
    }
    Ok((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer abc:def").unwrap(),
            ("Authorization".into(), "Bearer abc:def".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": empty name").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }
}
