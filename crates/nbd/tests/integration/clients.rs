//! Real NBD clients (libnbd's nbdinfo/nbdcopy, qemu-img, qemu-io) against the
//! in-process server on 127.0.0.1 and on a Unix socket.
//!
//! Needs the Debian packages `libnbd-bin` and `qemu-utils`; a missing tool fails the test.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mkmodule_blockdev::{BlockDevice, FileDevice, MemoryDevice};
use mkmodule_nbd::{Listener, Server, ServerConfig};

const LIMIT: Duration = Duration::from_secs(120);

fn uri(addr: std::net::SocketAddr, export: &str) -> String {
    format!("nbd://{addr}/{export}")
}

#[test]
fn nbdinfo_lists_exports_and_describes_them() {
    let (server, addr) = start_tcp(standard_config(test_data()));
    let list = run("nbdinfo", &["--list", &uri(addr, "")], LIMIT);
    assert!(list.ok());
    assert!(list.stdout.contains("export=\"disk\""), "{}", list.stdout);
    assert!(list.stdout.contains("export=\"other\""), "{}", list.stdout);
    assert!(list.stdout.contains("test disk with zero regions"));

    let size = run("nbdinfo", &["--size", &uri(addr, "disk")], LIMIT);
    assert!(size.ok());
    assert_eq!(size.stdout.trim(), SIZE.to_string());
    let size = run("nbdinfo", &["--size", &uri(addr, "other")], LIMIT);
    assert_eq!(size.stdout.trim(), "12345");

    // The default export "" is the first one.
    let info = run("nbdinfo", &[&uri(addr, "")], LIMIT);
    assert!(info.ok());
    for want in [
        &format!("export-size: {SIZE}") as &str,
        "using structured packets",
        "base:allocation",
        "is_read_only: true",
        "can_cache: true",
        "can_df: true",
        "can_flush: true",
        "can_multi_conn: true",
        "can_trim: false",
        "can_zero: false",
        "block_size_minimum: 1",
        "block_size_preferred: 65536",
        "block_size_maximum: 33554432",
    ] {
        assert!(info.stdout.contains(want), "missing {want:?}");
    }
    let unknown = run("nbdinfo", &["--size", &uri(addr, "nope")], LIMIT);
    assert!(!unknown.ok());
    server.shutdown();
}

#[test]
fn nbdinfo_map_reports_zero_regions_as_holes() {
    let (server, addr) = start_tcp(standard_config(test_data()));
    let map = run("nbdinfo", &["--map", &uri(addr, "disk")], LIMIT);
    assert!(map.ok());
    let mut extents = Vec::new();
    for line in map.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 {
            let off: usize = f[0].parse().unwrap();
            let len: usize = f[1].parse().unwrap();
            let ty: u32 = f[2].parse().unwrap();
            extents.push((off, len, ty));
        }
    }
    let mut want = Vec::new();
    let mut pos = 0;
    for &(o, l) in ZERO_REGIONS {
        want.push((pos, o - pos, 0));
        want.push((o, l, 3));
        pos = o + l;
    }
    want.push((pos, SIZE - pos, 0));
    assert_eq!(extents, want);

    let totals = run("nbdinfo", &["--map", "--totals", &uri(addr, "disk")], LIMIT);
    assert!(totals.ok());
    assert!(totals
        .stdout
        .lines()
        .any(|l| l.contains("hole,zero") && l.trim_start().starts_with(&zero_bytes().to_string())));
    server.shutdown();
}

#[test]
fn nbdcopy_copies_exact_data() {
    let data = test_data();
    let (server, addr) = start_tcp(standard_config(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    let r = run(
        "nbdcopy",
        &[&uri(addr, "disk"), out.to_str().unwrap()],
        LIMIT,
    );
    assert!(r.ok());
    assert!(std::fs::read(&out).unwrap() == data, "copy differs");

    let out2 = dir.path().join("other.raw");
    let r = run(
        "nbdcopy",
        &[&uri(addr, "other"), out2.to_str().unwrap()],
        LIMIT,
    );
    assert!(r.ok());
    assert_eq!(std::fs::read(&out2).unwrap(), vec![0x5a; 12345]);
    server.shutdown();
}

#[test]
fn qemu_img_compare_and_info() {
    let data = test_data();
    let (server, addr) = start_tcp(standard_config(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_file(dir.path(), &data);
    let r = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            reference.to_str().unwrap(),
            &uri(addr, "disk"),
        ],
        LIMIT,
    );
    assert_eq!(r.status, Some(0));
    assert!(r.stdout.contains("Images are identical."));

    // negative control: one changed byte must be noticed
    let mut changed = data.clone();
    changed[SIZE - 1] ^= 0xff;
    let other = dir.path().join("changed.raw");
    std::fs::write(&other, &changed).unwrap();
    let r = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            other.to_str().unwrap(),
            &uri(addr, "disk"),
        ],
        LIMIT,
    );
    assert_eq!(r.status, Some(1));

    let info = run("qemu-img", &["info", &uri(addr, "disk")], LIMIT);
    assert!(info.ok());
    assert!(info.stdout.contains(&format!("{SIZE} bytes")));

    let conv = dir.path().join("conv.raw");
    let r = run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            &uri(addr, "disk"),
            conv.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert!(r.ok());
    assert!(std::fs::read(&conv).unwrap() == data);
    server.shutdown();
}

