//! `mkmodule serve` with TLS and client admission, against the real peer clients: libnbd's
//! nbdinfo and nbdcopy (GnuTLS) and qemu-img (tls-creds-x509), with certificates made here by
//! rcgen in the qemu/nbdkit layout. Every server listens on 127.0.0.1 only and is stopped by
//! its own pid.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common_tools;

use common_tools::{fixture, mkmodule, qemu_raw, run, run_ok, tls_credentials, Served, ServedTcp};

/// A fixture image and what qemu's cloop driver decodes from it.
fn image_and_reference(dir: &Path) -> (String, std::path::PathBuf) {
    let image = fixture("f03-random-b16384.cloop");
    let reference = dir.join("f03.raw");
    qemu_raw(&image, &reference);
    (format!("img={}", image.display()), reference)
}

/// Credentials with the client certificate, and a directory holding only the CA (a client
/// that can check the server but has no certificate of its own).
fn credentials(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let full = tls_credentials(&dir.join("pki"));
    let ca_only = dir.join("pki-ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(full.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
    (full, ca_only)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs a client expected to fail; returns its stderr.
fn run_fails(program: &str, args: &[&str]) -> String {
    let out = run(program, args, Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "{program} {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nbdinfo_and_nbdcopy_read_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (export, reference) = image_and_reference(dir.path());
    let (pki, _) = credentials(dir.path());
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &["--tls=require", "--tls-certificates", &s(&pki), &export],
    );
    let uri = served.tls_uri("img", &pki);
    let info = run_ok("nbdinfo", &[&uri]);
    assert!(info.contains("with TLS"), "{info}");
    let size = std::fs::metadata(&reference).unwrap().len();
    assert!(info.contains(&format!("export-size: {size}")), "{info}");
    run_ok("nbdinfo", &["--is", "tls", &uri]);
    // nbdcopy opens several connections (multi-conn), each with its own TLS session.
    let copy = dir.path().join("copy");
    run_ok("nbdcopy", &[&uri, &s(&copy)]);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&reference).unwrap()
    );
    // The listing goes through TLS too.
    let list = run_ok("nbdinfo", &["--list", &uri]);
    assert!(list.contains("export=\"img\""), "{list}");
    served.terminate();
}

#[test]
fn qemu_img_reads_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (export, reference) = image_and_reference(dir.path());
    let (pki, _) = credentials(dir.path());
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &[
            "--tls=require",
            "--tls-certificates",
            &s(&pki),
            "--tls-verify-peer",
            &export,
        ],
    );
    let object = format!("tls-creds-x509,id=tls0,dir={},endpoint=client", s(&pki));
    let node = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=img,\
         tls-creds=tls0",
        served.port
    );
    let info = run_ok(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &node],
    );
    let size = std::fs::metadata(&reference).unwrap().len();
    assert!(info.contains(&format!("({size} bytes)")), "{info}");
    let reference_node = format!("driver=file,filename={}", s(&reference));
    let compare = run_ok(
        "qemu-img",
        &[
            "compare",
            "--object",
            &object,
            "--image-opts",
            &reference_node,
            &node,
        ],
    );
    assert!(compare.contains("identical"), "{compare}");
    served.terminate();
}

#[test]
fn require_refuses_plaintext_and_on_serves_both() {
    let dir = tempfile::tempdir().unwrap();
    let (export, _) = image_and_reference(dir.path());
    let (pki, _) = credentials(dir.path());
    let required = ServedTcp::start(
        dir.path(),
        "require",
        &["--tls=require", "--tls-certificates", &s(&pki), &export],
    );
    // libnbd 1.14 shows only "Operation not supported" for NBD_REP_ERR_TLS_REQD; the server
    // says why.
    run_fails("nbdinfo", &[&required.uri("img")]);
    let log = required.wait_log("connection closed");
    assert!(
        log.contains("client aborted the handshake after being told TLS is required"),
        "{log}"
    );
    // A client that asks for an export with NBD_OPT_EXPORT_NAME gets no answer but a close.
    let mut raw = TcpStream::connect(("127.0.0.1", required.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 18];
    raw.read_exact(&mut greeting).unwrap();
    let mut msg = 1u32.to_be_bytes().to_vec(); // fixed newstyle only
    msg.extend_from_slice(b"IHAVEOPT");
    msg.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    msg.extend_from_slice(&3u32.to_be_bytes());
    msg.extend_from_slice(b"img");
    std::io::Write::write_all(&mut raw, &msg).unwrap();
    assert_eq!(read_until_closed(&mut raw), 0, "no reply to EXPORT_NAME");
    required.wait_log("NBD_OPT_EXPORT_NAME without TLS");
    required.terminate();

    let optional = ServedTcp::start(
        dir.path(),
        "on",
        &["--tls=on", "--tls-certificates", &s(&pki), &export],
    );
    let plain = run_ok("nbdinfo", &[&optional.uri("img")]);
    assert!(plain.contains("without TLS"), "{plain}");
    let tls = run_ok("nbdinfo", &[&optional.tls_uri("img", &pki)]);
    assert!(tls.contains("with TLS"), "{tls}");
    optional.terminate();

    // Without TLS (NBD_REP_ERR_POLICY to STARTTLS), a client that insists on TLS gives up.
    let off = ServedTcp::start(dir.path(), "off", &[&export]);
    run_fails("nbdinfo", &[&off.tls_uri("img", &pki)]);
    let log = off.wait_log("connection closed");
    assert!(log.contains("export=-"), "no export was served: {log}");
    off.terminate();
}

/// Reads until the server closes; returns how many bytes came (a reset counts as closed).
fn read_until_closed(s: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }
}

