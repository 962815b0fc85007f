//! The remote source against a fault-injecting origin: a small HTTP/1.1 server on 127.0.0.1
//! (std `TcpListener`, keep-alive, range requests) that misbehaves as told. Every fault gives
//! either the right bytes (after retries) or an error naming the URL, the range and the cause;
//! never other bytes, never a wait past the time limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mkmodule_image::ImageSource;
use mkmodule_remote::{HttpSource, RemoteError, RemoteOptions, Retry};

/// How the origin answers the range requests after the first (the open's probe).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// This status, for the next `n` requests (then none).
    Status(u16, usize),
    /// A body shorter than the range (and a Content-Length saying so).
    Short,
    /// A body longer than the range.
    Long,
    /// A Content-Range one byte off.
    WrongRange,
    /// No answer for 30 s.
    Stall,
    /// The connection closed without an answer.
    Reset,
    /// 416 with the image's length.
    Unsatisfiable,
    /// Another ETag: the image was replaced.
    OtherEtag,
}

/// The first and last byte of each range request, in order.
type Ranges = Arc<Mutex<Vec<(u64, u64)>>>;

struct Origin {
    url: String,
    fault: Arc<Mutex<Fault>>,
    requests: Arc<AtomicUsize>,
    ranges: Ranges,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Origin {
    fn start(image: Vec<u8>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let requests = Arc::new(AtomicUsize::new(0));
        let ranges = Ranges::default();
        let stop = Arc::new(AtomicBool::new(false));
        let image = Arc::new(image);
        {
            let (fault, requests, ranges, stop) = (
                fault.clone(),
                requests.clone(),
                ranges.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (fault, requests, ranges, image) = (
                        fault.clone(),
                        requests.clone(),
                        ranges.clone(),
                        image.clone(),
                    );
                    std::thread::spawn(move || serve(stream, &image, &fault, &requests, &ranges));
                }
            });
        }
        Origin {
            url: format!("http://127.0.0.1:{port}/image.cloop"),
            fault,
            requests,
            ranges,
            stop,
            port,
        }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves the requests of one connection.
fn serve(
    stream: TcpStream,
    image: &[u8],
    fault: &Mutex<Fault>,
    requests: &AtomicUsize,
    ranges: &Mutex<Vec<(u64, u64)>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut range = None;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.split_once('-').unwrap();
                range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let (start, end) = range.expect("a range request");
        ranges.lock().unwrap().push((start, end));
        let len = image.len() as u64;
        let probe = (start, end) == (0, 0);
        let mut now = if probe {
            Fault::None
        } else {
            *fault.lock().unwrap()
        };
        if let Fault::Status(code, n) = now {
            let mut f = fault.lock().unwrap();
            *f = if n > 1 {
                Fault::Status(code, n - 1)
            } else {
                Fault::None
            };
            now = Fault::Status(code, n);
        }
        let body = &image[start as usize..=end as usize];
        let ok = |etag: &str, range: String, body: &[u8]| {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: {range}\r\nContent-Length: {}\r\n\
                 ETag: {etag}\r\n\r\n",
                body.len()
            )
        };
        let range_header = format!("bytes {start}-{end}/{len}");
        let (head, body): (String, Vec<u8>) = match now {
            Fault::None => (ok("\"v1\"", range_header, body), body.to_vec()),
            Fault::Status(code, _) => (
                format!("HTTP/1.1 {code} Trouble\r\nContent-Length: 0\r\n\r\n"),
                Vec::new(),
            ),
            Fault::Short => {
                let b = &body[..body.len() / 2];
                (ok("\"v1\"", range_header, b), b.to_vec())
            }
            Fault::Long => {
                let mut b = body.to_vec();
                b.extend_from_slice(b"EXTRA");
                (ok("\"v1\"", range_header, &b), b)
            }
            Fault::WrongRange => (
                ok(
                    "\"v1\"",
                    format!("bytes {}-{}/{len}", start + 1, end + 1),
                    body,
                ),
                body.to_vec(),
            ),
            Fault::Stall => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Fault::Reset => return,
            Fault::Unsatisfiable => (
                format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\n\r\n"
                ),
                Vec::new(),
            ),
            Fault::OtherEtag => (ok("\"v2\"", range_header, body), body.to_vec()),
        };
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&body).is_err() {
            return;
        }
        if matches!(now, Fault::Long) {
            // Leave the connection: what follows the body would be taken for the next answer.
            return;
        }
    }
}

