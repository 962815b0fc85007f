//! Live boot from local media without cloop.ko: `qemu-system-x86_64 -cdrom live.iso` (BIOS,
//! TCG) boots the ISO that `cargo xtask live-iso` makes ([`mkmodule_testkit::live_iso`]): grub,
//! the Debian kernel, a busybox initramfs running `dist/lib/mkmodule-live`, which finds the CD,
//! attaches `KNOPPIX/KNOPPIX` and one module with `mkmodule attach` (FUSE + loop) and stacks
//! them with overlayfs under a changes layer on a second disk (by label). The root's own init
//! (a busybox script in the base image) reports on the serial console: the module's file
//! shadows the base's, the file the module deletes (an overlayfs whiteout, a 0/0 character
//! device in the module's ext4) is gone, a write lands in the changes layer, the FUSE servers
//! run as `@mkmodule-fuse`. A second boot of the same ISO finds the first boot's file. Times to
//! the root's init and to read the payload are printed (not asserted).
//!
//! Prerequisites: `scripts/install-guest-kernel.sh` (kernel, qemu-system, busybox-static) and
//! grub-common, grub-pc-bin, grub-efi-amd64-bin, mtools, xorriso, e2fsprogs, util-linux
//! (`scripts/install-deps.sh`). When one is missing the test fails, it does not skip.
//! MKMODULE_LIVE_PAYLOAD_MIB=N sets the size of the file the root's init reads (default 8);
//! for figures, MKMODULE_LIVE_BIN=PATH puts another mkmodule (a release build) on the ISO and
//! MKMODULE_LIVE_CLOOP_KO=PATH (a cloop.ko built for the guest kernel) makes the root's init
//! read the payload again through cloop.ko on the same image, caches dropped before each read.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mkmodule_testkit::live_iso::LiveIso;

use crate::boot::{payload, require, run_ok};
use crate::guest_lock;

const CACHE: &str = "/var/cache/mkmodule";
const CHANGES_LABEL: &str = "mkchanges";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kernel_dir() -> PathBuf {
    std::env::var_os("MKMODULE_GUEST_KERNEL_DIR")
        .map_or_else(|| PathBuf::from(CACHE).join("guest-kernel"), PathBuf::from)
}

/// qemu-system-x86_64 (the copy `scripts/install-guest-kernel.sh` unpacks, else PATH) and
/// its firmware directories.
fn qemu() -> (PathBuf, Vec<PathBuf>) {
    let unpacked = PathBuf::from(CACHE).join("guest-qemu");
    let binary = match std::env::var_os("MKMODULE_GUEST_QEMU") {
        Some(q) => PathBuf::from(q),
        None if unpacked.join("usr/bin/qemu-system-x86_64").is_file() => {
            unpacked.join("usr/bin/qemu-system-x86_64")
        }
        None => PathBuf::from("qemu-system-x86_64"),
    };
    require(binary.to_str().unwrap());
    let root = binary
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let data = ["usr/share/qemu", "usr/share/seabios"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    (binary, data)
}

/// The root's init: reports what the union shows, appends a line to /persist.txt, reads
/// /payload, remounts the changes filesystem read-only and powers off.
const ROOT_INIT: &str = r#"#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc
echo "=== init uptime=$($b cut -d' ' -f1 /proc/uptime)"
echo "=== shadow $($b cat /shadow.txt)"
if [ -e /deleted.txt ]; then echo "=== deleted present"; else echo "=== deleted gone"; fi
echo "=== base-only $($b cat /base-only.txt)"
echo "=== module-only $($b cat /module-only.txt)"
set -- $($b grep ' / ' /proc/mounts | $b tail -n 1)
echo "=== rootfs $3"
echo "=== layers $($b grep -c ' /run/mkmodule-live/layers/' /proc/mounts)"
n=0
for p in /proc/[0-9]*; do
    case "$($b tr '\0' ' ' <$p/cmdline 2>/dev/null)" in @mkmodule-fuse*) n=$((n + 1)) ;; esac
