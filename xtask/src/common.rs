//! Helpers shared by the benchmark tasks (`bench-create`, `bench-read`, `bench-serve`,
//! `compare`): where the corpus is, timing a command with GNU time, medians, checking that the
//! peer tools are installed, and starting, probing and stopping NBD servers.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::run;

/// The corpus directory: `$CORPUS`, else `../corpus` (`rootfs.ext4`, an ext4 image of a Debian
/// root filesystem, the `rootfs/` tree it was made from, and `live.iso`, an ISO 9660 image).
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("CORPUS").map_or_else(|| PathBuf::from("../corpus"), PathBuf::from)
}

/// Where a raw benchmark input is looked for when none is given.
pub fn default_corpus_file(name: &str) -> PathBuf {
    corpus_dir().join(name)
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// The median of `values` (the upper middle one for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `path` quoted for `bash -c`.
pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Fails naming every tool of `tools` that is not on the PATH, with how to install it.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing: {}; run scripts/install-deps.sh (and apt-get install time squashfs-tools \
             xz-utils)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Wall time, CPU time and peak RSS of one command, from GNU time.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Wall-clock seconds.
    pub wall: f64,
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Peak resident set size, KiB.
    pub rss_kib: u64,
}

fn read_time_file(path: &Path) -> Result<Timed> {
    let text = std::fs::read_to_string(path)?;
    let fields: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [wall, user, sys, rss] = fields[..] else {
        bail!("cannot read /usr/bin/time's output: {text:?}");
    };
    Ok(Timed {
        wall,
        cpu: user + sys,
        rss_kib: rss as u64,
    })
}

fn time_file() -> PathBuf {
    std::env::temp_dir().join(format!("xtask-bench-{}.time", std::process::id()))
}

/// Runs `command` with `bash -o pipefail -c` under `/usr/bin/time`; for a pipeline, the last
/// command is timed (e.g. mkmodule reading a pipe, not `cat`). Its output goes where the
/// command sends it; its own stdout is discarded.
pub fn time_shell(label: &str, command: &str) -> Result<Timed> {
    let times = time_file();
    let timed = match command.rsplit_once(" | ") {
        Some((head, tail)) => format!(
            "{head} | /usr/bin/time -f '%e %U %S %M' -o {} {tail}",
            shell_quote(&times)
        ),
        None => format!(
            "/usr/bin/time -f '%e %U %S %M' -o {} {command}",
            shell_quote(&times)
        ),
    };
    let status = Command::new("bash")
        .args(["-o", "pipefail", "-c", &timed])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {label}"))?;
    if !status.success() {
        bail!("{label} failed ({status}): {timed}");
    }
    let result = read_time_file(&times);
    let _ = std::fs::remove_file(&times);
    result
}

/// Runs `command` under `/usr/bin/time`, its stdout and stderr discarded.
pub fn time_command(label: &str, command: &Command) -> Result<Timed> {
    let times = time_file();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", "-o"])
        .arg(&times)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {label} under /usr/bin/time"))?;
    if !status.success() {
        bail!("{label} failed ({status})");
    }
    let result = read_time_file(&times);
    let _ = std::fs::remove_file(&times);
    result
}

/// Reads `path` once so it is in the page cache (every tool then starts alike).
pub fn warm(path: &Path) {
    let _ = Command::new("cat").arg(path).stdout(Stdio::null()).status();
}

/// A server process under test, killed by its own id when dropped.
pub struct ServerProcess {
    /// What it is, for tables.
    pub label: String,
    child: Child,
    /// Its NBD URI.
    pub uri: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, child: &mut Child) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("server exited before listening ({status})");
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("server did not listen on port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts `program args` and waits until it listens on 127.0.0.1:`port`; the export is
/// reached as `nbd://127.0.0.1:PORT/EXPORT`.
pub fn start_server(
    label: &str,
    program: &str,
    args: &[String],
    port: u16,
    export: &str,
) -> Result<ServerProcess> {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let Err(e) = wait_for_port(port, &mut child) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("starting {label}")));
    }
    Ok(ServerProcess {
        label: label.to_string(),
        child,
        uri: format!("nbd://127.0.0.1:{port}/{export}"),
    })
}

/// Seconds for nbdcopy to read the whole export to `null:`.
pub fn nbdcopy_seconds(uri: &str) -> Result<f64> {
    let start = Instant::now();
    run(Command::new("nbdcopy").arg(uri).arg("null:"))?;
    Ok(start.elapsed().as_secs_f64())
}

/// IOPS of fio's nbd engine, 4 KiB random reads at queue depth 32 for `seconds`.
pub fn fio_iops(uri: &str, seconds: u32, scratch: &Path) -> Result<f64> {
    let out = scratch.join("fio.json");
    run(Command::new("fio")
        .args([
            "--name=rr",
            "--ioengine=nbd",
            "--rw=randread",
            "--bs=4k",
            "--iodepth=32",
        ])
        .arg(format!("--uri={uri}"))
        .args([
            "--time_based=1",
            &format!("--runtime={seconds}"),
            "--output-format=json",
        ])
        .arg(format!("--output={}", out.display()))
        .stdout(Stdio::null()))?;
    let text = std::fs::read_to_string(&out)?;
    // fio's JSON: jobs[0].read.iops; read it without a JSON dependency in xtask.
    let at = text.find("\"iops\"").context("no iops in fio output")?;
    let rest = &text[at + 6..];
    let value: String = rest
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    value.parse().context("parsing fio iops")
}

/// One server's medians.
#[derive(Debug, Clone)]
pub struct ServeFigures {
    /// The server.
    pub label: String,
    /// nbdcopy of the whole export, MiB/s.
    pub mib_per_s: f64,
    /// fio 4 KiB random reads at queue depth 32, IOPS.
    pub iops: f64,
}

/// Medians of `rounds` rounds of nbdcopy (export of `size` bytes) and fio on `server`.
pub fn measure_server(
    server: &ServerProcess,
    size: u64,
    rounds: usize,
    fio_seconds: u32,
    scratch: &Path,
) -> Result<ServeFigures> {
    let mut seq = Vec::new();
    let mut iops = Vec::new();
    for round in 1..=rounds {
        eprintln!("xtask: {} round {round}/{rounds}", server.label);
        seq.push(size as f64 / (1 << 20) as f64 / nbdcopy_seconds(&server.uri)?);
        iops.push(fio_iops(&server.uri, fio_seconds, scratch)?);
    }
    Ok(ServeFigures {
        label: server.label.clone(),
        mib_per_s: median(seq),
        iops: median(iops),
    })
}

/// The positive number after `flag` in `words` (`--rounds 3`).
pub fn positive_arg<'a, T>(words: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    words
        .next()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > T::default())
        .with_context(|| format!("{flag} needs a positive number"))
}
