//! `cargo xtask storm [--record] [--clients N] [--mkmodule PATH]`: the boot-storm benchmark. Many machines boot
//! from one image at once, the image kept on a central web origin.
//!
//! 1. The trace: the block reads of a real boot. A qemu guest (TCG, `scripts/guest-boot-test.sh`)
//!    boots the corpus `rootfs.ext4` (a Debian with systemd) from `/dev/nbd0`, the kernel's NBD
//!    client talking to `mkmodule serve --trace FILE`, until systemd reaches the multi-user
//!    target (or a time bound). The trace is kept in `target/storm/` under the first 16 hex
//!    digits of the raw image's SHA-256 and reused until the image changes or `--record`.
//! 2. The origin: nginx on 127.0.0.1 serving the compressed image (`mkmodule create`, v2 zlib,
//!    64 KiB blocks, which qemu's cloop driver reads too) and the raw image, with an access log
//!    of the body bytes sent.
//! 3. The storm: N clients (default 32), each its own NBD connection, replay the trace at once,
//!    each in the recorded order as fast as answered (`mkmodule_testkit::replay`); client 0
//!    checks every reply against the raw image. Against:
//!    `mkmodule serve URL --cache-dir DIR` cold (empty DIR) and warm (restarted on the same
//!    DIR); `mkmodule serve FILE` (the local reference); qemu-nbd with qemu's cloop driver over
//!    its curl driver (`scripts/install-qemu-curl.sh`); nbdkit's curl plugin with its cache
//!    filter over the raw image (`cache-on-read=true`: by default it caches only writes), cold
//!    (new process) and warm (second storm, same process).
//!
//! Reported (stdout and `target/storm.md`): origin bytes over the compressed bytes of the
//! trace's distinct blocks, aggregate MB/s of data the clients received, p50/p99 latency per
//! request, and ratios against qemu-nbd and the local file; then, for each row that read the
//! compressed image, where its origin bytes went (`storm_origin`). Every process is stopped by
//! its id and every wait is bounded.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mkmodule_format::{detect, BlockIndex, PROBE_LEN};
use mkmodule_testkit::nginx::Nginx;
use mkmodule_testkit::process::free_port;
use mkmodule_testkit::replay::{distinct_blocks, parse_trace, replay, ReplayReport, TraceRead};

use crate::common::{corpus_dir, positive_arg, require_tools, workspace_root};
use crate::storm_origin::{breakdown, Breakdown};
use crate::{cargo, run};

/// Clients of the storm unless `--clients` says otherwise.
const DEFAULT_CLIENTS: usize = 32;
/// Bound on the recorded boot.
const BOOT_SECONDS: u64 = 420;
/// The console line that ends the recorded boot.
const BOOT_UNTIL: &str = "Reached target.*(Multi-User System|Graphical Interface)";
/// The export name every server uses.
const EXPORT: &str = "root";
/// The compressed image's name at the origin.
const IMAGE_NAME: &str = "rootfs.cloop";

/// `cargo xtask storm`.
pub fn storm(args: &[String]) -> Result<()> {
    let mut record = false;
    let mut clients = DEFAULT_CLIENTS;
    let mut given: Option<PathBuf> = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--record" => record = true,
            "--clients" => clients = positive_arg(&mut words, "--clients")?,
            "--mkmodule" => {
                let path = words.next().context("--mkmodule needs a path")?;
                given = Some(std::fs::canonicalize(path).with_context(|| path.clone())?);
            }
            other => bail!(
                "storm: unknown argument {other:?} (expected --record, --clients N, --mkmodule PATH)"
            ),
        }
    }
    let root = workspace_root()?;
    // Another build (an earlier commit's, say) to compare; by default this tree's release build.
    let mkmodule = match given {
        Some(path) => path,
        None => {
            cargo(&["build", "--release", "-p", "mkmodule"])?;
            root.join("target/release/mkmodule")
        }
    };
    let raw = corpus_dir().join("rootfs.ext4");
    if !raw.is_file() {
        bail!(
            "{} not found: build the corpus with scripts/make-corpus.sh (CORPUS=DIR)",
            raw.display()
        );
    }
    let report = section(&mkmodule, &std::fs::canonicalize(&raw)?, clients, record)?;
    let out = root.join("target/storm.md");
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("{report}");
    eprintln!("storm: the report is in {}", out.display());
    Ok(())
}