done
echo "=== fuse-servers $n"
if [ -f /persist.txt ]; then echo "=== persisted $($b wc -l </persist.txt)"; else echo "=== persisted 0"; fi
echo "written by a live boot" >>/persist.txt
$b sync
if [ -f /run/mkmodule-live/changes/upper/persist.txt ]; then echo "=== write in-changes"; else echo "=== write not-in-changes"; fi
t0=$($b cut -d' ' -f1 /proc/uptime)
sum=$($b md5sum /payload 2>&1)
t1=$($b cut -d' ' -f1 /proc/uptime)
echo "=== payload md5=${sum%% *} seconds=$($b awk "BEGIN { print $t1 - $t0 }")"
# Figures only: the same file again with the caches dropped, then through cloop.ko on the
# same image when the test put one in the base (MKMODULE_LIVE_CLOOP_KO).
if [ -f /cloop.ko ]; then
    timed() {
        $b sync
        echo 3 >/proc/sys/vm/drop_caches
        t0=$($b cut -d' ' -f1 /proc/uptime)
        sum=$($b md5sum "$2" 2>&1)
        t1=$($b cut -d' ' -f1 /proc/uptime)
        echo "=== $1 md5=${sum%% *} seconds=$($b awk "BEGIN { print $t1 - $t0 }")"
    }
    timed payload-mkmodule /payload
    $b insmod /cloop.ko file=/run/mkmodule-live/medium/KNOPPIX/KNOPPIX
    $b mkdir -p /tmp/cloop
    $b mount -o ro /dev/cloop0 /tmp/cloop
    timed payload-cloop /tmp/cloop/payload
    timed payload-mkmodule-again /payload
    timed payload-cloop-again /tmp/cloop/payload
    $b umount /tmp/cloop
fi
$b mount -o remount,ro /
$b mount -o remount,ro /run/mkmodule-live/changes
echo "=== changes remount-ro rc=$?"
echo "=== poweroff"
$b poweroff -f
"#;

fn static_busybox() -> PathBuf {
    for b in ["/bin/busybox", "/usr/bin/busybox"] {
        let ok = Path::new(b).is_file()
            && !Command::new("ldd")
                .arg(b)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
        if ok {
            return PathBuf::from(b);
        }
    }
    panic!("no static busybox (apt-get install busybox-static)");
}

fn mkfs(tree: &Path, image: &Path, label: &str, mib: usize) {
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", label, "-d"])
            .arg(tree)
            .arg(image)
            .arg(format!("{mib}M")),
        Duration::from_secs(60),
    );
}

