//! Opening what the commands are given: a cloop-family image (a file, or an `http://` or
//! `https://` URL read with range requests), or a raw file, as one [`BlockDevice`], and a
//! copy-on-write overlay over it. [`open_image`] is the one place an image is opened.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use mkmodule_blockdev::{BlockDevice, FileDevice};
use mkmodule_codec::CodecKind;
use mkmodule_format::{BlockKind, FormatError};
use mkmodule_image::{Image, ImageDevice, ImageError, OpenOptions};
use mkmodule_overlay::{Overlay, OverlayOptions};
use mkmodule_remote::{is_url, HttpSource};
use sha2::{Digest, Sha256};

use crate::remote::RemoteArgs;

/// What a path turned out to hold.
#[derive(Clone)]
pub enum Found {
    /// A cloop-family image, for callers that want its dialect, codecs or geometry.
    Image(Arc<Image>),
    /// A raw file or block device (no cloop signature).
    Raw,
}

/// A path opened as a block device, and what it was.
#[derive(Clone)]
pub struct Opened {
    /// The device to read from.
    pub device: Arc<dyn BlockDevice>,
    /// What the path held.
    pub found: Found,
}

/// Whether `name` is an image URL rather than a path.
pub fn url_of(name: &Path) -> Option<&str> {
    name.to_str().filter(|s| is_url(s))
}

/// Opens the image `name` with `options`: a local file, or an `http://` or `https://` URL
/// read with range requests under `remote` (headers, CA certificates, timeout, disk cache).
/// Header and index are validated alike either way.
pub fn open_image(
    name: &Path,
    options: &OpenOptions,
    remote: &RemoteArgs,
) -> Result<Image, ImageError> {
    let Some(url) = url_of(name) else {
        return Image::open_with(name, options);
    };
    let source = HttpSource::open(url, &remote.options()).map_err(|e| ImageError::Open {
        path: name.to_path_buf(),
        source: e.into(),
    })?;
    let handle = source.handle();
    let image = Image::open_source(Box::new(source), name, options)?;
    let digest = image
        .trailer()
        .filter(|_| image.trailer_problem().is_none())
        .map(|t| t.digest.as_slice());
    handle.bind_cache(&cache_material(&image, digest), digest.is_none());
    Ok(image)
}

/// What keys an image's entries in the disk cache: its header, a hash of its index and the
/// trailer's digest of its decoded content.
fn cache_material(image: &Image, digest: Option<&[u8]>) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(image.block_size().to_le_bytes());
    hash.update(image.num_blocks().to_le_bytes());
    for entry in image.index().blocks() {
        hash.update(entry.offset.to_le_bytes());
        hash.update(entry.len.to_le_bytes());
        hash.update([entry.codec as u8]);
        let kind = match entry.kind {
            BlockKind::Stored => [0, 0, 0, 0, 0],
            BlockKind::Zero => [1, 0, 0, 0, 0],
            BlockKind::Shared { of } => {
                let [a, b, c, d] = of.to_le_bytes();
                [2, a, b, c, d]
            }
        };
        hash.update(kind);
    }
    let mut material = hash.finalize().to_vec();
    if let Some(digest) = digest {
        material.extend_from_slice(b"trailer");
        material.extend_from_slice(digest);
    }
    material
}

/// Opens `path` as a cloop image with `options` (a URL under `remote`), or as a raw file when
/// it carries no cloop signature. Any other failure to open an image (a damaged header, say)
/// is an error, never a silent fallback to raw.
pub fn open_device(path: &Path, options: &OpenOptions, remote: &RemoteArgs) -> Result<Opened> {
    match open_image(path, options, remote) {
        Ok(image) => {
            let image = Arc::new(image);
            Ok(Opened {
                device: Arc::new(ImageDevice::new(Arc::clone(&image))),
                found: Found::Image(image),
            })
        }
        Err(ImageError::Format(FormatError::NotCloop { .. })) if url_of(path).is_none() => {
            let raw = FileDevice::open(path)
                .with_context(|| format!("opening {} as a raw image", path.display()))?;
            Ok(Opened {
                device: Arc::new(raw),
                found: Found::Raw,
            })
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// The codec most of `image`'s stored blocks use, leaving out the ones mkmodule does not
/// write (none, lzo); `None` when no block has one of the others.
pub fn main_codec(image: &Image) -> Option<CodecKind> {
    let mut counts: HashMap<CodecKind, u64> = HashMap::new();
    for block in image.index().blocks() {
        if block.kind == BlockKind::Stored {
            *counts.entry(block.codec).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(k, _)| !matches!(k, CodecKind::None | CodecKind::Lzo))
        .max_by_key(|&(k, n)| (n, k as u8))
        .map(|(k, _)| k)
}

/// Where a copy-on-write overlay keeps its changes.
#[derive(Debug, Clone, Copy)]
pub enum OverlayStore<'a> {
    /// In memory, lost at exit.
    Memory,
    /// In this file, opened when it exists and created when it does not.
    File(&'a Path),
    /// In this existing file, opened for reading only.
    ExistingReadOnly(&'a Path),
}

/// Puts a copy-on-write overlay kept in `store` over `base`.
pub fn open_overlay(
    base: Arc<dyn BlockDevice>,
    store: OverlayStore<'_>,
    options: &OverlayOptions,
) -> Result<Arc<Overlay>> {
    let overlay = match store {
        OverlayStore::Memory => Overlay::in_memory(base, options)?,
        OverlayStore::File(file) => Overlay::open_or_create(file, base, options)
            .with_context(|| format!("opening the overlay {}", file.display()))?,
        OverlayStore::ExistingReadOnly(file) => {
            Overlay::open(file, base, &options.clone().read_only(true))
                .with_context(|| format!("opening the overlay {}", file.display()))?
        }
    };
    Ok(Arc::new(overlay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_signature_opens_raw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let opened = open_device(&path, &OpenOptions::default(), &RemoteArgs::default()).unwrap();
        assert!(matches!(opened.found, Found::Raw));
        assert_eq!(opened.device.size(), 8192);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.img");
        let Err(error) = open_device(&path, &OpenOptions::default(), &RemoteArgs::default()) else {
            panic!("a missing file opened");
        };
        assert!(format!("{error:#}").contains("missing.img"), "{error:#}");
    }

    #[test]
    fn overlays_in_memory_and_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![1u8; 1 << 16]).unwrap();
        let base = open_device(&path, &OpenOptions::default(), &RemoteArgs::default())
            .unwrap()
            .device;
        let options = OverlayOptions::default();
        let memory = open_overlay(Arc::clone(&base), OverlayStore::Memory, &options).unwrap();
        assert!(memory.path().is_none());
        let cow = dir.path().join("disk.cow");
        let file = open_overlay(Arc::clone(&base), OverlayStore::File(&cow), &options).unwrap();
        assert!(file.path().is_some());
        drop(file);
        let again = open_overlay(base, OverlayStore::ExistingReadOnly(&cow), &options).unwrap();
        assert_eq!(again.size(), 1 << 16);
    }
}
