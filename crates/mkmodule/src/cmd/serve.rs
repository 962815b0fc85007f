//! `mkmodule serve`: serve images over NBD, in the style of qemu-nbd and nbdkit; with `--cow`
//! the exports become writable through copy-on-write overlays (the images are never written).
//!
//! For boot servers: systemd socket activation (inherited listening sockets), readiness
//! notification (`READY=1`, `RELOADING=1`, `STOPPING=1`), and SIGHUP, which re-reads the export
//! list (`--exports-file`) and reopens changed images without dropping a connection. The Linux
//! kernel's NBD client never reconnects: a server behind a mounted root filesystem must stay up,
//! so SIGHUP, not a restart, is how its exports change.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use mkmodule_blockdev::{BlockDevice, FileDevice};
use mkmodule_format::FormatError;
use mkmodule_image::{Image, ImageDevice, ImageError, OpenOptions};
use mkmodule_nbd::{
    stderr_logger, DefaultExport, ExportEntry, IpNet, Listener, ReloadHandle, Server, ServerConfig,
    TlsCredentials, TlsMode, CA_CERT, DEFAULT_MAX_CONNECTIONS_PER_CLIENT, SERVER_CERT, SERVER_KEY,
};
use mkmodule_overlay::{check_chunk_size, Overlay, OverlayOptions};

use crate::systemd::{self, Notifier};
use crate::units::{human_bytes, parse_size};

/// Arguments of `mkmodule serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mkmodule serve KNOPPIX                      export \"KNOPPIX\" (and the default \"\") on 127.0.0.1:10809
  mkmodule serve -b 0.0.0.0 live=KNOPPIX boot=extra.img
  mkmodule serve -k /run/mkmodule.sock KNOPPIX
  mkmodule serve --cow root.cow KNOPPIX       writable; changes kept in root.cow across restarts
  mkmodule serve KNOPPIX --cow                writable; changes kept in memory until exit
  mkmodule serve -b 0.0.0.0 --exports-file /etc/mkmodule/exports
  mkmodule serve -b 0.0.0.0 --allow 192.168.1.0/24 --tls=require --tls-certificates DIR KNOPPIX
Clients: nbdinfo nbd://127.0.0.1/KNOPPIX, qemu-img info nbd://127.0.0.1:10809/KNOPPIX,
nbd-client HOST 10809 /dev/nbd0 -N KNOPPIX -b 4096
Over TLS: nbdinfo 'nbds://HOST/KNOPPIX?tls-certificates=DIR', qemu-img info --object
tls-creds-x509,id=tls0,dir=DIR,endpoint=client --image-opts
driver=nbd,server.type=inet,server.host=HOST,server.port=10809,export=KNOPPIX,tls-creds=tls0

Signals: SIGINT/SIGTERM stop the server. SIGHUP reloads the exports without dropping a
connection: it re-reads --exports-file and reopens every image whose file changed (replace an
image with `mv new.img KNOPPIX`, then `kill -HUP`); connections already open keep the export
they opened, new connections see the new list; an image that fails to open keeps its old export.
The kernel's NBD client (nbd-client, nbdroot) never reconnects, so while machines run from
this server, change exports with SIGHUP rather than restarting it.

Under systemd: socket activation (LISTEN_FDS: the inherited sockets replace --bind/--port/
--socket) and Type=notify readiness (READY=1, RELOADING=1, STOPPING=1 to NOTIFY_SOCKET) are
supported; see dist/systemd/.")]
pub struct Args {
    /// Images to serve: IMAGE (export named after the file stem) or NAME=IMAGE. A file that is
    /// not a cloop-family image is served as a raw disk image. The first is also the default
    /// export "".
    #[arg(value_name = "[NAME=]IMAGE")]
    exports: Vec<String>,

    /// Also serve the exports listed in FILE, one NAME=IMAGE (or IMAGE) per line; empty lines
    /// and lines starting with # are ignored, relative paths are relative to FILE's directory.
    /// They follow the command line's exports. SIGHUP re-reads FILE.
    #[arg(long, value_name = "FILE")]
    exports_file: Option<PathBuf>,

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

    /// BlockDevice name for a single IMAGE given without NAME= (default: the file stem).
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

