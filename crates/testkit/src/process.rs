//! Child processes of tests: bounded waits, stopping a child by its own id, and the peak memory
//! of a child measured with `wait4`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::run_ok;

/// A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot report the one
/// they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a port on 127.0.0.1")
}

/// Waits (bounded) until `cond` holds; returns whether it did.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Sends SIGTERM to a server started by a test and checks it exits cleanly within 20 s.
pub fn terminate_child(child: &mut Child) {
    let pid = child.id().to_string();
    run_ok("kill", &["-TERM", &pid]);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child by its own id and reaps it (for `Drop` of test guards; errors are ignored).
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (bounded, 20 s) for `child` to exit on its own; kills it and fails the test otherwise.
pub fn wait_exit(mut child: Child, what: &str) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            kill_child(&mut child);
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a child process ended, what it printed, and its peak memory.
#[derive(Debug)]
pub struct Measured {
    /// The exit code, when it exited (rather than being killed by a signal).
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
    /// Its peak resident set size in KiB (`ru_maxrss` as `wait4` reports it for this child).
    pub peak_rss_kib: u64,
}

/// `struct rusage` of Linux on 64-bit targets: two `timeval`s, then 14 `long`s, the first of
/// which is `ru_maxrss` (KiB).
#[repr(C)]
struct RUsage {
    times: [i64; 4],
    maxrss: i64,
    rest: [i64; 13],
}

extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut RUsage) -> i32;
}

/// Reaps child `pid` with a blocking `wait4`; returns its status word and peak RSS in KiB.
#[allow(unsafe_code)]
fn reap(pid: u32) -> (i32, u64) {
    let mut status = 0i32;
    let mut usage = RUsage {
        times: [0; 4],
        maxrss: 0,
        rest: [0; 13],
    };
    loop {
        // SAFETY: both pointers are to live, properly sized locals; `pid` is our own child,
        // which std's `Child` never waits for once it is handed here.
        let got = unsafe { wait4(pid as i32, &mut status, 0, &mut usage) };
        if got == pid as i32 {
            return (status, usage.maxrss.max(0) as u64);
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
}

/// Environment variable that turns [`measure_helper_main`] on in a re-run of the test binary.
const MEASURE_ENV: &str = "MKMODULE_TEST_MEASURE_DIR";

/// Name of the test that runs [`measure_helper_main`]; it must sit at the root of the test
/// binary: `#[test] fn measure_helper() { mkmodule_testkit::process::measure_helper_main() }`.
pub const MEASURE_HELPER_TEST: &str = "measure_helper";

/// Runs `program ARGS` in `dir` (standard input closed) to completion and measures its peak
/// memory. Killed by its own id (and the test failed) when it runs past `limit`.
///
/// Linux reports in `ru_maxrss` the larger of the child's own peak and the RSS of the process
/// image it replaced at `exec`; a child spawned straight from this (large, multi-threaded) test
/// process would inherit the test's own RSS. So the test binary runs itself once more as a
/// small go-between (the [`MEASURE_HELPER_TEST`] test): that process spawns the program and
/// reports its `wait4` status and `ru_maxrss`. The bound then holds the program plus the
/// go-between's few MiB.
pub fn measured(program: &Path, dir: &Path, args: &[&str], limit: Duration) -> Measured {
    let control = tempfile::tempdir().expect("control directory");
    let c = control.path();
    std::fs::write(c.join("program"), program.as_os_str().as_encoded_bytes()).unwrap();
    std::fs::write(c.join("args"), args.join("\0")).unwrap();
    std::fs::write(c.join("cwd"), dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut helper = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            MEASURE_HELPER_TEST,
            "--test-threads=1",
            "--quiet",
        ])
        .env(MEASURE_ENV, c)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary runs again");
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        if helper.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit && !timed_out {
            timed_out = true;
            if let Ok(pid) = std::fs::read_to_string(c.join("pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let helper_out = helper.wait_with_output().unwrap();
    let stdout = std::fs::read(c.join("stdout")).unwrap_or_default();
    let stderr =
        String::from_utf8_lossy(&std::fs::read(c.join("stderr")).unwrap_or_default()).into_owned();
    assert!(
        !timed_out,
        "{} {args:?} ran past {limit:?} and was killed: {stderr}",
        program.display()
    );
    let result = std::fs::read_to_string(c.join("result")).unwrap_or_else(|_| {
        panic!(
            "the measuring go-between failed: {}",
            String::from_utf8_lossy(&helper_out.stderr)
        )
    });
    let mut words = result.split_whitespace().map(|w| w.parse::<i64>().unwrap());
    let status = words.next().unwrap() as i32;
    let peak_rss_kib = words.next().unwrap() as u64;
    let (code, signal) = if status & 0x7f == 0 {
        (Some((status >> 8) & 0xff), None)
    } else {
        (None, Some(status & 0x7f))
    };
    Measured {
        code,
        signal,
        stdout,
        stderr,
        peak_rss_kib,
    }
}

/// The go-between of [`measured`]: when the test binary is re-run for it, spawns the program as
/// told by the control directory, records its pid, waits for it with `wait4` and writes its
/// status word and peak RSS. Does nothing in a normal test run.
// The child is reaped by `wait4` (in `reap`), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure_helper_main() {
    let Some(control) = std::env::var_os(MEASURE_ENV) else {
        return;
    };
    let c = PathBuf::from(control);
    let program = std::fs::read_to_string(c.join("program")).unwrap();
    let args = std::fs::read_to_string(c.join("args")).unwrap();
    let args: Vec<&str> = args.split('\0').collect();
    let cwd = std::fs::read_to_string(c.join("cwd")).unwrap();
    let child = Command::new(program)
        .args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(c.join("stdout")).unwrap())
        .stderr(std::fs::File::create(c.join("stderr")).unwrap())
        .spawn()
        .expect("the measured program starts");
    let pid = child.id();
    std::fs::write(c.join("pid.new"), pid.to_string()).unwrap();
    std::fs::rename(c.join("pid.new"), c.join("pid")).unwrap();
    let (status, rss) = reap(pid);
    std::fs::write(c.join("result.new"), format!("{status} {rss}")).unwrap();
    std::fs::rename(c.join("result.new"), c.join("result")).unwrap();
}