/// The storm benchmark as a markdown section (also a section of `cargo xtask compare`):
/// records the trace when there is none for this image (or when `record`), then runs it.
pub fn section(mkmodule: &Path, raw: &Path, clients: usize, record: bool) -> Result<String> {
    require_tools(&["nbdkit", "sha256sum", "bash"])?;
    let root = workspace_root()?;
    let scratch = root.join("target/storm");
    let www = scratch.join("www");
    std::fs::create_dir_all(&www)?;
    let image = www.join(IMAGE_NAME);
    make_image(mkmodule, raw, &image)?;
    let raw_link = www.join("rootfs.raw");
    let _ = std::fs::remove_file(&raw_link);
    std::os::unix::fs::symlink(raw, &raw_link)?;

    let digest = sha256_prefix(raw)?;
    let trace_path = scratch.join(format!("trace-{digest}.txt"));
    let boot_path = scratch.join(format!("trace-{digest}.boot"));
    if record || !trace_path.is_file() {
        record_trace(mkmodule, &image, &trace_path, &boot_path)?;
    }
    let trace = parse_trace(&std::fs::read_to_string(&trace_path)?).map_err(|e| anyhow!(e))?;
    if trace.is_empty() {
        bail!("{} holds no reads", trace_path.display());
    }
    let boot = std::fs::read_to_string(&boot_path).unwrap_or_default();
    let blocks = TraceBlocks::of(&image, &trace)?;
    let (distinct, compressed) = (blocks.distinct, blocks.compressed());
    let trace_bytes: u64 = trace.iter().map(|r| u64::from(r.len)).sum();

    let nginx = Nginx::start(&www, &scratch.join("nginx")).map_err(|e| anyhow!(e))?;
    let raw_file = File::open(raw)?;
    let storm = Storm {
        nginx: &nginx,
        trace: &trace,
        clients,
        raw: &raw_file,
        blocks: &blocks,
    };
    let image_url = nginx.url(IMAGE_NAME);
    let mut rows = Vec::new();

    // mkmodule from the origin: cold, then warm (restarted on the same cache directory).
    if serve_takes_urls(mkmodule)? {
        let cache = scratch.join("cache");
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache)?;
        for label in [
            "mkmodule serve URL, cold cache",
            "mkmodule serve URL, warm cache",
        ] {
            let port = free_port();
            let args = serve_args(
                port,
                &["--cache-dir".into(), path_arg(&cache), image_url.clone()],
            );
            rows.push(storm.run(label, mkmodule.as_os_str(), &args, &[], port)?);
        }
    } else {
        rows.push(Row::missing(
            "mkmodule serve URL",
            "this build of `mkmodule serve` takes no URL (no --cache-dir)",
        ));
    }
    {
        let port = free_port();
        let args = serve_args(port, &[path_arg(&image)]);
        rows.push(storm.run(
            "mkmodule serve FILE (local)",
            mkmodule.as_os_str(),
            &args,
            &[],
            port,
        )?);
    }
    match qemu_curl() {
        Ok((qemu_nbd, modules)) => {
            let port = free_port();
            let json = format!(
                r#"json:{{"driver":"cloop","file":{{"driver":"http","url":"{image_url}"}}}}"#
            );
            let args: Vec<String> = [
                "-r",
                "-t",
                "-e",
                "0",
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-x",
                EXPORT,
                &json,
            ]
            .map(String::from)
            .to_vec();
            rows.push(storm.run(
                "qemu-nbd, cloop over curl",
                qemu_nbd.as_os_str(),
                &args,
                &[("QEMU_MODULE_DIR", modules)],
                port,
            )?);
        }
        Err(e) => rows.push(Row::missing("qemu-nbd, cloop over curl", &format!("{e:#}"))),
    }
    {
        let port = free_port();
        let args: Vec<String> = [
            "-f",
            "-r",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-e",
            EXPORT,
            "--filter=cache",
            "curl",
            &nginx.url("rootfs.raw"),
            "cache-on-read=true",
        ]
        .map(String::from)
        .to_vec();
        rows.extend(storm.run_twice(
            [
                "nbdkit curl + cache filter (raw), cold",
                "nbdkit curl + cache filter (raw), warm",
            ],
            std::ffi::OsStr::new("nbdkit"),
            &args,
            port,
        )?);
    }
    drop(nginx);

    Ok(render(&Summary {
        trace: &trace,
        trace_bytes,
        distinct,
        compressed,
        clients,
        boot: boot.trim(),
        trace_path: &trace_path,
        rows: &rows,
    }))
}

