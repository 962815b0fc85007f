//! `mkmodule serve` against real NBD clients: nbdinfo, nbdcopy, qemu-img, qemu-io, the shared
//! libnbd probe scripts, and nbdfuse + loop + mount of an ext4 filesystem read from a cloop
//! image made by Debian's create_compressed_fs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("testdata/cloop-utils").join(name)
}

/// Fails the test (never skips it) when a peer tool is missing.
fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found || Path::new(tool).is_file(),
        "{tool} is not installed: run scripts/install-deps.sh"
    );
}

/// Runs a program with a time limit, killing it by its own id when the limit passes.
fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    require_tool(program);
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{program} {args:?} ran past {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `mkmodule serve` process on a unix socket, stopped by its own id when dropped.
struct Served {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(exports: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let mut args = vec![
            "serve".to_string(),
            "-k".into(),
            socket.display().to_string(),
        ];
        args.extend(exports.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut served = Served {
            child,
            socket,
            _dir: dir,
        };
        let start = Instant::now();
        while !served.socket.exists() {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("mkmodule serve exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops the server with SIGTERM and returns its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        run_ok("kill", &["-TERM", &pid]);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
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

/// The raw device contents as qemu's cloop driver decodes them (the reference reader).
fn qemu_raw(image: &Path, out: &Path) {
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "cloop",
            "-O",
            "raw",
            &image.display().to_string(),
            &out.display().to_string(),
        ],
    );
}

#[test]
fn nbdinfo_lists_sizes_and_maps_holes() {
    let served = Served::start(&[&fixture("f02-mixed-b512.cloop").display().to_string()]);
    let list = run_ok("nbdinfo", &["--list", &served.uri("")]);
    assert!(list.contains("export=\"f02-mixed-b512\""), "{list}");
    assert!(list.contains("export-size: 65536"), "{list}");
    assert!(list.contains("is_read_only: true"), "{list}");
    assert!(list.contains("can_multi_conn: true"), "{list}");
    assert!(list.contains("block_size_preferred: 512"), "{list}");
    // f02 begins with 16 KiB of zeros: reported as a hole that reads as zeros.
    let map = run_ok("nbdinfo", &["--map", &served.uri("f02-mixed-b512")]);
    let first: Vec<&str> = map.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(first, ["0", "16384", "3", "hole,zero"], "{map}");
    assert!(served.terminate().success());
}

#[test]
fn nbdcopy_and_qemu_img_read_what_qemu_decodes() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "f01-text-b4096.cloop",
        "f03-random-b16384.cloop",
        "f08-big-b1M.cloop",
    ] {
        let image = fixture(name);
        let reference = dir.path().join(format!("{name}.qemu"));
        qemu_raw(&image, &reference);
        let served = Served::start(&[&format!("img={}", image.display())]);
        let copy = dir.path().join(format!("{name}.nbdcopy"));
        run_ok(
            "nbdcopy",
            &[&served.uri("img"), &copy.display().to_string()],
        );
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read(&reference).unwrap(),
            "{name}"
        );
        let compare = run_ok(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                &reference.display().to_string(),
                &served.uri("img"),
            ],
        );
        assert!(compare.contains("identical"), "{name}: {compare}");
    }
}

#[test]
fn qemu_io_reads_patterns_across_blocks() {
    let served = Served::start(&[&format!("m={}", fixture("f02-mixed-b512.cloop").display())]);
    let uri = served.uri("m");
    // Zeros first, then the 0xff run at 32 KiB..48 KiB, read with lengths that cross blocks.
    let out = run_ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0 100 16000",
            "-c",
            "read -P 0xff 33000 15000",
            &uri,
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let bad = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x11 100 100", &uri],
        Duration::from_secs(60),
    );
    let bad = String::from_utf8_lossy(&bad.stdout);
    assert!(
        bad.contains("Pattern verification failed"),
        "a wrong pattern must be noticed: {bad}"
    );
}

