//! Helpers shared by the tests that drive `mkmodule serve` and real peer tools: running a
//! program with a time limit, a server on a unix socket, reference images, mounts that are
//! undone even when an assertion fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A reference image made by Debian's create_compressed_fs.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("testdata/cloop-utils").join(name)
}

/// Fails the test (never skips it) when a peer tool is missing.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found || Path::new(tool).is_file(),
        "{tool} is not installed: run scripts/install-deps.sh"
    );
}

/// Runs a program with a time limit, killing it by its own id when the limit passes.
pub fn run(program: &str, args: &[&str], limit: Duration) -> Output {
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

/// Runs a program (60 s at most), fails the test when it fails, and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the mkmodule binary to completion (2 minutes at most).
pub fn mkmodule(args: &[&str]) -> Output {
    run(
        env!("CARGO_BIN_EXE_mkmodule"),
        args,
        Duration::from_secs(120),
    )
}

/// SHA-256 of a file, in hex.
pub fn sha256(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `mkmodule serve` process on a unix socket in `dir`, stopped by its own id when dropped.
/// Its stderr goes to `dir/serve.log`.
pub struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    /// Starts `mkmodule serve -k DIR/nbd.sock ARGS...` and waits (bounded) for the socket.
    pub fn start(dir: &Path, args: &[&str]) -> Served {
        let socket = dir.join("nbd.sock");
        let _ = std::fs::remove_file(&socket);
        let mut all = vec!["serve", "-k", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(&all)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut served = Served { child, socket };
        let start = Instant::now();
        while !served.socket.exists() {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!(
                    "mkmodule serve exited early ({status}): {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// The NBD URI of `export` on this server.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops the server with SIGTERM (it flushes its overlays) and checks it exits cleanly.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        run_ok("kill", &["-TERM", &pid]);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "server exited with {status}");
                return;
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
pub fn qemu_raw(image: &Path, out: &Path) -> Vec<u8> {
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "cloop",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

/// Builds an ext4 filesystem holding `hello.txt` and a 3 MiB `etc/big`, and a cloop image of it
/// made with Debian's create_compressed_fs (the reference writer).
pub fn ext4_cloop(dir: &Path) -> PathBuf {
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
            tree.to_str().unwrap(),
            ext4.to_str().unwrap(),
        ],
    );
    let image = dir.join("root.cloop");
    run_ok(
        "create_compressed_fs",
        &[
            "-q",
            "-B",
            "65536",
            ext4.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
    image
}

/// Undoes mounts and loop devices, last first, even when an assertion fails.
#[derive(Default)]
pub struct Cleanup(Vec<(String, Vec<String>)>);

impl Cleanup {
    /// Remembers an undo step.
    pub fn push(&mut self, program: &str, args: &[&str]) {
        self.0.push((
            program.to_string(),
            args.iter().map(|s| s.to_string()).collect(),
        ));
    }

    /// Runs the undo steps now (checking them), leaving nothing for drop.
    pub fn run_now(&mut self) {
        while let Some((program, args)) = self.0.pop() {
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            run_ok(&program, &args);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (program, args) in self.0.iter().rev() {
            let _ = Command::new(program).args(args).output();
        }
    }
}

/// nbdfuse + a loop device + an ext4 mount of the export at `mnt` (read-only unless `writable`),
/// with undo steps in `cleanup`. Returns the nbdfuse process: it exits when its mount goes.
pub fn nbdfuse_mount(
    dir: &Path,
    uri: &str,
    mnt: &Path,
    writable: bool,
    cleanup: &mut Cleanup,
) -> Child {
    let fuse_dir = dir.join("fuse");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(mnt).unwrap();
    let pid_file = dir.join("nbdfuse.pid");
    let _ = std::fs::remove_file(&pid_file);
    require_tool("nbdfuse");
    let mut args = vec![
        "-P",
        pid_file.to_str().unwrap(),
        fuse_dir.to_str().unwrap(),
        uri,
    ];
    if !writable {
        args.insert(0, "-r");
    }
    let mut nbdfuse = Command::new("nbdfuse")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // No fusermount3 on these hosts: as root a plain umount ends the FUSE mount.
    cleanup.push("umount", &[fuse_dir.to_str().unwrap()]);
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
    let device_file = fuse_dir.join("nbd");
    let mut losetup = vec!["-f", "--show", device_file.to_str().unwrap()];
    if !writable {
        losetup.push("-r");
    }
    let loop_dev = run_ok("losetup", &losetup).trim().to_string();
    cleanup.push("losetup", &["-d", &loop_dev]);
    let options = if writable { "rw" } else { "ro" };
    run_ok(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            options,
            &loop_dev,
            mnt.to_str().unwrap(),
        ],
    );
    cleanup.push("umount", &[mnt.to_str().unwrap()]);
    nbdfuse
}

/// Waits (bounded) for nbdfuse to exit after its mount went away.
pub fn wait_exit(mut child: Child) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nbdfuse did not exit after unmount");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