fn options(timeout: Duration) -> RemoteOptions {
    RemoteOptions {
        retry: Retry {
            attempts: 3,
            timeout,
            backoff: Duration::from_millis(10),
        },
        ..RemoteOptions::default()
    }
}

fn image() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// Reads 1000 bytes at 5000: the right bytes, or an error.
fn read(source: &HttpSource) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = vec![0u8; 1000];
    source.read_exact_at(&mut buf, 5000).map(|()| buf)
}

fn remote_error(error: &std::io::Error) -> &RemoteError {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<std::sync::Arc<RemoteError>>())
        .map(|e| e.as_ref())
        .unwrap_or_else(|| panic!("not a remote error: {error:?}"))
}

#[test]
fn good_reads_and_the_pin() {
    let origin = Origin::start(image());
    let source = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
    assert_eq!(source.len().unwrap(), 100_000);
    assert_eq!(source.pin().etag.as_deref(), Some("\"v1\""));
    assert_eq!(read(&source).unwrap(), image()[5000..6000]);
    // Past the end: no request, an end-of-file error.
    let mut buf = [0u8; 10];
    let past = source.read_exact_at(&mut buf, 99_995).unwrap_err();
    assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn adjacent_ranges_are_one_request() {
    let origin = Origin::start(image());
    let source = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
    let (mut a, mut b, mut c) = (vec![0u8; 300], vec![0u8; 200], vec![0u8; 100]);
    let mut reads: Vec<(u64, &mut [u8])> = vec![(1000, &mut a), (1300, &mut b), (9000, &mut c)];
    source.read_many_at(&mut reads).unwrap();
    let whole = image();
    assert_eq!(a, whole[1000..1300]);
    assert_eq!(b, whole[1300..1500]);
    assert_eq!(c, whole[9000..9100]);
    // The probe, 1000..1500 as one request, 9000..9100.
    assert_eq!(origin.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn passing_faults_are_retried() {
    let origin = Origin::start(image());
    let source = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
    origin.set(Fault::Status(503, 2));
    assert_eq!(read(&source).unwrap(), image()[5000..6000]);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 4);
}

#[test]
fn lasting_faults_fail_with_the_url_range_and_cause() {
    let origin = Origin::start(image());
    let cases = [
        (Fault::Status(500, 100), "HTTP status 500"),
        (Fault::Status(404, 100), "HTTP status 404"),
        (Fault::Short, "body"),
        (Fault::Long, "body of 1001 bytes where 1000 were asked for"),
        (
            Fault::WrongRange,
            "Content-Range \"bytes 5001-6000/100000\"",
        ),
        (Fault::Reset, ""),
        (Fault::Unsatisfiable, "HTTP status 416"),
    ];
    for (fault, cause) in cases {
        let source = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
        origin.set(fault);
        let before = origin.requests.load(Ordering::SeqCst);
        let error = read(&source).unwrap_err();
        let text = remote_error(&error).to_string();
        assert!(
            text.contains(&origin.url) && text.contains("bytes 5000-5999") && text.contains(cause),
            "{fault:?}: {text}"
        );
        let made = origin.requests.load(Ordering::SeqCst) - before;
        let expected = if matches!(fault, Fault::Status(404, _)) {
            1
        } else {
            3
        };
        assert_eq!(made, expected, "{fault:?}: {text}");
        origin.set(Fault::None);
        // The next read succeeds: nothing wrong was kept.
        assert_eq!(read(&source).unwrap(), image()[5000..6000], "{fault:?}");
    }
}

#[test]
fn a_stall_fails_within_the_time_limit() {
    let origin = Origin::start(image());
    let source = HttpSource::open(&origin.url, &options(Duration::from_secs(1))).unwrap();
    origin.set(Fault::Stall);
    let started = Instant::now();
    let error = read(&source).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = remote_error(&error).to_string();
    assert!(
        text.contains("timed out") && text.contains("bytes 5000-5999"),
        "{text}"
    );
}

#[test]
fn a_replaced_image_is_never_mixed_in() {
    let origin = Origin::start(image());
    let source = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
    assert!(read(&source).is_ok());
    origin.set(Fault::OtherEtag);
    let error = read(&source).unwrap_err();
    assert!(
        matches!(remote_error(&error), RemoteError::Changed { .. }),
        "{error}"
    );
    // Once changed, always changed for this open source, even if the origin looks fine again.
    origin.set(Fault::None);
    let before = origin.requests.load(Ordering::SeqCst);
    assert!(read(&source).is_err());
    assert_eq!(origin.requests.load(Ordering::SeqCst), before);
    assert!(source.changed().unwrap().contains("ETag \"v2\""));
    // A new open gets the image as it is now.
    let again = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
    assert!(read(&again).is_ok());
}

#[test]
fn a_server_that_ignores_ranges_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
    });
    let url = format!("http://127.0.0.1:{port}/x");
    let Err(error) = HttpSource::open(&url, &options(Duration::from_secs(5))) else {
        panic!("opened");
    };
    assert!(error.to_string().contains("ignores Range"), "{error}");
    server.join().unwrap();
}

