//! Runs the peer tools the tests compare against (qemu-img, nbdinfo, create_compressed_fs,
//! zstd, ...). A missing tool fails the test with the Debian package that provides it: tests
//! never skip and pass because a tool is absent.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Debian package that installs `tool` (all are listed in `scripts/install-deps.sh`).
pub fn debian_package(tool: &str) -> &'static str {
    let name = Path::new(tool)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(tool);
    match name {
        "create_compressed_fs" | "extract_compressed_fs" => "cloop-utils",
        "qemu-img" | "qemu-nbd" | "qemu-io" => "qemu-utils",
        n if n.starts_with("qemu-system-") => "qemu-system-x86",
        "xz" => "xz-utils",
        "zstd" => "zstd",
        "nbdinfo" | "nbdcopy" | "nbdsh" | "nbdfuse" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        "fio" => "fio",
        "mkfs.ext4" | "e2fsck" | "debugfs" => "e2fsprogs",
        "systemd-socket-activate" | "systemd-analyze" => "systemd",
        "losetup" | "blkid" | "setsid" | "mount" | "umount" => "util-linux",
        "python3" => "python3",
        "cpio" => "cpio",
        "kill" => "procps",
        "veritysetup" => "cryptsetup-bin",
        "man" => "man-db",
        "nginx" => "nginx",
        "dpkg-deb" => "dpkg",
        "dpkg-shlibdeps" => "dpkg-dev",
        "strip" => "binutils",
        "lintian" => "lintian",
        "debootstrap" => "debootstrap",
        "chroot" => "coreutils",
        "xorriso" => "xorriso",
        "grub-mkrescue" => "grub-common (with grub-pc-bin and grub-efi-amd64-bin)",
        "mformat" => "mtools",
        "busybox" => "busybox-static",
        _ => "the package that provides it",
    }
}

/// Whether `tool` is a file on `PATH`, in `/sbin` or `/usr/sbin`, or a path to one.
pub fn tool_exists(tool: &str) -> bool {
    Path::new(tool).is_file()
        || std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false)
        || ["/sbin", "/usr/sbin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).is_file())
}

/// Fails the test (never skips it) when `tool` is not installed, naming the package to install.
pub fn require_tool(tool: &str) {
    assert!(
        tool_exists(tool),
        "{tool} is needed by this test and is not installed: apt-get install {} \
         (scripts/install-deps.sh installs every peer tool)",
        debian_package(tool)
    );
}

/// `program args...` as a shell would show it, for failure messages.
pub fn command_line(program: &str, args: &[&str]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
            line.push_str(&format!("{arg:?}"));
        } else {
            line.push_str(arg);
        }
    }
    line
}

/// Runs `program args...` (standard input closed, output captured) with a time limit; the
/// child is killed by its own id and the test fails when the limit passes.
pub fn run_with_limit(program: &str, args: &[&str], limit: Duration) -> Output {
    run_in(None, program, args, limit)
}

/// [`run_with_limit`] in the directory `dir`.
pub fn run_in(dir: Option<&Path>, program: &str, args: &[&str], limit: Duration) -> Output {
    require_tool(program);
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", command_line(program, args)));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{} ran past {limit:?}: {}",
                command_line(program, args),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Fails the test unless `out` is a successful exit, naming the command line and its output.
pub fn check_status(program: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{} failed ({}): {}\n{}",
        command_line(program, args),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a program (60 s at most), fails the test when it fails, and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run_with_limit(program, args, Duration::from_secs(60));
    check_status(program, args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program args...` with `input` on its standard input (fed from a thread), checks that it
/// succeeds and returns its standard output.
pub fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    require_tool(program);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", command_line(program, args)));
    let mut stdin = child.stdin.take().expect("stdin pipe");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    check_status(program, args, &out);
    out.stdout
}
