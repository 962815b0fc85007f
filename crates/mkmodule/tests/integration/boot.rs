//! Boot integration: a Debian kernel under qemu (TCG) boots with its ROOT filesystem read over
//! NBD from `mkmodule serve`, both with qemu as the NBD client (virtio disk) and with the guest
//! kernel's own NBD client over qemu's user network (the initramfs runs the
//! `dist/lib/mkmodule-nbdroot` helper that the initramfs-tools script and the dracut module
//! ship); through a copy-on-write overlay the guest writes a file that the host reads back.
//! Boot times to the root's marker are measured against `qemu-nbd -r -f cloop` on the same
//! image and printed (not asserted). Also without a guest: SIGHUP reloads the export list while
//! a connection stays open, and socket activation with `READY=1`/`RELOADING=1`/`STOPPING=1`.
//!
//! Prerequisites: `scripts/install-guest-kernel.sh` (kernel, qemu-system, busybox-static,
//! nbd-client), qemu-utils, libnbd-bin, e2fsprogs, cloop-utils, systemd
//! (systemd-socket-activate). When one is missing the tests fail, they do not skip.
//! Set MKMODULE_BOOT_ROUNDS=N to boot N times per server for steadier figures, and
//! MKMODULE_BOOT_PAYLOAD_MIB=N for how much the booting root reads before its marker
//! (default 8).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mkmodule_testkit::process::free_port;

use crate::guest_lock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn boot_script() -> PathBuf {
    repo().join("scripts/guest-boot-test.sh")
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// Runs a command to completion within `limit` (stopped by its own id past it); returns stdout.
pub(crate) fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let (status, out, err) = run(cmd, limit);
    assert!(status.success(), "{cmd:?} failed ({status}):\n{out}\n{err}");
    out
}

