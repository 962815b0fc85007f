//! The boot path with a distribution's real tools: a Debian bookworm tree
//! (`scripts/make-guest-root.sh`, built once per machine and cached) gets mkmodule's package
//! (`cargo xtask deb`, installed with `dpkg -i`), the REAL `update-initramfs` and the REAL
//! `dracut --add mkmodule-nbd` build an initramfs each for the tree's own kernel, and the
//! tree, as ext4 compressed by `mkmodule create`, is served from the host by `mkmodule serve`
//! (`scripts/guest-distro-images.sh`). Each initramfs then boots the kernel under qemu (TCG)
//! with `root=/dev/nbd0 mkmodule.server=10.0.2.2:PORT ip=dhcp`: systemd runs as PID 1 from the
//! NBD root, `@mkmodule-connect` (the initramfs's resident client) is still running under it,
//! the boot reaches the test's target, whose unit writes a marker to the serial console and
//! powers off, and the guest does power off (shutdown does not hang on the NBD root).
//!
//! The initramfs-tools boot (root read-write, `serve --cow`) also checks the server's units
//! under that systemd: `systemctl enable --now mkmodule-serve.socket`, socket activation and
//! READY (`nbd-client -l`, `systemctl is-active`), a read of the export through the guest
//! kernel's NBD client, `systemctl reload` re-reading the exports, a clean `systemctl stop`,
//! and prints `systemd-analyze security mkmodule-serve.service`'s verdict.
//!
//! Figures (printed, not asserted): each step of the image build and each boot's seconds to
//! the marker. Prerequisites: debootstrap and e2fsprogs (scripts/install-deps.sh), the guest
//! qemu (scripts/install-guest-kernel.sh); runs as root (chroot, mounts).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::boot::{require, run_ok, Served};
use crate::guest_lock;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The kernel, both initramfs images and the compressed root, made once per test run.
struct Images {
    dir: PathBuf,
    _keep: tempfile::TempDir,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    IMAGES.get_or_init(|| {
        require("debootstrap");
        require("mkfs.ext4");
        require("dpkg-deb");
        let keep = tempfile::tempdir().unwrap();
        let dir = keep.path().to_path_buf();
        // The tree gets mkmodule as an admin would install it: the package, with dpkg.
        let deb = xtask::deb::build(&xtask::deb::Options {
            root: repo(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_mkmodule")),
            out_dir: dir.join("deb"),
        })
        .expect("cargo xtask deb");
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/guest-distro-images.sh"))
            .args(["--mkmodule", env!("CARGO_BIN_EXE_mkmodule"), "--deb"])
            .arg(&deb)
            .arg("--out")
            .arg(&dir);
        // The first build of the tree downloads and installs a Debian system.
        let out = run_ok(&mut cmd, Duration::from_secs(2400));
        for line in out.lines().filter_map(|l| l.strip_prefix("=== ")) {
            eprintln!("boot_distro: images: {line}");
        }
        Images { dir, _keep: keep }
    })
}

/// What one boot printed on the console (its "=== " lines).
struct Boot {
    lines: Vec<String>,
    out: String,
}

impl Boot {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn starting(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    }

    fn expect(&self, line: &str) {
        assert!(
            self.has(line),
            "no {line:?} in the boot output:\n{}",
            self.out
        );
    }
}

fn boot(initrd: &str, port: u16, extra: &[&str]) -> Boot {
    let dir = &images().dir;
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/guest-distro-boot.sh"))
        .arg("--images")
        .arg(dir)
        .args(["--initrd", initrd, "--port", &port.to_string()])
        .args(extra);
    let out = run_ok(&mut cmd, Duration::from_secs(700));
    let lines: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("=== "))
        .map(str::to_string)
        .collect();
    let boot = Boot { lines, out };
    for line in boot.starting("host-seconds-to-marker=") {
        eprintln!("boot_distro: {initrd}: {line} s to the marker");
    }
    boot
}

/// What both boots must show: systemd as PID 1 on the NBD root, the resident client, the
/// marker, a guest that powered itself off.
fn check_systemd_boot(boot: &Boot, mode: &str) {
    boot.expect("pid1 systemd");
    let root = boot.starting("root ");
    assert!(
        root.iter()
            .any(|r| r.starts_with("/dev/nbd0 ") && r.split([' ', ',']).any(|w| w == mode)),
        "the root is not /dev/nbd0 {mode}:\n{}",
        boot.out
    );
    assert!(
        boot.starting("resident ")
            .iter()
            .any(|r| r.contains("@mkmodule-connect")),
        "no @mkmodule-connect survived the switch to the real root:\n{}",
        boot.out
    );
    assert!(
        !boot.starting("marker ").is_empty(),
        "no marker:\n{}",
        boot.out
    );
    boot.expect("qemu-exit=0");
}

#[test]
fn initramfs_tools_boots_systemd_over_nbd_and_runs_the_units() {
    let images = images();
    let _guest = guest_lock();
    let root = format!("root={}", images.dir.join("root.cloop").display());
    let server = Served::start(&images.dir, &[&root, "--cow"]);
    let boot = boot("initramfs-tools", server.port, &["--rw", "--units"]);
    check_systemd_boot(&boot, "rw");
    for step in [
        "enable", "list", "active", "read", "reload", "reloaded", "stop",
    ] {
        boot.expect(&format!("units {step} ok"));
    }
    let security = boot.starting("security ");
    assert!(
        security
            .iter()
            .any(|s| s.contains("Overall exposure level for mkmodule-serve.service")),
        "no systemd-analyze security verdict:\n{}",
        boot.out
    );
    eprintln!("boot_distro: systemd-analyze security: {}", security[0]);
    drop(server);
}

#[test]
fn dracut_boots_systemd_over_nbd() {
    let images = images();
    let _guest = guest_lock();
    let root = format!("root={}", images.dir.join("root.cloop").display());
    let server = Served::start(&images.dir, &[&root]);
    let boot = boot("dracut", server.port, &[]);
    check_systemd_boot(&boot, "ro");
    drop(server);
}
