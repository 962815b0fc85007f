//! `negotiate` and `probe` against qemu-nbd and nbdkit serving files on 127.0.0.1.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mkmodule_connect::{dial, DialError, HandshakeError, ServerAddress};
use mkmodule_testkit::data::random;
use mkmodule_testkit::process::{free_port, terminate_child, wait_until};
use mkmodule_testkit::tools::require_tool;

const LIMIT: Duration = Duration::from_secs(10);

/// A peer server on 127.0.0.1, stopped by its own id on drop.
struct Peer {
    child: Child,
    address: ServerAddress,
}

impl Drop for Peer {
    fn drop(&mut self) {
        terminate_child(&mut self.child);
    }
}

fn start(program: &str, args: &[String], port: u16) -> Peer {
    require_tool(program);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() || child.try_wait().unwrap().is_some()
    });
    assert!(
        up && child.try_wait().unwrap().is_none(),
        "{program} did not start"
    );
    Peer {
        child,
        address: format!("127.0.0.1:{port}").parse().unwrap(),
    }
}

/// `qemu-nbd -r` serving `file` raw as export `name`.
fn qemu_nbd(file: &Path, name: &str) -> Peer {
    let port = free_port();
    let args = [
        "-r",
        "-f",
        "raw",
        "-t",
        "-e",
        "4",
        "-b",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-x",
        name,
    ];
    let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
    args.push(file.display().to_string());
    start("qemu-nbd", &args, port)
}

/// `nbdkit file` serving `file` read-only (any export name).
fn nbdkit(file: &Path) -> Peer {
    let port = free_port();
    let args = vec![
        "-f".to_string(),
        "-r".into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "file".into(),
        format!("file={}", file.display()),
    ];
    start("nbdkit", &args, port)
}

fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, random(len, seed)).unwrap();
    path
}

#[test]
fn the_same_image_has_one_identity_on_every_server_and_another_image_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(dir.path(), "a.img", 3 << 20, 1);
    let qemu = qemu_nbd(&image, "root");
    let kit = nbdkit(&image);
    let from_qemu = dial(&qemu.address, "root", LIMIT).unwrap();
    let from_nbdkit = dial(&kit.address, "root", LIMIT).unwrap();
    assert_eq!(from_qemu.info.size, 3 << 20);
    assert!(from_qemu.info.read_only(), "{:?}", from_qemu.info);
    assert!(
        from_qemu.info.can_multi_conn(),
        "qemu-nbd -r offers multi-conn: {:?}",
        from_qemu.info
    );
    assert_eq!(from_nbdkit.info.size, 3 << 20);
    assert_eq!(from_qemu.identity, from_nbdkit.identity);

    // One byte changed in a sampled block (the first): another identity.
    let other = dir.path().join("b.img");
    let mut data = std::fs::read(&image).unwrap();
    data[100] ^= 1;
    std::fs::write(&other, data).unwrap();
    let changed = qemu_nbd(&other, "root");
    let from_changed = dial(&changed.address, "root", LIMIT).unwrap();
    assert_eq!(from_changed.info.size, 3 << 20);
    assert_ne!(from_changed.identity, from_qemu.identity);
}

#[test]
fn an_unknown_export_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let image = random_file(dir.path(), "a.img", 1 << 20, 2);
    let qemu = qemu_nbd(&image, "root");
    let error = dial(&qemu.address, "nosuch", LIMIT).unwrap_err();
    assert!(
        matches!(&error, DialError::Handshake(HandshakeError::UnknownExport { export, .. }) if export == "nosuch"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("no export \"nosuch\""),
        "{error}"
    );
}

/// A peer that accepts one connection, writes `reply` and closes it.
fn misbehaving_peer(reply: &'static [u8]) -> ServerAddress {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(reply);
        }
    });
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[test]
fn a_server_that_vanishes_or_speaks_something_else_gets_a_clear_error() {
    let vanished = dial(&misbehaving_peer(b""), "root", LIMIT).unwrap_err();
    assert!(
        vanished
            .to_string()
            .contains("closed the connection during the greeting"),
        "{vanished}"
    );
    // The greeting, then gone before answering the option.
    let mut greeting = Vec::new();
    greeting.extend_from_slice(b"NBDMAGIC");
    greeting.extend_from_slice(b"IHAVEOPT");
    greeting.extend_from_slice(&3u16.to_be_bytes());
    let greeting: &'static [u8] = Box::leak(greeting.into_boxed_slice());
    let mid = dial(&misbehaving_peer(greeting), "root", LIMIT).unwrap_err();
    assert!(
        mid.to_string()
            .contains("the server closed the connection during"),
        "{mid}"
    );
    let http = dial(
        &misbehaving_peer(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        "root",
        LIMIT,
    )
    .unwrap_err();
    assert!(http.to_string().contains("does not speak NBD"), "{http}");
    let port = free_port();
    let refused = dial(&format!("127.0.0.1:{port}").parse().unwrap(), "root", LIMIT).unwrap_err();
    assert!(
        refused.to_string().starts_with("cannot connect"),
        "{refused}"
    );
}