/// Runs a command to completion within `limit` (stopped by its own id past it); returns its
/// status, stdout and stderr.
pub(crate) fn run(
    cmd: &mut Command,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {cmd:?}: {e}: install the prerequisites (scripts/install-deps.sh, \
                 scripts/install-guest-kernel.sh)"
            )
        });
    // Drain both pipes in threads so a chatty child cannot block on a full pipe.
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read_all(Box::new(out)), read_all(Box::new(err)));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            kill("TERM", child.id());
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} ran past {limit:?}: {}{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Fails the test (never skips it) when a peer tool is missing, naming its package.
pub(crate) fn require(tool: &str) {
    mkmodule_testkit::tools::require_tool(tool);
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited early ({status})");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `log` contains `needle` (the server writes its stderr there); returns the log.
fn wait_for_log(log: &Path, needle: &str, child: &mut Child) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited ({status}) before logging {needle:?}:\n{text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {needle:?} in the server log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mkmodule serve` on 127.0.0.1 with a port the kernel picked; killed by its own id on drop.
pub(crate) struct Served {
    child: Child,
    pub(crate) port: u16,
    log: PathBuf,
}

impl Served {
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Served {
        Served::start_on(dir, 0, args)
    }

    /// The server on `port` (0: one the kernel picks).
    pub(crate) fn start_on(dir: &Path, port: u16, args: &[&str]) -> Served {
        let log = unique(dir.join("serve.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(["serve", "-b", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let text = wait_for_log(&log, "serving on 127.0.0.1:", &mut child);
        let rest = text.split("serving on 127.0.0.1:").nth(1).unwrap();
        let port = rest
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        Served { child, port, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's log file.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL, as a crash would (what dropping it does).
    pub(crate) fn kill(self) {
        drop(self);
    }

    /// SIGTERM (the overlay is flushed), then checks a clean exit.
    pub(crate) fn terminate(mut self) -> String {
        kill("TERM", self.child.id());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "server exited with {status}:\n{}",
                    self.log()
                );
                return self.log();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `path`, or `path` with a number added when it exists (one log per server start).
fn unique(path: PathBuf) -> PathBuf {
    let mut p = path.clone();
    let mut n = 0;
    while p.exists() {
        n += 1;
        p = path.with_extension(format!("{n}.log"));
    }
    p
}

/// A child process killed by its own id when dropped (e.g. when an assertion fails).
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qemu-nbd -r -f cloop` on 127.0.0.1, the reference server; killed by its own id on drop.
struct QemuNbd {
    child: Child,
    port: u16,
}

impl QemuNbd {
    fn start(image: &Path, name: &str) -> QemuNbd {
        require("qemu-nbd");
        let port = free_port();
        let mut child = Command::new("qemu-nbd")
            .args(["-r", "-f", "cloop", "-t", "-e", "0", "-b", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-x", name])
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "qemu-nbd");
        QemuNbd { child, port }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root filesystem image: ext4 (4 KiB blocks) with the boot script's root tree, a hello.txt
/// and a /payload of `payload_mib` MiB that the root's init reads before its marker (a boot
/// reads that much), compressed with create_compressed_fs (64 KiB blocks).
pub(crate) struct RootImage {
    pub(crate) ext4: PathBuf,
    pub(crate) cloop: PathBuf,
    pub(crate) hello: String,
    /// md5 of /payload, which the root's init reads before the marker.
    pub(crate) payload_md5: String,
}

pub(crate) fn root_image(dir: &Path, payload_mib: usize) -> RootImage {
    require("mkfs.ext4");
    require("create_compressed_fs");
    let tree = dir.join("tree");
    run_ok(
        Command::new("bash")
            .arg(boot_script())
            .arg("--make-root")
            .arg(&tree),
        Duration::from_secs(30),
    );
    let hello = format!("root filesystem served by mkmodule {}", std::process::id());
    std::fs::write(tree.join("hello.txt"), format!("{hello}\n")).unwrap();
    let payload = payload(payload_mib << 20);
    let payload_md5 = md5_hex(&payload);
    std::fs::write(tree.join("payload"), payload).unwrap();
    let ext4 = dir.join("root.ext4");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "mkroot", "-d"])
            .arg(&tree)
            .arg(&ext4)
            .arg(format!("{}M", payload_mib + 24)),
        Duration::from_secs(60),
    );
    let cloop = dir.join("root.cloop");
    run_ok(
        Command::new("create_compressed_fs")
            .args(["-q", "-B", "65536"])
            .arg(&ext4)
            .arg(&cloop),
        Duration::from_secs(60),
    );
    RootImage {
        ext4,
        cloop,
        hello,
        payload_md5,
    }
}

/// The filesystem block number (4 KiB) holding block `n` of /payload in `ext4` (debugfs).
pub(crate) fn payload_block(ext4: &Path, n: usize) -> u64 {
    require("debugfs");
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("bmap /payload {n}")])
            .arg(ext4),
        Duration::from_secs(30),
    );
    let block: u64 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("debugfs bmap /payload {n} printed {out:?}"));
    assert!(block > 0, "/payload has no block {n}");
    block
}

/// `len` bytes of real binary data that compresses as a root filesystem does: the guest
/// kernel's module files, concatenated in a fixed order.
pub(crate) fn payload(len: usize) -> Vec<u8> {
    let kdir = std::env::var_os("MKMODULE_GUEST_KERNEL_DIR").map_or_else(
        || PathBuf::from("/var/cache/mkmodule/guest-kernel"),
        PathBuf::from,
    );
    let mut files = Vec::new();
    let mut dirs = vec![kdir.join("lib/modules")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "ko") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut data = Vec::with_capacity(len);
    for f in files {
        if data.len() >= len {
            break;
        }
        data.extend(std::fs::read(f).unwrap());
    }
    assert!(
        data.len() >= len,
        "not enough kernel modules for the payload"
    );
    data.truncate(len);
    data
}

