//! Opening what `serve`, `mount`, `attach` and `commit` are given: a cloop-family image
//! (recognised by its contents) or a raw file, as one [`BlockDevice`], and a copy-on-write
//! overlay over it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use mkmodule_blockdev::{BlockDevice, FileDevice};
use mkmodule_codec::CodecKind;
use mkmodule_format::{BlockKind, FormatError};
use mkmodule_image::{Image, ImageDevice, ImageError, OpenOptions};
use mkmodule_overlay::{Overlay, OverlayOptions};

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

/// Opens `path` as a cloop image with `options`, or as a raw file when it carries no cloop
/// signature. Any other failure to open an image (a damaged header, say) is an error, never a
/// silent fallback to raw.
pub fn open_device(path: &Path, options: &OpenOptions) -> Result<Opened> {
    match Image::open_with(path, options) {
        Ok(image) => {
            let image = Arc::new(image);
            Ok(Opened {
                device: Arc::new(ImageDevice::new(Arc::clone(&image))),
                found: Found::Image(image),
            })
        }
        Err(ImageError::Format(FormatError::NotCloop { .. })) => {
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
        let opened = open_device(&path, &OpenOptions::default()).unwrap();
        assert!(matches!(opened.found, Found::Raw));
        assert_eq!(opened.device.size(), 8192);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.img");
        let Err(error) = open_device(&path, &OpenOptions::default()) else {
            panic!("a missing file opened");
        };
        assert!(format!("{error:#}").contains("missing.img"), "{error:#}");
    }

    #[test]
    fn overlays_in_memory_and_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![1u8; 1 << 16]).unwrap();
        let base = open_device(&path, &OpenOptions::default()).unwrap().device;
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
