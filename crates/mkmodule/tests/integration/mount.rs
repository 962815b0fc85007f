//! `mkmodule mount` / `umount` / `attach` / `detach` on this host (root, /dev/fuse and loop
//! devices, no nbd or cloop kernel module): ext4 modules made with `mkfs.ext4 -d` and compressed
//! by Debian's `create_compressed_fs`, mounted through our FUSE server + loop, alone and
//! stacked with overlayfs. A missing tool fails the test; it never skips.
//!
//! Every test runs in its own temporary directory with its own run directory
//! (`MKMODULE_RUN_DIR`), and a guard takes down whatever is left (mounts, loop devices, FUSE
//! servers by their own pid) even when an assertion fails. The tests run one at a time: they
//! share the host's few loop devices and two cores.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use mkmodule_testkit::tools::require_tool;

fn require_host() {
    for tool in [
        "mkfs.ext4",
        "create_compressed_fs",
        "losetup",
        "blkid",
        "mount",
        "umount",
        "setsid",
    ] {
        require_tool(tool);
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the fuse kernel module is needed"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: the loop kernel module is needed"
    );
}

/// Runs a program with a time limit, killing it by its own id when the limit passes.
fn run_limited(command: &mut Command, limit: Duration) -> Output {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} ran past {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub(crate) fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run_limited(Command::new(program).args(args), Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn sha256_file(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("{:x}", hasher.finalize())
}

/// Mount points under `dir`, deepest (latest) first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.reverse();
    found
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(back) = fs::read_to_string(entry.path().join("loop/backing_file")) {
            if Path::new(back.trim()).starts_with(dir) {
                found.push(format!("/dev/{name}"));
            }
        }
    }
    found
}

