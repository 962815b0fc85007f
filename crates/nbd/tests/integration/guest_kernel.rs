//! The Linux kernel's own NBD client (`nbd.ko` driven by `nbd-client`) against the
//! in-process server: `scripts/guest-nbd-test.sh` boots a throw-away guest under qemu
//! (TCG) that reaches the server on the host's 127.0.0.1 as 10.0.2.2 through qemu's
//! user-mode network, connects, checksums the device, mounts the ext4 filesystem on it
//! and tries a write.
//!
//! Prerequisites (qemu-system-x86_64, a Debian kernel, busybox, nbd-client, cpio) come
//! from `scripts/install-guest-kernel.sh`; when they are missing the tests fail.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{collecting_logger, start_tcp, wait_until};
use mkmodule_blockdev::FileDevice;
use mkmodule_nbd::{Level, ServerConfig};

/// Size of the ext4 test image.
const IMAGE_SIZE: &str = "24M";
/// Size of the pseudo-random file inside it.
const BLOB_SIZE: usize = 3 << 20;
/// Bound on the guest run inside the script (it powers off long before).
const GUEST_TIMEOUT_SECS: u64 = 150;
/// Bound on the whole script run, seen from here.
const SCRIPT_LIMIT: Duration = Duration::from_secs(GUEST_TIMEOUT_SECS + 60);

const INSTALL_HINT: &str = "run scripts/install-guest-kernel.sh (as root) to install \
     qemu-system-x86_64, the guest kernel, busybox, nbd-client and cpio";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guest_script() -> PathBuf {
    repo_root().join("scripts/guest-nbd-test.sh")
}

/// Output of a finished command.
#[derive(Debug)]
struct Output {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `cmd` with a hard time limit. On timeout the child gets SIGTERM (so the script
/// stops its qemu), then SIGKILL, and the test fails.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Fail (not skip) when the guest prerequisites are missing.
fn require_guest_prerequisites() {
    let script = guest_script();
    assert!(script.is_file(), "{} is missing", script.display());
    let r = run_bounded(
        Command::new("bash").arg(&script).arg("--check"),
        Duration::from_secs(60),
    );
    assert_eq!(
        r.status,
        Some(0),
        "guest test prerequisites missing: {INSTALL_HINT}\n{}{}",
        r.stdout,
        r.stderr
    );
    eprintln!("{}", r.stdout.trim_end());
}

fn find_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

fn md5_of(path: &Path) -> String {
    let r = run_bounded(
        Command::new(find_tool("md5sum")).arg(path),
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(0), "md5sum {}: {}", path.display(), r.stderr);
    r.stdout
        .split_whitespace()
        .next()
        .expect("md5sum output")
        .to_string()
}

/// Deterministic pseudo-random bytes.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The test filesystem: an ext4 image (4 KiB blocks) holding `hello.txt` and `data/blob.bin`.
struct Ext4Image {
    _dir: tempfile::TempDir,
    image: PathBuf,
    hello_text: String,
    hello_md5: String,
    blob_md5: String,
}

fn build_ext4_image() -> Ext4Image {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("data")).unwrap();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let hello_text = format!(
        "hello from the mkmodule guest kernel test {}-{stamp}",
        std::process::id()
    );
    std::fs::write(tree.join("hello.txt"), format!("{hello_text}\n")).unwrap();
    std::fs::write(
        tree.join("data/blob.bin"),
        pseudo_random(BLOB_SIZE, stamp as u64),
    )
    .unwrap();
    let image = dir.path().join("ext4.img");
    let r = run_bounded(
        Command::new(find_tool("mkfs.ext4"))
            .args(["-q", "-F", "-b", "4096", "-L", "mkmguest", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg(IMAGE_SIZE),
        Duration::from_secs(60),
    );
    assert_eq!(
        r.status,
        Some(0),
        "mkfs.ext4 failed:\n{}{}",
        r.stdout,
        r.stderr
    );
    Ext4Image {
        hello_md5: md5_of(&tree.join("hello.txt")),
        blob_md5: md5_of(&tree.join("data/blob.bin")),
        image,
        hello_text,
        _dir: dir,
    }
}

/// The `=== [label] ...` lines of the script's output, by label, without the prefix.
fn by_label(stdout: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("=== [") else {
            continue;
        };
        if let Some((label, msg)) = rest.split_once("] ") {
            map.entry(label.to_string())
                .or_default()
                .push(msg.trim_end().to_string());
        }
    }
    map
}

/// The single line of `lines` starting with `prefix`, without it.
fn field<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    let found: Vec<&String> = lines.iter().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {prefix:?} line in:\n{}",
        lines.join("\n")
    );
    &found[0][prefix.len()..]
}

