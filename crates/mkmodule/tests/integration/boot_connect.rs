//! A root that survives its server: a guest kernel (qemu TCG) attaches its root with
//! `mkmodule connect` (run by the `dist/lib/mkmodule-nbdroot` helper in the initramfs), and
//! while the root's init reads and checksums a payload the host kills the server:
//! - restarted 3 s later on the same port: the read finishes with the right checksum, no I/O
//!   error reaches the guest's kernel log, and a second read (caches dropped) works too;
//! - killed for good, with two more servers in the list, the first of which serves another
//!   image: that one is refused, the guest finishes on the last one.
//!
//! The payload read times (with the disruption, and the undisturbed second read) are printed;
//! their difference is the stall the guest saw.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::boot::{boot, check_prerequisites, payload_block, root_image, Boot, Served};
use crate::guest_lock;

/// MiB of payload: enough that its read is still going when the server is killed.
const PAYLOAD_MIB: usize = 24;

/// The byte offset in `ext4` of /payload's block at 1 MiB: reading it means the guest is in
/// the middle of its payload read.
fn payload_mid_offset(ext4: &Path) -> u64 {
    payload_block(ext4, 256) * 4096
}

/// Waits until `server` logs a READ that covers byte `target`, reading its log incrementally.
fn wait_for_read_of(server: &Served, target: u64, limit: Duration) {
    let mut log = std::fs::File::open(server.log_path()).unwrap();
    let mut seen = String::new();
    let start = Instant::now();
    let covers = |line: &str| -> bool {
        let field = |name: &str| -> Option<u64> {
            line.split(name)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        line.contains("request READ")
            && matches!((field("offset "), field("length ")), (Some(at), Some(len)) if at <= target && target < at + len)
    };
    loop {
        let mut more = String::new();
        log.read_to_string(&mut more).unwrap();
        seen.push_str(&more);
        if seen.lines().any(covers) {
            return;
        }
        // Keep only the unfinished last line.
        if let Some(at) = seen.rfind('\n') {
            seen.drain(..=at);
        }
        assert!(start.elapsed() < limit, "the guest never read the payload");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn seconds_of(b: &Boot, prefix: &str) -> f64 {
    b.lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix)?.split("seconds=").nth(1))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}...seconds= in {b:#?}"))
}

/// Boots in a thread with `servers`, the helper using `mkmodule connect`; returns the boot's
/// handle and where its console log will be.
fn start_boot(
    dir: &Path,
    servers: &str,
    tag: &str,
) -> (std::thread::JoinHandle<Boot>, std::path::PathBuf) {
    let console = dir.join(format!("console-{tag}.log"));
    let args = vec![
        "--nbd".to_string(),
        servers.to_string(),
        "--export".into(),
        "root".into(),
        "--mkmodule".into(),
        env!("CARGO_BIN_EXE_mkmodule").into(),
        "--reread".into(),
        "--memory".into(),
        "512".into(),
        "--timeout".into(),
        "180".into(),
        "--console".into(),
        console.display().to_string(),
    ];
    (std::thread::spawn(move || boot(&args)), console)
}

fn assert_read_through(b: &Boot, md5: &str, what: &str) {
    assert!(b.has(&format!("payload md5={md5}")), "{what}: {b:#?}");
    assert!(b.has(&format!("payload2 md5={md5}")), "{what}: {b:#?}");
    assert!(
        !b.lines
            .iter()
            .any(|l| l.contains("I/O error") || l.contains("read failed")),
        "{what}: the guest saw I/O errors: {b:#?}"
    );
    assert!(b.has("marker root=/dev/nbd0 mode=ro"), "{what}: {b:#?}");
}

#[test]
fn guest_keeps_its_root_across_a_server_kill_and_restart_and_fails_over() {
    check_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = root_image(d, PAYLOAD_MIB);
    let target = payload_mid_offset(&image.ext4);
    let export = format!("root={}", image.cloop.display());
    let _guest = guest_lock();

    // 1. Killed mid-read, restarted 3 s later on the same port.
    let first = Served::start(d, &["-v", &export]);
    let port = first.port;
    let (guest, _console) = start_boot(d, &format!("10.0.2.2:{port}"), "restart");
    wait_for_read_of(&first, target, Duration::from_secs(150));
    first.kill();
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let second = Served::start_on(d, port, &["-v", &export]);
    let server_start = started.elapsed();
    let restarted = guest.join().expect("the boot thread");
    assert_read_through(&restarted, &image.payload_md5, "restart");
    assert!(
        second.log().contains("export=\"root\""),
        "the guest did not come back to the restarted server:\n{}",
        second.log()
    );
    drop(second);

    // 2. Killed for good; the next server serves another image (one byte of the unused boot
    //    block changed, so the filesystem is the same but the image is not), the last one the
    //    same image: the device waits for the right one.
    let other = d.join("other.ext4");
    let mut bytes = std::fs::read(&image.ext4).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&other, bytes).unwrap();
    let dying = Served::start(d, &["-v", &export]);
    let wrong = Served::start(d, &[&format!("root={}", other.display())]);
    let right = Served::start(d, &[&export]);
    let servers = format!(
        "10.0.2.2:{},10.0.2.2:{},10.0.2.2:{}",
        dying.port, wrong.port, right.port
    );
    let (guest, console) = start_boot(d, &servers, "failover");
    wait_for_read_of(&dying, target, Duration::from_secs(150));
    dying.kill();
    let failed_over = guest.join().expect("the boot thread");
    assert_read_through(&failed_over, &image.payload_md5, "failover");
    let console = std::fs::read_to_string(console).unwrap();
    assert!(
        console.contains(&format!(
            "10.0.2.2:{}: serves a different image",
            wrong.port
        )) && console.contains("refused"),
        "the server with another image was not refused:\n{console}"
    );
    assert!(
        right.log().contains("export=\"root\""),
        "the guest did not fail over to the last server:\n{}",
        right.log()
    );

    eprintln!(
        "CONNECT FIGURES ({PAYLOAD_MIB} MiB payload, guest seconds): server killed mid-read and \
         restarted 3 s later (its start took {:.2} s): read {:.2} s vs {:.2} s undisturbed; \
         killed for good, failover past a server with another image: read {:.2} s vs {:.2} s",
        server_start.as_secs_f64(),
        seconds_of(&restarted, "payload md5="),
        seconds_of(&restarted, "payload2 md5="),
        seconds_of(&failed_over, "payload md5="),
        seconds_of(&failed_over, "payload2 md5="),
    );
}
