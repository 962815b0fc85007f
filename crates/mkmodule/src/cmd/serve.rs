//! `mkmodule serve`: serve images over NBD, in the style of qemu-nbd and nbdkit.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mkmodule_format::FormatError;
use mkmodule_image::{Image, ImageError, OpenOptions};
use mkmodule_nbd::{stderr_logger, Export, FileExport, Listener, Server, ServerConfig};

use crate::image_export::ImageExport;
use crate::units::{human_bytes, parse_size};

/// Arguments of `mkmodule serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mkmodule serve KNOPPIX                      export \"KNOPPIX\" (and the default \"\") on 127.0.0.1:10809
  mkmodule serve -b 0.0.0.0 live=KNOPPIX boot=extra.img
  mkmodule serve -k /run/mkmodule.sock KNOPPIX
Clients: nbdinfo nbd://127.0.0.1/KNOPPIX, qemu-img info nbd://127.0.0.1:10809/KNOPPIX,
nbd-client HOST 10809 /dev/nbd0 -N KNOPPIX -b 4096")]
pub struct Args {
    /// Images to serve: IMAGE (export named after the file stem) or NAME=IMAGE. A file that is
    /// not a cloop-family image is served as a raw disk image. The first is also the default
    /// export "".
    #[arg(required = true, value_name = "[NAME=]IMAGE")]
    exports: Vec<String>,

    /// Address to listen on (default 127.0.0.1: only this machine; 0.0.0.0 for a network).
    #[arg(
        short = 'b',
        long = "bind",
        value_name = "ADDR",
        default_value = "127.0.0.1"
    )]
    bind: IpAddr,

    /// TCP port.
    #[arg(short = 'p', long, default_value_t = 10809)]
    port: u16,

    /// Listen on this unix socket instead of TCP.
    #[arg(short = 'k', long = "socket", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Export name for a single IMAGE given without NAME= (default: the file stem).
    #[arg(short = 'x', long = "export-name", value_name = "NAME")]
    export_name: Option<String>,

    /// Description shown to clients (nbdinfo prints it).
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,

    /// Byte limit of each image's cache of decoded blocks, e.g. 64M.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size)]
    cache_size: u64,

    /// Most simultaneous connections; further ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_connections: usize,

    /// Worker threads that decode and answer requests (default: 4 per core, 8 to 64).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Log every option and request (protocol tracing).
    #[arg(short, long)]
    verbose: bool,
}

/// One export as given on the command line.
#[derive(Debug, PartialEq, Eq)]
struct ExportSpec {
    name: String,
    path: PathBuf,
}

/// Splits `NAME=IMAGE` or `IMAGE` (named after its stem, or `fallback_name`).
fn parse_export(text: &str, fallback_name: Option<&str>) -> Result<ExportSpec> {
    if let Some((name, path)) = text.split_once('=') {
        if !name.is_empty() && !name.contains('/') {
            return Ok(ExportSpec {
                name: name.to_string(),
                path: PathBuf::from(path),
            });
        }
    }
    let path = PathBuf::from(text);
    let name = match fallback_name {
        Some(name) => name.to_string(),
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("cannot name an export after {text:?}: use NAME={text}"))?
            .to_string(),
    };
    Ok(ExportSpec { name, path })
}

/// Opens `path` as a cloop image, or as a raw file when it carries no cloop signature.
fn open_export(path: &Path, cache_bytes: u64) -> Result<(Arc<dyn Export>, String)> {
    let options = OpenOptions {
        cache_bytes,
        ..OpenOptions::default()
    };
    match Image::open_with(path, &options) {
        Ok(image) => {
            let what = format!(
                "{} image, {} blocks of {}, {}",
                image.dialect(),
                image.num_blocks(),
                human_bytes(u64::from(image.block_size())),
                human_bytes(image.size())
            );
            Ok((Arc::new(ImageExport::new(Arc::new(image))), what))
        }
        Err(ImageError::Format(FormatError::NotCloop { .. })) => {
            let export = FileExport::open(path)
                .with_context(|| format!("opening {} as a raw image", path.display()))?;
            let what = format!("raw file, {}", human_bytes(export.size()));
            Ok((Arc::new(export), what))
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// Runs `mkmodule serve`.
pub fn run(args: Args) -> Result<()> {
    if args.export_name.is_some() && args.exports.len() > 1 {
        bail!("--export-name names a single image; with several, write NAME=IMAGE for each");
    }
    let logger = stderr_logger();
    let mut config = ServerConfig::new()
        .with_max_connections(args.max_connections)
        .with_trace(args.verbose)
        .with_logger(logger.clone());
    if let Some(threads) = args.threads {
        config = config.with_workers(threads.max(1));
    }
    for text in &args.exports {
        let spec = parse_export(text, args.export_name.as_deref())?;
        let (export, what) = open_export(&spec.path, args.cache_size)?;
        let description = args
            .description
            .clone()
            .unwrap_or_else(|| spec.path.display().to_string());
        eprintln!(
            "mkmodule: export {:?}: {} ({what})",
            spec.name,
            spec.path.display()
        );
        config = config.with_export(&spec.name, &description, export);
    }
    let listener = match &args.socket {
        Some(path) => {
            Listener::bind_unix(path).with_context(|| format!("listening on {}", path.display()))?
        }
        None => {
            let addr = SocketAddr::new(args.bind, args.port);
            Listener::bind_tcp(addr).with_context(|| format!("listening on {addr}"))?
        }
    };
    let where_ = listener.describe();
    let server = Server::start(config, [listener]).context("starting the NBD server")?;
    eprintln!("mkmodule: serving on {where_}; stop with Ctrl-C or SIGTERM");
    let stop = server.stop_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let signal_handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("mkmodule: signal {signal}: stopping");
            stop.stop();
        }
    });
    server.wait();
    signal_handle.close();
    eprintln!("mkmodule: server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(
            parse_export("/srv/KNOPPIX", None).unwrap(),
            ExportSpec {
                name: "KNOPPIX".into(),
                path: "/srv/KNOPPIX".into()
            }
        );
        assert_eq!(
            parse_export("live=/srv/a.cloop", None).unwrap(),
            ExportSpec {
                name: "live".into(),
                path: "/srv/a.cloop".into()
            }
        );
        assert_eq!(
            parse_export("/srv/a.cloop", Some("root")).unwrap(),
            ExportSpec {
                name: "root".into(),
                path: "/srv/a.cloop".into()
            }
        );
        // A path with '=' in a directory name is a path, not NAME=IMAGE.
        assert_eq!(parse_export("/a=b/c.img", None).unwrap().name, "c");
    }
}