#[test]
fn verify_peer_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (export, _) = image_and_reference(dir.path());
    let (pki, ca_only) = credentials(dir.path());
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &[
            "--tls=require",
            "--tls-certificates",
            &s(&pki),
            "--tls-verify-peer",
            &export,
        ],
    );
    run_fails("nbdinfo", &[&served.tls_uri("img", &ca_only)]);
    let log = served.wait_log("TLS handshake failed");
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap();
    assert!(
        line.contains("127.0.0.1:"),
        "the line names the peer: {line}"
    );
    assert!(line.contains("certificate"), "and why: {line}");
    // A client with a certificate signed by the CA is served.
    let info = run_ok("nbdinfo", &[&served.tls_uri("img", &pki)]);
    assert!(info.contains("with TLS"), "{info}");
    served.terminate();
}

#[test]
fn missing_or_broken_credentials_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (export, _) = image_and_reference(dir.path());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = mkmodule(&[
        "serve",
        "-p",
        "0",
        "--tls=require",
        "--tls-certificates",
        &s(&empty),
        &export,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&s(&empty.join("server-cert.pem"))),
        "names the missing file: {err}"
    );
    let (pki, _) = credentials(dir.path());
    std::fs::write(pki.join("server-key.pem"), "not a key\n").unwrap();
    let out = mkmodule(&[
        "serve",
        "-p",
        "0",
        "--tls=on",
        "--tls-certificates",
        &s(&pki),
        &export,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&s(&pki.join("server-key.pem"))),
        "names the unparsable file: {err}"
    );
}

#[test]
fn allow_list_refuses_other_addresses_and_serves_listed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (export, _) = image_and_reference(dir.path());
    // Only the rule mentions 10.0.0.0/8; every connection here goes to 127.0.0.1.
    let refusing = ServedTcp::start(dir.path(), "refusing", &["--allow", "10.0.0.0/8", &export]);
    run_fails("nbdinfo", &[&refusing.uri("img")]);
    let log = refusing.wait_log("not in the allowed list");
    assert!(log.contains("refusing connection from 127.0.0.1:"), "{log}");
    refusing.terminate();

    let allowing = ServedTcp::start(
        dir.path(),
        "allowing",
        &["--allow", "10.0.0.0/8", "--allow", "127.0.0.1/32", &export],
    );
    let info = run_ok("nbdinfo", &[&allowing.uri("img")]);
    assert!(info.contains("export-size"), "{info}");
    allowing.terminate();

    // Clients on the unix socket have no address and are always allowed.
    let served = Served::start(dir.path(), &["--allow", "10.0.0.0/8", &export]);
    let info = run_ok("nbdinfo", &[&served.uri("img")]);
    assert!(info.contains("export-size"), "{info}");
    served.terminate();
}

/// Connects and reads the greeting; `None` if the server closed the connection instead.
fn greeted(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 18];
    match s.read_exact(&mut greeting) {
        Ok(()) => {
            assert_eq!(&greeting[..8], b"NBDMAGIC");
            Some(s)
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => panic!("reading the greeting: {e}"),
    }
}

#[test]
fn connections_per_client_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (export, _) = image_and_reference(dir.path());
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &["--max-connections-per-client", "2", &export],
    );
    let first = greeted(served.port).expect("first connection served");
    let second = greeted(served.port).expect("second connection served");
    assert!(
        greeted(served.port).is_none(),
        "a third connection from the same address must be closed"
    );
    served.wait_log("2 connections from 127.0.0.1 already open");
    // Once one closes, its slot comes back (the server notices the close on its own time).
    drop(first);
    let start = Instant::now();
    let third = loop {
        if let Some(s) = greeted(served.port) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the slot of a closed connection never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop((second, third));
    served.terminate();
}
