//! Images given as `http://` and `https://` URLs, served by a real nginx from Debian started
//! here on 127.0.0.1 (its own prefix, config and free ports; stopped by its pid): `info`,
//! `verify`, `extract` and `serve` over a URL give what they give for the local file; the disk
//! cache survives a restart (counted in nginx's access log) and refetches a damaged entry; an
//! image replaced at the origin is never mixed with the one that was opened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common_tools::{
    mkmodule, require_tool, run_ok, tls_credentials, NbdClient, ServedTcp, NBD_EIO,
};
use mkmodule_testkit::process::{free_port, kill_child, wait_until};

/// An nginx serving `www` over http and https (the test CA's server certificate).
pub(crate) struct Nginx {
    child: Child,
    prefix: PathBuf,
    http: u16,
    https: u16,
}

impl Nginx {
    pub(crate) fn start(dir: &Path, pki: &Path) -> Nginx {
        require_tool("nginx");
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("www")).unwrap();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        // `other`: a second http origin, logged apart in `other.log`.
        let (http, https, other) = (free_port(), free_port(), free_port());
        let p = prefix.display();
        let pki = pki.display();
        // One process, no user switch (the test's temporary files are private), no daemon.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             log_format ranges '$request_method $request_uri \"$http_range\" $status $body_bytes_sent \
             \"$http_x_token\"';\n\
             access_log {p}/access.log ranges;\n\
             client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp;\n\
             uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n\
             server {{ listen 127.0.0.1:{http}; root {p}/www;\n\
             location /norange/ {{ max_ranges 0; }}\n\
             location = /moved.cloop {{ return 301 /a.cloop; }}\n\
             location = /found.cloop {{ return 302 a.cloop; }}\n\
             location = /elsewhere.cloop {{ return 302 http://127.0.0.1:{other}/a.cloop; }}\n\
             location = /loop.cloop {{ return 302 /loop.cloop; }} }}\n\
             server {{ listen 127.0.0.1:{other}; root {p}/www; access_log {p}/other.log ranges; }}\n\
             server {{ listen 127.0.0.1:{https} ssl; root {p}/www;\n\
             location = /down.cloop {{ return 302 http://127.0.0.1:{http}/a.cloop; }}\n\
             ssl_certificate {pki}/server-cert.pem; ssl_certificate_key {pki}/server-key.pem; }}\n\
             }}\n"
        );
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &p.to_string(), "-c", "nginx.conf", "-e", "stderr"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap())
            .spawn()
            .expect("starting nginx");
        let nginx = Nginx {
            child,
            prefix,
            http,
            https,
        };
        let up = wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", https)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", other)).is_ok()
        });
        assert!(
            up,
            "nginx did not start: {}",
            std::fs::read_to_string(nginx.prefix.join("stderr.log")).unwrap_or_default()
        );
        nginx
    }

    /// Puts `file` at `/name` (replacing what was there).
    pub(crate) fn publish(&self, file: &Path, name: &str) {
        let target = self.prefix.join("www").join(name);
        let temp = target.with_extension("new");
        std::fs::copy(file, &temp).unwrap();
        std::fs::rename(&temp, &target).unwrap();
    }

    pub(crate) fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.http)
    }

    fn https_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.https)
    }

    /// The access log's lines so far: method, path (and query), Range, status, body bytes,
    /// X-Token.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log_of("access.log")
    }

    /// The lines of the log named `name` in nginx's prefix.
    fn log_of(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.prefix.join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Body bytes the origin sent in `lines`.
fn body_bytes(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.split(' ').nth(4)?.parse::<u64>().ok())
        .sum()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs mkmodule, which must succeed; returns its standard output.
fn ok(args: &[&str]) -> String {
    let out = mkmodule(args);
    assert!(
        out.status.success(),
        "mkmodule {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 6 MiB input of mixed text and random data, and its image in 64 KiB zstd blocks.
fn image(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let mut data = mkmodule_testkit::data::text_lines(4 << 20, seed);
    data.extend(mkmodule_testkit::data::random(1 << 20, seed));
    data.extend(vec![0u8; 1 << 20]);
    let input = dir.join(format!("input-{seed}.raw"));
    std::fs::write(&input, &data).unwrap();
    let out = dir.join(format!("image-{seed}.cloop"));
    ok(&["create", &s(&input), "-o", &s(&out), "-c", "zstd", "-q"]);
    (input, out)
}

/// `info --json` without the path, which names the file or the URL.
fn info_without_path(json: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
    value.as_object_mut().unwrap().remove("path");
    value
}

#[test]
fn info_verify_and_extract_over_http_and_https_equal_the_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_credentials(&dir.path().join("pki"));
    let nginx = Nginx::start(dir.path(), &pki);
    let (input, local) = image(dir.path(), 1);
    nginx.publish(&local, "a.cloop");
    let url = nginx.url("a.cloop");
    let ca = s(&pki.join("ca-cert.pem"));

    let local_info = ok(&["info", "--json", &s(&local)]);
    let remote_info = ok(&["info", "--json", &url]);
    assert_eq!(
        info_without_path(&local_info),
        info_without_path(&remote_info)
    );
    ok(&["verify", &url, "--http-header", "X-Token: secret-1"]);
    assert!(
        nginx.log().iter().any(|l| l.ends_with("\"secret-1\"")),
        "{:?}",
        nginx.log()
    );
    let out = dir.path().join("out.raw");
    ok(&[
        "extract",
        &nginx.https_url("a.cloop"),
        "-o",
        &s(&out),
        "--ca-cert",
        &ca,
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());

    // Without the test CA the https origin is refused, naming the URL.
    let refused = mkmodule(&["info", &nginx.https_url("a.cloop")]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains(&nginx.https_url("a.cloop")), "{text}");
    // A missing image: 404, named.
    let missing = mkmodule(&["info", &nginx.url("missing.cloop")]);
    let text = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && text.contains("HTTP status 404"),
        "{text}"
    );
}

#[test]
fn the_disk_cache_survives_a_restart_and_refetches_a_damaged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_credentials(&dir.path().join("pki"));
    let nginx = Nginx::start(dir.path(), &pki);
    let (input, local) = image(dir.path(), 2);
    nginx.publish(&local, "b.cloop");
    let url = nginx.url("b.cloop");
    let cache = dir.path().join("cache");
    let out = dir.path().join("out.raw");
    let extract = || {
        ok(&[
            "extract",
            &url,
            "-o",
            &s(&out),
            "-f",
            "--cache-dir",
            &s(&cache),
        ]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());
    };

    extract();
    let cold = nginx.log();
    let image_len = std::fs::metadata(&local).unwrap().len();
    // Cold: every compressed byte once, give or take the header and index read at open.
    assert!(
        body_bytes(&cold) <= image_len + (64 << 10),
        "{} bytes fetched for a {image_len}-byte image",
        body_bytes(&cold)
    );

    extract();
    let warm: Vec<String> = nginx.log()[cold.len()..].to_vec();
    // Warm: the one-byte probe that pins the image's identity, nothing else.
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert!(warm[0].contains("\"bytes=0-0\" 206 1"), "{warm:?}");

    // Damage one entry: it is dropped and fetched again, and the output is still right.
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("origins"))
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .collect();
    let victim = entries
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let before = nginx.log().len();
    extract();
    let again: Vec<String> = nginx.log()[before..].to_vec();
    assert_eq!(again.len(), 2, "{again:?}");
}