fn md5_hex(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// What one boot printed.
#[derive(Debug)]
pub(crate) struct Boot {
    pub(crate) lines: Vec<String>,
    /// Wall clock from qemu's start to the marker, seen from the host.
    pub(crate) host_seconds: f64,
    /// The guest's uptime when its root's init printed the marker.
    uptime: f64,
}

impl Boot {
    pub(crate) fn has(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
}

pub(crate) fn check_prerequisites() {
    run_ok(
        Command::new("bash").arg(boot_script()).arg("--check"),
        Duration::from_secs(60),
    );
}

pub(crate) fn boot(args: &[String]) -> Boot {
    let out = run_ok(
        Command::new("bash").arg(boot_script()).args(args),
        Duration::from_secs(200),
    );
    let lines: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("=== "))
        .map(str::to_string)
        .collect();
    let value = |prefix: &str| -> f64 {
        lines
            .iter()
            .find_map(|l| {
                let rest = &l[l.find(prefix)? + prefix.len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no {prefix} in the boot output:\n{out}"))
    };
    let host_seconds = value("host-seconds-to-marker=");
    let uptime = lines
        .iter()
        .find(|l| l.starts_with("marker "))
        .and_then(|l| l.split("uptime=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no marker in the boot output:\n{out}"));
    Boot {
        lines,
        host_seconds,
        uptime,
    }
}

/// MiB of payload the booting root reads (MKMODULE_BOOT_PAYLOAD_MIB, default 8).
pub(crate) fn payload_mib() -> usize {
    std::env::var("MKMODULE_BOOT_PAYLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn rounds() -> usize {
    std::env::var("MKMODULE_BOOT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Boots through `mkmodule serve` and through `qemu-nbd -r -f cloop` alternately on the same
/// image; checks every boot reached the marker and read the image; prints the figures.
fn compare_boot_times(way: &str, args_for: impl Fn(u16) -> Vec<String>, expect_root: &str) {
    check_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let image = root_image(dir.path(), payload_mib());
    let _guest = guest_lock();
    let served = Served::start(dir.path(), &[&format!("root={}", image.cloop.display())]);
    let qemu_nbd = QemuNbd::start(&image.cloop, "root");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        for (server, port, into) in [
            ("mkmodule serve", served.port, &mut ours),
            ("qemu-nbd", qemu_nbd.port, &mut theirs),
        ] {
            let b = boot(&args_for(port));
            assert!(
                b.has(&format!("marker root={expect_root} mode=ro")),
                "{way} via {server}: {b:#?}"
            );
            assert!(
                b.has(&format!("hello {}", image.hello)),
                "{way} via {server}: {b:#?}"
            );
            assert!(
                b.has(&format!("payload md5={}", image.payload_md5)),
                "{way} via {server}: {b:#?}"
            );
            into.push(b);
        }
    }
    let log = served.terminate();
    assert!(log.contains("export=\"root\""), "{log}");
    let figure = |v: &[Boot]| {
        format!(
            "{:.2} s to the marker (guest uptime {:.2} s)",
            median(v.iter().map(|b| b.host_seconds).collect()),
            median(v.iter().map(|b| b.uptime).collect())
        )
    };
    eprintln!(
        "BOOT FIGURES ({way}, {} round(s), median; root reads a {} MiB payload; ext4 {} bytes, \
         cloop {} bytes): mkmodule serve {}; qemu-nbd -r -f cloop {}",
        ours.len(),
        payload_mib(),
        std::fs::metadata(&image.ext4).unwrap().len(),
        std::fs::metadata(&image.cloop).unwrap().len(),
        figure(&ours),
        figure(&theirs)
    );
}

#[test]
fn qemu_as_nbd_client_boots_the_root_from_mkmodule_serve() {
    compare_boot_times(
        "qemu NBD client, virtio-blk",
        |port| vec!["--virtio".into(), format!("nbd://127.0.0.1:{port}/root")],
        "/dev/vda",
    );
}

#[test]
fn guest_kernel_nbd_client_boots_the_root_from_mkmodule_serve() {
    compare_boot_times(
        "guest kernel NBD client, nbd-client over user networking",
        |port| {
            vec![
                "--nbd".into(),
                format!("10.0.2.2:{port}"),
                "--export".into(),
                "root".into(),
            ]
        },
        "/dev/nbd0",
    );
}

#[test]
fn guest_writes_to_its_root_through_a_cow_overlay_and_the_host_reads_it_back() {
    check_prerequisites();
    for tool in ["qemu-img", "debugfs", "e2fsck"] {
        require(tool);
    }
    let dir = tempfile::tempdir().unwrap();
    let image = root_image(dir.path(), 1);
    let before = std::fs::read(&image.cloop).unwrap();
    let cow = dir.path().join("root.cow");
    let token = format!("t{}x{}", std::process::id(), before.len());
    let root = format!("root={}", image.cloop.display());
    {
        let _guest = guest_lock();
        let served = Served::start(dir.path(), &["--cow", cow.to_str().unwrap(), &root]);
        let b = boot(&[
            "--nbd".into(),
            format!("10.0.2.2:{}", served.port),
            "--export".into(),
            "root".into(),
            "--rw".into(),
            "--write".into(),
            token.clone(),
        ]);
        assert!(b.has("marker root=/dev/nbd0 mode=rw"), "{b:#?}");
        assert!(b.has("wrote rc=0 remount rc=0"), "{b:#?}");
        let log = served.terminate();
        assert!(log.contains("overlay") && log.contains("flushed"), "{log}");
    }
    assert!(
        std::fs::read(&image.cloop).unwrap() == before,
        "the image changed"
    );
    let expected = format!("written by the guest {token}\n");
    let debugfs_cat = |raw: &Path| {
        // e2fsck first: replays a journal the guest left behind (none is expected).
        let fsck = Command::new("e2fsck")
            .arg("-fy")
            .arg(raw)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            fsck.status.code().is_some_and(|c| c <= 1),
            "e2fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg("cat /guest-wrote.txt")
                .arg(raw),
            Duration::from_secs(30),
        )
    };

    // (1) The overlay survives a restart: serve it again and copy the merged disk out.
    let served = Served::start(dir.path(), &["--cow", cow.to_str().unwrap(), &root]);
    let merged = dir.path().join("merged.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(format!("nbd://127.0.0.1:{}/root", served.port))
            .arg(&merged),
        Duration::from_secs(60),
    );
    served.terminate();
    assert_eq!(debugfs_cat(&merged), expected);

    // (2) `mkmodule commit` folds the overlay into a new image that qemu's cloop driver reads.
    let committed = dir.path().join("root.new.cloop");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(["commit", "-q"])
            .arg(&image.cloop)
            .arg(&cow)
            .arg("-o")
            .arg(&committed),
        Duration::from_secs(60),
    );
    let raw = dir.path().join("committed.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "cloop", "-O", "raw"])
            .arg(&committed)
            .arg(&raw),
        Duration::from_secs(60),
    );
    assert_eq!(debugfs_cat(&raw), expected);
    // The rest of the filesystem is intact.
    let hello = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /hello.txt")
            .arg(&raw),
        Duration::from_secs(30),
    );
    assert_eq!(hello, format!("{}\n", image.hello));
}

// ------------------------------------------------------------------------------------------
// Reload and service-manager integration (no guest).

fn filled(path: &Path, byte: u8, len: usize) {
    std::fs::write(path, vec![byte; len]).unwrap();
}

fn list_exports(uri: &str) -> Vec<String> {
    require("nbdinfo");
    let out = run_ok(
        Command::new("nbdinfo").arg("--list").arg(uri).env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        ),
        Duration::from_secs(30),
    );
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("export=\""))
        .map(|l| l.trim_end_matches(':').trim_end_matches('"').to_string())
        .collect();
    names.sort();
    names
}

/// An interactive `qemu-io` session on one NBD connection.
struct QemuIo {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl QemuIo {
    fn open(uri: &str) -> QemuIo {
        require("qemu-io");
        let mut child = Command::new("qemu-io")
            .args(["-r", "-f", "raw", uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        QemuIo {
            child,
            stdin,
            lines,
        }
    }

    /// Reads 64 KiB at offset 0 and checks every byte is `byte`; returns qemu-io's lines.
    fn read_pattern(&mut self, byte: u8) -> Result<(), Vec<String>> {
        writeln!(self.stdin, "read -P {byte:#x} 0 64k").unwrap();
        self.stdin.flush().unwrap();
        let mut got = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("qemu-io did not answer: {got:?}"));
            let done = line.contains(" ops; ");
            got.push(line);
            if done {
                break;
            }
        }
        let ok = got
            .iter()
            .any(|l| l.contains("read 65536/65536 bytes at offset 0"))
            && !got.iter().any(|l| l.contains("verification failed"));
        if ok {
            Ok(())
        } else {
            Err(got)
        }
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_reloads_the_exports_file_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    filled(&d.join("a.img"), 0x11, 1 << 20);
    filled(&d.join("b.img"), 0x22, 1 << 20);
    let exports = d.join("exports");
    std::fs::write(&exports, "# test exports\na = a.img\n").unwrap();
    let mut served = Served::start(d, &["--exports-file", exports.to_str().unwrap()]);
    let base = format!("nbd://127.0.0.1:{}", served.port);
    assert_eq!(list_exports(&base), ["a"]);

    // A connection opened before the reload.
    let mut open = QemuIo::open(&format!("{base}/a"));
    open.read_pattern(0x11).unwrap();

    // a.img replaced by a new file, b added, c names a missing image.
    filled(&d.join("a.new"), 0x33, 1 << 20);
    std::fs::rename(d.join("a.new"), d.join("a.img")).unwrap();
    std::fs::write(&exports, "a=a.img\nb=b.img\nc=missing.img\n").unwrap();
    kill("HUP", served.child.id());
    let log = wait_for_log(&served.log, "SIGHUP: exports reloaded", &mut served.child);
    assert!(
        log.contains(r#"reopened "a", added "b", not added "c""#),
        "{log}"
    );
    assert_eq!(list_exports(&base), ["a", "b"]);
    // The open connection still reads the image it opened, which is no longer listed.
    open.read_pattern(0x11)
        .unwrap_or_else(|l| panic!("the open connection broke: {l:?}"));
    // New connections get the new table.
    let mut a = QemuIo::open(&format!("{base}/a"));
    a.read_pattern(0x33).unwrap();
    let mut b = QemuIo::open(&format!("{base}/b"));
    b.read_pattern(0x22).unwrap();

    // A reload that cannot work (a name given twice) leaves everything as it was.
    std::fs::write(&exports, "a=a.img\na=b.img\n").unwrap();
    kill("HUP", served.child.id());
    let log = wait_for_log(&served.log, "reload refused", &mut served.child);
    assert!(log.contains("given twice"), "{log}");
    assert_eq!(list_exports(&base), ["a", "b"]);

    // An image that fails to open keeps its old export; removed lines remove exports.
    std::fs::remove_file(d.join("a.img")).unwrap();
    std::fs::write(&exports, "a=a.img\n").unwrap();
    kill("HUP", served.child.id());
    let log = wait_for_log(&served.log, "removed \"b\"", &mut served.child);
    assert!(log.contains(r#"kept "a" (reopen failed)"#), "{log}");
    assert_eq!(list_exports(&base), ["a"]);
    a.read_pattern(0x33).unwrap();
    b.read_pattern(0x22).unwrap();
    open.read_pattern(0x11).unwrap();
    let mut again = QemuIo::open(&format!("{base}/a"));
    again.read_pattern(0x33).unwrap();
    drop((open, a, b, again));
    served.terminate();
}

/// Receives one datagram within 30 s.
fn recv_notify(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notification from mkmodule serve");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the server did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// systemd's own tool passes a TCP socket (LISTEN_FDS) and the notify socket (a path).
#[test]
fn socket_activation_by_systemd_socket_activate_with_readiness() {
    require("systemd-socket-activate");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    filled(&d.join("disk.img"), 0x44, 1 << 20);
    let notify_path = d.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let port = free_port();
    let log = d.join("serve.log");
    let mut child = Guarded(
        Command::new("systemd-socket-activate")
            .args(["-l", &format!("127.0.0.1:{port}"), "-E", "NOTIFY_SOCKET"])
            .arg(env!("CARGO_BIN_EXE_mkmodule"))
            // Would fail if used: the inherited socket replaces --socket.
            .args(["serve", "-k", "/nonexistent/dir/sock"])
            .arg(d.join("disk.img"))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    wait_for_port(port, child, "systemd-socket-activate");
    // systemd-socket-activate starts the server at the first connection, which must not be
    // lost: it waits in the socket's backlog.
    let base = format!("nbd://127.0.0.1:{port}");
    assert_eq!(list_exports(&base), ["disk"]);
    let ready = recv_notify(&notify);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=serving 1 export(s): disk"),
        "{ready:?}"
    );
    let mut io = QemuIo::open(&format!("{base}/disk"));
    io.read_pattern(0x44).unwrap();
    kill("HUP", child.id());
    assert!(recv_notify(&notify).starts_with("RELOADING=1"));
    assert!(recv_notify(&notify).starts_with("READY=1"));
    io.read_pattern(0x44).unwrap();
    kill("TERM", child.id());
    assert!(recv_notify(&notify).starts_with("STOPPING=1"));
    let status = wait_exit(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {text}");
    assert!(
        text.contains("socket activation: 1 inherited socket"),
        "{text}"
    );
}

/// The protocol by hand: a unix listening socket as fd 3 with LISTEN_PID/LISTEN_FDS set by a
/// shell that then execs the server, and an abstract notify socket ("@name").
#[test]
fn socket_activation_by_hand_with_an_abstract_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    filled(&d.join("disk.img"), 0x55, 1 << 20);
    let name = format!("mkmodule-boot-test-{}", std::process::id());
    let notify = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    let sock_path = d.join("nbd.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let log = d.join("serve.log");
    // The listener arrives as stdin and is moved to fd 3; $$ is the pid that exec keeps.
    let mut child = Guarded(
        Command::new("sh")
            .arg("-c")
            .arg(r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_mkmodule"))
            .args(["serve", "-p", "1"])
            .arg(format!("d={}", d.join("disk.img").display()))
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let ready = recv_notify(&notify);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    let uri = format!("nbd+unix:///d?socket={}", sock_path.display());
    let mut io = QemuIo::open(&uri);
    io.read_pattern(0x55).unwrap();
    kill("TERM", child.id());
    assert!(recv_notify(&notify).starts_with("STOPPING=1"));
    let status = wait_exit(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {text}");
    assert!(
        text.contains(&format!("serving on unix:{}", sock_path.display())),
        "{text}"
    );
    // The socket belongs to the service manager: the server leaves it in place.
    assert!(sock_path.exists());
}

// ------------------------------------------------------------------------------------------
// The distribution files (dist/): well-formed, and the helper reads the command line right.

#[test]
fn systemd_units_verify_cleanly() {
    require("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["mkmodule-serve.socket", "mkmodule-serve.service"] {
        let text = std::fs::read_to_string(repo().join("dist/systemd").join(unit)).unwrap();
        // The unit names /usr/bin/mkmodule; verify it against the binary under test.
        let text = text.replace("/usr/bin/mkmodule", env!("CARGO_BIN_EXE_mkmodule"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("mkmodule-serve.socket"))
        .arg(dir.path().join("mkmodule-serve.service"))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys are only warnings: any output at all is a failure here.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let service =
        std::fs::read_to_string(repo().join("dist/systemd/mkmodule-serve.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "--exports-file /etc/mkmodule/exports",
    ] {
        assert!(service.contains(needed), "{needed}");
    }
}

#[test]
fn boot_scripts_parse_and_the_helper_reads_the_kernel_command_line() {
    let dist = repo().join("dist");
    let scripts = [
        "lib/mkmodule-nbdroot",
        "initramfs-tools/hooks/mkmodule-nbd",
        "initramfs-tools/scripts/local-top/mkmodule-nbd",
        "initramfs-tools/scripts/init-bottom/mkmodule-nbd",
        "dracut/95mkmodule-nbd/module-setup.sh",
        "dracut/95mkmodule-nbd/parse-mkmodule-nbd.sh",
        "dracut/95mkmodule-nbd/mkmodule-nbd-netroot.sh",
        "dracut/95mkmodule-nbd/mkmodule-nbd-overlay.sh",
    ];
    for script in scripts {
        let path = dist.join(script);
        let shell = if script.ends_with("module-setup.sh") {
            "bash"
        } else {
            "sh"
        };
        run_ok(
            Command::new(shell).arg("-n").arg(&path),
            Duration::from_secs(10),
        );
        // initramfs-tools runs scripts through busybox sh or klibc sh.
        run_ok(
            Command::new("busybox").args(["sh", "-n"]).arg(&path),
            Duration::from_secs(10),
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
    let helper = dist.join("lib/mkmodule-nbdroot");
    let params = |cmdline: &str, what: &str| {
        run_ok(
            Command::new("busybox")
                .arg("sh")
                .arg(&helper)
                .arg(what)
                .env("MKMODULE_CMDLINE", cmdline),
            Duration::from_secs(10),
        )
        .trim()
        .to_string()
    };
    assert_eq!(
        params(
            "quiet root=/dev/nbd0 mkmodule.server=192.0.2.1:10900 mkmodule.export=root \
             mkmodule.nbdargs=-b,1024,-C,2 rootfstype=ext4 rw",
            "params"
        ),
        "server=192.0.2.1 port=10900 export=root device=/dev/nbd0 nbdargs=-b 1024 -C 2 mode=rw \
         fstype=ext4 flags="
    );
    assert_eq!(
        params(
            "mkmodule.server=[2001:db8::1]:99 mkmodule.device=/dev/nbd3 ro",
            "params"
        ),
        "server=2001:db8::1 port=99 export= device=/dev/nbd3 nbdargs=-b 4096 mode=ro fstype= \
         flags="
    );
    assert_eq!(
        params("mkmodule.server=boot.example", "params"),
        "server=boot.example port=10809 export= device=/dev/nbd0 nbdargs=-b 4096 mode=ro \
         fstype= flags="
    );
    assert_eq!(params("mkmodule.device=/dev/nbd2 x", "device"), "/dev/nbd2");
    // `wanted` says whether to act at all.
    let wanted = |cmdline: &str| {
        Command::new("sh")
            .arg(&helper)
            .arg("wanted")
            .env("MKMODULE_CMDLINE", cmdline)
            .status()
            .unwrap()
            .success()
    };
    assert!(wanted("root=/dev/nbd0 mkmodule.server=10.0.2.2"));
    assert!(!wanted("root=/dev/sda1 quiet"));

    // A verified root: the hash tree is the export NAME.verity on the next NBD device, and the
    // root device is the dm-verity one.
    let hash = "0123456789abcdef".repeat(4);
    let verified =
        format!("mkmodule.server=192.0.2.1 mkmodule.export=root mkmodule.roothash={hash}");
    assert_eq!(
        params(&verified, "params"),
        format!(
            "server=192.0.2.1 port=10809 export=root device=/dev/nbd0 nbdargs=-b 4096 mode=ro \
             fstype= flags=\nverity roothash={hash} hashdevice=/dev/nbd1 hashexport=root.verity"
        )
    );
    assert_eq!(
        params(&verified, "root-device"),
        "/dev/mapper/mkmodule-root"
    );
    assert_eq!(
        params("mkmodule.server=192.0.2.1", "root-device"),
        "/dev/nbd0"
    );
    assert_eq!(
        params(
            &format!("{verified} mkmodule.device=/dev/nbd4 mkmodule.hashdevice=/dev/nbd9"),
            "params"
        )
        .lines()
        .nth(1),
        Some(
            format!("verity roothash={hash} hashdevice=/dev/nbd9 hashexport=root.verity").as_str()
        )
    );
    // Bad verification settings stop `connect` before anything is connected.
    let refused = |cmdline: &str| {
        let out = Command::new("busybox")
            .arg("sh")
            .arg(&helper)
            .arg("connect")
            .env("MKMODULE_CMDLINE", cmdline)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmdline}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = "root=/dev/nbd0 mkmodule.server=192.0.2.1 mkmodule.export=root";
    assert!(
        refused(&format!("{base} mkmodule.verity")).contains("no mkmodule.roothash="),
        "a required verification without a root hash must refuse to boot"
    );
    assert!(
        refused(&format!("{base} mkmodule.roothash=xyz")).contains("is not a SHA-256 root hash")
    );
    assert!(refused(&format!("{base} mkmodule.roothash={}", &hash[1..])).contains("64 hex digits"));
    assert!(refused(&format!(
        "mkmodule.server=192.0.2.1 mkmodule.roothash={hash}"
    ))
    .contains("needs mkmodule.export=NAME"));
}
