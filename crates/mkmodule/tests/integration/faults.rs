//! Faults of the machine under `mkmodule create` and `mkmodule serve --cow`: a full disk (a
//! 1 MiB tmpfs), EIO on the input and on the output (nbdkit's error filter behind nbdfuse; for
//! the output an ext4 on such a device, loop-mounted), SIGKILL of a running `create`, and
//! SIGKILL of a server while a client writes through its copy-on-write overlay.
//!
//! These tests mount filesystems and set up loop devices: they run as root (as CI does). Every
//! process a test starts is stopped by its own pid in a guard, and every mount and loop device
//! is undone by one, even when an assertion fails.

use crate::common_create;
use crate::common_tools;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common_create::{entries, put, random, run_in, text};
use common_tools::{fixture, mkmodule, qemu_raw, require_tool, run_ok, Cleanup, Served};

/// A child process, killed by its own pid and reaped when dropped.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `done` holds, failing the test with `what` when it never does.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The one line of standard error of a failed run, checked to be one line and exit status 1.
fn one_failure(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one sentence: {err:?}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

/// Mounts a tmpfs of `size` at `dir`, undone by `cleanup`.
fn mount_tmpfs(dir: &Path, size: &str, cleanup: &mut Cleanup) {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "none",
            dir.to_str().unwrap(),
        ],
    );
    cleanup.push("umount", &[dir.to_str().unwrap()]);
}

/// What a case runs: its name, the arguments of `mkmodule`, its standard input.
type CreateCase<'a> = (&'a str, &'a [&'a str], Option<&'a [u8]>);

#[test]
fn a_full_disk_leaves_nothing_under_the_output_name() {
    let dir = common_create::tempdir();
    let full = dir.path().join("full");
    let mut cleanup = Cleanup::default();
    mount_tmpfs(&full, "1m", &mut cleanup);
    // 3 MiB that does not compress: the image cannot fit in 1 MiB.
    let data = random(3 << 20, 11);
    put(dir.path(), "in.img", &data);
    let out = full.join("out.img");
    let out = out.to_str().unwrap();
    let cases: [CreateCase; 4] = [
        ("in place", &["in.img", "-o", out, "-q"], None),
        ("spooled from a pipe", &["-", "-o", out, "-q"], Some(&data)),
        (
            "footer, streamed",
            &["in.img", "-o", out, "-q", "--format", "v4-footer"],
            None,
        ),
        (
            "uzip-zstd, 4 threads",
            &["in.img", "-o", out, "-q", "-c", "zstd", "-j", "4"],
            None,
        ),
    ];
    for (what, args, stdin) in cases {
        let result = run_in(dir.path(), args, stdin);
        let err = one_failure(&result, what);
        assert!(err.contains("No space left on device"), "{what}: {err}");
        assert!(err.contains(out), "{what}: the output is not named: {err}");
        assert_eq!(
            entries(&full),
            Vec::<String>::new(),
            "{what}: files left on the full disk"
        );
    }
    // The disk itself still works: a small image fits.
    put(dir.path(), "small.img", &text(100_000));
    let result = run_in(dir.path(), &["small.img", "-o", out, "-q"], None);
    assert!(result.status.success(), "{result:?}");
    assert_eq!(entries(&full), ["out.img"]);
    cleanup.run_now();
}

