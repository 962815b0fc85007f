//! The pieces of the boot-storm benchmark (`cargo xtask storm`), checked without timing
//! anything: `serve --trace` records what clients read, the replayer sends a trace from several
//! connections and gets the image's bytes, and the nginx access-log parser counts what nginx
//! really sent.

use mkmodule_testkit::data::text_lines;
use mkmodule_testkit::nginx::{get_range, parse_access_log, LogEntry, Nginx};
use mkmodule_testkit::replay::{distinct_blocks, parse_trace, replay, TraceRead};

use crate::common_tools::{mkmodule, ServedTcp};

/// Reads that start, end and cross 64 KiB blocks, one of them repeated.
fn synthetic_trace() -> Vec<TraceRead> {
    [
        (0, 4096),
        (65536 - 100, 300),
        (900_000, 131_072),
        (4096, 512),
        (0, 4096),
        (1_048_576 - 1, 1),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(offset, len))| TraceRead {
        micros: i as u64 * 10,
        offset,
        len,
    })
    .collect()
}

#[test]
fn replayed_reads_are_the_image_bytes_and_serve_traces_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_lines(1 << 20, 7);
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, &data).unwrap();
    let image = dir.path().join("disk.cloop");
    let out = mkmodule(&[raw.to_str().unwrap(), "-o", image.to_str().unwrap(), "-q"]);
    assert!(out.status.success(), "{out:?}");
    let trace_file = dir.path().join("reads.trace");
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &[
            "--trace",
            trace_file.to_str().unwrap(),
            &format!("img={}", image.display()),
        ],
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], served.port));
    let trace = synthetic_trace();
    let expect = |offset: u64, got: &[u8]| {
        let at = offset as usize;
        data.get(at..at + got.len()) == Some(got)
    };
    let report = replay(addr, "img", &trace, 4, Some(&expect)).unwrap();
    let wanted: u64 = trace.iter().map(|r| u64::from(r.len)).sum();
    assert_eq!(report.clients, 4);
    assert_eq!(report.requests, 4 * trace.len() as u64);
    assert_eq!(report.latencies.len(), 4 * trace.len());
    assert_eq!(report.bytes, 4 * wanted);
    assert_eq!(report.mismatches, 0);
    assert!(report.percentile(0.5) <= report.percentile(0.99));
    // A checker that expects other bytes is noticed on every reply of client 0.
    let wrong = |_: u64, got: &[u8]| got.iter().all(|&b| b == 0x55);
    let report = replay(addr, "img", &trace, 2, Some(&wrong)).unwrap();
    assert_eq!(report.mismatches, trace.len() as u64);
    // An export that does not exist fails the replay instead of measuring nothing.
    assert!(replay(addr, "nope", &trace, 2, None).is_err());
    served.terminate();

    // The trace holds every read of the 6 clients in arrival order, times never going back.
    let text = std::fs::read_to_string(&trace_file).unwrap();
    assert!(text.starts_with("# "), "{text}");
    let recorded = parse_trace(&text).unwrap();
    assert_eq!(recorded.len(), 6 * trace.len(), "{text}");
    assert!(
        recorded.windows(2).all(|w| w[0].micros <= w[1].micros),
        "{text}"
    );
    let key = |r: &TraceRead| (r.offset, r.len);
    let mut got: Vec<_> = recorded.iter().map(key).collect();
    let mut want: Vec<_> = (0..6).flat_map(|_| trace.iter().map(key)).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    // Blocks 0, 1 (the read across 64 KiB), and 13 to 15 (900000 + 128 KiB, the last byte).
    assert_eq!(distinct_blocks(&trace, 65536), [0, 1, 13, 14, 15]);
    assert!(parse_trace("0 1\n").is_err());
    assert!(parse_trace("# c\n\n5 6 7\n").unwrap()[0].len == 7);
}

#[test]
fn nginx_access_log_counts_the_bytes_sent() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let data = text_lines(300_000, 3);
    std::fs::write(www.join("img.bin"), &data).unwrap();
    let nginx = Nginx::start(&www, &dir.path().join("nginx")).unwrap_or_else(|e| panic!("{e}"));
    let mut sent = 0;
    for (offset, len) in [(0u64, 1000u64), (65_536, 70_000), (299_999, 1)] {
        let (status, body) = get_range(nginx.addr, "/img.bin", offset, len).unwrap();
        assert_eq!(status, 206);
        assert_eq!(body, data[offset as usize..(offset + len) as usize]);
        sent += len;
    }
    let (status, _) = get_range(nginx.addr, "/img.bin", 400_000, 10).unwrap();
    assert_eq!(status, 416);
    let log = nginx.log().unwrap();
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(
        log[1],
        LogEntry {
            uri: "/img.bin".into(),
            status: 206,
            body_bytes: 70_000,
            range: Some((65_536, 135_535)),
        }
    );
    assert_eq!(log[3].status, 416);
    // The 416 answer's small error page counts too: it is what the origin sent.
    assert_eq!(nginx.body_bytes().unwrap(), sent + log[3].body_bytes);
    assert_eq!(
        nginx.url("img.bin"),
        format!("http://{}/img.bin", nginx.addr)
    );
    assert!(parse_access_log("/a 200 x\n").is_err());
    assert_eq!(parse_access_log("/a 200 5\n\n").unwrap()[0].body_bytes, 5);
    assert_eq!(parse_access_log("/a 200 5 -\n").unwrap()[0].range, None);
    assert_eq!(
        parse_access_log("/a 206 5 bytes=3-7\n").unwrap()[0].range,
        Some((3, 7))
    );
}
