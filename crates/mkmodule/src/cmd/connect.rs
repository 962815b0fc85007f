//! `mkmodule connect`: attach an NBD export to /dev/nbdN through the kernel's netlink interface
//! and stay resident, replacing every connection the kernel declares dead (same server with
//! backoff, then the next one), so a machine keeps its root across server restarts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mkmodule_connect::{AttachOptions, Attachment, Identity, NbdNetlink, ServerAddress};

/// Where each resident `connect` records what it serves, for `--list`.
const STATE_DIR: &str = "/run/mkmodule/connect";

/// The name the resident process runs under: systemd leaves processes whose argv[0] starts
/// with '@' alive at shutdown and across the switch from the initramfs ("root storage daemons").
const DAEMON_ARGV0: &str = "@mkmodule-connect";

/// Arguments of `mkmodule connect`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  mkmodule connect 192.0.2.1 -x root /dev/nbd0          attach, then stay in the background
  mkmodule connect 192.0.2.1 192.0.2.2:10900 -x root    failover to the second server
  mkmodule connect --list                               devices, servers, state
  mkmodule connect -d /dev/nbd0                         disconnect

Once attached, the command detaches into the background (argv[0] @mkmodule-connect, which
systemd spares at shutdown) and prints the device. When a connection dies, requests wait up to
--dead-timeout while it reconnects: first to the same server (--attempts times, backing off up
to 0.5 s), then to the next one in the list, round and round. A server that serves another
image (size or sampled content differs) is refused and the next one is tried. Stopping the
process (SIGTERM) leaves the device as it is, without reconnection. Needs the nbd module
(modprobe nbd) and root.")]
pub struct Args {
    /// Servers (HOST[:PORT], [IPV6]:PORT, unix:PATH), in the order to try them, then optionally
    /// the device (/dev/nbdN; default: the first free one).
    #[arg(value_name = "SERVER", required_unless_present_any = ["list", "disconnect"])]
    targets: Vec<String>,
    /// The export name (default: the server's default export).
    #[arg(short = 'x', long = "export", value_name = "NAME", default_value = "")]
    export: String,
    /// Connections to open (only when the server allows multi-conn).
    #[arg(short = 'C', long, value_name = "N", default_value_t = 1)]
    connections: usize,
    /// The device's block size (512, 1024, 2048 or 4096; default: the server's preferred size).
    #[arg(short = 'b', long, value_name = "BYTES")]
    block_size: Option<u64>,
    /// Seconds before an unanswered request counts its connection dead and is sent again (on
    /// the reconnected socket): after a server crash, the requests it had in flight wait this
    /// long. Too low for a slow link only causes needless reconnections.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    timeout: u64,
    /// Seconds requests wait for a reconnection when every connection is dead, before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    dead_timeout: u64,
    /// Seconds allowed for connecting to one server and negotiating.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    handshake_timeout: u64,
    /// Attempts on one server before trying the next.
    #[arg(long, value_name = "N", default_value_t = 3)]
    attempts: u32,
    /// Stay in the foreground instead of detaching once attached.
    #[arg(long)]
    foreground: bool,
    /// Disconnect DEVICE (its resident `connect` exits when it notices).
    #[arg(short = 'd', long, value_name = "DEVICE", conflicts_with_all = ["targets", "list"])]
    disconnect: Option<PathBuf>,
    /// List NBD devices: connected or not, and the server and export of each attached here.
    #[arg(short = 'l', long)]
    list: bool,
}

/// N of `/dev/nbdN`.
fn device_index(device: &Path) -> Result<u32> {
    device
        .to_str()
        .and_then(|d| d.strip_prefix("/dev/nbd"))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{} is not an NBD device (/dev/nbdN)", device.display()))
}

fn state_file(index: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("nbd{index}"))
}

