//! [`HttpSource`]: the reader's [`ImageSource`] for an image at an `http://` or `https://` URL.
//!
//! Every read is a range of the image pinned at open (length, ETag, Last-Modified). A read is
//! served from the disk cache when it holds the range, else fetched from the origin (one fetch
//! for concurrent readers of the same range, a few fetches at a time) and written to the cache.
//! Adjacent ranges of a [`ImageSource::read_many_at`] call are fetched with one request; ranges
//! with a gap between them are never merged, so no byte is fetched that nobody asked for. The
//! source tells the reader it wants asked-for reads only ([`ImageSource::asked_only`]), so the
//! reader reads no blocks ahead of sequential readers from it.
//!
//! The cache is keyed by the image's identity, known only once the image is parsed: the ranges
//! read before [`HttpSource::bind_cache`] (header, index, trailer) are kept in memory and
//! written to the cache when it is bound. A URL whose recorded length and ETag are unchanged is
//! bound at open, so a restart reads even the header and index from the cache.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use mkmodule_image::ImageSource;
use sha2::{Digest, Sha256};

use crate::client::{Client, Pin};
use crate::error::RemoteError;
use crate::fetch::{fetch_range, probe};
use crate::flight::Flights;
use crate::store::{OriginRecord, Store};
use crate::RemoteOptions;

/// Largest request a merged read may make.
const MAX_MERGED: u64 = 8 << 20;

/// What an [`HttpSource`] did, for reports and tests.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Range requests that succeeded.
    pub requests: AtomicU64,
    /// Body bytes received from the origin.
    pub bytes: AtomicU64,
}

/// An image at an HTTP(S) URL, read with range requests.
pub struct HttpSource {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    pin: Pin,
    options: RemoteOptions,
    store: Option<Store>,
    /// The cache identity, once known.
    identity: RwLock<Option<String>>,
    /// Ranges read before the identity was known: `(offset, bytes)`.
    early: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
    /// Set once the origin showed another image: why.
    changed: Mutex<Option<String>>,
    flights: Flights,
    gate: Gate,
    stats: SourceStats,
}

impl HttpSource {
    /// Opens the image at `url`: one request learns its length and identity (ETag,
    /// Last-Modified), which every later request is pinned to.
    pub fn open(url: &str, options: &RemoteOptions) -> Result<HttpSource, RemoteError> {
        let client = Client::new(url, &options.client)?;
        let pin = probe(&client, options.retry)?;
        let store = match &options.cache {
            Some(cache) => Some(Store::open(&cache.dir, cache.size).map_err(|e| {
                RemoteError::Setup(format!(
                    "opening the cache directory {}: {e}",
                    cache.dir.display()
                ))
            })?),
            None => None,
        };
        let identity = store.as_ref().and_then(|store| {
            let record = store.origin(url)?;
            (Some(&record.validator) == pin.validator().as_ref() && record.len == pin.len)
                .then_some(record.identity)
        });
        Ok(HttpSource {
            inner: Arc::new(Inner {
                client,
                pin,
                options: options.clone(),
                store,
                identity: RwLock::new(identity),
                early: Mutex::new(Vec::new()),
                changed: Mutex::new(None),
                flights: Flights::default(),
                gate: Gate::new(options.client.connections.max(1)),
                stats: SourceStats::default(),
            }),
        })
    }

    /// Another handle on the same source (same pin, cache and statistics).
    pub fn handle(&self) -> HttpSource {
        HttpSource {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        self.inner.client.url()
    }

    /// The identity the origin gave at open.
    pub fn pin(&self) -> &Pin {
        &self.inner.pin
    }

    /// What it fetched.
    pub fn stats(&self) -> &SourceStats {
        &self.inner.stats
    }

    /// The disk cache, when there is one.
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// Why reads from the origin fail, once the image changed there.
    pub fn changed(&self) -> Option<String> {
        lock(&self.inner.changed).clone()
    }

    /// Keys the disk cache, once the image is parsed, by `material` (what identifies the
    /// image's compressed bytes: a hash of its index, and the decoded-content digest of its
    /// trailer when it has one) and the image length; with `with_validator`, by the origin's
    /// ETag or date too (for images without such a digest). Two URLs serving the same image
    /// then share entries. Does nothing without a cache or when already keyed (at open, from
    /// the URL's record).
    pub fn bind_cache(&self, material: &[u8], with_validator: bool) {
        let inner = &self.inner;
        let Some(store) = &inner.store else { return };
        if inner
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let early = std::mem::take(&mut *lock(&inner.early));
        let mut hash = Sha256::new();
        hash.update(b"mkmodule-remote-cache-v1\0");
        hash.update(inner.pin.len.to_le_bytes());
        hash.update((material.len() as u64).to_le_bytes());
        hash.update(material);
        if with_validator {
            hash.update(inner.pin.validator().unwrap_or_default().as_bytes());
        }
        let identity = hex::encode(hash.finalize());
        for (offset, bytes) in &early {
            store.put(&identity, *offset, bytes);
        }
        if let Some(validator) = inner.pin.validator() {
            store.set_origin(
                inner.client.url(),
                &OriginRecord {
                    len: inner.pin.len,
                    validator,
                    identity: identity.clone(),
                },
            );
        }
        *inner.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(identity);
    }
}

impl Inner {
    fn identity(&self) -> Option<String> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The range from the cache, if held there.
    fn cached(&self, identity: Option<&str>, offset: u64, buf: &mut [u8]) -> bool {
        match (&self.store, identity) {
            (Some(store), Some(identity)) => store.get(identity, offset, buf),
            _ => false,
        }
    }

