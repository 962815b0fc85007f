//! `mkmodule __fuse-daemon` (hidden): the background FUSE server that `mount` and `attach`
//! start, and the image opening they share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mkmodule_image::OpenOptions;
use mkmodule_mount::fuse_file::{ExportFile, ServeOptions};
use mkmodule_mount::server;
use mkmodule_overlay::OverlayOptions;

use crate::cmd::daemon_secrets::{self, Secrets};
use crate::open::{open_device, open_overlay, OverlayStore};
use crate::units::parse_size;

/// The name the background server runs under: systemd leaves processes whose argv[0] starts
/// with '@' alive across the switch from the initramfs and at shutdown ("root storage
/// daemons"), so a root filesystem stacked on its files (a live system) stays readable.
pub const DAEMON_ARGV0: &str = "@mkmodule-fuse";

/// Options of the FUSE server shared by `mount`, `attach` and the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Byte limit of each image's cache of decoded blocks, e.g. 64M.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    pub cache_size: u64,

    #[command(flatten)]
    pub remote: crate::remote::RemoteArgs,
}

impl ServerArgs {
    /// The arguments that pass these options on to the daemon.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--cache-size".into(), self.cache_size.to_string().into()];
        args.extend(self.remote.to_args());
        args
    }
}

/// Arguments of `mkmodule __fuse-daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The images to serve, as files `0-NAME`, `1-NAME`, … (`url:N`: the Nth URL handed over
    /// in the environment).
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
    let options = OpenOptions {
        cache_bytes: server.cache_size,
        ..OpenOptions::default()
    };
    for (image, name) in images.iter().zip(names) {
        let mut export = open_device(image, &options, &server.remote)?.device;
        if let Some(cow) = cow {
            let options = OverlayOptions::default().with_label(image.display().to_string());
            export = open_overlay(export, OverlayStore::File(cow), &options)?;
        }
        files.push(ExportFile { name, export });
    }
    Ok(files)
}

/// Runs the daemon: serves until the FUSE mount point is unmounted.
pub fn run(args: Args) -> Result<()> {
    // Started directly (to set argv[0]), not through setsid(1): leave the caller's session so
    // no terminal signal reaches the server. Fails only when already a group leader.
    let _ = rustix::process::setsid();
    let mut server = args.server;
    let secrets = std::env::var(daemon_secrets::ENV).unwrap_or_default();
    let opened = Secrets::decode(&secrets)
        .and_then(|secrets| secrets.restore(&args.images))
        .and_then(|(images, headers)| {
            server.remote.http_headers.extend(headers);
            export_files(&images, args.cow.as_deref(), &server)
        });
    let files = match opened {
        Ok(files) => files,
        Err(error) => {
            server::announce_error(&format!("{error:#}"));
            return Err(error);
        }
    };
    server::serve(&args.mountpoint, files, &ServeOptions::default())?;
    Ok(())
}