#[test]
fn serve_over_a_url_and_an_image_replaced_at_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_credentials(&dir.path().join("pki"));
    let nginx = Nginx::start(dir.path(), &pki);
    let (input, local) = image(dir.path(), 3);
    let (input2, local2) = image(dir.path(), 4);
    nginx.publish(&local, "c.cloop");
    let url = nginx.url("c.cloop");
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &[&format!("c={url}"), "--cache-size", "1M"],
    );

    // nbdcopy (four connections) reads what extract writes.
    let copy = dir.path().join("copy.raw");
    run_ok("nbdcopy", &[&served.uri("c"), &s(&copy)]);
    let expected = std::fs::read(&input).unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap()[..expected.len()],
        expected[..]
    );

    // A connection opened before the image is replaced keeps the old identity: what is not
    // cached fails with EIO (never bytes of the new image).
    let mut client = NbdClient::connect(served.socket_addr(), "c").unwrap();
    let far = (2 << 20) + 12345;
    // Block 32 must not be in the 1 MiB memory cache (4 shards of 4 blocks, least recently
    // used first out): read every other stored block (80 of them, the last 16 are zeros), so
    // each shard then holds only blocks read after it.
    let block = 64 << 10;
    for at in (0..80).filter(|&b| b != far / block).map(|b| b * block) {
        let got = client.read(at, 4096).unwrap();
        assert_eq!(got, expected[at as usize..at as usize + 4096]);
    }
    std::thread::sleep(Duration::from_millis(1100)); // a new Last-Modified second, another ETag
    nginx.publish(&local2, "c.cloop");
    match client.read_reply(far, 4096).unwrap() {
        Err(errno) => assert_eq!(errno, NBD_EIO),
        Ok(bytes) => panic!(
            "read {} bytes of the {} image after it was replaced",
            bytes.len(),
            if bytes[..] == expected[far as usize..far as usize + 4096] {
                "old"
            } else {
                "new"
            }
        ),
    }
    let log = served.wait_log("changed at the origin");
    assert!(log.contains(&url), "{log}");

    // SIGHUP: new connections get the new image.
    run_ok("kill", &["-HUP", &served.pid().to_string()]);
    served.wait_log("reopened");
    let expected2 = std::fs::read(&input2).unwrap();
    let mut fresh = NbdClient::connect(served.socket_addr(), "c").unwrap();
    assert_eq!(
        fresh.read(far, 4096).unwrap(),
        expected2[far as usize..far as usize + 4096]
    );
    served.terminate();
}

