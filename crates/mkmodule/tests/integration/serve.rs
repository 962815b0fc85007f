//! `mkmodule serve` against real NBD clients: nbdinfo, nbdcopy, qemu-img, qemu-io, the shared
//! libnbd probe scripts, and nbdfuse + loop + mount of an ext4 filesystem read from a cloop
//! image made by Debian's create_compressed_fs.

use std::time::Duration;

use crate::common_tools;

use common_tools::{
    ext4_cloop, fixture, mkmodule, nbdfuse_mount, qemu_raw, repo, run, run_ok, wait_exit, Cleanup,
    Served,
};

#[test]
fn nbdinfo_lists_sizes_and_maps_holes() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[&fixture("f02-mixed-b512.cloop").display().to_string()],
    );
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
    served.terminate();
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
        let served = Served::start(dir.path(), &[&format!("img={}", image.display())]);
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
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[&format!("m={}", fixture("f02-mixed-b512.cloop").display())],
    );
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
    let served = Served::start(dir.path(), &[&format!("f01={}", image.display())]);
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
    let served = Served::start(dir.path(), &[&raw.display().to_string()]);
    let copy = dir.path().join("copy");
    run_ok(
        "nbdcopy",
        &[&served.uri("boot"), &copy.display().to_string()],
    );
    assert_eq!(std::fs::read(&copy).unwrap(), data);
}

#[test]
fn refuses_an_unreadable_image_with_one_sentence() {
    let out = mkmodule(&["serve", "-k", "/nonexistent/dir/sock", "/nonexistent/image"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/image"), "{err}");
}

#[test]
fn ext4_in_a_cloop_image_mounts_through_nbdfuse_and_loop() {
    let dir = tempfile::tempdir().unwrap();
    let image = ext4_cloop(dir.path());
    let served = Served::start(dir.path(), &[&format!("root={}", image.display())]);
    let mnt = dir.path().join("mnt");
    let mut cleanup = Cleanup::default();
    let nbdfuse = nbdfuse_mount(dir.path(), &served.uri("root"), &mnt, false, &mut cleanup);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from a cloop image\n"
    );
    assert_eq!(
        std::fs::read(mnt.join("etc/big")).unwrap(),
        vec![7u8; 3 << 20]
    );
    let write = std::fs::write(mnt.join("new"), "x").unwrap_err();
    assert_eq!(
        write.raw_os_error(),
        Some(30),
        "a read-only mount must refuse writes: {write}"
    );
    cleanup.run_now();
    wait_exit(nbdfuse);
}
