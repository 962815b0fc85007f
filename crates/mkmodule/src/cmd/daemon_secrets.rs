//! What `mount` and `attach` hand their background FUSE server outside its command line,
//! which every local user can read: the extra HTTP headers (tokens) and the image URLs (a
//! presigned URL's query is a credential). They travel in one environment variable, readable
//! by the server's owner only; the command line names each URL by a placeholder.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::open::url_of;

/// The environment variable.
pub const ENV: &str = "MKMODULE_DAEMON_SECRETS";

/// Stands for the URL at this index in the command line (an image path there is absolute).
const PLACEHOLDER: &str = "url:";

/// An extra HTTP header: name and value.
pub type Header = (String, String);

/// The headers and URLs, out of the command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    headers: Vec<Header>,
    urls: Vec<String>,
}

impl Secrets {
    /// Takes `headers` and every URL of `images` out: gives the images as the command line
    /// shows them, and the secrets.
    pub fn split(images: &[PathBuf], headers: &[Header]) -> (Vec<OsString>, Secrets) {
        let mut secrets = Secrets {
            headers: headers.to_vec(),
            urls: Vec::new(),
        };
        let shown = images
            .iter()
            .map(|image| match url_of(image) {
                Some(url) => {
                    secrets.urls.push(url.to_string());
                    format!("{PLACEHOLDER}{}", secrets.urls.len() - 1).into()
                }
                None => image.into(),
            })
            .collect();
        (shown, secrets)
    }

    /// The variable's value: `H name: value` and `U url` lines.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        for (name, value) in &self.headers {
            text.push_str(&format!("H {name}: {value}\n"));
        }
        for url in &self.urls {
            text.push_str(&format!("U {url}\n"));
        }
        text
    }

    /// Reads the variable's value.
    pub fn decode(text: &str) -> Result<Secrets> {
        let mut secrets = Secrets::default();
        for line in text.lines() {
            match line.split_at_checked(2) {
                Some(("H ", header)) => {
                    let (name, value) = header
                        .split_once(": ")
                        .with_context(|| format!("a header without a value in {ENV}"))?;
                    secrets.headers.push((name.to_string(), value.to_string()));
                }
                Some(("U ", url)) => secrets.urls.push(url.to_string()),
                _ => bail!("a line of {ENV} that is neither a header nor a URL"),
            }
        }
        Ok(secrets)
    }

    /// The images with their URLs put back, and the headers.
    pub fn restore(self, images: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Header>)> {
        let images = images
            .iter()
            .map(
                |image| match image.to_str().and_then(|s| s.strip_prefix(PLACEHOLDER)) {
                    Some(index) => index
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| self.urls.get(i))
                        .map(PathBuf::from)
                        .with_context(|| format!("no URL for {} in {ENV}", image.display())),
                    None => Ok(image.clone()),
                },
            )
            .collect::<Result<_>>()?;
        Ok((images, self.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers_leave_the_command_line_and_come_back() {
        let images = [
            PathBuf::from("/srv/base.cloop"),
            PathBuf::from("https://cdn.example/apps.cloop?X-Amz-Signature=abc"),
        ];
        let headers = vec![("Authorization".to_string(), "Bearer t:k".to_string())];
        let (shown, secrets) = Secrets::split(&images, &headers);
        assert_eq!(shown, ["/srv/base.cloop", "url:0"]);
        let decoded = Secrets::decode(&secrets.encode()).unwrap();
        assert_eq!(decoded, secrets);
        let shown: Vec<PathBuf> = shown.iter().map(PathBuf::from).collect();
        let (back, back_headers) = decoded.restore(&shown).unwrap();
        assert_eq!(back, images);
        assert_eq!(back_headers, headers);
        assert!(Secrets::default()
            .restore(&[PathBuf::from("url:3")])
            .is_err());
        assert!(Secrets::decode("X what\n").is_err());
    }
}