#[test]
fn fetch_over_http_with_a_seed_reads_only_the_changed_blocks_from_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_credentials(&dir.path().join("pki"));
    let nginx = Nginx::start(dir.path(), &pki);
    let (old_input, old) = image(dir.path(), 5);
    // The new release: the old data with one 64 KiB block rewritten.
    let mut data = std::fs::read(&old_input).unwrap();
    let block = 3 << 16;
    data[block..block + (1 << 16)].copy_from_slice(&mkmodule_testkit::data::random(1 << 16, 77));
    let new_input = dir.path().join("new.raw");
    std::fs::write(&new_input, &data).unwrap();
    let new = dir.path().join("new.cloop");
    ok(&["create", &s(&new_input), "-o", &s(&new), "-c", "zstd", "-q"]);
    nginx.publish(&new, "new.cloop");
    let got = dir.path().join("got.cloop");
    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "fetch",
        &nginx.url("new.cloop"),
        "-o",
        &s(&got),
        "--seed",
        &s(&old),
        "--json",
    ]))
    .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&new).unwrap());
    assert_eq!(report["blocks_from_source"], 1, "{report}");
    // The origin sent that block plus header, index, table and trailer: far less than the image.
    let sent = body_bytes(&nginx.log());
    let image_len = std::fs::metadata(&new).unwrap().len();
    assert!(
        sent < image_len / 4,
        "{sent} bytes from the origin for a {image_len}-byte image: {report}"
    );
}

/// The lines of `log` for `path`, with or without a query.
pub(crate) fn lines_for<'a>(log: &'a [String], path: &str) -> Vec<&'a String> {
    let (word, query) = (format!(" {path} "), format!(" {path}?"));
    log.iter()
        .filter(|l| l.contains(&word) || l.contains(&query))
        .collect()
}

