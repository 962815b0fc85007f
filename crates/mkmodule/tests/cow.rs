//! `mkmodule serve --cow` and `mkmodule commit` against real clients: qemu-io, nbdcopy and
//! nbdinfo write, trim, zero and map the export; the server restarts over the same overlay
//! file; nbdfuse + loop + a read-write ext4 mount; and `commit` folds the overlay into a new
//! image that qemu decodes. The image itself never changes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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
    let out = run(program, args, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the mkmodule binary to completion.
fn mkmodule(args: &[&str]) -> Output {
    run(
        env!("CARGO_BIN_EXE_mkmodule"),
        args,
        Duration::from_secs(120),
    )
}

/// qemu-io on an export; fails the test on an error or a pattern mismatch.
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run_ok("qemu-io", &args);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io {commands:?}: {out}"
    );
    out
}

fn sha256(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `mkmodule serve` process on a unix socket, stopped by its own id when dropped.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn start(dir: &Path, args: &[&str]) -> Served {
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

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops the server with SIGTERM (it flushes its overlays) and checks it exits cleanly.
    fn terminate(mut self) {
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
fn qemu_raw(image: &Path, out: &Path) -> Vec<u8> {
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

/// `nbdinfo --map` as (offset, length, description) triples.
fn map(uri: &str) -> Vec<(u64, u64, String)> {
    run_ok("nbdinfo", &["--map", uri])
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[3..].join(" "),
            )
        })
        .collect()
}

/// The description of the extent holding byte `offset`.
fn state_at(map: &[(u64, u64, String)], offset: u64) -> &str {
    map.iter()
        .find(|(o, l, _)| (*o..o + l).contains(&offset))
        .map(|(_, _, d)| d.as_str())
        .unwrap_or_else(|| panic!("no extent at {offset} in {map:?}"))
}

#[test]
fn writes_trims_and_zeroes_persist_across_restarts_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("f08-big-b1M.cloop");
    let image_sum = sha256(&image);
    let mut expected = qemu_raw(&image, &dir.path().join("base.raw"));
    let size = expected.len() as u64;
    assert_eq!(size, 11 << 20);
    let cow = dir.path().join("root.cow");
    let cow_arg = cow.to_str().unwrap();
    let img = format!("img={}", image.display());

    let served = Served::start(dir.path(), &["--cow", cow_arg, &img]);
    let uri = served.uri("img");
    let info = run_ok("nbdinfo", &[&uri]);
    for line in [
        "is_read_only: false",
        "can_multi_conn: true",
        "can_trim: true",
        "can_zero: true",
        "can_flush: true",
    ] {
        assert!(info.contains(line), "{line} missing: {info}");
    }
    // Small writes inside a chunk (read-modify-write), across chunks, and with FUA.
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 4096 8192",
            "write -P 0x33 -f 1000000 200000",
            "read -P 0x5a 4096 8192",
            "read -P 0x33 1000000 200000",
        ],
    );
    expected[4096..4096 + 8192].fill(0x5a);
    expected[1_000_000..1_200_000].fill(0x33);
    // nbdcopy writes a whole device over several connections (multi-conn).
    let mut copy_in = expected.clone();
    for (i, b) in copy_in[3 << 20..5 << 20].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let src = dir.path().join("in.raw");
    std::fs::write(&src, &copy_in).unwrap();
    run_ok("nbdcopy", &[src.to_str().unwrap(), &uri]);
    expected = copy_in;
    // Trim and write-zeroes: read as zeros and are mapped as holes.
    qemu_io(
        &uri,
        &[
            "discard 6291456 1048576",
            "write -z 8388608 524288",
            "write -z 100 50",
            "read -P 0 6291456 1048576",
            "read -P 0 8388608 524288",
        ],
    );
    expected[6 << 20..7 << 20].fill(0);
    expected[8 << 20..(8 << 20) + (512 << 10)].fill(0);
    expected[100..150].fill(0);
    let m = map(&uri);
    assert_eq!(state_at(&m, 6 << 20), "hole,zero", "{m:?}");
    assert_eq!(state_at(&m, (7 << 20) - 1), "hole,zero", "{m:?}");
    assert_eq!(state_at(&m, 8 << 20), "hole,zero", "{m:?}");
    assert_eq!(state_at(&m, 4096), "data", "{m:?}");
    let back = dir.path().join("back.raw");
    run_ok("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == expected,
        "nbdcopy read-back"
    );
    served.terminate();

    // The same overlay after a restart: data, zeros and the map are all still there.
    let served = Served::start(dir.path(), &["--cow", cow_arg, &img]);
    let uri = served.uri("img");
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 4096 8192",
            "read -P 0x33 1000000 200000",
            "read -P 0 6291456 1048576",
        ],
    );
    assert_eq!(state_at(&map(&uri), 6 << 20), "hole,zero");
    std::fs::remove_file(&back).unwrap();
    run_ok("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == expected,
        "read-back after restart"
    );
    served.terminate();
    assert_eq!(sha256(&image), image_sum, "the image was modified");

    // Commit: a new image in the image's dialect and block size, holding the merged view.
    let new = dir.path().join("new.cloop");
    let out = mkmodule(&[
        "commit",
        image.to_str().unwrap(),
        cow_arg,
        "-o",
        new.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = run_ok("qemu-img", &["info", new.to_str().unwrap()]);
    assert!(info.contains("file format: cloop"), "{info}");
    assert!(
        qemu_raw(&new, &dir.path().join("new.raw")) == expected,
        "the committed image differs from what the clients wrote"
    );
    assert_eq!(sha256(&image), image_sum, "the image was modified");
    // Committing again over an existing output needs --force.
    let out = mkmodule(&[
        "commit",
        image.to_str().unwrap(),
        cow_arg,
        "-o",
        new.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn memory_overlays_are_shared_by_connections_and_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("f01-text-b4096.cloop");
    let image_sum = sha256(&image);
    let img = format!("t={}", image.display());
    let served = Served::start(dir.path(), &[&img, "--cow"]);
    let uri = served.uri("t");
    qemu_io(&uri, &["write -P 0x77 10000 30000"]);
    // Another connection sees the write.
    qemu_io(&uri, &["read -P 0x77 10000 30000"]);
    served.terminate();
    let served = Served::start(dir.path(), &[&img, "--cow"]);
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x77 10000 30000",
            &served.uri("t"),
        ],
        Duration::from_secs(60),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"),
        "a memory overlay must not survive a restart"
    );
    served.terminate();
    assert_eq!(sha256(&image), image_sum);
}

#[test]
fn overlay_files_refuse_several_images_and_a_different_image() {
    let dir = tempfile::tempdir().unwrap();
    let cow = dir.path().join("x.cow");
    let a = fixture("f01-text-b4096.cloop");
    let b = fixture("f05-text-b4096-best.cloop");
    let out = mkmodule(&[
        "serve",
        "-k",
        dir.path().join("s").to_str().unwrap(),
        "--cow",
        cow.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cow") && err.contains("one image"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!cow.exists());
    // Make an overlay over f01, then offer it f09 (another image of the same block size).
    let served = Served::start(
        dir.path(),
        &["--cow", cow.to_str().unwrap(), a.to_str().unwrap()],
    );
    qemu_io(&served.uri(""), &["write -P 1 0 10"]);
    served.terminate();
    let other = fixture("f09-3blocks-b4096.cloop");
    let out = mkmodule(&[
        "serve",
        "-k",
        dir.path().join("s2").to_str().unwrap(),
        "--cow",
        cow.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("made for another base"), "{err}");
    let out = mkmodule(&[
        "commit",
        other.to_str().unwrap(),
        cow.to_str().unwrap(),
        "-o",
        dir.path().join("n").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("made for another base"));
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
struct Cleanup(Vec<(String, Vec<String>)>);

impl Cleanup {
    fn push(&mut self, program: &str, args: &[&str]) {
        self.0.push((
            program.to_string(),
            args.iter().map(|s| s.to_string()).collect(),
        ));
    }

    /// Runs the undo steps now (checking them), leaving nothing for drop.
    fn run_now(&mut self) {
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

/// nbdfuse (read-write) + a loop device + an ext4 mount of the export at `mnt`.
fn mount_rw(dir: &Path, uri: &str, mnt: &Path, cleanup: &mut Cleanup) -> Child {
    let fuse_dir = dir.join("fuse");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(mnt).unwrap();
    let pid_file = dir.join("nbdfuse.pid");
    let _ = std::fs::remove_file(&pid_file);
    require_tool("nbdfuse");
    let mut nbdfuse = Command::new("nbdfuse")
        .args([
            "-P",
            pid_file.to_str().unwrap(),
            fuse_dir.to_str().unwrap(),
            uri,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    let loop_dev = run_ok("losetup", &["-f", "--show", device_file.to_str().unwrap()])
        .trim()
        .to_string();
    cleanup.push("losetup", &["-d", &loop_dev]);
    run_ok("mount", &["-t", "ext4", &loop_dev, mnt.to_str().unwrap()]);
    cleanup.push("umount", &[mnt.to_str().unwrap()]);
    nbdfuse
}

/// Waits (bounded) for nbdfuse to exit after its mount went away.
fn wait_exit(mut child: Child) {
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

#[test]
fn ext4_mounted_read_write_keeps_its_changes_and_commits_them() {
    let dir = tempfile::tempdir().unwrap();
    let image = ext4_cloop(dir.path());
    let image_sum = sha256(&image);
    let cow = dir.path().join("root.cow");
    let img = format!("root={}", image.display());
    let mnt = dir.path().join("mnt");

    let served = Served::start(dir.path(), &["--cow", cow.to_str().unwrap(), &img]);
    let mut cleanup = Cleanup(Vec::new());
    let nbdfuse = mount_rw(dir.path(), &served.uri("root"), &mnt, &mut cleanup);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from a cloop image\n"
    );
    std::fs::write(mnt.join("new.txt"), "written through the overlay\n").unwrap();
    std::fs::remove_file(mnt.join("etc/big")).unwrap();
    run_ok("sync", &[]);
    cleanup.run_now();
    wait_exit(nbdfuse);
    served.terminate();

    // Remount over the same overlay after a server restart.
    let served = Served::start(dir.path(), &["--cow", cow.to_str().unwrap(), &img]);
    let nbdfuse = mount_rw(dir.path(), &served.uri("root"), &mnt, &mut cleanup);
    assert_eq!(
        std::fs::read_to_string(mnt.join("new.txt")).unwrap(),
        "written through the overlay\n"
    );
    assert!(!mnt.join("etc/big").exists());
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from a cloop image\n"
    );
    cleanup.run_now();
    wait_exit(nbdfuse);
    served.terminate();
    assert_eq!(sha256(&image), image_sum, "the image was modified");

    // Commit, decode the new image with qemu, and read the new file out of it.
    let new = dir.path().join("root2.cloop");
    let out = mkmodule(&[
        "commit",
        image.to_str().unwrap(),
        cow.to_str().unwrap(),
        "-o",
        new.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = dir.path().join("root2.raw");
    qemu_raw(&new, &raw);
    run_ok("e2fsck", &["-f", "-n", raw.to_str().unwrap()]);
    let cat = run_ok("debugfs", &["-R", "cat /new.txt", raw.to_str().unwrap()]);
    assert_eq!(cat, "written through the overlay\n");
    let ls = run_ok("debugfs", &["-R", "ls /etc", raw.to_str().unwrap()]);
    assert!(!ls.contains("big"), "{ls}");
    assert_eq!(sha256(&image), image_sum, "the image was modified");
}