    /// Most simultaneous connections from one client address (TCP); further ones are closed at
    /// once. 16 leaves room for multi-connection clients (nbdcopy and nbdfuse open 4) while one
    /// machine cannot take every slot; 0 means no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    max_connections_per_client: usize,

    /// Seconds a client may take from connecting to choosing its export; slower ones (stalled
    /// or deliberately slow handshakes) are closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    handshake_timeout: u64,

    /// Accept TCP clients from this address or network only (repeatable; IPv4 or IPv6, e.g.
    /// 192.168.1.0/24, 10.1.2.3, fd00::/8). Others are closed right after accept. Without
    /// --allow every address may connect; clients on the unix socket always may.
    #[arg(long = "allow", value_name = "ADDR[/PREFIX]")]
    allow: Vec<IpNet>,

    /// TLS (NBD_OPT_STARTTLS): off; on (clients choose, plaintext ones are served too); require
    /// (every option but STARTTLS is refused with "TLS required", and a plaintext client gets no
    /// export). on and require need --tls-certificates.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = TlsArg::Off)]
    tls: TlsArg,

    /// Directory of the TLS credentials, laid out as for qemu and nbdkit: server-cert.pem,
    /// server-key.pem, and ca-cert.pem (used with --tls-verify-peer).
    #[arg(long, value_name = "DIR")]
    tls_certificates: Option<PathBuf>,

    /// Require a client certificate signed by DIR/ca-cert.pem; clients without one fail the TLS
    /// handshake.
    #[arg(long)]
    tls_verify_peer: bool,

    /// Worker threads that decode and answer requests (default: 4 per core, 8 to 64).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Log every option and request (protocol tracing).
    #[arg(short, long)]
    verbose: bool,

    /// Make the exports writable through a copy-on-write overlay; the images are never written.
    /// Without FILE each export's overlay lives in memory (lost at exit, as large as what
    /// clients write). With FILE (one image only) the overlay is that sparse file: created if
    /// missing, reopened after a restart (refused if made for another image), durable at each
    /// client FLUSH/FUA. Fold it into a new image with `mkmodule commit`. Without FILE, put
    /// --cow after the images (or before another option), or it takes the next word as FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    cow: Option<Option<PathBuf>>,

    /// Chunk size of a new overlay: the unit copied from the image on a first write, a power
    /// of two from 4K to 1M.
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = parse_size)]
    cow_chunk_size: u64,
}

/// `--tls` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TlsArg {
    /// No TLS.
    Off,
    /// TLS at the client's choice.
    On,
    /// TLS required.
    Require,
}

/// Loads the TLS credentials the options ask for; `None` with `--tls=off`.
fn tls_settings(args: &Args) -> Result<(TlsMode, Option<TlsCredentials>)> {
    let mode = match args.tls {
        TlsArg::Off => TlsMode::Off,
        TlsArg::On => TlsMode::On,
        TlsArg::Require => TlsMode::Require,
    };
    let Some(dir) = &args.tls_certificates else {
        if mode != TlsMode::Off {
            bail!(
                "--tls={} needs --tls-certificates DIR (holding {SERVER_CERT}, {SERVER_KEY} and \
                 {CA_CERT})",
                if mode == TlsMode::On { "on" } else { "require" }
            );
        }
        if args.tls_verify_peer {
            bail!("--tls-verify-peer needs --tls=on or --tls=require and --tls-certificates DIR");
        }
        return Ok((mode, None));
    };
    if mode == TlsMode::Off {
        bail!(
            "--tls-certificates {} is given but TLS is off: add --tls=require (or --tls=on)",
            dir.display()
        );
    }
    let creds = TlsCredentials::load(dir, args.tls_verify_peer)
        .with_context(|| format!("loading the TLS credentials from {}", dir.display()))?;
    eprintln!(
        "mkmodule: TLS {}, certificate {}{}",
        if mode == TlsMode::Require {
            "required"
        } else {
            "offered"
        },
        dir.join(SERVER_CERT).display(),
        if args.tls_verify_peer {
            format!(
                "; client certificates must be signed by {}",
                dir.join(CA_CERT).display()
            )
        } else {
            String::new()
        }
    );
    Ok((mode, Some(creds)))
}