#[test]
fn shared_probe_scripts_pass() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("f01-text-b4096.cloop");
    let reference = dir.path().join("f01.raw");
    qemu_raw(&image, &reference);
    let served = Served::start(&[&format!("f01={}", image.display())]);
    let scripts = repo().join("crates/nbd/tests/scripts");
    let checks = run(
        "/usr/bin/python3",
        &[
            &scripts.join("nbd_checks.py").display().to_string(),
            &served.uri("f01"),
            &reference.display().to_string(),
        ],
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&checks.stdout);
    assert!(checks.status.success() && !text.contains("FAIL"), "{text}");
    assert!(text.contains("PASS"), "{text}");
}

#[test]
fn raw_files_are_served_too() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("boot.img");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, &data).unwrap();
    let served = Served::start(&[&raw.display().to_string()]);
    let copy = dir.path().join("copy");
    run_ok(
        "nbdcopy",
        &[&served.uri("boot"), &copy.display().to_string()],
    );
    assert_eq!(std::fs::read(&copy).unwrap(), data);
}

#[test]
fn refuses_an_unreadable_image_with_one_sentence() {
    let out = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
        .args(["serve", "-k", "/nonexistent/dir/sock", "/nonexistent/image"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/image"), "{err}");
}

/// Builds an ext4 filesystem holding `hello.txt`, and a cloop image of it made with Debian's
/// create_compressed_fs (the reference writer).
fn ext4_cloop(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from a cloop image\n").unwrap();
    std::fs::write(tree.join("etc/big"), vec![7u8; 3 << 20]).unwrap();
    let ext4 = dir.join("root.ext4");
    std::fs::File::create(&ext4)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            &tree.display().to_string(),
            &ext4.display().to_string(),
        ],
    );
    let image = dir.join("root.cloop");
    run_ok(
        "create_compressed_fs",
        &[
            "-q",
            "-B",
            "65536",
            &ext4.display().to_string(),
            &image.display().to_string(),
        ],
    );
    image
}

/// Undoes mounts and loop devices, last first, even when an assertion fails.
struct Cleanup(Vec<(String, Vec<String>)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (program, args) in self.0.iter().rev() {
            let _ = Command::new(program).args(args).output();
        }
    }
}

#[test]
fn ext4_in_a_cloop_image_mounts_through_nbdfuse_and_loop() {
    let dir = tempfile::tempdir().unwrap();
    let image = ext4_cloop(dir.path());
    let served = Served::start(&[&format!("root={}", image.display())]);
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let pid_file = dir.path().join("nbdfuse.pid");
    require_tool("nbdfuse");
    let mut nbdfuse = Command::new("nbdfuse")
        .args([
            "-r",
            "-P",
            &pid_file.display().to_string(),
            &fuse_dir.display().to_string(),
            &served.uri("root"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // nbdfuse exits when its mount goes away.
    let mut cleanup = Cleanup(vec![(
        "umount".into(),
        vec![fuse_dir.display().to_string()],
    )]);
    let start = Instant::now();
    while std::fs::metadata(&pid_file).map_or(true, |m| m.len() == 0) {
        assert!(
            nbdfuse.try_wait().unwrap().is_none(),
            "nbdfuse exited early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nbdfuse did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let device_file = fuse_dir.join("nbd").display().to_string();
    let loop_dev = run_ok("losetup", &["-f", "--show", "-r", &device_file])
        .trim()
        .to_string();
    cleanup
        .0
        .push(("losetup".into(), vec!["-d".into(), loop_dev.clone()]));
    run_ok(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            "ro",
            &loop_dev,
            &mnt.display().to_string(),
        ],
    );
    cleanup
        .0
        .push(("umount".into(), vec![mnt.display().to_string()]));
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from a cloop image\n"
    );
    assert_eq!(
        std::fs::read(mnt.join("etc/big")).unwrap(),
        vec![7u8; 3 << 20]
    );
    drop(cleanup);
    let start = Instant::now();
    while nbdfuse.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = nbdfuse.kill();
            let _ = nbdfuse.wait();
            panic!("nbdfuse did not exit after unmount");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
