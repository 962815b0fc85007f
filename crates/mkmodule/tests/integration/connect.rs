//! `mkmodule connect` on the host: its errors for bad input, and what it says when the kernel
//! has no NBD driver (this host's case; attaching a device is tested in a guest, `boot_connect`).

use std::path::Path;

use crate::common_create::{run_in, tempdir};

/// Whether the nbd module is loaded (then the netlink family exists).
fn nbd_loaded() -> bool {
    Path::new("/sys/module/nbd").exists()
}

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempdir();
    let out = run_in(dir.path(), args, None);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_the_nbd_driver_every_mode_says_to_load_it() {
    let modes: [&[&str]; 3] = [
        &["connect", "--list"],
        &["connect", "-d", "/dev/nbd0"],
        &[
            "connect",
            "127.0.0.1:9",
            "-x",
            "root",
            "/dev/nbd0",
            "--foreground",
        ],
    ];
    for args in modes {
        let (code, stderr) = stderr_of(args);
        if nbd_loaded() {
            // A kernel with the driver answers --list; the others need a device and a server.
            if args[1] == "--list" {
                assert_eq!(code, Some(0), "{args:?}: {stderr}");
            }
            continue;
        }
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "the kernel has no NBD netlink interface (load the nbd module: modprobe nbd)"
            ),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn bad_servers_devices_and_sizes_are_named() {
    let (code, stderr) = stderr_of(&["connect", "host:99999", "-x", "root"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("server \"host:99999\": bad port"),
        "{stderr}"
    );
    let (code, stderr) = stderr_of(&["connect", "[::1", "-x", "root"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("bad IPv6 address"), "{stderr}");
    let (code, stderr) = stderr_of(&["connect", "-d", "/dev/sda"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("/dev/sda is not an NBD device"), "{stderr}");
    let (code, stderr) = stderr_of(&["connect", "10.0.0.1", "--block-size", "3000"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--block-size 3000: use 512, 1024, 2048 or 4096"),
        "{stderr}"
    );
    let (code, stderr) = stderr_of(&["connect", "/dev/nbd0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no server given"), "{stderr}");
    let (code, stderr) = stderr_of(&["connect"]);
    assert_eq!(code, Some(2), "a usage error: {stderr}");
}