#[test]
fn origins_without_ranges_redirects_and_presigned_queries() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_credentials(&dir.path().join("pki"));
    let nginx = Nginx::start(dir.path(), &pki);
    let (input, local) = image(dir.path(), 6);
    nginx.publish(&local, "a.cloop");
    std::fs::create_dir_all(nginx.prefix.join("www/norange")).unwrap();
    nginx.publish(&local, "norange/a.cloop");
    let local_info = info_without_path(&ok(&["info", "--json", &s(&local)]));
    let ca = s(&pki.join("ca-cert.pem"));
    let failing = |url: &str, extra: &[&str]| {
        let mut args = vec!["info", url];
        args.extend_from_slice(extra);
        let out = mkmodule(&args);
        assert!(!out.status.success(), "info {url} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // An origin that answers 200 with the whole file is refused at once, named.
    let url = nginx.url("norange/a.cloop");
    let text = failing(&url, &[]);
    assert!(
        text.contains(&url) && text.contains("ignores Range requests"),
        "{text}"
    );
    assert_eq!(lines_for(&nginx.log(), "/norange/a.cloop").len(), 1);

    // Redirects on the same origin (301 to a path, 302 to a relative one) are followed, the
    // extra headers kept; every range is asked of the redirecting URL, then of its target.
    for name in ["moved.cloop", "found.cloop"] {
        let before = nginx.log().len();
        let url = nginx.url(name);
        let info = ok(&["info", "--json", &url, "--http-header", "X-Token: own"]);
        assert_eq!(info_without_path(&info), local_info);
        let log = nginx.log()[before..].to_vec();
        let asked = lines_for(&log, &format!("/{name}"));
        let served = lines_for(&log, "/a.cloop");
        assert!(!asked.is_empty() && asked.len() == served.len(), "{log:?}");
        assert!(served.iter().all(|l| l.ends_with("\"own\"")), "{log:?}");
    }
    let out = dir.path().join("out.raw");
    ok(&["extract", &nginx.url("moved.cloop"), "-o", &s(&out)]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());

    // To another origin: followed, but the extra headers stay with the image URL's origin.
    ok(&[
        "verify",
        &nginx.url("elsewhere.cloop"),
        "--http-header",
        "X-Token: own",
    ]);
    let other = nginx.log_of("other.log");
    assert!(!other.is_empty());
    assert!(other.iter().all(|l| l.ends_with("\"-\"")), "{other:?}");

    // From https to http: refused (the image and any token would travel in the clear).
    let down = format!("https://127.0.0.1:{}/down.cloop", nginx.https);
    let text = failing(&down, &["--ca-cert", &ca]);
    assert!(text.contains("in the clear"), "{text}");
    // A redirect loop ends, named.
    let text = failing(&nginx.url("loop.cloop"), &[]);
    assert!(text.contains("redirects"), "{text}");

    // A presigned-style URL works as any other; the disk cache finds a signed image's blocks
    // again under a new signature (only the probe, header and index are fetched again).
    let signed = |sig: &str| {
        format!(
            "{}?X-Amz-Signature={sig}&X-Amz-Expires=300",
            nginx.url("a.cloop")
        )
    };
    let cache = dir.path().join("cache");
    let before = nginx.log().len();
    ok(&["verify", &signed("0123abcd"), "--cache-dir", &s(&cache)]);
    let middle = nginx.log().len();
    ok(&["verify", &signed("4567ef01"), "--cache-dir", &s(&cache)]);
    let log = nginx.log();
    assert_eq!(
        lines_for(&log[before..], "/a.cloop").len(),
        log.len() - before
    );
    let image_len = std::fs::metadata(&local).unwrap().len();
    let (cold, warm) = (body_bytes(&log[before..middle]), body_bytes(&log[middle..]));
    assert!(cold >= image_len / 2, "cold: {cold} bytes");
    assert!(
        warm < image_len / 16,
        "a new signature fetched {warm} bytes"
    );
}

#[test]
fn an_image_replaced_behind_a_redirect_is_never_mixed_in_nor_its_query_logged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls_credentials(&dir.path().join("pki"));
    let nginx = Nginx::start(dir.path(), &pki);
    let (input, local) = image(dir.path(), 7);
    let (_, local2) = image(dir.path(), 8);
    nginx.publish(&local, "a.cloop");
    let url = format!("{}?X-Amz-Signature=feedface", nginx.url("moved.cloop"));
    let served = ServedTcp::start(
        dir.path(),
        "serve",
        &[&format!("m={url}"), "--cache-size", "1M"],
    );
    let expected = std::fs::read(&input).unwrap();
    let mut client = NbdClient::connect(served.socket_addr(), "m").unwrap();
    assert_eq!(client.read(0, 4096).unwrap(), expected[..4096]);
    std::thread::sleep(Duration::from_millis(1100)); // a new Last-Modified second, another ETag
    nginx.publish(&local2, "a.cloop");
    let far = (3 << 20) + 999;
    match client.read_reply(far, 4096).unwrap() {
        Err(errno) => assert_eq!(errno, NBD_EIO),
        Ok(_) => panic!("read bytes after the image behind the redirect was replaced"),
    }
    // The log names the URL, but not its query (a presigned URL's is a credential).
    let log = served.wait_log("changed at the origin");
    assert!(
        log.contains(&format!("{}?…", nginx.url("moved.cloop"))) && !log.contains("feedface"),
        "{log}"
    );
    served.terminate();
}
