//! The shared probe scripts (copied into tests/scripts/) against the in-process server.
//!
//! `nbd_checks.py` needs `/usr/bin/python3` with the Debian package `python3-libnbd`.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const PYTHON: &str = "/usr/bin/python3";

#[test]
fn nbd_checks_py_passes() {
    let data = test_data();
    let (server, addr) = start_tcp(standard_config(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_file(dir.path(), &data);
    let r = run(
        PYTHON,
        &[
            &script("nbd_checks.py"),
            &format!("nbd://{addr}/disk"),
            reference.to_str().unwrap(),
        ],
        Duration::from_secs(180),
    );
    assert_eq!(
        r.status,
        Some(0),
        "nbd_checks.py failed:\n{}{}",
        r.stdout,
        r.stderr
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    for line in &lines {
        assert!(
            line.starts_with("PASS") || line.starts_with("INFO"),
            "not a PASS: {line}"
        );
    }
    for want in [
        "structured replies negotiated",
        "random reads vs reference",
        "read with CMD_FLAG_DF",
        "block status base:allocation",
        "ZERO extents read as zeroes",
        "block status with REQ_ONE",
        "read straddling end",
        "read at end",
        "read far past end",
        "connection alive after errors",
        "write on read-only export",
        "4 connections x 64 aio reads",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("PASS") && l.contains(want)),
            "no PASS line for {want:?}"
        );
    }
    let z = zero_bytes();
    assert!(
        r.stdout.contains(&format!("hole={z} zero={z}")),
        "zero regions not reported"
    );
    assert!(r
        .stdout
        .contains("multi-conn advertised=True, 0 mismatches"));
    server.shutdown();
}

#[test]
fn nbd_checks_py_passes_over_unix_socket_on_odd_sized_export() {
    // 3 MiB + 333 bytes; zero from 1 MiB to the end (a partial zero granule at the end).
    let mut data = test_data();
    data.truncate((3 << 20) + 333);
    data[2 << 20..].fill(0);
    let export = mkmodule_blockdev::MemoryDevice::new(data.clone()).with_zero_extents(GRANULE);
    let (logger, _) = collecting_logger();
    let config = mkmodule_nbd::ServerConfig::new()
        .with_export("odd", "", std::sync::Arc::new(export))
        .with_logger(logger);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let l = mkmodule_nbd::Listener::bind_unix(&sock).unwrap();
    let server = mkmodule_nbd::Server::start(config, [l]).unwrap();
    let reference = reference_file(dir.path(), &data);
    let r = run(
        PYTHON,
        &[
            &script("nbd_checks.py"),
            &format!("nbd+unix:///odd?socket={}", sock.display()),
            reference.to_str().unwrap(),
        ],
        Duration::from_secs(180),
    );
    assert_eq!(r.status, Some(0));
    assert!(!r.stdout.contains("FAIL") && !r.stdout.contains("WARN"));
    let z = (2 << 20) + 333;
    assert!(r.stdout.contains(&format!("hole={z} zero={z}")));
    server.shutdown();
}

/// What each probe must report (substrings of the result column).
fn expected_probe_results() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("bad_client_flags", vec!["closed"]),
        ("bad_option_magic", vec!["closed"]),
        (
            "unknown_option",
            vec!["reply ERR_UNSUP; following NBD_OPT_LIST -> SERVER,SERVER,ACK"],
        ),
        ("list_with_data", vec!["reply ERR_INVALID"]),
        ("huge_option_length", vec!["closed"]),
        ("go_unknown_export", vec!["reply ERR_UNKNOWN"]),
        ("go_bad_namelen", vec!["reply ERR_INVALID"]),
        ("export_name_unknown", vec!["closed"]),
        ("abort", vec!["reply ACK, then closed"]),
        ("meta_without_structured", vec!["reply ERR_INVALID"]),
        ("extended_headers", vec!["reply ERR_UNSUP"]),
        ("starttls_no_tls", vec!["reply ERR_POLICY"]),
        ("vanish_mid_handshake", vec!["client reset"]),
        ("bad_request_magic", vec!["closed"]),
        (
            "unknown_command",
            vec!["simple error=EINVAL; next READ -> simple error=0"],
        ),
        ("unknown_command_flag", vec!["simple error=EINVAL"]),
        (
            "read_past_end_simple",
            vec![
                "straddling end: simple error=EINVAL",
                "at end: simple error=EINVAL",
                "then valid READ: simple error=0",
            ],
        ),
        (
            "read_past_end_structured",
            vec![
                "straddling end: chunk ERROR DONE error=EINVAL msg='request out of range",
                "at end: chunk ERROR DONE error=EINVAL",
                "then valid READ: chunk OFFSET_DATA DONE",
            ],
        ),
        ("offset_overflow", vec!["simple error=EINVAL"]),
        ("huge_read_length", vec!["simple error=EINVAL"]),
        ("zero_length_read", vec!["simple error=0"]),
        ("huge_write_header", vec!["closed"]),
        (
            "write_read_only",
            vec!["WRITE on read-only export: simple error=EPERM"],
        ),
        (
            "block_status_no_context",
            vec!["chunk ERROR DONE error=EINVAL"],
        ),
        (
            "block_status",
            vec![
                "whole export: chunk BLOCK_STATUS DONE",
                "past end: chunk ERROR DONE error=EINVAL",
            ],
        ),
        ("flush_nonzero_fields", vec!["simple error=EINVAL"]),
        ("vanish_mid_write", vec!["then RST"]),
        ("vanish_replies_pending", vec!["closed without reading"]),
        ("disc", vec!["after NBD_CMD_DISC: closed"]),
    ]
}

#[test]
fn nbd_malformed_py_probes_behave_like_the_reference_column() {
    let (server, addr) = start_tcp(standard_config(test_data()));
    let r = run(
        PYTHON,
        &[
            &script("nbd_malformed.py"),
            "127.0.0.1",
            &addr.port().to_string(),
            "--export",
            "disk",
        ],
        Duration::from_secs(300),
    );
    assert_eq!(r.status, Some(0), "server did not survive every probe");
    let mut results: HashMap<&str, &str> = HashMap::new();
    for line in r.stdout.lines() {
        if let Some((name, rest)) = line.split_once(' ') {
            assert!(line.ends_with("[server alive]"), "{line}");
            results.insert(name, rest.trim());
        }
    }
    for (probe, wants) in expected_probe_results() {
        let got = results
            .get(probe)
            .unwrap_or_else(|| panic!("probe {probe} did not run"));
        for w in wants {
            assert!(got.contains(w), "probe {probe}: expected {w:?} in {got:?}");
        }
    }
    assert_eq!(results.len(), expected_probe_results().len());
    // The server is still fine for a normal client after all of that.
    let mut c = NbdClient::connect(addr, "disk").unwrap();
    assert_eq!(c.read(0, 4096).unwrap(), test_data()[..4096]);
    c.hang_up();
    server.shutdown();
}
