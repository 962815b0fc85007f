//! Helpers shared by the tests that drive `mkmodule serve` and real peer tools: running a
//! program with a time limit, a server on a unix socket, reference images, mounts that are
//! undone even when an assertion fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A reference image made by Debian's create_compressed_fs.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("testdata/cloop-utils").join(name)
}

/// Fails the test (never skips it) when a peer tool is missing.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found || Path::new(tool).is_file(),
        "{tool} is not installed: run scripts/install-deps.sh"
    );
}

/// Runs a program with a time limit, killing it by its own id when the limit passes.
pub fn run(program: &str, args: &[&str], limit: Duration) -> Output {
    require_tool(program);
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{program} {args:?} ran past {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs a program (60 s at most), fails the test when it fails, and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

/// Sends SIGTERM to a server started by a test and checks it exits cleanly within 20 s.
pub fn terminate_child(child: &mut std::process::Child) {
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
#[derive(Default)]
pub struct Cleanup(Vec<(String, Vec<String>)>);

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
pub fn wait_exit(mut child: Child) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nbdfuse did not exit after unmount");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// `mkmodule serve` on TCP and a raw NBD client, for the tests that drive the wire directly
// (tests/serve_hostile.rs). The client encodes the protocol itself, from the specification,
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

/// NBD error numbers as they travel on the wire.
pub const NBD_EPERM: u32 = 1;
/// Input/output error.
pub const NBD_EIO: u32 = 5;
/// Invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// NBD_CMD_READ.
pub const NBD_CMD_READ: u16 = 0;
/// NBD_CMD_WRITE.
pub const NBD_CMD_WRITE: u16 = 1;
/// NBD_CMD_DISC.
pub const NBD_CMD_DISC: u16 = 2;
/// NBD_CMD_CACHE.
pub const NBD_CMD_CACHE: u16 = 5;

const NBD_IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

fn be_u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be_u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Connects and reads the 18-byte fixed-newstyle greeting; `Ok(None)` when the server closes
/// the connection without greeting (what it does above its connection cap).
pub fn nbd_greeted(addr: std::net::SocketAddr) -> std::io::Result<Option<std::net::TcpStream>> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut greeting = [0u8; 18];
    let mut got = 0;
    while got < greeting.len() {
        match s.read(&mut greeting[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT", "greeting");
    assert_eq!(greeting[17] & 1, 1, "the server must offer fixed newstyle");
    Ok(Some(s))
}

/// A raw NBD connection in the transmission phase, with simple replies (as the Linux kernel
/// uses it): fixed newstyle, client flags FIXED_NEWSTYLE | NO_ZEROES, NBD_OPT_GO.
pub struct NbdClient {
    /// The socket (tests write raw bytes to it).
    pub s: std::net::TcpStream,
    /// BlockDevice size from NBD_INFO_EXPORT.
    pub size: u64,
    /// Transmission flags from NBD_INFO_EXPORT.
    pub flags: u16,
}

impl NbdClient {
    /// Completes the handshake on a greeted stream with NBD_OPT_GO for `export`.
    pub fn go(mut s: std::net::TcpStream, export: &str) -> std::io::Result<NbdClient> {
        use std::io::{Read, Write};
        s.set_nodelay(true)?;
        let mut msg = Vec::new();
        msg.extend_from_slice(&3u32.to_be_bytes());
        let mut payload = Vec::new();
        payload.extend_from_slice(&(export.len() as u32).to_be_bytes());
        payload.extend_from_slice(export.as_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        msg.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        msg.extend_from_slice(&payload);
        s.write_all(&msg)?;
        let (mut size, mut flags) = (None, 0);
        // A GO answer is a handful of replies: bounded.
        for _ in 0..64 {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            assert_eq!(
                be_u64_at(&h, 0),
                0x0003_e889_0455_65a9,
                "option reply magic"
            );
            let rtype = be_u32_at(&h, 12);
            let mut p = vec![0u8; be_u32_at(&h, 16) as usize];
            s.read_exact(&mut p)?;
            if rtype == NBD_REP_INFO && p.len() >= 12 && p[..2] == [0, 0] {
                size = Some(be_u64_at(&p, 2));
                flags = u16::from_be_bytes([p[10], p[11]]);
            } else if rtype == NBD_REP_ACK {
                let size = size.ok_or_else(|| std::io::Error::other("GO without INFO_EXPORT"))?;
                return Ok(NbdClient { s, size, flags });
            } else if rtype & (1 << 31) != 0 {
                return Err(std::io::Error::other(format!(
                    "NBD_OPT_GO refused: reply type {rtype:#x}"
                )));
            }
        }
        Err(std::io::Error::other("NBD_OPT_GO: no final reply"))
    }

    /// Connects, then [`NbdClient::go`]; an error if the server refused the connection.
    pub fn connect(addr: std::net::SocketAddr, export: &str) -> std::io::Result<NbdClient> {
        match nbd_greeted(addr)? {
            Some(s) => NbdClient::go(s, export),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "closed without a greeting",
            )),
        }
    }

    /// The 28-byte request header.
    pub fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&cmd.to_be_bytes());
        b[8..16].copy_from_slice(&cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// Sends one request header.
    pub fn send(&mut self, cmd: u16, cookie: u64, offset: u64, len: u32) -> std::io::Result<()> {
        use std::io::Write;
        self.s.write_all(&Self::request(cmd, cookie, offset, len))
    }

    /// Reads one simple reply: (error, cookie, data), where a successful reply carries
    /// `data_len(cookie)` bytes of data.
    pub fn recv(
        &mut self,
        data_len: impl Fn(u64) -> usize,
    ) -> std::io::Result<(u32, u64, Vec<u8>)> {
        use std::io::Read;
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        assert_eq!(
            be_u32_at(&h, 0),
            NBD_SIMPLE_REPLY_MAGIC,
            "simple reply magic"
        );
        let (error, cookie) = (be_u32_at(&h, 4), be_u64_at(&h, 8));
        let mut data = Vec::new();
        if error == 0 {
            data.resize(data_len(cookie), 0);
            self.s.read_exact(&mut data)?;
        }
        Ok((error, cookie, data))
    }

    /// One READ: the data, or the NBD error number the server answered.
    pub fn read(&mut self, offset: u64, len: u32) -> std::io::Result<Result<Vec<u8>, u32>> {
        let cookie = offset ^ 0x5eed_0000_0000_0000;
        self.send(NBD_CMD_READ, cookie, offset, len)?;
        let (error, got, data) = self.recv(|_| len as usize)?;
        assert_eq!(got, cookie, "reply cookie");
        Ok(if error == 0 { Ok(data) } else { Err(error) })
    }

    /// NBD_CMD_DISC, then waits (bounded by the read timeout) for the server to close.
    pub fn disconnect(mut self) -> std::io::Result<()> {
        use std::io::Read;
        self.send(NBD_CMD_DISC, 0, 0, 0)?;
        let mut rest = Vec::new();
        self.s.read_to_end(&mut rest)?;
        assert!(rest.is_empty(), "bytes after NBD_CMD_DISC: {}", rest.len());
        Ok(())
    }
}

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

/// Reaps child `pid` with `wait4`, without blocking when `block` is false; returns its status
/// word and peak RSS in KiB once it has ended.
#[allow(unsafe_code)]
fn reap(pid: u32, block: bool) -> Option<(i32, u64)> {
    const WNOHANG: i32 = 1;
    let mut status = 0i32;
    let mut usage = RUsage {
        times: [0; 4],
        maxrss: 0,
        rest: [0; 13],
    };
    let options = if block { 0 } else { WNOHANG };
    loop {
        // SAFETY: both pointers are to live, properly sized locals; `pid` is our own child,
        // which std's `Child` never waits for once it is handed here.
        let got = unsafe { wait4(pid as i32, &mut status, options, &mut usage) };
        match got {
            0 => return None,
            p if p == pid as i32 => {
                return Some((status, usage.maxrss.max(0) as u64));
            }
            _ => {
                let err = std::io::Error::last_os_error();
                assert_eq!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted,
                    "wait4({pid}): {err}"
                );
            }
        }
    }
}

/// Environment variable that turns [`measure_helper_main`] on in a re-run of the test binary.
const MEASURE_ENV: &str = "MKMODULE_TEST_MEASURE_DIR";

/// Runs `mkmodule ARGS` in `dir` (standard input closed) to completion and measures its peak
/// memory. Killed by its own id (and the test failed) when it runs past `limit`.
///
/// Linux reports in `ru_maxrss` the larger of the child's own peak and the RSS of the process
/// image it replaced at `exec`; a child spawned straight from this (large, multi-threaded) test
/// process would inherit the test's own RSS. So the test binary runs itself once more as a
/// small go-between (the `measure_helper` test, which every test file using this must define
/// as `#[test] fn measure_helper() { common_tools::measure_helper_main() }`): that process
/// spawns mkmodule and reports mkmodule's `wait4` status and `ru_maxrss`. The bound then holds
/// mkmodule plus the go-between's few MiB.
pub fn mkmodule_measured(dir: &Path, args: &[&str], limit: Duration) -> Measured {
    let control = tempfile::tempdir().expect("control directory");
    let c = control.path();
    std::fs::write(c.join("args"), args.join("\0")).unwrap();
    std::fs::write(c.join("cwd"), dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut helper = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "measure_helper", "--test-threads=1", "--quiet"])
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
        "mkmodule {args:?} ran past {limit:?} and was killed: {stderr}"
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

/// The go-between of [`mkmodule_measured`]: when the test binary is re-run for it, spawns
/// mkmodule as told by the control directory, records its pid, waits for it with `wait4` and
/// writes its status word and peak RSS. Does nothing in a normal test run.
// The child is reaped by `wait4` (in `reap`), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure_helper_main() {
    let Some(control) = std::env::var_os(MEASURE_ENV) else {
        return;
    };
    let c = PathBuf::from(control);
    let args = std::fs::read_to_string(c.join("args")).unwrap();
    let args: Vec<&str> = args.split('\0').collect();
    let cwd = std::fs::read_to_string(c.join("cwd")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mkmodule"))
        .args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(c.join("stdout")).unwrap())
        .stderr(std::fs::File::create(c.join("stderr")).unwrap())
        .spawn()
        .expect("mkmodule starts");
    let pid = child.id();
    std::fs::write(c.join("pid.new"), pid.to_string()).unwrap();
    std::fs::rename(c.join("pid.new"), c.join("pid")).unwrap();
    let (status, rss) = reap(pid, true).expect("a blocking wait4 returns the child");
    std::fs::write(c.join("result.new"), format!("{status} {rss}")).unwrap();
    std::fs::rename(c.join("result.new"), c.join("result")).unwrap();
}
