//! A root that survives its server: a guest kernel (qemu TCG) attaches its root with
//! `mkmodule connect` (run by the `dist/lib/mkmodule-nbdroot` helper in the initramfs), and
//! while the root's init reads and checksums a payload the host kills the server:
//! - restarted 3 s later on the same port: the read finishes with the right checksum, no I/O
//!   error reaches the guest's kernel log, and a second read (caches dropped) works too;
//! - killed for good, with two more servers in the list, the first of which serves another
//!   image: that one is refused, the guest finishes on the last one;
//! - restarted as `systemctl restart` does under socket activation (SIGTERM, start again on
//!   the same listening socket): the server answers what it has read before it stops.
//!
//! The payload read times (with the disruption, and the undisturbed second read) are printed;
//! their difference is the stall the guest saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
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

/// Waits until the server logging (with -v) to `log` logs a READ that covers byte `target`,
/// reading the log incrementally.
fn wait_for_read_of(log: &Path, target: u64, limit: Duration) {
    let mut log = std::fs::File::open(log).unwrap();
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

/// Holds a listening socket on 127.0.0.1 as systemd does for a socket unit and runs
/// `mkmodule serve` on it (LISTEN_FDS); on "restart" it sends SIGTERM, waits, starts it again.
const SOCKET_HOLDER: &str = r#"
import os, signal, socket, subprocess, sys
port, log, exe, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(128)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
out = open(log, "ab")
def start():
    return subprocess.Popen(
        ["sh", "-c", 'LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" serve "$@"', exe] + args,
        pass_fds=(3,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
child = start()
print("started", flush=True)
for line in sys.stdin:
    if line.strip() != "restart":
        break
    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=60)
    child = start()
    print("restarted %d" % code, flush=True)
child.terminate()
child.wait(timeout=60)
"#;

/// The socket holder and its server; stopped by its own id on drop.
struct SocketActivated {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
    log: std::path::PathBuf,
}

impl SocketActivated {
    fn start(dir: &Path, args: &[&str]) -> SocketActivated {
        let port = mkmodule_testkit::process::free_port();
        let log = dir.join("socket-activated.log");
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", SOCKET_HOLDER, &port.to_string()])
            .arg(&log)
            .arg(env!("CARGO_BIN_EXE_mkmodule"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut held = SocketActivated {
            child,
            stdin,
            stdout,
            port,
            log,
        };
        assert_eq!(held.line(), "started");
        held
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// SIGTERM, wait, start again; returns the stopped server's exit status.
    fn restart(&mut self) -> String {
        writeln!(self.stdin, "restart").unwrap();
        self.line()
    }
}

impl Drop for SocketActivated {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "stop");
        let stopped = mkmodule_testkit::process::wait_until(Duration::from_secs(30), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
    extra: &[&str],
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
    let args: Vec<String> = args
        .into_iter()
        .chain(extra.iter().map(ToString::to_string))
        .collect();
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
    let (guest, _console) =
        start_boot(d, &format!("10.0.2.2:{port}"), "restart", &["--busy-check"]);
    wait_for_read_of(first.log_path(), target, Duration::from_secs(150));
    first.kill();
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let second = Served::start_on(d, port, &["-v", &export]);
    let server_start = started.elapsed();
    let restarted = guest.join().expect("the boot thread");
    assert_read_through(&restarted, &image.payload_md5, "restart");
    assert!(
        restarted
            .lines
            .iter()
            .any(|l| l.starts_with("second connect: ") && l.contains("/dev/nbd0 is already in use")),
        "a second attach of a busy device must say so: {restarted:#?}"
    );
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
    let (guest, console) = start_boot(d, &servers, "failover", &[]);
    wait_for_read_of(dying.log_path(), target, Duration::from_secs(150));
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

    drop((wrong, right));

    // 3. `systemctl restart` under socket activation: SIGTERM (the server drains), start again.
    let mut held = SocketActivated::start(d, &["-v", &export]);
    let (guest, _console) = start_boot(d, &format!("10.0.2.2:{}", held.port), "socket", &[]);
    wait_for_read_of(&held.log, target, Duration::from_secs(150));
    let started = Instant::now();
    assert_eq!(
        held.restart(),
        "restarted 0",
        "the draining server did not exit cleanly"
    );
    let restart_took = started.elapsed();
    let socket_restarted = guest.join().expect("the boot thread");
    assert_read_through(
        &socket_restarted,
        &image.payload_md5,
        "socket activation restart",
    );
    let log = std::fs::read_to_string(&held.log).unwrap();
    assert!(
        log.contains("answering the requests already received"),
        "the server did not drain:\n{log}"
    );
    let timed_out = socket_restarted
        .lines
        .iter()
        .filter(|l| l.contains("timed out"))
        .count();
    drop(held);

    eprintln!(
        "CONNECT FIGURES ({PAYLOAD_MIB} MiB payload, guest seconds): server killed mid-read and \
         restarted 3 s later (its start took {:.2} s): read {:.2} s vs {:.2} s undisturbed; \
         killed for good, failover past a server with another image: read {:.2} s vs {:.2} s; \
         SIGTERM + start under socket activation (took {:.2} s): read {:.2} s vs {:.2} s, \
         {timed_out} request timeout(s) in the guest's log",
        server_start.as_secs_f64(),
        seconds_of(&restarted, "payload md5="),
        seconds_of(&restarted, "payload2 md5="),
        seconds_of(&failed_over, "payload md5="),
        seconds_of(&failed_over, "payload2 md5="),
        restart_took.as_secs_f64(),
        seconds_of(&socket_restarted, "payload md5="),
        seconds_of(&socket_restarted, "payload2 md5="),
    );
}