/// Whether a process is running (a zombie counts as gone: nobody may reap it here).
pub(crate) fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// A test's directory, run directory and cleanup.
pub(crate) struct Env {
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Env {
    pub(crate) fn new() -> Env {
        let serial = crate::mount_lock();
        require_host();
        let dir = tempfile::tempdir().unwrap();
        Env {
            dir,
            _serial: serial,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    pub(crate) fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        fs::create_dir_all(&path).unwrap();
        path.canonicalize().unwrap()
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mkmodule"));
        command.args(args).env("MKMODULE_RUN_DIR", self.run_dir());
        command
    }

    pub(crate) fn mkmodule(&self, args: &[&str]) -> Output {
        run_limited(&mut self.command(args), Duration::from_secs(120))
    }

    pub(crate) fn mkmodule_ok(&self, args: &[&str]) -> String {
        let out = self.mkmodule(args);
        assert!(
            out.status.success(),
            "mkmodule {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn mkmodule_err(&self, args: &[&str]) -> String {
        let out = self.mkmodule(args);
        assert!(
            !out.status.success(),
            "mkmodule {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// An ext4 filesystem holding `files` (path, content), and its cloop image.
    pub(crate) fn module(&self, name: &str, files: &[(&str, &[u8])]) -> (PathBuf, PathBuf) {
        let tree = self.path(&format!("{name}.tree"));
        for (path, content) in files {
            let path = tree.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        fs::create_dir_all(&tree).unwrap();
        let raw = self.path(&format!("{name}.ext4"));
        let cloop = self.path(&format!("{name}.cloop"));
        fs::File::create(&raw).unwrap().set_len(16 << 20).unwrap();
        run_ok(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                name,
                "-d",
                tree.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        run_ok(
            "create_compressed_fs",
            &[
                "-B",
                "65536",
                raw.to_str().unwrap(),
                cloop.to_str().unwrap(),
            ],
        );
        (raw, cloop)
    }

    /// The records in the run directory, as JSON.
    pub(crate) fn records(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = fs::read_dir(self.run_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect()
    }

    /// Server process ids named in the records.
    pub(crate) fn server_pids(&self) -> Vec<u32> {
        self.records()
            .iter()
            .flat_map(|r| r["steps"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["pid"].as_u64())
            .map(|pid| pid as u32)
            .collect()
    }

    /// Asserts that nothing is left: no mount, loop device, record, work directory or server.
    pub(crate) fn assert_clean(&self, pids: &[u32]) {
        let root = self.dir.path().canonicalize().unwrap();
        assert_eq!(mounts_under(&root), Vec::<PathBuf>::new(), "mounts left");
        assert_eq!(
            loops_under(&root),
            Vec::<String>::new(),
            "loop devices left"
        );
        let left: Vec<_> = fs::read_dir(self.run_dir())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in the run directory: {left:?}");
        for &pid in pids {
            assert!(
                wait_for(Duration::from_secs(5), || !running(pid)),
                "FUSE server {pid} still running"
            );
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let root = self.dir.path().canonicalize().unwrap();
        let pids = self.server_pids();
        // The polite way first, then by force.
        for record in self.records() {
            let what = record["target"].as_str().map(str::to_string).or_else(|| {
                record["steps"].as_array().and_then(|steps| {
                    steps
                        .iter()
                        .find_map(|s| s["device"].as_str().map(str::to_string))
                })
            });
            if let Some(what) = what {
                let _ = run_limited(
                    &mut self.command(&["umount", &what]),
                    Duration::from_secs(60),
                );
            }
        }
        for mount in mounts_under(&root) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        for device in loops_under(&root) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
        for mount in mounts_under(&root) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        for pid in pids {
            if running(pid) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

pub(crate) fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn numbers() -> Vec<u8> {
    (0..100_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn mount_reads_files_read_only_and_umount_leaves_nothing() {
    let env = Env::new();
    let numbers = numbers();
    let (_, cloop) = env.module(
        "base",
        &[
            ("hello.txt", b"hello from a cloop image\n"),
            ("etc/numbers.txt", &numbers),
        ],
    );
    let dir = env.mkdir("mnt");
    env.mkmodule_ok(&["mount", cloop.to_str().unwrap(), dir.to_str().unwrap()]);

    assert_eq!(
        fs::read(dir.join("hello.txt")).unwrap(),
        b"hello from a cloop image\n"
    );
    assert_eq!(fs::read(dir.join("etc/numbers.txt")).unwrap(), numbers);
    // Read-only: writes fail with EROFS.
    let error = fs::write(dir.join("new.txt"), b"x").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(30), "EROFS expected: {error}");
    let error = fs::remove_file(dir.join("hello.txt")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(30), "EROFS expected: {error}");

    // The listing names it; the FUSE server is a live process of its own.
    let listing = env.mkmodule_ok(&["mount"]);
    assert!(
        listing.contains(dir.to_str().unwrap()) && listing.contains("ext4\tro\t/dev/loop"),
        "{listing}"
    );
    let pids = env.server_pids();
    assert_eq!(pids.len(), 1);
    assert!(running(pids[0]));
    assert_ne!(pids[0], std::process::id());

    // A second mount on the same directory is refused.
    let error = env.mkmodule_err(&["mount", cloop.to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(error.contains("already mounted by mkmodule"), "{error}");

    // Busy: nothing is undone, and running umount again finishes the job.
    let open = fs::File::open(dir.join("hello.txt")).unwrap();
    let error = env.mkmodule_err(&["umount", dir.to_str().unwrap()]);
    assert!(error.contains("busy"), "{error}");
    assert_eq!(env.records().len(), 1);
    assert_eq!(fs::read(dir.join("hello.txt")).unwrap().len(), 25);
    drop(open);

    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);
    let error = env.mkmodule_err(&["umount", dir.to_str().unwrap()]);
    assert!(
        error.contains("not mounted or attached by mkmodule"),
        "{error}"
    );
}

#[test]
fn attach_prints_a_loop_device_holding_the_raw_image() {
    let env = Env::new();
    let (raw, cloop) = env.module("disk", &[("a.txt", b"attached\n")]);
    let out = env.mkmodule_ok(&["attach", cloop.to_str().unwrap()]);
    let device = out.trim();
    assert!(
        device.starts_with("/dev/loop") && !device.contains('\n'),
        "attach printed {out:?}"
    );
    let pids = env.server_pids();
    assert_eq!(sha256_file(Path::new(device)), sha256_file(&raw));
    let ro = fs::read_to_string(format!(
        "/sys/block/{}/ro",
        device.trim_start_matches("/dev/")
    ))
    .unwrap();
    assert_eq!(ro.trim(), "1", "the device must be read-only");
    assert!(env.mkmodule_ok(&["mount"]).contains(device));

    env.mkmodule_ok(&["detach", device]);
    env.assert_clean(&pids);

    // umount takes a device as well.
    let device = env.mkmodule_ok(&["attach", cloop.to_str().unwrap()]);
    let pids = env.server_pids();
    env.mkmodule_ok(&["umount", device.trim()]);
    env.assert_clean(&pids);
}

#[test]
fn detach_refuses_the_device_of_a_mount() {
    let env = Env::new();
    let (_, cloop) = env.module("m", &[("a.txt", b"a\n")]);
    let dir = env.mkdir("mnt");
    env.mkmodule_ok(&["mount", cloop.to_str().unwrap(), dir.to_str().unwrap()]);
    let pids = env.server_pids();
    let record = &env.records()[0];
    let device = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["device"].as_str())
        .unwrap()
        .to_string();
    let error = env.mkmodule_err(&["detach", &device]);
    assert!(error.contains("use `mkmodule umount"), "{error}");
    assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"a\n");
    env.mkmodule_ok(&["umount", &device]);
    env.assert_clean(&pids);
}

#[test]
fn a_failed_mount_leaves_nothing_behind() {
    let env = Env::new();
    let dir = env.mkdir("mnt");
    // Random data: a valid cloop image with no filesystem inside.
    let raw = env.path("noise.raw");
    let noise: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&raw, noise).unwrap();
    let cloop = env.path("noise.cloop");
    run_ok(
        "create_compressed_fs",
        &[
            "-B",
            "65536",
            raw.to_str().unwrap(),
            cloop.to_str().unwrap(),
        ],
    );
    let error = env.mkmodule_err(&["mount", cloop.to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(error.contains("no filesystem found"), "{error}");
    env.assert_clean(&[]);

    let error = env.mkmodule_err(&["mount", "/nonexistent.cloop", dir.to_str().unwrap()]);
    assert!(error.contains("/nonexistent.cloop"), "{error}");
    let error = env.mkmodule_err(&["mount", cloop.to_str().unwrap(), "/nonexistent-dir"]);
    assert!(error.contains("/nonexistent-dir"), "{error}");
    env.assert_clean(&[]);
}

#[test]
fn union_stacks_modules_over_a_changes_layer() {
    let env = Env::new();
    let (_, base) = env.module(
        "base",
        &[
            ("etc/version", b"base\n"),
            ("base.txt", b"from base\n"),
            ("doomed.txt", b"delete me\n"),
            ("shared/both", b"base copy\n"),
        ],
    );
    let (_, apps) = env.module(
        "apps",
        &[
            ("etc/version", b"apps\n"),
            ("apps.txt", b"from apps\n"),
            ("shared/both", b"apps copy\n"),
        ],
    );
    let dir = env.mkdir("live");
    let changes = env.path("changes");
    let args = [
        "mount",
        "--union",
        dir.to_str().unwrap(),
        "--changes",
        changes.to_str().unwrap(),
        base.to_str().unwrap(),
        apps.to_str().unwrap(),
    ];
    env.mkmodule_ok(&args);
    let pids = env.server_pids();

    // The later module wins; files of both show.
    let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("etc/version"), "apps\n");
    assert_eq!(read("shared/both"), "apps copy\n");
    assert_eq!(read("base.txt"), "from base\n");
    assert_eq!(read("apps.txt"), "from apps\n");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "apps.txt",
            "base.txt",
            "doomed.txt",
            "etc",
            "lost+found",
            "shared"
        ]
    );

    // Writable: a deleted lower file becomes a whiteout in the changes layer, and stays in
    // the lower layer; a new file lands in the changes layer.
    fs::remove_file(dir.join("doomed.txt")).unwrap();
    fs::write(dir.join("new.txt"), b"written in the union\n").unwrap();
    fs::write(dir.join("etc/version"), b"changed\n").unwrap();
    assert!(!dir.join("doomed.txt").exists());
    let whiteout = fs::symlink_metadata(changes.join("upper/doomed.txt")).unwrap();
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "doomed.txt in the changes layer should be a 0:0 whiteout"
    );
    assert_eq!(
        fs::read(changes.join("upper/new.txt")).unwrap(),
        b"written in the union\n"
    );
    assert_eq!(
        fs::read(changes.join("upper/etc/version")).unwrap(),
        b"changed\n"
    );
    let record = &env.records()[0];
    let layers: Vec<PathBuf> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "mount" && s["fstype"] == "ext4")
        .map(|s| PathBuf::from(s["target"].as_str().unwrap()))
        .collect();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        fs::read(layers[0].join("doomed.txt")).unwrap(),
        b"delete me\n"
    );
    assert_eq!(fs::read(layers[1].join("etc/version")).unwrap(), b"apps\n");
    // The layers themselves are read-only.
    let error = fs::write(layers[0].join("x"), b"x").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(30), "EROFS expected: {error}");
    let listing = env.mkmodule_ok(&["mount"]);
    assert!(listing.contains("union\trw"), "{listing}");

    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);
    assert!(changes.join("upper/new.txt").exists(), "changes persist");

    // Mounted again over the same changes: the same view.
    env.mkmodule_ok(&args);
    let pids = env.server_pids();
    assert!(!dir.join("doomed.txt").exists());
    assert_eq!(read("new.txt"), "written in the union\n");
    assert_eq!(read("etc/version"), "changed\n");
    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);

    // Without --changes, a tmpfs: writes vanish at umount.
    let tmpfs_args = [
        "mount",
        "--union",
        dir.to_str().unwrap(),
        base.to_str().unwrap(),
        apps.to_str().unwrap(),
    ];
    env.mkmodule_ok(&tmpfs_args);
    let pids = env.server_pids();
    fs::write(dir.join("scratch.txt"), b"gone soon\n").unwrap();
    fs::remove_file(dir.join("base.txt")).unwrap();
    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);
    env.mkmodule_ok(&tmpfs_args);
    let pids = env.server_pids();
    assert!(!dir.join("scratch.txt").exists());
    assert_eq!(read("base.txt"), "from base\n");
    assert_eq!(read("etc/version"), "apps\n");
    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);
}

#[test]
fn foreground_mount_serves_until_a_signal() {
    let env = Env::new();
    let (_, cloop) = env.module("fg", &[("a.txt", b"foreground\n")]);
    let dir = env.mkdir("mnt");
    let mut child = env
        .command(&[
            "mount",
            "--foreground",
            cloop.to_str().unwrap(),
            dir.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mounted = wait_for(Duration::from_secs(30), || dir.join("a.txt").exists());
    if !mounted {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the foreground mount did not come up");
    }
    assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"foreground\n");
    assert_eq!(env.server_pids(), vec![pid], "this process is the server");
    run_ok("kill", &["-INT", &pid.to_string()]);
    let exited = wait_for(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the foreground mount did not end on SIGINT");
    }
    assert!(child.wait().unwrap().success());
    env.assert_clean(&[]);
}

#[test]
fn cow_mount_is_writable_and_leaves_the_image_alone() {
    let env = Env::new();
    let (_, cloop) = env.module("rw", &[("a.txt", b"original\n")]);
    let before = sha256_file(&cloop);
    let dir = env.mkdir("mnt");
    let cow = env.path("rw.cow");
    let args = [
        "mount",
        "--cow",
        cow.to_str().unwrap(),
        cloop.to_str().unwrap(),
        dir.to_str().unwrap(),
    ];
    env.mkmodule_ok(&args);
    let pids = env.server_pids();
    fs::write(dir.join("a.txt"), b"changed\n").unwrap();
    fs::write(dir.join("b.txt"), b"new\n").unwrap();
    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);
    assert!(cow.is_file());
    assert_eq!(sha256_file(&cloop), before, "the image must not change");

    env.mkmodule_ok(&args);
    let pids = env.server_pids();
    assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"changed\n");
    assert_eq!(fs::read(dir.join("b.txt")).unwrap(), b"new\n");
    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);

    // Without the overlay: the original content.
    env.mkmodule_ok(&["mount", cloop.to_str().unwrap(), dir.to_str().unwrap()]);
    let pids = env.server_pids();
    assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"original\n");
    assert!(!dir.join("b.txt").exists());
    env.mkmodule_ok(&["umount", dir.to_str().unwrap()]);
    env.assert_clean(&pids);
}
