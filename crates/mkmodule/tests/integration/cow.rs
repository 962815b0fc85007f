//! `mkmodule serve --cow` and `mkmodule commit` against real clients: qemu-io, nbdcopy and
//! nbdinfo write, trim, zero and map the export; the server restarts over the same overlay
//! file; nbdfuse + loop + a read-write ext4 mount; and `commit` folds the overlay into a new
//! image that qemu decodes. The image itself never changes.

use std::time::Duration;

use crate::common_tools;

use common_tools::{
    ext4_cloop, fixture, mkmodule, nbdfuse_mount, qemu_raw, run, run_ok, sha256, wait_exit,
    Cleanup, Served,
};

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

#[test]
fn ext4_mounted_read_write_keeps_its_changes_and_commits_them() {
    let dir = tempfile::tempdir().unwrap();
    let image = ext4_cloop(dir.path());
    let image_sum = sha256(&image);
    let cow = dir.path().join("root.cow");
    let img = format!("root={}", image.display());
    let mnt = dir.path().join("mnt");

    let served = Served::start(dir.path(), &["--cow", cow.to_str().unwrap(), &img]);
    let mut cleanup = Cleanup::default();
    let nbdfuse = nbdfuse_mount(dir.path(), &served.uri("root"), &mnt, true, &mut cleanup);
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
    let nbdfuse = nbdfuse_mount(dir.path(), &served.uri("root"), &mnt, true, &mut cleanup);
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