/// `mkmodule serve` arguments common to every mkmodule row.
fn serve_args(port: u16, rest: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "-b",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-x",
        EXPORT,
        "--max-connections-per-client",
        "0",
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(rest);
    args
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// The benchmark image: `mkmodule create`, v2 zlib in 64 KiB blocks, remade when the raw image
/// is newer.
fn make_image(mkmodule: &Path, raw: &Path, image: &Path) -> Result<()> {
    let newer = |a: &Path, b: &Path| -> Result<bool> {
        Ok(std::fs::metadata(a)?.modified()? > std::fs::metadata(b)?.modified()?)
    };
    if image.is_file() && !newer(raw, image)? {
        return Ok(());
    }
    run(Command::new(mkmodule)
        .arg(raw)
        .arg("-o")
        .arg(image)
        .args(["--format", "v2", "-c", "zlib", "-B", "64K", "-f", "-q"]))
}

/// The first 16 hex digits of `path`'s SHA-256.
fn sha256_prefix(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .get(..16)
        .context("sha256sum printed nothing")?
        .to_string())
}

/// The stored blocks of the benchmark image and the ones the trace reads.
struct TraceBlocks {
    /// Every block's stored range `(offset, len)`.
    all: Vec<(u64, u32)>,
    /// The stored ranges of the blocks the trace reads, sorted, each once.
    read: Vec<(u64, u32)>,
    /// Distinct blocks the trace reads.
    distinct: usize,
}

impl TraceBlocks {
    /// Compressed bytes of the blocks the trace reads.
    fn compressed(&self) -> u64 {
        self.read.iter().map(|r| u64::from(r.1)).sum()
    }

    /// Reads `image`'s index and lays `trace` over it.
    fn of(image: &Path, trace: &[TraceRead]) -> Result<TraceBlocks> {
        let file = File::open(image)?;
        let len = file.metadata()?.len();
        let probe = PROBE_LEN.min(len as usize);
        let mut head = vec![0; probe];
        let mut tail = vec![0; probe];
        file.read_exact_at(&mut head, 0)?;
        file.read_exact_at(&mut tail, len - probe as u64)?;
        let layout = detect(&head, &tail, len)?;
        let mut index = vec![0; usize::try_from(layout.index_len())?];
        file.read_exact_at(&mut index, layout.index_offset)?;
        let index = BlockIndex::parse(&layout, &index)?;
        let block_size = u64::from(layout.header.block_size);
        let blocks = distinct_blocks(trace, block_size);
        // Blocks that share their bytes (dedup) are fetched once: count each stored range once.
        let mut ranges: Vec<(u64, u32)> = blocks
            .iter()
            .filter_map(|&b| index.get(usize::try_from(b).ok()?))
            .map(|e| (e.offset, e.len))
            .filter(|r| r.1 > 0)
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        Ok(TraceBlocks {
            all: index.blocks().iter().map(|e| (e.offset, e.len)).collect(),
            read: ranges,
            distinct: blocks.len(),
        })
    }
}

/// Whether this mkmodule's `serve` reads images from a web origin.
fn serve_takes_urls(mkmodule: &Path) -> Result<bool> {
    let out = Command::new(mkmodule).args(["serve", "--help"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--cache-dir"))
}

/// qemu-nbd and the module directory with its curl driver (`scripts/install-qemu-curl.sh`).
fn qemu_curl() -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root()?;
    let out = Command::new("bash")
        .arg(root.join("scripts/install-qemu-curl.sh"))
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("scripts/install-qemu-curl.sh failed: qemu's curl driver is not available");
    }
    let qemu_nbd = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    let modules = qemu_nbd
        .parent()
        .and_then(Path::parent)
        .map(|usr| usr.join("lib/x86_64-linux-gnu/qemu"))
        .context("qemu-nbd path")?;
    Ok((qemu_nbd, modules))
}

