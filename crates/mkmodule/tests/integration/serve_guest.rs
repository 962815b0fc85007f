//! The Linux kernel's own NBD client reads an ext4 filesystem that `mkmodule serve` exports from
//! a cloop image: `scripts/guest-nbd-test.sh` boots a Debian kernel under qemu (TCG) whose
//! initramfs runs nbd-client against the host's 127.0.0.1 (10.0.2.2 from the guest), checksums
//! the device, mounts it and reads a file. The kernel client uses simple replies only and keeps
//! many requests in flight, so this is the path a diskless machine booting from us takes.
//!
//! Prerequisites come from `scripts/install-guest-kernel.sh`; when missing, the test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command to completion within `limit` (killed by its own id past it); returns stdout.
fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}: run scripts/install-deps.sh"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} ran past {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn md5(path: &Path) -> String {
    run_ok(Command::new("md5sum").arg(path), Duration::from_secs(60))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `mkmodule serve` on 127.0.0.1 with a port the kernel picked, killed by its own id on drop.
struct Served {
    child: Child,
    port: u16,
}

impl Served {
    fn start(export: &str) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(["serve", "-b", "127.0.0.1", "-p", "0", export])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("mkmodule serve did not report its port");
            if let Some(rest) = line.split("serving on 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                break digits.parse().unwrap();
            }
        };
        Served { child, port }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kernel_nbd_client_mounts_ext4_from_a_served_cloop_image() {
    let _guest = crate::guest_lock();
    let script = repo().join("scripts/guest-nbd-test.sh");
    run_ok(
        Command::new("bash").arg(&script).arg("--check"),
        Duration::from_secs(60),
    );
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let hello = format!("booted from mkmodule serve {}", std::process::id());
    std::fs::write(tree.join("hello.txt"), format!("{hello}\n")).unwrap();
    let numbers: String = (0..200_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(tree.join("etc/numbers"), &numbers).unwrap();
    let ext4 = dir.path().join("root.ext4");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-d"])
            .arg(&tree)
            .arg(&ext4)
            .arg("24M"),
        Duration::from_secs(60),
    );
    let image = dir.path().join("KNOPPIX");
    run_ok(
        Command::new("create_compressed_fs")
            .args(["-q", "-B", "65536"])
            .arg(&ext4)
            .arg(&image),
        Duration::from_secs(60),
    );
    let served = Served::start(&image.display().to_string());
    let out = run_ok(
        Command::new("bash")
            .arg(&script)
            .args(["--file", "/hello.txt", "--file", "/etc/numbers"])
            .arg(format!("kernel:{}:KNOPPIX:-b,4096", served.port))
            .arg(format!("multi:{}::-b,1024,-C,2", served.port)),
        Duration::from_secs(240),
    );
    let lines = |label: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("=== [{label}] ")))
            .map(str::to_string)
            .collect()
    };
    let expected_md5 = md5(&ext4);
    let numbers_md5 = md5(&tree.join("etc/numbers"));
    for label in ["kernel", "multi"] {
        let got = lines(label);
        let has = |needle: &str| got.iter().any(|l| l.contains(needle));
        assert!(has("nbd-client rc=0"), "{label}: {out}");
        assert!(has(&format!("size={} ro=1", 24 << 20)), "{label}: {out}");
        assert!(has(&format!("md5={expected_md5}")), "{label}: {out}");
        assert!(has("mount rc=0"), "{label}: {out}");
        assert!(has(&format!("text={hello}")), "{label}: {out}");
        assert!(has(&format!("md5={numbers_md5}")), "{label}: {out}");
        assert!(
            got.iter()
                .any(|l| l.starts_with("write rc=") && !l.starts_with("write rc=0")),
            "{label}: a write to the read-only export must fail: {out}"
        );
    }
    assert!(out.contains("=== done"), "{out}");
}