/// The base image (busybox, the init, /payload) and one module shadowing and deleting files.
fn images(dir: &Path, payload_mib: usize) -> (PathBuf, PathBuf, String) {
    require("mkfs.ext4");
    require("mknod");
    let base = dir.join("base");
    for d in ["bin", "sbin", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy(static_busybox(), base.join("bin/busybox")).unwrap();
    std::fs::write(base.join("sbin/init"), ROOT_INIT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        base.join("sbin/init"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(base.join("shadow.txt"), "from-base\n").unwrap();
    std::fs::write(base.join("deleted.txt"), "the module deletes this\n").unwrap();
    std::fs::write(base.join("base-only.txt"), "base\n").unwrap();
    std::fs::write(base.join("payload"), payload(payload_mib << 20)).unwrap();
    if let Some(ko) = std::env::var_os("MKMODULE_LIVE_CLOOP_KO") {
        std::fs::copy(&ko, base.join("cloop.ko")).unwrap();
    }
    let md5 = run_ok(
        Command::new("md5sum").arg(base.join("payload")),
        Duration::from_secs(30),
    );
    let md5 = md5.split_whitespace().next().unwrap().to_string();

    let module = dir.join("module");
    std::fs::create_dir_all(&module).unwrap();
    std::fs::write(module.join("shadow.txt"), "from-module\n").unwrap();
    std::fs::write(module.join("module-only.txt"), "module\n").unwrap();
    // An overlayfs whiteout: a character device 0/0.
    run_ok(
        Command::new("mknod")
            .arg(module.join("deleted.txt"))
            .args(["c", "0", "0"]),
        Duration::from_secs(10),
    );
    let base_img = dir.join("base.ext4");
    let module_img = dir.join("module.ext4");
    mkfs(&base, &base_img, "livebase", payload_mib + 24);
    mkfs(&module, &module_img, "livemod", 8);
    (base_img, module_img, md5)
}

/// What one boot printed.
struct Boot {
    lines: Vec<String>,
    /// Host seconds from qemu's start to the root's init.
    to_init: f64,
    /// The initramfs's own lines ("mkmodule-live: …"), stamped with host seconds.
    stages: Vec<String>,
}

impl Boot {
    fn value(&self, prefix: &str) -> &str {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in the console:\n{}", self.lines.join("\n")))
            .trim()
    }
}

/// A child process killed by its own id when dropped.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `iso` from the CD drive (BIOS) with `disk` as a virtio disk; the console lines.
fn boot(iso: &Path, disk: &Path, log: &Path) -> Boot {
    let (qemu, data) = qemu();
    let mut cmd = Command::new(&qemu);
    for d in &data {
        cmd.arg("-L").arg(d);
    }
    let start = Instant::now();
    let mut child = Guarded(
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512"])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-no-user-config",
            ])
            .args(["-serial", "stdio", "-boot", "d", "-cdrom"])
            .arg(iso)
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display())),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send((start.elapsed().as_secs_f64(), text)).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    // A bound, not a timing: a boot takes 80 s on an idle machine, several times that on a loaded one.
    let limit = Duration::from_secs(900);
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => console.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > limit {
            break;
        }
    }
    drop(child);
    let text: Vec<String> = console
        .iter()
        .map(|(t, l)| format!("{t:8.3} {l}"))
        .collect();
    std::fs::write(log, text.join("\n")).unwrap();
    let to_init = console
        .iter()
        .find(|(_, l)| l.starts_with("=== init "))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| {
            panic!(
                "the live system did not reach its init within {limit:?}; console:\n{}",
                text[text.len().saturating_sub(60)..].join("\n")
            )
        });
    assert!(
        console.iter().any(|(_, l)| l == "=== poweroff"),
        "the root's init did not finish; console:\n{}",
        text.join("\n")
    );
    let stages = console
        .iter()
        .filter(|(_, l)| l.starts_with("mkmodule-live:") || l.contains("Booting `"))
        .map(|(t, l)| format!("{t:6.1} s {l}"))
        .collect();
    Boot {
        stages,
        lines: console
            .into_iter()
            .filter_map(|(_, l)| l.strip_prefix("=== ").map(str::to_string))
            .collect(),
        to_init,
    }
}

#[test]
fn live_iso_boots_from_cd_with_a_module_and_persistent_changes() {
    for tool in ["grub-mkrescue", "xorriso", "mformat", "debugfs", "e2fsck"] {
        require(tool);
    }
    let payload_mib = std::env::var("MKMODULE_LIVE_PAYLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, module, md5) = images(d, payload_mib);
    // The changes partition, found by its label.
    let changes = d.join("changes.ext4");
    std::fs::create_dir_all(d.join("empty")).unwrap();
    mkfs(&d.join("empty"), &changes, CHANGES_LABEL, 32);
    let iso = d.join("live.iso");
    LiveIso {
        root: base,
        modules: vec![module],
        mkmodule: std::env::var_os("MKMODULE_LIVE_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_mkmodule")),
            PathBuf::from,
        ),
        helper: repo().join("dist/lib/mkmodule-live"),
        kernel: None,
        initrd: None,
        kernel_dir: kernel_dir(),
        label: "MKLIVE_TEST".into(),
        append: format!("mkmodule.changes={CHANGES_LABEL} mkmodule.noshell panic=-1 loglevel=3"),
        menu_seconds: 0,
        work: d.join("work"),
        output: iso.clone(),
    }
    .build()
    .unwrap_or_else(|e| panic!("building the live ISO: {e}"));

    let _guest = guest_lock();
    let first = boot(&iso, &changes, &d.join("console1.log"));
    assert_eq!(first.value("shadow "), "from-module", "{:?}", first.lines);
    assert_eq!(first.value("deleted "), "gone");
    assert_eq!(first.value("base-only "), "base");
    assert_eq!(first.value("module-only "), "module");
    assert_eq!(first.value("rootfs "), "overlay");
    assert_eq!(first.value("layers "), "2");
    assert_eq!(first.value("fuse-servers "), "2");
    assert_eq!(first.value("persisted "), "0");
    assert_eq!(first.value("write "), "in-changes");
    let payload = first.value("payload ");
    assert!(payload.starts_with(&format!("md5={md5} ")), "{payload}");
    assert_eq!(first.value("changes remount-ro "), "rc=0");
    // The write is on the changes disk, which the guest left clean.
    run_ok(
        Command::new("e2fsck").arg("-fn").arg(&changes),
        Duration::from_secs(60),
    );
    let persisted = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /upper/persist.txt"])
            .arg(&changes),
        Duration::from_secs(30),
    );
    assert_eq!(persisted.trim(), "written by a live boot");

    let second = boot(&iso, &changes, &d.join("console2.log"));
    assert_eq!(second.value("persisted "), "1", "{:?}", second.lines);
    assert_eq!(second.value("shadow "), "from-module");
    println!(
        "live boot: {payload_mib} MiB payload; host seconds from qemu's start to the root's \
         init: {:.1} and {:.1}; payload read in the guest: {} / {}",
        first.to_init,
        second.to_init,
        payload,
        second.value("payload ")
    );
    for boot in [&first, &second] {
        for stage in &boot.stages {
            println!("live boot: {stage}");
        }
        for line in boot.lines.iter().filter(|l| l.starts_with("payload-")) {
            println!("live boot: {line}");
        }
    }
}