/// Boots the corpus in a guest from `mkmodule serve --trace` and keeps the trace.
fn record_trace(mkmodule: &Path, image: &Path, trace: &Path, boot: &Path) -> Result<()> {
    let root = workspace_root()?;
    let script = root.join("scripts/guest-boot-test.sh");
    let port = free_port();
    let partial = trace.with_extension("partial");
    let mut args = serve_args(port, &["--trace".into(), path_arg(&partial)]);
    args.push(path_arg(image));
    let server = Server::start(
        "mkmodule serve --trace",
        mkmodule.as_os_str(),
        &args,
        &[],
        port,
    )?;
    let console = trace.with_extension("console");
    eprintln!("storm: recording the trace of a guest boot (bounded at {BOOT_SECONDS} s)");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .args(["--nbd", &format!("10.0.2.2:{port}"), "--export", EXPORT])
        .args(["--memory", "1024", "--timeout", &BOOT_SECONDS.to_string()])
        .args(["--until", BOOT_UNTIL, "--append", "systemd.show_status=1"])
        .arg("--console")
        .arg(&console)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    server.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}");
    let reads = parse_trace(&std::fs::read_to_string(&partial)?)
        .map_err(|e| anyhow!(e))?
        .len();
    let outcome = match stdout.lines().find_map(|l| l.strip_prefix("=== until ")) {
        Some(line) if out.status.success() => format!(
            "the guest reached \"{}\" after {seconds:.0} s (TCG)",
            plain(line).trim_start_matches(['[', ' ', 'O', 'K', ']'])
        ),
        _ if reads > 0 => format!(
            "the guest did not reach the multi-user target within the {BOOT_SECONDS} s bound \
             (status {}); the trace holds the reads up to then",
            out.status
        ),
        _ => bail!(
            "the guest boot read nothing ({}); console in {}",
            out.status,
            console.display()
        ),
    };
    std::fs::write(boot, format!("{outcome}; {reads} reads\n"))?;
    std::fs::rename(&partial, trace)?;
    eprintln!(
        "storm: {outcome}; trace {} ({reads} reads)",
        trace.display()
    );
    Ok(())
}