/// An image read through the reader over HTTP fetches exactly the blocks its readers ask for:
/// no read-ahead however sequential the reads, the blocks of one read in one request.
#[test]
fn the_reader_fetches_exactly_the_blocks_asked_for() {
    use mkmodule_format::Dialect;
    use mkmodule_image::{Image, OpenOptions};
    use mkmodule_testkit::data::random;
    use mkmodule_testkit::image::{build, Spec};

    let bs = 4096u64;
    let built = build(
        &random(48 * bs as usize, 3),
        &Spec::new(Dialect::LinuxV2, bs as u32),
    );
    let origin = Origin::start(built.image.clone());
    let source = HttpSource::open(&origin.url, &options(Duration::from_secs(10))).unwrap();
    let image = Image::open_source(Box::new(source), "remote", &OpenOptions::default()).unwrap();
    let stored = |b: u64| {
        let e = image.index().get(b as usize).unwrap();
        (e.offset, e.offset + u64::from(e.len) - 1)
    };
    origin.ranges.lock().unwrap().clear();
    let mut buf = vec![0u8; 3 * bs as usize];
    // Blocks 10 to 17 one small read each (sequential: a local file would read ahead), then
    // 30 to 32 in one read, then 29 to 33 of which only 29 and 33 are missing.
    for b in 10..18 {
        image.read_exact_at(&mut buf[..512], b * bs + 7).unwrap();
        assert_eq!(buf[..512], built.expected[(b * bs + 7) as usize..][..512]);
    }
    image.read_exact_at(&mut buf, 30 * bs).unwrap();
    assert_eq!(buf, built.expected[(30 * bs) as usize..][..buf.len()]);
    let mut wide = vec![0u8; 5 * bs as usize];
    image.read_exact_at(&mut wide, 29 * bs).unwrap();
    assert_eq!(wide, built.expected[(29 * bs) as usize..][..wide.len()]);
    let mut want: Vec<(u64, u64)> = (10..18).map(stored).collect();
    want.push((stored(30).0, stored(32).1));
    want.push(stored(29));
    want.push(stored(33));
    assert_eq!(*origin.ranges.lock().unwrap(), want);
}