    /// Keeps fetched bytes: in the cache, or in memory until the cache is bound.
    fn keep(&self, identity: Option<&str>, offset: u64, bytes: &Arc<Vec<u8>>) {
        let Some(store) = &self.store else { return };
        match identity {
            Some(identity) => store.put(identity, offset, bytes),
            None => lock(&self.early).push((offset, Arc::clone(bytes))),
        }
    }

    /// Fetches `len` bytes at `offset` from the origin (single flight, gated, retried).
    fn fetch(&self, offset: u64, len: usize) -> io::Result<Arc<Vec<u8>>> {
        let outcome = self.flights.run((offset, len), || {
            if let Some(what) = lock(&self.changed).clone() {
                return Err(RemoteError::Changed {
                    url: self.client.url().to_string(),
                    what,
                });
            }
            let _slot = self.gate.enter();
            let end = offset + len as u64 - 1;
            let result = fetch_range(&self.client, &self.pin, offset, end, self.options.retry);
            match &result {
                Ok(bytes) => {
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Err(RemoteError::Changed { what, .. }) => {
                    *lock(&self.changed) = Some(what.clone());
                }
                Err(_) => {}
            }
            if let Err(error) = &result {
                self.options.log(error);
            }
            result
        });
        outcome.map_err(io::Error::other)
    }

    /// Checks that `len` bytes at `offset` lie within the image.
    fn within(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.pin.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            )),
        }
    }
}

impl ImageSource for HttpSource {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.pin.len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inner = &self.inner;
        inner.within(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let identity = inner.identity();
        if inner.cached(identity.as_deref(), offset, buf) {
            return Ok(());
        }
        let bytes = inner.fetch(offset, buf.len())?;
        buf.copy_from_slice(&bytes);
        inner.keep(identity.as_deref(), offset, &bytes);
        Ok(())
    }

    /// Every byte not in the cache is a transfer from the origin: readers get the blocks they
    /// ask for, and no read-ahead.
    fn asked_only(&self) -> bool {
        true
    }

    fn read_many_at(&self, reads: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        let inner = &self.inner;
        let identity = inner.identity();
        let mut missing: Vec<usize> = Vec::new();
        for (k, (offset, buf)) in reads.iter_mut().enumerate() {
            inner.within(*offset, buf.len())?;
            if !buf.is_empty() && !inner.cached(identity.as_deref(), *offset, buf) {
                missing.push(k);
            }
        }
        // Runs of adjacent missing ranges, each fetched with one request.
        let mut k = 0;
        while k < missing.len() {
            let start = reads[missing[k]].0;
            let mut end = start + reads[missing[k]].1.len() as u64;
            let mut next = k + 1;
            while next < missing.len() {
                let (offset, buf) = &reads[missing[next]];
                let grown = *offset + buf.len() as u64;
                if *offset != end || grown - start > MAX_MERGED {
                    break;
                }
                end = grown;
                next += 1;
            }
            let bytes = inner.fetch(start, (end - start) as usize)?;
            for &j in &missing[k..next] {
                let (offset, buf) = &mut reads[j];
                let at = (*offset - start) as usize;
                buf.copy_from_slice(&bytes[at..at + buf.len()]);
                inner.keep(identity.as_deref(), *offset, &Arc::new(buf.to_vec()));
            }
            k = next;
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A counting semaphore: at most `n` origin requests at a time.
struct Gate {
    free: Mutex<usize>,
    opened: Condvar,
}

struct Slot<'a>(&'a Gate);

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: Mutex::new(n),
            opened: Condvar::new(),
        }
    }

    fn enter(&self) -> Slot<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self.opened.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.opened.notify_one();
    }
}