/// A console line without its terminal escapes (`ESC [ ... letter`).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A server started for one row, stopped by its process id.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `program args` and waits (bounded, 60 s) until it accepts on 127.0.0.1:`port`.
    fn start(
        label: &str,
        program: &std::ffi::OsStr,
        args: &[String],
        env: &[(&str, PathBuf)],
        port: u16,
    ) -> Result<Server> {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let start = Instant::now();
        while TcpStream::connect(server.addr).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("{label} exited before listening ({status})");
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{label} did not listen on port {port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// SIGTERM, a bounded wait (10 s), then SIGKILL.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// One row of the report.
struct Row {
    label: String,
    /// Origin bytes and the replay, or why the row could not run.
    result: std::result::Result<(u64, ReplayReport), String>,
    /// Where the origin bytes of the compressed image went.
    origin: Breakdown,
}

impl Row {
    fn missing(label: &str, why: &str) -> Row {
        Row {
            label: label.to_string(),
            result: Err(why.to_string()),
            origin: Breakdown::default(),
        }
    }
}

/// What every row shares.
struct Storm<'a> {
    nginx: &'a Nginx,
    trace: &'a [TraceRead],
    clients: usize,
    raw: &'a File,
    blocks: &'a TraceBlocks,
}

impl Storm<'_> {
    /// Starts a server, storms it once, stops it.
    fn run(
        &self,
        label: &str,
        program: &std::ffi::OsStr,
        args: &[String],
        env: &[(&str, PathBuf)],
        port: u16,
    ) -> Result<Row> {
        let before = self.origin_mark()?;
        let server = Server::start(label, program, args, env, port)?;
        let result = self.replay(label, &server);
        server.stop();
        self.row(label, before, result)
    }

    /// Starts a server, storms it twice (cold, then warm), stops it.
    fn run_twice(
        &self,
        labels: [&str; 2],
        program: &std::ffi::OsStr,
        args: &[String],
        port: u16,
    ) -> Result<Vec<Row>> {
        let server = Server::start(labels[0], program, args, &[], port)?;
        let mut rows = Vec::new();
        for label in labels {
            let before = self.origin_mark()?;
            let result = self.replay(label, &server);
            rows.push(self.row(label, before, result)?);
        }
        server.stop();
        Ok(rows)
    }

    fn replay(&self, label: &str, server: &Server) -> Result<ReplayReport> {
        eprintln!("storm: {label}: {} clients", self.clients);
        let raw = self.raw;
        let check = move |offset: u64, data: &[u8]| {
            let mut want = vec![0; data.len()];
            raw.read_exact_at(&mut want, offset).is_ok() && want == data
        };
        let report = replay(server.addr, EXPORT, self.trace, self.clients, Some(&check))
            .with_context(|| format!("replaying the trace against {label}"))?;
        if report.mismatches > 0 {
            bail!(
                "{label}: {} replies differ from the raw image",
                report.mismatches
            );
        }
        Ok(report)
    }

    fn row(&self, label: &str, before: (u64, usize), result: Result<ReplayReport>) -> Result<Row> {
        let result = match result {
            Ok(report) => Ok((self.settled_origin_bytes()? - before.0, report)),
            Err(e) => Err(format!("{e:#}")),
        };
        let log = self.nginx.log().map_err(|e| anyhow!(e))?;
        let requests: Vec<_> = log
            .get(before.1..)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.uri.ends_with(IMAGE_NAME))
            .map(|e| (e.range, e.body_bytes))
            .collect();
        Ok(Row {
            label: label.to_string(),
            result,
            origin: breakdown(&self.blocks.all, &self.blocks.read, &requests),
        })
    }

    fn origin_bytes(&self) -> Result<u64> {
        self.nginx.body_bytes().map_err(|e| anyhow!(e))
    }

    /// The origin's byte count and log length so far.
    fn origin_mark(&self) -> Result<(u64, usize)> {
        let log = self.nginx.log().map_err(|e| anyhow!(e))?;
        Ok((log.iter().map(|e| e.body_bytes).sum(), log.len()))
    }

    /// The origin's byte count once its log stopped growing (nginx logs a request when it
    /// completes; bounded at 5 s).
    fn settled_origin_bytes(&self) -> Result<u64> {
        let mut last = self.origin_bytes()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.origin_bytes()?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }
}

/// Everything the report shows.
struct Summary<'a> {
    trace: &'a [TraceRead],
    trace_bytes: u64,
    distinct: usize,
    compressed: u64,
    clients: usize,
    boot: &'a str,
    trace_path: &'a Path,
    rows: &'a [Row],
}