/// One export as given on the command line or in the exports file.
#[derive(Debug, Clone, PartialEq, Eq)]
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
fn open_export(path: &Path, cache_bytes: u64) -> Result<(Arc<dyn BlockDevice>, String)> {
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
            Ok((Arc::new(ImageDevice::new(Arc::new(image))), what))
        }
        Err(ImageError::Format(FormatError::NotCloop { .. })) => {
            let export = FileDevice::open(path)
                .with_context(|| format!("opening {} as a raw image", path.display()))?;
            let what = format!("raw file, {}", human_bytes(export.size()));
            Ok((Arc::new(export), what))
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// Puts a copy-on-write overlay over `base`: in memory, or in `file` (opened or created).
fn add_overlay(
    base: Arc<dyn BlockDevice>,
    image: &Path,
    file: Option<&Path>,
    chunk_size: u32,
) -> Result<(Arc<Overlay>, String)> {
    let options = OverlayOptions::default()
        .with_chunk_size(chunk_size)
        .with_label(image.display().to_string());
    let overlay = match file {
        None => Overlay::in_memory(base, &options)?,
        Some(file) => Overlay::open_or_create(file, base, &options)
            .with_context(|| format!("opening the overlay {}", file.display()))?,
    };
    let stats = overlay.stats();
    let what = match file {
        None => format!(
            "writable, changes in memory in chunks of {}",
            human_bytes(u64::from(stats.chunk_size))
        ),
        Some(file) => format!(
            "writable, changes in {} ({} chunks of {} written, {} zeroed)",
            file.display(),
            stats.data_chunks,
            human_bytes(u64::from(stats.chunk_size)),
            stats.zero_chunks
        ),
    };
    Ok((Arc::new(overlay), what))
}

/// Reads an exports file: one `NAME=IMAGE` or `IMAGE` per line, `#` comments, paths relative
/// to the file's directory.
fn read_exports_file(file: &Path) -> Result<Vec<ExportSpec>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the exports file {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `NAME = IMAGE` may have blanks around the '='.
        let line = match line.split_once('=') {
            Some((name, path)) if !name.contains('/') => {
                format!("{}={}", name.trim_end(), path.trim_start())
            }
            _ => line.to_string(),
        };
        let mut spec = parse_export(&line, None)
            .with_context(|| format!("{} line {}", file.display(), number + 1))?;
        if spec.path.is_relative() {
            spec.path = base.join(&spec.path);
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// An error and its causes on one line, each once.
fn error_text(e: &anyhow::Error) -> String {
    super::describe(e)
}

/// What identifies an image file's contents well enough to notice a replaced or rewritten file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

/// One export being served, with what it was opened from.
#[derive(Clone)]
struct Live {
    spec: ExportSpec,
    id: Option<FileId>,
    description: String,
    export: Arc<dyn BlockDevice>,
}

/// How exports are opened: cache size, overlays, descriptions.
struct Opener {
    cache_size: u64,
    /// `Some(None)`: overlays in memory; `Some(Some(file))`: the one overlay file.
    cow: Option<Option<PathBuf>>,
    chunk_size: u32,
    description: Option<String>,
    /// Overlays kept in files, flushed at exit.
    file_overlays: Mutex<Vec<Arc<Overlay>>>,
}

impl Opener {
    fn open(&self, spec: &ExportSpec) -> Result<Live> {
        let id = file_id(&spec.path);
        let (mut export, mut what) = open_export(&spec.path, self.cache_size)?;
        if let Some(cow_file) = &self.cow {
            let (overlay, how) =
                add_overlay(export, &spec.path, cow_file.as_deref(), self.chunk_size)?;
            if overlay.path().is_some() {
                self.file_overlays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(overlay.clone());
            }
            export = overlay;
            what = format!("{what}; {how}");
        }
        let description = self
            .description
            .clone()
            .unwrap_or_else(|| spec.path.display().to_string());
        eprintln!(
            "mkmodule: export {:?}: {} ({what})",
            spec.name,
            spec.path.display()
        );
        Ok(Live {
            spec: spec.clone(),
            id,
            description,
            export,
        })
    }
}

/// The export list: where it comes from and what is served now.
struct Exports {
    command_line: Vec<ExportSpec>,
    file: Option<PathBuf>,
    opener: Opener,
    live: Vec<Live>,
}

impl Exports {
    /// All specs, command line first; refuses a name used twice.
    fn specs(&self) -> Result<Vec<ExportSpec>> {
        let mut specs = self.command_line.clone();
        if let Some(file) = &self.file {
            specs.extend(read_exports_file(file)?);
        }
        let mut seen = HashSet::new();
        for spec in &specs {
            if !seen.insert(spec.name.as_str()) {
                bail!("export name {:?} is given twice", spec.name);
            }
        }
        if specs.is_empty() {
            bail!("no image to serve: the command line and the exports file list none");
        }
        Ok(specs)
    }

    /// Opens every export; any failure is fatal (used at start).
    fn open_all(&mut self) -> Result<()> {
        let specs = self.specs()?;
        if let (Some(Some(file)), true) = (&self.opener.cow, specs.len() > 1) {
            bail!(
                "--cow {} keeps the changes of one image, but {} images are served: give one \
                 image, or --cow without FILE for overlays in memory",
                file.display(),
                specs.len()
            );
        }
        self.live = specs
            .iter()
            .map(|spec| self.opener.open(spec))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The table for the NBD server.
    fn entries(&self) -> Vec<ExportEntry> {
        self.live
            .iter()
            .map(|l| ExportEntry {
                name: l.spec.name.clone(),
                description: l.description.clone(),
                export: Arc::clone(&l.export),
            })
            .collect()
    }

    /// Works out the next table: unchanged images keep their open export, changed or new ones
    /// are opened, and an image that fails to open keeps its old export (or is left out when it
    /// is new). Under --cow an export that stays keeps its overlay whatever happened to its
    /// image: two overlays over one export would disagree. Returns the table and a summary;
    /// an unreadable exports file or a bad table refuses the whole reload.
    fn next(&self) -> Result<(Vec<Live>, String)> {
        let specs = self.specs()?;
        let mut next = Vec::new();
        let mut notes = Vec::new();
        for spec in &specs {
            let old = self.live.iter().find(|l| l.spec.name == spec.name);
            if let Some(old) = old {
                let same = old.spec.path == spec.path && old.id == file_id(&spec.path);
                if same {
                    next.push(old.clone());
                    continue;
                }
                if self.opener.cow.is_some() {
                    eprintln!(
                        "mkmodule: export {:?}: {} changed, but under --cow the export keeps \
                         the image its overlay was made over (restart to change it)",
                        spec.name,
                        spec.path.display()
                    );
                    next.push(old.clone());
                    continue;
                }
            }
            match (self.opener.open(spec), old) {
                (Ok(live), old) => {
                    notes.push(format!(
                        "{} {:?}",
                        if old.is_some() { "reopened" } else { "added" },
                        spec.name
                    ));
                    next.push(live);
                }
                (Err(e), Some(old)) => {
                    eprintln!(
                        "mkmodule: error: export {:?}: {}; keeping the export opened from {}",
                        spec.name,
                        error_text(&e),
                        old.spec.path.display()
                    );
                    notes.push(format!("kept {:?} (reopen failed)", spec.name));
                    next.push(old.clone());
                }
                (Err(e), None) => {
                    eprintln!(
                        "mkmodule: error: export {:?}: {}; not added",
                        spec.name,
                        error_text(&e)
                    );
                    notes.push(format!("not added {:?}", spec.name));
                }
            }
        }
        for old in &self.live {
            if !next.iter().any(|l| l.spec.name == old.spec.name) {
                notes.push(format!("removed {:?}", old.spec.name));
            }
        }
        if next.is_empty() {
            bail!("no export could be opened");
        }
        let summary = if notes.is_empty() {
            "nothing changed".to_string()
        } else {
            notes.join(", ")
        };
        Ok((next, summary))
    }

    /// SIGHUP: swaps in the next table; established connections are untouched.
    fn reload(&mut self, server: &ReloadHandle) -> Result<String> {
        let (next, summary) = self.next()?;
        let entries: Vec<ExportEntry> = next
            .iter()
            .map(|l| ExportEntry {
                name: l.spec.name.clone(),
                description: l.description.clone(),
                export: Arc::clone(&l.export),
            })
            .collect();
        server
            .replace_exports(entries, DefaultExport::First)
            .context("the new export table")?;
        self.live = next;
        Ok(summary)
    }

    fn status(&self) -> String {
        let names: Vec<&str> = self.live.iter().map(|l| l.spec.name.as_str()).collect();
        format!("serving {} export(s): {}", names.len(), names.join(" "))
    }
}

/// The listening sockets: inherited from the service manager, or bound here.
fn listeners(args: &Args) -> Result<Vec<Listener>> {
    if let Some(fds) = systemd::listen_fds()? {
        let listeners = fds
            .into_iter()
            .map(Listener::from_fd)
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("using the sockets passed by the service manager")?;
        eprintln!(
            "mkmodule: socket activation: {} inherited socket(s); --bind, --port and --socket \
             are not used",
            listeners.len()
        );
        return Ok(listeners);
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
    Ok(vec![listener])
}

/// Runs `mkmodule serve`.
pub fn run(args: Args) -> Result<()> {
    if args.exports.is_empty() && args.exports_file.is_none() {
        match &args.cow {
            Some(Some(file)) => bail!(
                "no image to serve: --cow took {} as its overlay FILE (for overlays in memory, \
                 put --cow after the images)",
                file.display()
            ),
            _ => bail!("no image to serve: give at least one [NAME=]IMAGE"),
        }
    }
    if args.export_name.is_some() && args.exports.len() > 1 {
        bail!("--export-name names a single image; with several, write NAME=IMAGE for each");
    }
    if let (Some(Some(file)), Some(_)) = (&args.cow, &args.exports_file) {
        bail!(
            "--cow {} keeps the changes of one image and cannot follow an --exports-file: give \
             the image on the command line, or --cow without FILE for overlays in memory",
            file.display()
        );
    }
    if let Some(Some(file)) = &args.cow {
        if args.exports.len() > 1 {
            bail!(
                "--cow {} keeps the changes of one image, but {} images are served: give one \
                 image, or --cow without FILE for overlays in memory",
                file.display(),
                args.exports.len()
            );
        }
    }
    let (tls_mode, tls_credentials) = tls_settings(&args)?;
    let chunk_size = u32::try_from(args.cow_chunk_size)
        .ok()
        .filter(|&n| check_chunk_size(n).is_ok())
        .with_context(|| {
            format!(
                "--cow-chunk-size {} is not possible: it must be a power of two from 4K to 1M",
                args.cow_chunk_size
            )
        })?;
    let command_line = args
        .exports
        .iter()
        .map(|text| parse_export(text, args.export_name.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    // Signals are caught from here on, so an early SIGHUP cannot kill a starting server.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let mut exports = Exports {
        command_line,
        file: args.exports_file.clone(),
        opener: Opener {
            cache_size: args.cache_size,
            cow: args.cow.clone(),
            chunk_size,
            description: args.description.clone(),
            file_overlays: Mutex::new(Vec::new()),
        },
        live: Vec::new(),
    };
    exports.open_all()?;

    let logger = stderr_logger();
    let per_client = match args.max_connections_per_client {
        0 => usize::MAX,
        n => n,
    };
    if !args.allow.is_empty() {
        let nets: Vec<String> = args.allow.iter().map(ToString::to_string).collect();
        eprintln!("mkmodule: TCP clients allowed from {}", nets.join(", "));
    }
    let mut config = ServerConfig::new()
        .with_max_connections(args.max_connections)
        .with_max_connections_per_client(per_client)
        .with_handshake_timeout(std::time::Duration::from_secs(args.handshake_timeout))
        .with_allowed_clients(args.allow.clone())
        .with_tls(tls_mode, tls_credentials)
        .with_trace(args.verbose)
        .with_logger(logger.clone());
    if let Some(threads) = args.threads {
        config = config.with_workers(threads.max(1));
    }
    config.exports = exports.entries();
    let listeners = listeners(&args)?;
    let where_: Vec<String> = listeners.iter().map(Listener::describe).collect();
    let server = Server::start(config, listeners).context("starting the NBD server")?;
    let notifier = Arc::new(Notifier::from_env());
    eprintln!(
        "mkmodule: serving on {}; stop with Ctrl-C or SIGTERM, reload exports with SIGHUP",
        where_.join(", ")
    );
    notifier.notify(&format!("READY=1\nSTATUS={}", exports.status()));
    if notifier.enabled() {
        eprintln!("mkmodule: told the service manager we are ready");
    }

    let stop = server.stop_handle();
    let reload = server.reload_handle();
    let signal_handle = signals.handle();
    let notify = Arc::clone(&notifier);
    let signal_thread = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGHUP {
                notify.notify("RELOADING=1\nSTATUS=reloading the exports");
                match exports.reload(&reload) {
                    Ok(summary) => eprintln!("mkmodule: SIGHUP: exports reloaded: {summary}"),
                    Err(e) => eprintln!(
                        "mkmodule: error: SIGHUP: reload refused, the exports stay as they \
                         were: {}",
                        error_text(&e)
                    ),
                }
                notify.notify(&format!("READY=1\nSTATUS={}", exports.status()));
                continue;
            }
            eprintln!("mkmodule: signal {signal}: stopping");
            notify.notify("STOPPING=1\nSTATUS=stopping");
            stop.stop();
            break;
        }
        exports
    });
    server.wait();
    signal_handle.close();
    notifier.notify("STOPPING=1");
    let exports = signal_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the signal thread panicked"))?;
    let overlays = std::mem::take(
        &mut *exports
            .opener
            .file_overlays
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    for overlay in &overlays {
        if let Some(path) = overlay.path() {
            overlay
                .flush()
                .with_context(|| format!("flushing the overlay {}", path.display()))?;
            let stats = overlay.stats();
            eprintln!(
                "mkmodule: overlay {} flushed: {} chunks written, {} zeroed",
                path.display(),
                stats.data_chunks,
                stats.zero_chunks
            );
        }
    }
    eprintln!("mkmodule: server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn cow_with_and_without_a_file() {
        let a = parse(&["--cow", "r.cow", "-k", "s", "KNOPPIX"]);
        assert_eq!(a.cow, Some(Some(PathBuf::from("r.cow"))));
        assert_eq!(a.exports, ["KNOPPIX"]);
        let a = parse(&["KNOPPIX", "--cow"]);
        assert_eq!(a.cow, Some(None));
        let a = parse(&["--cow", "-k", "s", "KNOPPIX"]);
        assert_eq!(
            (a.cow, a.exports),
            (Some(None), vec!["KNOPPIX".to_string()])
        );
        let a = parse(&["--cow=r.cow", "KNOPPIX"]);
        assert_eq!(a.cow, Some(Some(PathBuf::from("r.cow"))));
        assert_eq!(parse(&["KNOPPIX"]).cow, None);
        // `--cow IMAGE` leaves no image: refused with a sentence that says why.
        let err = run(parse(&["--cow", "KNOPPIX"])).unwrap_err().to_string();
        assert!(err.contains("--cow took KNOPPIX"), "{err}");
        let err = run(parse(&["--cow", "x.cow", "a.img", "b.img"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("one image"), "{err}");
        let err = run(parse(&["--cow", "--cow-chunk-size", "3000", "a.img"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("power of two"), "{err}");
    }

    #[test]
    fn tls_and_admission_options() {
        let a = parse(&["KNOPPIX"]);
        assert_eq!((a.tls, a.max_connections_per_client), (TlsArg::Off, 16));
        assert!(a.allow.is_empty());
        let a = parse(&[
            "--allow",
            "10.0.0.0/8",
            "--allow=fd00::/8",
            "--tls=require",
            "--tls-certificates",
            "/nonexistent",
            "KNOPPIX",
        ]);
        assert_eq!(a.allow.len(), 2);
        assert_eq!(a.tls, TlsArg::Require);
        let err = error_text(&tls_settings(&a).unwrap_err());
        assert!(err.contains("/nonexistent/server-cert.pem"), "{err}");
        let bad = Cli::try_parse_from(["serve", "--allow", "10.0.0.0/33", "K"]).unwrap_err();
        assert!(bad.to_string().contains("10.0.0.0/33"), "{bad}");
        let err = tls_settings(&parse(&["--tls=on", "K"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-certificates"), "{err}");
        let err = tls_settings(&parse(&["--tls-certificates", "d", "K"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS is off"), "{err}");
        let err = tls_settings(&parse(&["--tls-verify-peer", "K"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-verify-peer"), "{err}");
    }

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

    #[test]
    fn exports_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exports");
        std::fs::write(
            &file,
            "# boot images\n\n  live = sub/a.img\nroot=/srv/root.cloop\nplain.img\n",
        )
        .unwrap();
        let specs = read_exports_file(&file).unwrap();
        let got: Vec<(&str, PathBuf)> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.path.clone()))
            .collect();
        assert_eq!(got[0], ("live", dir.path().join("sub/a.img")));
        assert_eq!(got[1], ("root", PathBuf::from("/srv/root.cloop")));
        assert_eq!(got[2], ("plain", dir.path().join("plain.img")));
        assert_eq!(got.len(), 3);
        std::fs::write(&file, "/a=b/c.img\n").unwrap();
        assert_eq!(read_exports_file(&file).unwrap()[0].name, "c");
        std::fs::write(&file, "ok=x.img\n/\n").unwrap();
        assert!(read_exports_file(&file).is_err());
    }

    fn random_file(path: &Path, len: usize, seed: u8) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect();
        std::fs::write(path, data).unwrap();
    }

    fn exports_from(file: &Path) -> Exports {
        Exports {
            command_line: Vec::new(),
            file: Some(file.to_path_buf()),
            opener: Opener {
                cache_size: 1 << 20,
                cow: None,
                chunk_size: 64 << 10,
                description: None,
                file_overlays: Mutex::new(Vec::new()),
            },
            live: Vec::new(),
        }
    }

    #[test]
    fn reload_reopens_changed_images_and_keeps_what_fails() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        random_file(&d.join("a.img"), 8192, 1);
        random_file(&d.join("b.img"), 4096, 2);
        let file = d.join("exports");
        std::fs::write(&file, "a=a.img\nb=b.img\n").unwrap();
        let mut exports = exports_from(&file);
        exports.open_all().unwrap();
        let first: Vec<Arc<dyn BlockDevice>> =
            exports.live.iter().map(|l| l.export.clone()).collect();

        // Nothing changed: the very same open exports.
        let (next, summary) = exports.next().unwrap();
        assert_eq!(summary, "nothing changed");
        assert!(Arc::ptr_eq(&next[0].export, &first[0]));
        assert!(Arc::ptr_eq(&next[1].export, &first[1]));

        // a.img replaced (new inode), b.img gone, c added, d missing.
        random_file(&d.join("a.new"), 16384, 3);
        std::fs::rename(d.join("a.new"), d.join("a.img")).unwrap();
        std::fs::remove_file(d.join("b.img")).unwrap();
        random_file(&d.join("c.img"), 512, 4);
        std::fs::write(&file, "a=a.img\nb=b.img\nc=c.img\nd=d.img\n").unwrap();
        let (next, summary) = exports.next().unwrap();
        assert_eq!(
            summary,
            r#"reopened "a", kept "b" (reopen failed), added "c", not added "d""#
        );
        let names: Vec<&str> = next.iter().map(|l| l.spec.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(next[0].export.size(), 16384);
        assert!(Arc::ptr_eq(&next[1].export, &first[1]));
        exports.live = next;

        // Removing a line removes the export; a bad file or an empty list refuses the reload.
        std::fs::write(&file, "c=c.img\n").unwrap();
        let (next, summary) = exports.next().unwrap();
        assert_eq!(summary, r#"removed "a", removed "b""#);
        assert_eq!(next.len(), 1);
        std::fs::write(&file, "c=c.img\nc=a.img\n").unwrap();
        let err = exports.next().err().unwrap().to_string();
        assert!(err.contains("twice"), "{err}");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(exports.next().is_err());
        std::fs::write(&file, "x=missing.img\n").unwrap();
        assert!(exports.next().is_err());
        std::fs::remove_file(&file).unwrap();
        assert!(exports.next().is_err());
    }
}