/// Runs `mkmodule connect`.
pub fn run(args: Args) -> Result<()> {
    if args.list {
        return list();
    }
    if let Some(device) = &args.disconnect {
        let index = device_index(device)?;
        let netlink = NbdNetlink::open().context("opening the kernel's NBD netlink interface")?;
        netlink
            .disconnect(index)
            .with_context(|| format!("disconnecting {}", device.display()))?;
        let _ = std::fs::remove_file(state_file(index));
        println!("{}: disconnected", device.display());
        return Ok(());
    }
    let mut targets = args.targets.clone();
    let device = match targets.last() {
        Some(last) if last.starts_with("/dev/") => {
            Some(PathBuf::from(targets.pop().unwrap_or_default()))
        }
        _ => None,
    };
    if targets.is_empty() {
        bail!("no server given (SERVER[:PORT] before the device)");
    }
    let servers = targets
        .iter()
        .map(|t| {
            t.parse::<ServerAddress>()
                .with_context(|| format!("server {t:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(size) = args.block_size {
        if !(512..=4096).contains(&size) || !size.is_power_of_two() {
            bail!("--block-size {size}: use 512, 1024, 2048 or 4096");
        }
    }
    let options = AttachOptions {
        servers,
        export: args.export.clone(),
        index: device.as_deref().map(device_index).transpose()?,
        connections: args.connections.max(1),
        block_size: args.block_size,
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        dead_connection_timeout: Duration::from_secs(args.dead_timeout),
        handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
        attempts_per_server: args.attempts.max(1),
    };
    if args.foreground {
        return attach_and_supervise(options);
    }
    detach_into_background()
}

/// Starts this command again in the background (argv[0] @mkmodule-connect, its own session)
/// and returns once it printed the attached device, or fails with its error.
fn detach_into_background() -> Result<()> {
    let exe = std::env::current_exe().context("finding this program to run in the background")?;
    let mut child = Command::new(exe)
        .arg0(DAEMON_ARGV0)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .env("MKMODULE_CONNECT_READY", "stdout")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the background process")?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .context("no pipe to the background process")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the background process")?;
    if line.trim().is_empty() {
        let status = child.wait().context("waiting for the background process")?;
        bail!("the device was not attached ({status}; the reason is above)");
    }
    println!("{}", line.trim());
    Ok(())
}

fn attach_and_supervise(options: AttachOptions) -> Result<()> {
    let log: Arc<dyn Fn(&str) + Send + Sync> =
        Arc::new(|line: &str| eprintln!("mkmodule connect: {line}"));
    let netlink = NbdNetlink::open().context("opening the kernel's NBD netlink interface")?;
    let export = options.export.clone();
    let attachment = Attachment::attach(netlink, options, Arc::clone(&log))
        .with_context(|| format!("attaching export {export:?}"))?;
    let device = format!("/dev/nbd{}", attachment.index);
    log(&format!(
        "{device}: export {export:?} from {} ({}, {} connection(s))",
        attachment.server(),
        attachment.identity,
        attachment.connections()
    ));
    let (index, identity) = (attachment.index, attachment.identity.clone());
    let record = |server: &ServerAddress| write_state(index, server, &export, &identity);
    record(attachment.server());
    if std::env::var_os("MKMODULE_CONNECT_READY").is_some() {
        // The parent waits for this line, then exits; nothing else goes to stdout.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{device}").and_then(|()| out.flush());
        let _ = rustix::process::setsid();
    } else {
        println!("{device}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    // SIGHUP (a closing terminal) must not end the process that keeps the root alive.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    )
    .context("installing signal handlers")?;
    attachment
        .supervise(&stop, record)
        .with_context(|| format!("keeping {device} attached"))?;
    log(&format!(
        "{device}: stopped watching (the device stays as it is)"
    ));
    let _ = std::fs::remove_file(state_file(index));
    Ok(())
}

/// Records the device's server and export for `--list` (best effort: /run may be read-only).
fn write_state(index: u32, server: &ServerAddress, export: &str, identity: &Identity) {
    let text = format!(
        "pid={} server={server} export={export:?} identity=\"{identity}\"\n",
        std::process::id()
    );
    let _ =
        std::fs::create_dir_all(STATE_DIR).and_then(|()| std::fs::write(state_file(index), text));
}

fn list() -> Result<()> {
    let netlink = NbdNetlink::open().context("opening the kernel's NBD netlink interface")?;
    let devices = netlink.status(None).context("listing NBD devices")?;
    for d in devices {
        let state = std::fs::read_to_string(state_file(d.index)).unwrap_or_default();
        println!(
            "/dev/nbd{}\t{}\t{}",
            d.index,
            if d.connected { "connected" } else { "free" },
            state.trim()
        );
    }
    Ok(())
}
