//! `mkmodule mount`, `attach` and `mount --union` of images given as `http://` URLs, served by
//! a real nginx from Debian on 127.0.0.1: the background FUSE server reads the image with range
//! requests (and through `--cache-dir`, across mounts), and what shows through the mount or
//! the loop device is the local image's content. Same host needs and cleanup as `mount::`.

use std::fs;
use std::path::Path;

use crate::common_tools::tls_credentials;
use crate::mount::{sha256_file, Env};
use crate::remote::{lines_for, Nginx};

/// An nginx serving the files of its own temporary directory (started before the test's
/// `Env`, so it outlives that guard's cleanup), logging each request's path, query and
/// `X-Token` header.
struct Origin {
    nginx: Nginx,
    _dir: tempfile::TempDir,
}

impl Origin {
    fn start() -> Origin {
        let dir = tempfile::tempdir().unwrap();
        let pki = tls_credentials(&dir.path().join("pki"));
        let nginx = Nginx::start(dir.path(), &pki);
        Origin { nginx, _dir: dir }
    }

    /// Puts `file` at `/name` and gives its URL.
    fn publish(&self, file: &Path, name: &str) -> String {
        self.nginx.publish(file, name);
        self.nginx.url(name)
    }

    /// Requests logged so far for `/name` (with or without a query).
    fn requests(&self, name: &str) -> usize {
        lines_for(&self.nginx.log(), &format!("/{name}")).len()
    }
}

fn numbers() -> Vec<u8> {
    (0..60_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn mount_and_attach_an_image_url_read_what_the_local_image_holds() {
    let origin = Origin::start();
    let env = Env::new();
    let numbers = numbers();
    let (raw, cloop) = env.module(
        "web",
        &[
            ("hello.txt", b"hello over http\n"),
            ("etc/numbers.txt", &numbers),
        ],
    );
    let url = origin.publish(&cloop, "web.cloop");
    let dir = env.mkdir("mnt");
    let dir_s = dir.to_str().unwrap();

    // Plain: every read goes to the origin.
    env.mkmodule_ok(&["mount", &url, dir_s]);
    let pids = env.server_pids();
    assert_eq!(pids.len(), 1);
    assert_eq!(
        fs::read(dir.join("hello.txt")).unwrap(),
        b"hello over http\n"
    );
    assert_eq!(fs::read(dir.join("etc/numbers.txt")).unwrap(), numbers);
    let listing = env.mkmodule_ok(&["mount"]);
    assert!(
        listing.contains(dir_s) && listing.contains("ext4\tro\t/dev/loop"),
        "{listing}"
    );
    let requests = origin.requests("web.cloop");
    assert!(requests > 1, "{requests} requests reached the origin");
    env.mkmodule_ok(&["umount", dir_s]);
    env.assert_clean(&pids);

    // With a disk cache: the second mount reads the same files with two one-byte requests,
    // the probes that pin the image's identity (the command opens the image to report errors,
    // then the server opens it again).
    let cache = env.path("cache");
    let cache_s = cache.to_str().unwrap();
    for round in 0..2 {
        let before = origin.requests("web.cloop");
        env.mkmodule_ok(&["mount", "--cache-dir", cache_s, &url, dir_s]);
        let pids = env.server_pids();
        assert_eq!(
            fs::read(dir.join("hello.txt")).unwrap(),
            b"hello over http\n"
        );
        assert_eq!(fs::read(dir.join("etc/numbers.txt")).unwrap(), numbers);
        env.mkmodule_ok(&["umount", dir_s]);
        env.assert_clean(&pids);
        let after = origin.requests("web.cloop");
        if round == 0 {
            assert!(after - before > 1, "cold: {} requests", after - before);
        } else {
            let warm = &origin.nginx.log()[before..];
            assert!(
                warm.len() == 2 && warm.iter().all(|l| l.contains("\"bytes=0-0\" 206 1 ")),
                "warm: only the probes: {warm:?}"
            );
        }
    }
    assert!(
        fs::read_dir(&cache).unwrap().count() > 1,
        "the cache directory holds no image"
    );

    // attach: the loop device holds the raw filesystem, byte for byte.
    let device = env.mkmodule_ok(&["attach", &url]);
    let device = device.trim();
    assert!(device.starts_with("/dev/loop"), "attach printed {device:?}");
    let pids = env.server_pids();
    assert_eq!(sha256_file(Path::new(device)), sha256_file(&raw));
    env.mkmodule_ok(&["detach", device]);
    env.assert_clean(&pids);
}

#[test]
fn a_union_stacks_a_local_module_and_a_module_url() {
    let origin = Origin::start();
    let env = Env::new();
    let (_, base) = env.module(
        "base",
        &[("etc/version", b"base\n"), ("base.txt", b"from base\n")],
    );
    let (_, apps) = env.module(
        "apps",
        &[("etc/version", b"apps\n"), ("apps.txt", b"from apps\n")],
    );
    let url = origin.publish(&apps, "apps.cloop");
    let dir = env.mkdir("live");
    let dir_s = dir.to_str().unwrap();
    env.mkmodule_ok(&["mount", "--union", dir_s, base.to_str().unwrap(), &url]);
    let pids = env.server_pids();
    let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("etc/version"), "apps\n");
    assert_eq!(read("base.txt"), "from base\n");
    assert_eq!(read("apps.txt"), "from apps\n");
    fs::write(dir.join("new.txt"), b"written\n").unwrap();
    assert_eq!(read("new.txt"), "written\n");
    let requests = origin.requests("apps.cloop");
    assert!(requests > 1, "{requests} requests reached the origin");
    env.mkmodule_ok(&["umount", dir_s]);
    env.assert_clean(&pids);
}

#[test]
fn a_presigned_url_and_a_token_stay_out_of_the_servers_command_line() {
    let origin = Origin::start();
    let env = Env::new();
    let (_, cloop) = env.module("signed", &[("a.txt", b"signed\n")]);
    origin.publish(&cloop, "signed.cloop");
    let url = format!(
        "{}?X-Amz-Signature=feedface&X-Amz-Expires=300",
        origin.nginx.url("signed.cloop")
    );
    let dir = env.mkdir("mnt");
    let dir_s = dir.to_str().unwrap();
    env.mkmodule_ok(&["mount", &url, dir_s, "--http-header", "X-Token: t0ken"]);
    let pids = env.server_pids();
    assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"signed\n");
    // Every request of the server carried the query and the header.
    let log = origin.nginx.log();
    assert!(log.len() > 2, "{log:?}");
    assert!(
        log.iter()
            .all(|l| l.contains("/signed.cloop?X-Amz-Signature=feedface&")
                && l.ends_with("\"t0ken\"")),
        "{log:?}"
    );
    // Neither shows in the server's command line, which every user can read, nor in the name
    // of the image's file behind the loop device.
    let cmdline = fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("__fuse-daemon"), "{cmdline}");
    assert!(
        !cmdline.contains("feedface") && !cmdline.contains("t0ken"),
        "{cmdline}"
    );
    let record = &env.records()[0];
    let backing: Vec<String> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["device"].as_str())
        .map(|d| {
            let name = d.trim_start_matches("/dev/");
            fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap()
        })
        .collect();
    assert!(
        backing.len() == 1 && backing[0].trim().ends_with("/0-signed.cloop"),
        "{backing:?}"
    );
    env.mkmodule_ok(&["umount", dir_s]);
    env.assert_clean(&pids);
}
