//! Helpers shared by the tests that drive `mkmodule serve` and real peer tools: running a
//! program with a time limit, a server on a unix socket, reference images, mounts that are
//! undone even when an assertion fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use mkmodule_testkit::fixtures::{fixture, repo_root as repo};
pub use mkmodule_testkit::process::terminate_child;
pub use mkmodule_testkit::tools::{require_tool, run_ok, run_with_limit as run};

/// Runs the mkmodule binary to completion (2 minutes at most).
pub fn mkmodule(args: &[&str]) -> Output {
    run(
        env!("CARGO_BIN_EXE_mkmodule"),
        args,
        Duration::from_secs(120),
    )
}

/// SHA-256 of a file, in hex.
pub fn sha256(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `mkmodule serve` process on a unix socket in `dir`, stopped by its own id when dropped.
/// Its stderr goes to `dir/serve.log`.
pub struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    /// Starts `mkmodule serve -k DIR/nbd.sock ARGS...` and waits (bounded) for the socket.
    pub fn start(dir: &Path, args: &[&str]) -> Served {
        let socket = dir.join("nbd.sock");
        let _ = std::fs::remove_file(&socket);
        let mut all = vec!["serve", "-k", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(&all)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut served = Served { child, socket };
        let start = Instant::now();
        while !served.socket.exists() {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!(
                    "mkmodule serve exited early ({status}): {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// The NBD URI of `export` on this server.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops the server with SIGTERM (it flushes its overlays) and checks it exits cleanly.
    pub fn terminate(mut self) {
        terminate_child(&mut self.child);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw device contents as qemu's cloop driver decodes them (the reference reader).
pub fn qemu_raw(image: &Path, out: &Path) -> Vec<u8> {
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "cloop",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

/// Builds an ext4 filesystem holding `hello.txt` and a 3 MiB `etc/big`, and a cloop image of it
/// made with Debian's create_compressed_fs (the reference writer).
pub fn ext4_cloop(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from a cloop image\n").unwrap();
    std::fs::write(tree.join("etc/big"), vec![7u8; 3 << 20]).unwrap();
    let ext4 = dir.join("root.ext4");
    std::fs::File::create(&ext4)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            ext4.to_str().unwrap(),
        ],
    );
    let image = dir.join("root.cloop");
    run_ok(
        "create_compressed_fs",
        &[
            "-q",
            "-B",
            "65536",
            ext4.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
    image
}

/// Undoes mounts and loop devices, last first, even when an assertion fails.
/// Holds the binary's mount lock (`crate::mount_lock`) while it lives: tests that mount run one
/// at a time.
pub struct Cleanup(
    Vec<(String, Vec<String>)>,
    #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
);

impl Default for Cleanup {
    fn default() -> Cleanup {
        Cleanup(Vec::new(), crate::mount_lock())
    }
}

impl Cleanup {
    /// Remembers an undo step.
    pub fn push(&mut self, program: &str, args: &[&str]) {
        self.0.push((
            program.to_string(),
            args.iter().map(|s| s.to_string()).collect(),
        ));
    }

    /// Runs the undo steps now (checking them), leaving nothing for drop.
    pub fn run_now(&mut self) {
        while let Some((program, args)) = self.0.pop() {
            let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            run_ok(&program, &args);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (program, args) in self.0.iter().rev() {
            let _ = Command::new(program).args(args).output();
        }
    }
}

/// nbdfuse + a loop device + an ext4 mount of the export at `mnt` (read-only unless `writable`),
/// with undo steps in `cleanup`. Returns the nbdfuse process: it exits when its mount goes.
pub fn nbdfuse_mount(
    dir: &Path,
    uri: &str,
    mnt: &Path,
    writable: bool,
    cleanup: &mut Cleanup,
) -> Child {
    let fuse_dir = dir.join("fuse");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(mnt).unwrap();
    let pid_file = dir.join("nbdfuse.pid");
    let _ = std::fs::remove_file(&pid_file);
    require_tool("nbdfuse");
    let mut args = vec![
        "-P",
        pid_file.to_str().unwrap(),
        fuse_dir.to_str().unwrap(),
        uri,
    ];
    if !writable {
        args.insert(0, "-r");
    }
    let mut nbdfuse = Command::new("nbdfuse")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // No fusermount3 on these hosts: as root a plain umount ends the FUSE mount.
    cleanup.push("umount", &[fuse_dir.to_str().unwrap()]);
    let start = Instant::now();
    while std::fs::metadata(&pid_file).map_or(true, |m| m.len() == 0) {
        assert!(
            nbdfuse.try_wait().unwrap().is_none(),
            "nbdfuse exited early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nbdfuse did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let device_file = fuse_dir.join("nbd");
    let mut losetup = vec!["-f", "--show", device_file.to_str().unwrap()];
    if !writable {
        losetup.push("-r");
    }
    let loop_dev = run_ok("losetup", &losetup).trim().to_string();
    cleanup.push("losetup", &["-d", &loop_dev]);
    let options = if writable { "rw" } else { "ro" };
    run_ok(
        "mount",
        &[
            "-t",
            "ext4",
            "-o",
            options,
            &loop_dev,
            mnt.to_str().unwrap(),
        ],
    );
    cleanup.push("umount", &[mnt.to_str().unwrap()]);
    nbdfuse
}

/// Waits (bounded) for nbdfuse to exit after its mount went away.
pub fn wait_exit(child: Child) {
    mkmodule_testkit::process::wait_exit(child, "nbdfuse after unmount");
}

// ---------------------------------------------------------------------------------------------
// `mkmodule serve` on TCP and a raw NBD client, for the tests that drive the wire directly
// (the `serve_hostile` tests). The client encodes the protocol itself, from the specification,
// rather than with the server's own encoders.

/// What the hostile-client tests need of a [`ServedTcp`] besides its log: the address, the
/// process id, whether it is alive and its memory.
impl ServedTcp {
    /// The address it listens on.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test if the server process has exited (crashed, or killed by a signal).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "mkmodule serve died ({status}); its log:\n{}",
                self.log_text()
            );
        }
    }

    /// CPU time the server has used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which is in parentheses): utime and stime are the
        // 12th and 13th of them.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }
}

pub use mkmodule_testkit::nbd::{
    greeted as nbd_greeted, NbdClient, CMD_CACHE as NBD_CMD_CACHE, CMD_DISC as NBD_CMD_DISC,
    CMD_READ as NBD_CMD_READ, CMD_WRITE as NBD_CMD_WRITE, EINVAL as NBD_EINVAL, EIO as NBD_EIO,
};

/// A `mkmodule serve` process on 127.0.0.1 at a port the system picks, stopped by its own id
/// when dropped. Its stderr goes to `DIR/NAME.log`.
pub struct ServedTcp {
    child: Child,
    log: PathBuf,
    /// The TCP port it listens on.
    pub port: u16,
}

impl ServedTcp {
    /// Starts `mkmodule serve -b 127.0.0.1 -p 0 ARGS...` and waits (bounded) until its log says
    /// where it listens.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> ServedTcp {
        let log = dir.join(format!("{name}.log"));
        let mut all = vec!["serve", "-b", "127.0.0.1", "-p", "0"];
        all.extend_from_slice(args);
        let child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .args(&all)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut served = ServedTcp {
            child,
            log,
            port: 0,
        };
        let start = Instant::now();
        loop {
            let text = served.log_text();
            if let Some(rest) = text.split("serving on 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                served.port = digits.parse().unwrap();
                return served;
            }
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("mkmodule serve exited early ({status}): {text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`, and returns the log.
    pub fn wait_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the server never logged {needle:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// `nbds://127.0.0.1:PORT/EXPORT?tls-certificates=DIR` (libnbd's TLS URI).
    pub fn tls_uri(&self, export: &str, certificates: &Path) -> String {
        format!(
            "nbds://127.0.0.1:{}/{export}?tls-certificates={}",
            self.port,
            certificates.display()
        )
    }

    /// Stops the server with SIGTERM and checks it exits cleanly.
    pub fn terminate(mut self) {
        terminate_child(&mut self.child);
    }
}

impl Drop for ServedTcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes TLS credentials in the qemu/nbdkit layout: a CA (`ca-cert.pem`), a server certificate
/// for 127.0.0.1 and localhost (`server-cert.pem`, `server-key.pem`) and a client certificate
/// (`client-cert.pem`, `client-key.pem`), all into `dir`. Returns `dir`.
pub fn tls_credentials(dir: &Path) -> PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "mkmodule test CA");
    ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2060, 1, 1);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca.pem()).unwrap();
    for (who, names, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mkmodule test {who}"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{who}-cert.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{who}-key.pem")), key.serialize_pem()).unwrap();
    }
    dir.to_path_buf()
}

pub use mkmodule_testkit::process::Measured;

/// Runs `mkmodule ARGS` in `dir` (standard input closed) to completion and measures its peak
/// memory (see `mkmodule_testkit::process::measured`; the binary's root defines the
/// `measure_helper` test it needs). Killed by its own id (and the test failed) past `limit`.
pub fn mkmodule_measured(dir: &Path, args: &[&str], limit: Duration) -> Measured {
    mkmodule_testkit::process::measured(Path::new(env!("CARGO_BIN_EXE_mkmodule")), dir, args, limit)
}