/// The value of `key=` in a line of space-separated `key=value` pairs.
fn value<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn kernel_nbd_client_reads_ext4_export_over_one_and_two_connections() {
    require_guest_prerequisites();
    let img = build_ext4_image();
    let image_md5 = md5_of(&img.image);
    let image_size = std::fs::metadata(&img.image).unwrap().len();

    let export = Arc::new(FileDevice::open(&img.image).unwrap());
    let (logger, log) = collecting_logger();
    let config = ServerConfig::new()
        .with_export("ext4", "ext4 test image", export.clone())
        .with_export("ext4mc", "same image, for multi-conn", export)
        .with_logger(logger);
    let (server, addr) = start_tcp(config);
    let port = addr.port();

    let started = Instant::now();
    let r = run_bounded(
        Command::new("bash").arg(guest_script()).args([
            "--timeout".to_string(),
            GUEST_TIMEOUT_SECS.to_string(),
            "--file".into(),
            "hello.txt".into(),
            "--file".into(),
            "data/blob.bin".into(),
            format!("single:{port}:ext4:-b,4096,-t,60"),
            format!("multi:{port}:ext4mc:-b,512,-t,60,-C,2"),
        ]),
        SCRIPT_LIMIT,
    );
    eprintln!(
        "guest run took {:.1} s (rc={:?}):\n{}{}",
        started.elapsed().as_secs_f64(),
        r.status,
        r.stdout,
        r.stderr
    );
    assert_eq!(
        r.status,
        Some(0),
        "the guest did not complete its tests:\n{}{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.lines().any(|l| l.starts_with("=== kernel ")));
    assert!(
        !r.stdout.contains("=== insmod"),
        "a kernel module failed to load:\n{}",
        r.stdout
    );

    let labels = by_label(&r.stdout);
    for label in ["single", "multi"] {
        let lines = labels
            .get(label)
            .unwrap_or_else(|| panic!("no output for test {label}:\n{}", r.stdout));
        let ctx = format!("[{label}]");
        assert_eq!(
            field(lines, "nbd-client rc="),
            "0",
            "{ctx} nbd-client failed"
        );
        let geometry = field(lines, "size=");
        let size_line = format!("size={geometry}");
        assert_eq!(
            value(&size_line, "size"),
            image_size.to_string(),
            "{ctx} device size"
        );
        assert_eq!(value(&size_line, "ro"), "1", "{ctx} read-only flag");
        let md5_line = format!("md5={}", field(lines, "md5="));
        assert_eq!(value(&md5_line, "md5"), image_md5, "{ctx} device md5");
        let mount = field(lines, "mount rc=");
        assert!(mount.starts_with('0'), "{ctx} mount failed: {mount}");
        assert!(
            mount.contains("hello.txt") && mount.contains("data"),
            "{ctx} top level: {mount}"
        );
        let hello = format!("x {}", field(lines, "file hello.txt "));
        assert_eq!(value(&hello, "md5"), img.hello_md5, "{ctx} hello.txt md5");
        assert!(
            hello.ends_with(&format!("text={}", img.hello_text)),
            "{ctx} hello.txt content: {hello}"
        );
        let blob = format!("x {}", field(lines, "file data/blob.bin "));
        assert_eq!(value(&blob, "md5"), img.blob_md5, "{ctx} blob.bin md5");
        assert_eq!(value(&blob, "size"), BLOB_SIZE.to_string());
        let write = field(lines, "write rc=");
        assert!(
            !write.starts_with('0'),
            "{ctx} a write to the read-only device succeeded: {write}"
        );
        assert_eq!(field(lines, "disconnect rc="), "0", "{ctx} disconnect");
    }
    assert!(r.stdout.lines().any(|l| l == "=== done"));

    // The server saw one connection for "ext4" and two for "ext4mc", all ended cleanly.
    let closed = |export: &str| -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(level, m)| {
                *level == Level::Info
                    && m.starts_with("connection closed")
                    && m.contains(&format!("export=\"{export}\""))
            })
            .map(|(_, m)| m.clone())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || closed("ext4").len() == 1
            && closed("ext4mc").len() == 2),
        "server log: {:#?}",
        log.lock().unwrap()
    );
    for line in closed("ext4").iter().chain(closed("ext4mc").iter()) {
        assert!(line.contains("errors=0"), "{line}");
    }
    // Each device was read whole at least once (md5sum), over one or both connections.
    let read_bytes = |lines: Vec<String>| -> u64 {
        lines
            .iter()
            .map(|l| value(l, "read").parse::<u64>().unwrap())
            .sum()
    };
    assert!(read_bytes(closed("ext4")) >= image_size);
    assert!(read_bytes(closed("ext4mc")) >= image_size);
    server.shutdown();
}

#[test]
fn guest_script_names_the_installer_when_prerequisites_are_missing() {
    let empty = tempfile::tempdir().unwrap();
    let r = run_bounded(
        Command::new("bash")
            .arg(guest_script())
            .arg("--kernel-dir")
            .arg(empty.path())
            .arg("x:10809:disk"),
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(3), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("scripts/install-guest-kernel.sh"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}