#[test]
fn qemu_io_reads_with_pattern_checks() {
    let (server, addr) = start_tcp(standard_config(test_data()));
    let u = uri(addr, "disk");
    let (zo, zl) = ZERO_REGIONS[0];
    let (po, pl) = PATTERN_REGION;
    let zero_read = format!("read -P 0 {zo} {zl}");
    let pattern_read = format!("read -P 0xab {po} {pl}");
    let r = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", &zero_read, "-c", &pattern_read, &u],
        LIMIT,
    );
    assert!(r.ok());
    assert!(!r.stdout.contains("Pattern verification failed"));
    assert_eq!(r.stdout.matches("read ").count(), 2, "{}", r.stdout);

    // random data is not zero
    let r = run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0 0 4096", &u],
        LIMIT,
    );
    assert!(r.stdout.contains("Pattern verification failed"));

    // a read straddling the end fails, and so do writes (read-only)
    let past = format!("read {} 1024", SIZE - 512);
    let r = run("qemu-io", &["-r", "-f", "raw", "-c", &past, &u], LIMIT);
    assert!(
        r.stdout.contains("read failed") || r.stderr.contains("read failed"),
        "{r:?}"
    );
    // the whole export in one go, and parallel aio reads
    let r = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read 0 8M",
            "-c",
            "aio_read 0 1M",
            "-c",
            "aio_read 1M 1M",
            "-c",
            "aio_read 4M 4M",
            "-c",
            "aio_flush",
            &u,
        ],
        LIMIT,
    );
    assert!(r.ok());
    assert!(r
        .stdout
        .contains(&format!("read {SIZE}/{SIZE} bytes at offset 0")));
    server.shutdown();
}

#[test]
fn writable_memory_export_accepts_writes() {
    let export = Arc::new(
        MemoryDevice::new(test_data())
            .with_zero_extents(GRANULE)
            .writable(),
    );
    let (logger, _) = collecting_logger();
    let config = ServerConfig::new()
        .with_export("rw", "scratch", Arc::clone(&export) as Arc<dyn BlockDevice>)
        .with_logger(logger);
    let (server, addr) = start_tcp(config);
    let u = uri(addr, "rw");
    let info = run("nbdinfo", &[&u], LIMIT);
    for want in [
        "is_read_only: false",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
    ] {
        assert!(info.stdout.contains(want), "missing {want:?}");
    }
    let r = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xcd 4096 8192",
            "-c",
            "read -P 0xcd 4096 8192",
            "-c",
            "write -z 65536 65536",
            "-c",
            "read -P 0 65536 65536",
            "-c",
            "write -P 0x11 -f 200000 512",
            "-c",
            "flush",
            &u,
        ],
        LIMIT,
    );
    assert!(r.ok());
    assert!(!r.stdout.contains("failed"), "{}", r.stdout);
    let snap = export.snapshot();
    assert!(snap[4096..4096 + 8192].iter().all(|&b| b == 0xcd));
    assert!(snap[65536..131072].iter().all(|&b| b == 0));
    assert!(snap[200000..200512].iter().all(|&b| b == 0x11));
    // the zeroed 64 KiB block now shows up as a hole
    let map = run("nbdinfo", &["--map", &u], LIMIT);
    assert!(map
        .stdout
        .lines()
        .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["65536", "65536", "3"]));
    server.shutdown();
}

#[test]
fn unix_socket_serves_the_same_data() {
    let data = test_data();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let l = Listener::bind_unix(&sock).unwrap();
    let server = Server::start(standard_config(data.clone()), [l]).unwrap();
    let u = format!("nbd+unix:///disk?socket={}", sock.display());
    let size = run("nbdinfo", &["--size", &u], LIMIT);
    assert_eq!(size.stdout.trim(), SIZE.to_string());
    let out = dir.path().join("out.raw");
    let r = run("nbdcopy", &[&u, out.to_str().unwrap()], LIMIT);
    assert!(r.ok());
    assert!(std::fs::read(&out).unwrap() == data);
    let reference = reference_file(dir.path(), &data);
    let r = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            reference.to_str().unwrap(),
            &u,
        ],
        LIMIT,
    );
    assert_eq!(r.status, Some(0));
    server.shutdown();
    // the socket file is removed at shutdown
    assert!(!sock.exists());
}

#[test]
fn file_export_serves_a_raw_file() {
    let data = test_data();
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_file(dir.path(), &data);
    let export = FileDevice::open(&reference).unwrap();
    let (logger, _) = collecting_logger();
    let config = ServerConfig::new()
        .with_export("raw", "a raw file", Arc::new(export))
        .with_logger(logger);
    let (server, addr) = start_tcp(config);
    let out = dir.path().join("copy.raw");
    let r = run(
        "nbdcopy",
        &[&uri(addr, "raw"), out.to_str().unwrap()],
        LIMIT,
    );
    assert!(r.ok());
    assert!(std::fs::read(&out).unwrap() == data);
    let r = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            reference.to_str().unwrap(),
            &uri(addr, ""),
        ],
        LIMIT,
    );
    assert_eq!(r.status, Some(0));
    server.shutdown();
}
