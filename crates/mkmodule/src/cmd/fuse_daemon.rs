//! `mkmodule __fuse-daemon` (hidden): the background FUSE server that `mount` and `attach`
//! start, and the image opening they share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mkmodule_blockdev::{BlockDevice, FileDevice};
use mkmodule_format::FormatError;
use mkmodule_image::{Image, ImageDevice, ImageError, OpenOptions};
use mkmodule_mount::fuse_file::{ExportFile, ServeOptions};
use mkmodule_mount::server;

use crate::units::parse_size;

/// Options of the FUSE server shared by `mount`, `attach` and the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Byte limit of each image's cache of decoded blocks, e.g. 64M.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    pub cache_size: u64,
}

impl ServerArgs {
    /// The arguments that pass these options on to the daemon.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        vec!["--cache-size".into(), self.cache_size.to_string().into()]
    }
}

/// Arguments of `mkmodule __fuse-daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The images to serve, as files `0-NAME`, `1-NAME`, …
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,

    /// Where to mount the FUSE filesystem.
    #[arg(long, value_name = "DIR")]
    mountpoint: PathBuf,

    /// Serve the (single) image writable through this copy-on-write overlay file.
    #[arg(long, value_name = "FILE")]
    cow: Option<PathBuf>,

    #[command(flatten)]
    server: ServerArgs,
}

/// Opens `path` as a cloop image, or as a raw file when it carries no cloop signature.
pub fn open_export(path: &Path, cache_bytes: u64) -> Result<Arc<dyn BlockDevice>> {
    let options = OpenOptions {
        cache_bytes,
        ..OpenOptions::default()
    };
    match Image::open_with(path, &options) {
        Ok(image) => Ok(Arc::new(ImageDevice::new(Arc::new(image)))),
        Err(ImageError::Format(FormatError::NotCloop { .. })) => {
            let export = FileDevice::open(path)
                .with_context(|| format!("opening {} as a raw image", path.display()))?;
            Ok(Arc::new(export))
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// Opens the images (and the overlay over a single one) as the FUSE server's files.
pub fn export_files(
    images: &[PathBuf],
    cow: Option<&Path>,
    server: &ServerArgs,
) -> Result<Vec<ExportFile>> {
    if cow.is_some() && images.len() != 1 {
        bail!("a copy-on-write overlay goes over exactly one image");
    }
    let names = mkmodule_mount::file_names(images);
    let mut files = Vec::with_capacity(images.len());
    for (image, name) in images.iter().zip(names) {
        let mut export = open_export(image, server.cache_size)?;
        if let Some(cow) = cow {
            export = open_overlay(cow, export, image)?;
        }
        files.push(ExportFile { name, export });
    }
    Ok(files)
}

/// Wraps `base` in the copy-on-write overlay kept in `cow` (created when missing).
fn open_overlay(
    cow: &Path,
    base: Arc<dyn BlockDevice>,
    image: &Path,
) -> Result<Arc<dyn BlockDevice>> {
    let options =
        mkmodule_overlay::OverlayOptions::default().with_label(image.display().to_string());
    let overlay = mkmodule_overlay::Overlay::open_or_create(cow, base, &options)
        .with_context(|| format!("opening the copy-on-write overlay {}", cow.display()))?;
    Ok(Arc::new(overlay))
}

/// Runs the daemon: serves until the FUSE mount point is unmounted.
pub fn run(args: Args) -> Result<()> {
    let files = match export_files(&args.images, args.cow.as_deref(), &args.server) {
        Ok(files) => files,
        Err(error) => {
            server::announce_error(&format!("{error:#}"));
            return Err(error);
        }
    };
    server::serve(&args.mountpoint, files, &ServeOptions::default())?;
    Ok(())
}