#[test]
fn live_helper_parses_and_reads_the_kernel_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let dist = repo().join("dist");
    // (script, shell, executable): the initramfs-tools boot script is sourced, not run.
    let scripts = [
        ("lib/mkmodule-live", "sh", true),
        ("initramfs-tools/hooks/mkmodule-live", "sh", true),
        (
            "initramfs-tools/scripts/init-premount/mkmodule-live",
            "sh",
            true,
        ),
        ("initramfs-tools/scripts/mkmodule-live", "sh", false),
        ("dracut/90mkmodule-live/module-setup.sh", "bash", true),
        ("dracut/90mkmodule-live/parse-mkmodule-live.sh", "sh", true),
        ("dracut/90mkmodule-live/mount-mkmodule-live.sh", "sh", true),
    ];
    for (script, shell, executable) in scripts {
        let path = dist.join(script);
        run_ok(
            Command::new(shell).arg("-n").arg(&path),
            Duration::from_secs(10),
        );
        if shell == "sh" {
            run_ok(
                Command::new("busybox").args(["sh", "-n"]).arg(&path),
                Duration::from_secs(10),
            );
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111 == 0o111, executable, "{script}: mode {mode:o}");
    }
    let helper = dist.join("lib/mkmodule-live");
    let params = |cmdline: &str| {
        run_ok(
            Command::new("busybox")
                .arg("sh")
                .arg(&helper)
                .arg("params")
                .env("MKMODULE_CMDLINE", cmdline),
            Duration::from_secs(10),
        )
        .trim()
        .to_string()
    };
    assert_eq!(
        params("quiet mkmodule.live"),
        "live=yes medium= base=KNOPPIX/KNOPPIX modules=KNOPPIX/modules changes=tmpfs \
         toram=no timeout=30"
    );
    assert_eq!(
        params(
            "mkmodule.live=MYLIVE mkmodule.base=/live/root.cloop mkmodule.modules=live/mods \
             mkmodule.changes=/dev/sdb2 mkmodule.toram mkmodule.timeout=x"
        ),
        "live=yes medium=MYLIVE base=live/root.cloop modules=live/mods changes=/dev/sdb2 \
         toram=yes timeout=30"
    );
    let wanted = |cmdline: &str| {
        Command::new("sh")
            .arg(&helper)
            .arg("wanted")
            .env("MKMODULE_CMDLINE", cmdline)
            .status()
            .unwrap()
            .success()
    };
    assert!(wanted("root=/dev/sr0 mkmodule.live=X"));
    assert!(!wanted("root=/dev/sda1 mkmodule.liveX"));
}