fn render(s: &Summary<'_>) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Boot storm: {} clients from one web origin\n",
        s.clients
    );
    let _ = writeln!(
        md,
        "Trace: {} reads, {:.1} MB, of a guest boot ({}); {} distinct 64 KiB blocks, {:.1} MB \
         compressed. Every client replays the whole trace on its own connection, all at once; \
         client 0 checks every reply against the raw image. Origin: nginx on 127.0.0.1 \
         (body bytes from its access log).\n",
        s.trace.len(),
        s.trace_bytes as f64 / 1e6,
        if s.boot.is_empty() {
            "recorded earlier"
        } else {
            s.boot
        },
        s.distinct,
        s.compressed as f64 / 1e6,
    );
    let _ = writeln!(
        md,
        "| server | origin MB | origin / distinct compressed | MB/s (all clients) | p50 ms | p99 ms | vs qemu-nbd | vs local |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let throughput = |prefix: &str| {
        s.rows.iter().find_map(|r| match &r.result {
            Ok((_, rep)) if r.label.starts_with(prefix) => Some(rep.mb_per_s()),
            _ => None,
        })
    };
    let qemu = throughput("qemu-nbd");
    let local = throughput("mkmodule serve FILE");
    let ratio = |base: Option<f64>, v: f64| base.map_or("-".into(), |b| format!("{:.2}x", v / b));
    for row in s.rows {
        match &row.result {
            Ok((origin, rep)) => {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {:.3} | {:.0} | {:.2} | {:.2} | {} | {} |",
                    row.label,
                    *origin as f64 / 1e6,
                    *origin as f64 / s.compressed.max(1) as f64,
                    rep.mb_per_s(),
                    rep.percentile(0.50).as_secs_f64() * 1e3,
                    rep.percentile(0.99).as_secs_f64() * 1e3,
                    ratio(qemu, rep.mb_per_s()),
                    ratio(local, rep.mb_per_s()),
                );
            }
            Err(why) => {
                let _ = writeln!(md, "| {} | not run: {} | | | | | | |", row.label, why);
            }
        }
    }
    let analysed: Vec<(&str, &Breakdown)> = s
        .rows
        .iter()
        .filter(|r| r.origin.requests > 0)
        .map(|r| (r.label.as_str(), &r.origin))
        .collect();
    if !analysed.is_empty() {
        let _ = writeln!(
            md,
            "\nWhere the origin bytes of the compressed image went (each range request laid over \
             the block index; in brackets: first fetches over the distinct compressed bytes, and \
             requests that fetched such bytes):\n"
        );
        md.push_str(&crate::storm_origin::render(&analysed, s.compressed));
    }
    let _ = writeln!(
        md,
        "\nGoals: origin / distinct compressed at most 1.05 cold and 0 warm; cold at least 4x \
         qemu-nbd's throughput; warm at least 0.8x the local file's. The local file and qemu-nbd \
         rows read no cache of their own across runs. Trace: {}. Reproduce: \
         `cargo xtask storm` (`--record` boots the guest again).",
        s.trace_path.display()
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_escapes_are_dropped() {
        let line = "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mmulti-user.target\u{1b}[0m - Multi-User System.";
        assert_eq!(
            plain(line),
            "[  OK  ] Reached target multi-user.target - Multi-User System."
        );
    }

    #[test]
    fn the_report_shows_every_row() {
        let trace = [TraceRead {
            micros: 0,
            offset: 0,
            len: 4096,
        }];
        let rep = |ms: u64| ReplayReport {
            clients: 2,
            requests: 2,
            bytes: 2_000_000,
            wall: Duration::from_millis(ms),
            latencies: vec![Duration::from_millis(1), Duration::from_millis(3)],
            mismatches: 0,
        };
        let rows = [
            Row {
                label: "mkmodule serve FILE (local)".into(),
                result: Ok((0, rep(1000))),
                origin: Breakdown::default(),
            },
            Row {
                label: "qemu-nbd, cloop over curl".into(),
                result: Ok((300, rep(4000))),
                origin: Breakdown {
                    requests: 3,
                    needed: 100,
                    again: 200,
                    again_requests: 2,
                    ..Breakdown::default()
                },
            },
            Row::missing("mkmodule serve URL", "no URL support"),
        ];
        let md = render(&Summary {
            trace: &trace,
            trace_bytes: 4096,
            distinct: 1,
            compressed: 100,
            clients: 2,
            boot: "",
            trace_path: Path::new("t.txt"),
            rows: &rows,
        });
        assert!(
            md.contains(
                "| mkmodule serve FILE (local) | 0.0 | 0.000 | 2 | 1.00 | 3.00 | 4.00x | 1.00x |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| qemu-nbd, cloop over curl | 0.0 | 3.000 | 0 | 1.00 | 3.00 | 1.00x | 0.25x |"
            ),
            "{md}"
        );
        assert!(md.contains("not run: no URL support"), "{md}");
        assert!(
            md.contains("| qemu-nbd, cloop over curl | 3 | 0.00 (1.000) | 0.00 (2) |"),
            "{md}"
        );
        assert!(!md.contains("| mkmodule serve FILE (local) | 0 |"), "{md}");
    }
}
