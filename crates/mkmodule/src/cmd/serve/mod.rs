//! `mkmodule serve`: serve images over NBD, in the style of qemu-nbd and nbdkit; with `--cow`
//! the exports become writable through copy-on-write overlays (the images are never written).
//!
//! For boot servers: systemd socket activation (inherited listening sockets), readiness
//! notification (`READY=1`, `RELOADING=1`, `STOPPING=1`), and SIGHUP, which re-reads the export
//! list (`--exports-file`) and reopens changed images without dropping a connection. SIGTERM
//! drains: the requests already read are answered before the connections close, so clients
//! attached with `mkmodule connect` reconnect to the restarted server without losing any
//! (nbd-client never reconnects: for its machines, SIGHUP, not a restart, changes exports).

mod exports;
mod trace;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mkmodule_blockdev::BlockDevice;
use mkmodule_nbd::{
    stderr_logger, IpNet, Listener, Server, ServerConfig, TlsCredentials, TlsMode, CA_CERT,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT, SERVER_CERT, SERVER_KEY,
};
use mkmodule_overlay::check_chunk_size;

use crate::cmd::describe;
use crate::systemd::{self, Notifier};
use crate::units::parse_size;

use exports::{parse_export, Exports, Opener};

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

Signals: SIGINT/SIGTERM stop the server after answering the requests it has read
(--drain-timeout); a second one stops it at once. SIGHUP reloads the exports without dropping a
connection: it re-reads --exports-file and reopens every image whose file changed (replace an
image with `mv new.img KNOPPIX`, then `kill -HUP`); connections already open keep the export
they opened, new connections see the new list; an image that fails to open keeps its old export.
Machines attached with nbd-client never reconnect: while they run from this server, change
exports with SIGHUP rather than restarting it. Machines attached with `mkmodule connect` wait
and reconnect, to this server once restarted or to the next one they were given.

Under systemd: socket activation (LISTEN_FDS: the inherited sockets replace --bind/--port/
--socket) and Type=notify readiness (READY=1, RELOADING=1, STOPPING=1 to NOTIFY_SOCKET) are
supported; see dist/systemd/.")]
pub struct Args {
    /// Images to serve: IMAGE (export named after the file stem) or NAME=IMAGE; an IMAGE may be
    /// an http:// or https:// URL. A file that is not a cloop-family image is served as a raw
    /// disk image. The first is also the default
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

    /// Description shown to clients (nbdinfo prints it); default: the image's file name
    /// (never its directory, nor an URL's host or query).
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

    /// Write every read request to FILE, one line each in arrival order: microseconds since
    /// the first read, offset, length (after a `#` header line). For recording what a client
    /// such as a booting machine reads, to replay it later.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// On SIGTERM or SIGINT, stop reading new requests, answer those already received, then
    /// close each connection; past this many seconds close whatever is left (a second signal
    /// closes at once). A client such as `mkmodule connect` then reconnects to the restarted
    /// server, losing nothing.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    drain_timeout: u64,

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

    #[command(flatten)]
    remote: crate::remote::RemoteArgs,
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
    let opener = Opener::new(
        args.cache_size,
        args.cow.clone(),
        chunk_size,
        args.description.clone(),
        args.remote.clone(),
    );
    let mut exports = Exports::new(command_line, args.exports_file.clone(), opener);
    exports.open_all()?;

    let logger = match &args.trace {
        Some(path) => trace::tracing_logger(path, stderr_logger(), args.verbose)?,
        None => stderr_logger(),
    };
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
        .with_trace(args.verbose || args.trace.is_some())
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
    let drain_timeout = args.drain_timeout;
    let signal_thread = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGHUP {
                notify.notify("RELOADING=1\nSTATUS=reloading the exports");
                match exports.reload(&reload) {
                    Ok(summary) => eprintln!("mkmodule: SIGHUP: exports reloaded: {summary}"),
                    Err(e) => eprintln!(
                        "mkmodule: error: SIGHUP: reload refused, the exports stay as they \
                         were: {}",
                        describe(&e)
                    ),
                }
                notify.notify(&format!("READY=1\nSTATUS={}", exports.status()));
                continue;
            }
            if stop.is_stopping() {
                eprintln!("mkmodule: signal {signal} again: closing every connection now");
                stop.stop();
                break;
            }
            eprintln!(
                "mkmodule: signal {signal}: stopping; answering the requests already received \
                 (at most {drain_timeout} s), then closing"
            );
            notify.notify("STOPPING=1\nSTATUS=stopping");
            stop.drain(std::time::Duration::from_secs(drain_timeout));
        }
        exports
    });
    server.wait();
    signal_handle.close();
    notifier.notify("STOPPING=1");
    let exports = signal_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the signal thread panicked"))?;
    let overlays = exports.file_overlays();
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
        let err = describe(&tls_settings(&a).unwrap_err());
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
}