/// A file at `mnt/nbd` whose contents nbdkit serves through its error filter (nbdkit runs
/// under nbdfuse, which stops it when the mount goes): `nbdkit_args` follow
/// `nbdkit -s --filter=error`.
fn error_device(
    dir: &Path,
    name: &str,
    nbdkit_args: &[&str],
    cleanup: &mut Cleanup,
) -> (Guarded, PathBuf) {
    require_tool("nbdkit");
    require_tool("nbdfuse");
    let mnt = dir.join(name);
    std::fs::create_dir_all(&mnt).unwrap();
    let pid_file = dir.join(format!("{name}.pid"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut args = vec![
        "-P".to_string(),
        pid_file.to_str().unwrap().to_string(),
        mnt.to_str().unwrap().to_string(),
        "--command".into(),
        "nbdkit".into(),
        "-s".into(),
        "--filter=error".into(),
    ];
    args.extend(nbdkit_args.iter().map(|s| s.to_string()));
    let child = Guarded(
        Command::new("nbdfuse")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // No fusermount3 on these hosts: as root a plain umount ends the FUSE mount.
    cleanup.push("umount", &[mnt.to_str().unwrap()]);
    let mut child = child;
    wait_until("nbdfuse to come up", Duration::from_secs(20), || {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "nbdfuse exited early: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        std::fs::metadata(&pid_file).is_ok_and(|m| m.len() > 0)
    });
    (child, mnt.join("nbd"))
}

#[test]
fn eio_reading_the_input_names_the_input() {
    let dir = common_create::tempdir();
    let src = put(dir.path(), "src.raw", &text(4 << 20));
    let mut cleanup = Cleanup::default();
    let (_nbdfuse, device) = error_device(
        dir.path(),
        "in",
        &[
            "file",
            src.to_str().unwrap(),
            "error-pread=EIO",
            "error-pread-rate=100%",
        ],
        &mut cleanup,
    );
    let input = device.to_str().unwrap();
    for args in [
        &[input, "-o", "out.img", "-q"][..],
        &[
            input,
            "-o",
            "out.img",
            "-q",
            "--format",
            "v4-footer",
            "-j",
            "1",
        ][..],
    ] {
        let result = run_in(dir.path(), args, None);
        let err = one_failure(&result, "EIO on the input");
        assert!(err.contains("Input/output error"), "{err}");
        assert!(
            err.contains(&format!("cannot read the input {input}")),
            "{err}"
        );
        assert!(
            !entries(dir.path()).iter().any(|n| n.contains("out.img")),
            "files left: {:?}",
            entries(dir.path())
        );
    }
    cleanup.run_now();
}

#[test]
fn eio_writing_the_output_names_the_output() {
    require_tool("mkfs.ext4");
    let dir = common_create::tempdir();
    let trigger = dir.path().join("fail-writes");
    let mut cleanup = Cleanup::default();
    // Writes fail with EIO once the trigger file exists; until then the device is healthy.
    let (_nbdfuse, device) = error_device(
        dir.path(),
        "dev",
        &[
            "memory",
            "64M",
            "error-pwrite=EIO",
            "error-pwrite-rate=100%",
            &format!("error-pwrite-file={}", trigger.display()),
        ],
        &mut cleanup,
    );
    run_ok("mkfs.ext4", &["-q", "-F", device.to_str().unwrap()]);
    let loop_dev = run_ok("losetup", &["-f", "--show", device.to_str().unwrap()])
        .trim()
        .to_string();
    cleanup.push("losetup", &["-d", &loop_dev]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run_ok("mount", &["-t", "ext4", &loop_dev, mnt.to_str().unwrap()]);
    cleanup.push("umount", &[mnt.to_str().unwrap()]);
    put(dir.path(), "in.img", &random(8 << 20, 3));
    std::fs::write(&trigger, b"").unwrap();
    let out = mnt.join("out.img");
    let result = run_in(
        dir.path(),
        &["in.img", "-o", out.to_str().unwrap(), "-q"],
        None,
    );
    let err = one_failure(&result, "EIO on the output");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        err.contains(&format!("cannot write {}", out.display())),
        "{err}"
    );
    assert_eq!(
        entries(&mnt),
        ["lost+found"],
        "files left on the failing filesystem"
    );
    cleanup.run_now();
}

#[test]
fn sigkill_during_create_leaves_no_image_and_the_next_create_cleans_up() {
    let dir = common_create::tempdir();
    // 256 MiB of text through xz on one thread: far from done when it is killed.
    let piece = text(1 << 20);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.path().join("big.img")).unwrap();
        for _ in 0..256 {
            f.write_all(&piece).unwrap();
        }
    }
    let child = Command::new(common_create::bin())
        .args(["big.img", "-o", "out.img", "-q", "-c", "xz", "-j", "1"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = Guarded(child);
    let partial = format!(".out.img.{pid}.");
    wait_until(
        "the temporary file to appear",
        Duration::from_secs(30),
        || {
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "create ended before it was killed"
            );
            entries(dir.path()).iter().any(|n| n.starts_with(&partial))
        },
    );
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let left = entries(dir.path());
    assert!(!left.contains(&"out.img".to_string()), "{left:?}");
    // SIGKILL cannot be caught: the temporary file (its name carries the dead pid) stays...
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left
        .iter()
        .any(|n| n.starts_with(&partial) && n.ends_with(".partial")));
    // ...until the next create of the same output removes it and succeeds.
    put(dir.path(), "small.img", &text(300_000));
    let result = run_in(dir.path(), &["small.img", "-o", "out.img", "-q"], None);
    assert!(result.status.success(), "{result:?}");
    assert_eq!(entries(dir.path()), ["big.img", "out.img", "small.img"]);
}

/// qemu-io on `uri`; fails the test on an error or a pattern mismatch.
fn qemu_io(uri: &str, commands: &[&str]) {
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
}

#[test]
fn sigkill_of_a_cow_server_mid_write_keeps_flushed_data_and_whole_pages() {
    const MIB: usize = 1 << 20;
    const PAGE: usize = 4096;
    let dir = common_create::tempdir();
    let image = fixture("f08-big-b1M.cloop");
    let base = qemu_raw(&image, &dir.path().join("base.raw"));
    let size = base.len();
    assert_eq!(size, 11 * MIB);
    let cow = dir.path().join("root.cow");
    let img = format!("img={}", image.display());
    let serve_args = ["--cow", cow.to_str().unwrap(), &img];

    // Written and flushed: must survive anything.
    let served = Served::start(dir.path(), &serve_args);
    let uri = served.uri("img");
    qemu_io(
        &uri,
        &["write -P 0x55 0 1M", "write -P 0x55 2M 1M", "flush"],
    );
    let mut flushed = base.clone();
    flushed[..MIB].fill(0x55);
    flushed[2 * MIB..3 * MIB].fill(0x55);
    let blocks_after_flush =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&cow).unwrap());

    // Then a client writes 0x66 over [1M, 11M) in 16 KiB pieces, each byte once, never
    // flushing: new chunks (copied from the base) and chunks already in the overlay
    // (overwritten in place). The server is killed while it runs.
    let mut commands = Vec::new();
    for off in (MIB..size).step_by(16 << 10) {
        commands.push("-c".to_string());
        commands.push(format!("write -P 0x66 {off} 16k"));
    }
    commands.push(uri.clone());
    let writer = Guarded(
        Command::new("qemu-io")
            .args(["-f", "raw"])
            .args(&commands)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill once the overlay grew by 1.25 MiB: the writes have gone past [1M, 2M) (new chunks)
    // and [2M, 3M) (in place) into the new chunks after 3M.
    let mut writer = writer;
    wait_until(
        "the overlay to grow by 1.25 MiB under the writes",
        Duration::from_secs(60),
        || {
            if let Some(status) = writer.0.try_wait().unwrap() {
                assert!(status.success(), "qemu-io failed before the kill: {status}");
            }
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&cow).unwrap())
                >= blocks_after_flush + (1280 << 10) / 512
        },
    );
    // SIGKILL (Served's drop kills by its own pid) while writes are in flight.
    drop(served);
    wait_until("qemu-io to notice", Duration::from_secs(30), || {
        writer.0.try_wait().unwrap().is_some()
    });

    // The overlay opens again; flushed data is exact; every page is the flushed data or the
    // new data, whole.
    let served = Served::start(dir.path(), &serve_args);
    let uri = served.uri("img");
    let back = dir.path().join("back.raw");
    run_ok("nbdcopy", &[&uri, back.to_str().unwrap()]);
    let device = std::fs::read(&back).unwrap();
    assert_eq!(device.len(), size);
    assert!(
        device[..MIB] == flushed[..MIB],
        "data flushed before the crash was lost"
    );
    let mut new_pages = 0;
    let in_place = device[2 * MIB..3 * MIB]
        .iter()
        .filter(|&&b| b == 0x66)
        .count()
        / PAGE;
    for (p, (got, old)) in device
        .chunks(PAGE)
        .zip(flushed.chunks(PAGE))
        .enumerate()
        .skip(MIB / PAGE)
    {
        if got.iter().all(|&b| b == 0x66) {
            new_pages += 1;
        } else {
            assert!(
                got == old,
                "page {p} (offset {}) is neither the old nor the new data",
                p * PAGE
            );
        }
    }
    eprintln!(
        "after SIGKILL: {new_pages} of {} written pages read new ({in_place} of the 256 \
         overwritten in place)",
        (size - MIB) / PAGE
    );
    served.terminate();

    // commit folds the overlay into a new image holding exactly what the server served.
    let new = dir.path().join("new.cloop");
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
    assert!(
        qemu_raw(&new, &dir.path().join("new.raw")) == device,
        "the committed image differs from what the server served"
    );
}
