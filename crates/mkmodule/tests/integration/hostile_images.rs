//! Hostile images through the real binary: `mkmodule info`, `verify` and `extract` on images
//! made by `mkmodule create` (and the create_compressed_fs fixtures of testdata/cloop-utils),
//! then truncated, bit-flipped, given absurd block counts, offsets past the end or wrapping,
//! decompression bombs, and zero-length everything.
//!
//! For every case and command: no panic (no "panicked", exit code never 101, no signal); a
//! failure exits 1 (`info`, `extract`) or 3 (`verify`: damage) with exactly one line on
//! standard error naming the image and, where it can be known, the block or byte offset that
//! was damaged; a failed `extract` leaves nothing behind (no output, no temporary file); a
//! `verify` that passes on an image with a digest means `extract` gives back the original bytes;
//! and the child's peak RSS (`wait4`'s `ru_maxrss`) stays below [`PEAK_RSS_LIMIT_KIB`].

use crate::common_create;
use crate::common_tools;
use mkmodule_testkit::data::Rng;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common_tools::{fixture, mkmodule_measured, Measured};
use mkmodule_codec::{BlockCompressor, CodecKind, CodecSpec};
use mkmodule_format::{encode_index, parse_image, Header, IndexEntry, HEADER_LEN};

/// Peak RSS bound of every `info`, `verify` and `extract` run here: 100 MiB. The images have
/// blocks of at most 64 KiB (the fixtures: 1 MiB at most), so a reader needs a few block
/// buffers per thread plus codec contexts (an xz decoder may reserve its declared dictionary,
/// up to 64 MiB for `xz -9`, of which a bounded block touches little). Headers that claim
/// billions of blocks, sparse indexes and bombs must stay under it too.
const PEAK_RSS_LIMIT_KIB: u64 = 100 << 10;

/// Time limit of one command (a hang fails the test; no assertion depends on timing).
const LIMIT: Duration = Duration::from_secs(60);

/// A valid image and what is known about it.
struct Base {
    name: String,
    bytes: Vec<u8>,
    /// `extract` of the undamaged image.
    reference: Vec<u8>,
    /// Whether it carries mkmodule's trailer (a digest of the content).
    digest: bool,
    header_first: bool,
    block_size: u64,
    /// (offset, length) of every block's compressed bytes.
    blocks: Vec<(u64, u64)>,
    index_offset: u64,
    /// Where block data ends (`index[n]`).
    data_end: u64,
}

impl Base {
    fn from_bytes(dir: &Path, name: &str, bytes: Vec<u8>) -> Base {
        let parsed = parse_image(&bytes).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        let sub = dir.join(format!("ref-{name}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("img"), &bytes).unwrap();
        let m = mkmodule_measured(&sub, &["extract", "-q", "img", "-o", "out"], LIMIT);
        assert_eq!(m.code, Some(0), "extracting {name}: {}", m.stderr);
        let reference = std::fs::read(sub.join("out")).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        let header_first = parsed.layout.index_offset == HEADER_LEN;
        Base {
            name: name.to_string(),
            reference,
            digest: parsed.trailer.is_some(),
            header_first,
            block_size: u64::from(parsed.index.block_size()),
            blocks: parsed
                .index
                .blocks()
                .iter()
                .map(|b| (b.offset, u64::from(b.len)))
                .collect(),
            index_offset: parsed.layout.index_offset,
            data_end: parsed.index.data_end(),
            bytes,
        }
    }

    /// `mkmodule create` of `input` with `args`.
    fn create(dir: &Path, name: &str, input: &[u8], args: &[&str]) -> Base {
        let sub = dir.join(format!("make-{name}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("in"), input).unwrap();
        let mut all = vec!["create", "in", "-o", "img", "-q"];
        all.extend_from_slice(args);
        let m = mkmodule_measured(&sub, &all, LIMIT);
        assert_eq!(m.code, Some(0), "create {args:?}: {}", m.stderr);
        let bytes = std::fs::read(sub.join("img")).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        Base::from_bytes(dir, name, bytes)
    }

    fn fixture(dir: &Path, name: &str) -> Base {
        Base::from_bytes(dir, name, std::fs::read(fixture(name)).unwrap())
    }

    fn n(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// The block whose compressed bytes hold `pos`.
    fn block_at(&self, pos: u64) -> Option<u64> {
        self.blocks
            .iter()
            .position(|&(o, l)| (o..o + l).contains(&pos))
            .map(|i| i as u64)
    }

    /// The image with index entry `e` (0..=n) replaced by `value` (header-first images).
    fn with_entry(&self, e: u64, value: u64) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        let at = (self.index_offset + 8 * e) as usize;
        bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
        bytes
    }

    /// The image rebuilt without its trailer, with block `k`'s compressed bytes replaced by
    /// `payload` (codec `codec`, for V4 images) and the index recomputed (header-first images).
    fn with_block(&self, k: u64, payload: &[u8], codec: Option<CodecKind>) -> Vec<u8> {
        let parsed = parse_image(&self.bytes).unwrap();
        let header = Header {
            block_size: parsed.index.block_size(),
            num_blocks: parsed.index.len() as u32,
        };
        let dialect = parsed.layout.dialect;
        let data_start = HEADER_LEN + header.index_len();
        let mut body = Vec::new();
        let mut entries = Vec::new();
        for (i, b) in parsed.index.blocks().iter().enumerate() {
            let (bytes, codec) = if i as u64 == k {
                (payload, codec.unwrap_or(b.codec))
            } else {
                (&self.bytes[b.offset as usize..b.end() as usize], b.codec)
            };
            entries.push(IndexEntry {
                offset: data_start + body.len() as u64,
                codec,
            });
            body.extend_from_slice(bytes);
        }
        let data_end = data_start + body.len() as u64;
        let mut out = self.bytes[..HEADER_LEN as usize].to_vec();
        out.extend_from_slice(&encode_index(dialect, header, &entries, data_end).unwrap());
        out.extend_from_slice(&body);
        out
    }
}

/// What a damaged image must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every command fails, `info` included (the header or index is refused).
    OpenFails,
    /// `verify` and `extract` fail (`info` may describe it).
    Damaged,
    /// `verify` fails: only the digest can tell (`extract` checks it too when the trailer has one).
    DigestCatches,
    /// Every command succeeds and `extract` gives back the content.
    Harmless,
    /// Either; the invariants still hold.
    Unknown,
}

/// The image file of a case.
enum Bytes {
    /// Written as is.
    Plain(Vec<u8>),
    /// `head` at offset 0 of a sparse file of `len` bytes.
    Sparse { head: Vec<u8>, len: u64 },
}

/// One damaged image.
struct Case {
    label: String,
    bytes: Bytes,
    expect: Expect,
    /// A failing command's message must contain one of these (a block, an entry, an offset),
    /// when any are given.
    places: Vec<String>,
}

impl Case {
    fn new(label: impl Into<String>, bytes: Vec<u8>, expect: Expect, places: &[String]) -> Case {
        Case {
            label: label.into(),
            bytes: Bytes::Plain(bytes),
            expect,
            places: places.to_vec(),
        }
    }
}

fn block(k: u64) -> String {
    format!("block {k}")
}

fn entry(k: u64) -> String {
    format!("entry {k}")
}

/// Whether `message` holds `needle` not followed by another digit ("block 1" is not in
/// "block 12").
fn mentions(message: &str, needle: &str) -> bool {
    message.match_indices(needle).any(|(at, _)| {
        !message[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Whether `out` is `reference` followed only by zeros (the padded size, when a damaged
/// trailer made `extract` write whole blocks).
fn same_content(out: &[u8], reference: &[u8]) -> bool {
    out.len() >= reference.len()
        && out[..reference.len()] == *reference
        && out[reference.len()..].iter().all(|&b| b == 0)
}

fn names(dir: &Path) -> Vec<String> {
    common_create::entries(dir)
}

/// Runs info, verify and extract on each case; returns the broken promises.
fn run_cases(dir: &Path, base: &Base, cases: &[Case]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut peak = (0u64, String::new());
    for (i, case) in cases.iter().enumerate() {
        let sub = dir.join(format!("{}-{i}", base.name));
        std::fs::create_dir_all(&sub).unwrap();
        match &case.bytes {
            Bytes::Plain(bytes) => std::fs::write(sub.join("img"), bytes).unwrap(),
            Bytes::Sparse { head, len } => {
                let file = File::create(sub.join("img")).unwrap();
                file.write_all_at(head, 0).unwrap();
                file.set_len(*len).unwrap();
            }
        }
        let mut fail = |what: String| {
            problems.push(format!("{} / {}: {what}", base.name, case.label));
        };
        let runs: [(&str, &[&str], i32); 3] = [
            ("info", &["info", "img"], 1),
            ("verify", &["verify", "-q", "img"], 3),
            ("extract", &["extract", "-q", "img", "-o", "out"], 1),
        ];
        let mut ok = [false; 3];
        for (k, (cmd, args, code)) in runs.iter().enumerate() {
            let m = mkmodule_measured(&sub, args, LIMIT);
            if m.peak_rss_kib > peak.0 {
                peak = (m.peak_rss_kib, format!("{cmd} on {}", case.label));
            }
            // extract checks the trailer's digest too: a mismatch is damage, status 3 as verify.
            let code = if *cmd == "extract" && m.stderr.contains("the image is damaged") {
                3
            } else {
                *code
            };
            for p in invariants(&m, code, &case.places) {
                fail(format!("{cmd}: {p}"));
            }
            ok[k] = m.code == Some(0);
        }
        let [info_ok, verify_ok, extract_ok] = ok;
        let left = names(&sub);
        let expected_left: &[&str] = if extract_ok {
            &["img", "out"]
        } else {
            &["img"]
        };
        if left != expected_left {
            fail(format!("files left after extract: {left:?}"));
        }
        let content_ok =
            extract_ok && same_content(&std::fs::read(sub.join("out")).unwrap(), &base.reference);
        match case.expect {
            Expect::OpenFails if info_ok || verify_ok || extract_ok => fail(format!(
                "should not open: info {info_ok}, verify {verify_ok}, extract {extract_ok}"
            )),
            Expect::Damaged if verify_ok || extract_ok => fail(format!(
                "damage not found: verify {verify_ok}, extract {extract_ok}"
            )),
            Expect::DigestCatches if verify_ok => fail("verify passed".into()),
            Expect::Harmless if !(info_ok && verify_ok && content_ok) => fail(format!(
                "harmless damage refused: info {info_ok}, verify {verify_ok}, extract {extract_ok} \
                 (content {content_ok})"
            )),
            _ => {}
        }
        if verify_ok && base.digest && !(extract_ok && content_ok) {
            fail(format!(
                "verify passed but extract gave other bytes (extract {extract_ok})"
            ));
        }
        std::fs::remove_dir_all(&sub).unwrap();
    }
    eprintln!(
        "{}: {} cases, highest peak RSS {} KiB ({})",
        base.name,
        cases.len(),
        peak.0,
        peak.1
    );
    problems
}

/// What every run must satisfy; `code` is the exit status of a failure.
fn invariants(m: &Measured, code: i32, places: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    let err = m.stderr.trim_end();
    if let Some(signal) = m.signal {
        bad.push(format!("killed by signal {signal}: {err}"));
    }
    if m.code == Some(101) || err.contains("panicked") {
        bad.push(format!("panicked: {err}"));
    }
    if m.peak_rss_kib >= PEAK_RSS_LIMIT_KIB {
        bad.push(format!(
            "peak RSS {} KiB, over the {} KiB bound",
            m.peak_rss_kib, PEAK_RSS_LIMIT_KIB
        ));
    }
    if m.code.is_some_and(|c| c != 0) {
        if m.code != Some(code) {
            bad.push(format!("exit {:?}, expected {code}: {err}", m.code));
        }
        if err.lines().count() != 1 || !err.starts_with("mkmodule: ") || !err.contains("img") {
            bad.push(format!("not one sentence naming the image: {err:?}"));
        }
        if !places.is_empty() && !places.iter().any(|p| mentions(err, p)) {
            bad.push(format!("message names none of {places:?}: {err}"));
        }
    }
    bad
}

fn assert_none(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} broken promises:\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Content with text, zero runs, random bytes and repeats: 3 MB, 46 blocks of 64 KiB.
fn content() -> Vec<u8> {
    common_create::mixed(3_000_000)
}

/// Truncations at every header field and index entry boundary, every block start, and a
/// spread of offsets inside the blocks and the trailer.
fn truncations(base: &Base, spread: usize, rng: &mut Rng) -> Vec<Case> {
    let len = base.bytes.len() as u64;
    let mut points = vec![0, 1, 11, 15, 128, 131, 132, 135];
    if base.header_first {
        points.extend([136, 137]);
        for e in 0..=base.n() {
            points.extend([base.index_offset + 8 * e, base.index_offset + 8 * e + 4]);
        }
    }
    for &(o, l) in &base.blocks {
        points.extend([o, o + l / 2]);
    }
    for _ in 0..spread {
        points.push(rng.below(len));
    }
    points.extend([
        base.data_end.saturating_sub(1),
        base.data_end,
        base.data_end + 1,
        len - 1,
    ]);
    points.sort_unstable();
    points.dedup();
    points
        .into_iter()
        .filter(|&t| t < len)
        .map(|t| {
            let bytes = base.bytes[..t as usize].to_vec();
            if t >= base.data_end && base.header_first {
                // Only the trailer (or padding) is cut: the blocks are all there.
                Case::new(format!("cut at {t}"), bytes, Expect::Unknown, &[])
            } else if base.header_first {
                let mut places = vec![t.to_string()];
                if let Some(k) = base.block_at(t) {
                    places.push(block(k));
                }
                Case::new(format!("cut at {t}"), bytes, Expect::Damaged, &places)
            } else {
                // The header of a footer image is at the end: any cut removes it.
                Case::new(format!("cut at {t}"), bytes, Expect::Damaged, &[])
            }
        })
        .collect()
}

/// Single-bit flips: `header` in the first 136 bytes, `index` in the index, `data` in the
/// blocks, `tail` after them.
fn flips(base: &Base, counts: [usize; 4], rng: &mut Rng) -> Vec<Case> {
    let len = base.bytes.len() as u64;
    let index_len = 8 * (base.n() + 1);
    let data_start = base.blocks.first().map_or(base.data_end, |b| b.0);
    let header_at = if base.header_first { 0 } else { len - 136 };
    let areas = [
        (header_at, 136),
        (base.index_offset, index_len),
        (data_start, base.data_end - data_start),
        (
            base.data_end,
            len.saturating_sub(base.data_end + 136 * u64::from(!base.header_first)),
        ),
    ];
    let mut cases = Vec::new();
    for ((start, span), count) in areas.into_iter().zip(counts) {
        if span == 0 {
            continue;
        }
        for _ in 0..count {
            let pos = start + rng.below(span);
            let bit = rng.below(8);
            let mut bytes = base.bytes.clone();
            bytes[pos as usize] ^= 1 << bit;
            let mut places = Vec::new();
            if (base.index_offset..base.index_offset + index_len).contains(&pos) {
                let e = (pos - base.index_offset) / 8;
                places.extend([block(e), entry(e), entry(e + 1)]);
                if e > 0 {
                    places.push(block(e - 1));
                }
                if e + 1 >= base.n() {
                    places.extend(["index end".to_string(), "trailer".to_string()]);
                }
            } else if let Some(k) = base.block_at(pos) {
                places.push(block(k));
            } else if pos >= base.data_end && base.header_first {
                places.extend(["trailer", "digest", "stored-check"].map(String::from));
            }
            cases.push(Case::new(
                format!("bit {bit} of byte {pos}"),
                bytes,
                Expect::Unknown,
                &places,
            ));
        }
    }
    cases
}

#[test]
fn truncated_portable_images_and_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_0001);
    let mut problems = Vec::new();
    let base = Base::create(dir.path(), "v2", &content(), &[]);
    assert_eq!(base.block_size, 65536);
    problems.extend(run_cases(
        dir.path(),
        &base,
        &truncations(&base, 40, &mut rng),
    ));
    for name in ["f03-random-b16384.cloop", "f01-text-b4096.cloop"] {
        let base = Base::fixture(dir.path(), name);
        problems.extend(run_cases(
            dir.path(),
            &base,
            &truncations(&base, 10, &mut rng),
        ));
    }
    assert_none(problems);
}

#[test]
fn truncated_images_of_other_dialects() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_0002);
    let mut problems = Vec::new();
    let data = common_create::mixed(700_000);
    for (name, args) in [
        ("uzip-zstd", &["-c", "zstd", "--zero-blocks"][..]),
        (
            "uzip-xz-dedup",
            &["-c", "xz:1", "--format", "uzip", "--dedup"][..],
        ),
        ("v4-lz4", &["-c", "lz4"][..]),
        ("v4-footer", &["--format", "v4-footer"][..]),
    ] {
        let base = Base::create(dir.path(), name, &data, args);
        let mut cases = truncations(&base, 5, &mut rng);
        // Keep the run short: every third cut of the dense header and index boundaries.
        cases = cases
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(_, c)| c)
            .collect();
        problems.extend(run_cases(dir.path(), &base, &cases));
    }
    assert_none(problems);
}

#[test]
fn bit_flips_in_header_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_0003);
    let base = Base::create(dir.path(), "v2", &content(), &[]);
    let mut problems = run_cases(dir.path(), &base, &flips(&base, [60, 100, 0, 0], &mut rng));
    for (name, args) in [
        ("uzip-zstd", &["-c", "zstd", "--zero-blocks"][..]),
        ("v4-footer", &["--format", "v4-footer", "-c", "xz:0"][..]),
    ] {
        let base = Base::create(dir.path(), name, &common_create::mixed(500_000), args);
        problems.extend(run_cases(
            dir.path(),
            &base,
            &flips(&base, [15, 25, 0, 0], &mut rng),
        ));
    }
    let base = Base::fixture(dir.path(), "f02-mixed-b512.cloop");
    problems.extend(run_cases(
        dir.path(),
        &base,
        &flips(&base, [10, 30, 0, 0], &mut rng),
    ));
    assert_none(problems);
}

#[test]
fn bit_flips_in_blocks_and_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed_0004);
    let base = Base::create(dir.path(), "v2", &content(), &[]);
    let mut problems = run_cases(dir.path(), &base, &flips(&base, [0, 0, 110, 30], &mut rng));
    for (name, args) in [
        ("uzip-zstd", &["-c", "zstd", "--zero-blocks"][..]),
        ("v4-mixed", &["-c", "best", "--format", "v4"][..]),
    ] {
        let base = Base::create(dir.path(), name, &common_create::mixed(500_000), args);
        problems.extend(run_cases(
            dir.path(),
            &base,
            &flips(&base, [0, 0, 25, 5], &mut rng),
        ));
    }
    let base = Base::fixture(dir.path(), "f03-random-b16384.cloop");
    problems.extend(run_cases(
        dir.path(),
        &base,
        &flips(&base, [0, 0, 30, 0], &mut rng),
    ));
    assert_none(problems);
}

#[test]
fn block_counts_that_imply_terabytes() {
    let dir = tempfile::tempdir().unwrap();
    let base = Base::create(dir.path(), "v2", &common_create::mixed(300_000), &[]);
    let with_header = |block_size: u32, num_blocks: u32| {
        let mut bytes = base.bytes.clone();
        bytes[128..132].copy_from_slice(&block_size.to_be_bytes());
        bytes[132..136].copy_from_slice(&num_blocks.to_be_bytes());
        bytes
    };
    let head =
        |block_size: u32, num_blocks: u32| with_header(block_size, num_blocks)[..136].to_vec();
    let mut cases = vec![
        // 2^32 - 1 blocks of 64 KiB (256 TiB) claimed in a 300 KB file.
        Case::new(
            "u32::MAX blocks",
            with_header(65536, u32::MAX),
            Expect::OpenFails,
            &[u32::MAX.to_string()],
        ),
        Case::new(
            "2^24 blocks of 64 MiB",
            with_header(64 << 20, 1 << 24),
            Expect::OpenFails,
            &[(1u32 << 24).to_string()],
        ),
        Case::new(
            "block size 0",
            with_header(0, 5),
            Expect::OpenFails,
            &["block size".into()],
        ),
        Case::new(
            "block size 2 GiB",
            with_header(1 << 31, 5),
            Expect::OpenFails,
            &["block size".into()],
        ),
        Case::new(
            "block size 4 GiB - 512",
            with_header(u32::MAX - 511, 5),
            Expect::OpenFails,
            &["block size".into()],
        ),
    ];
    // The same claims over sparse files long enough to hold the index: an index of 2 GiB
    // (2^28 blocks, 16 TiB) and of 32 GiB (2^32 - 1 blocks) that reads as zeros. The reader
    // must fail at block 0 without reading gigabytes into memory.
    for n in [1u32 << 28, u32::MAX] {
        cases.push(Case {
            label: format!("{n} blocks over a sparse index"),
            bytes: Bytes::Sparse {
                head: head(65536, n),
                len: 136 + 8 * (u64::from(n) + 1) + 65536,
            },
            expect: Expect::OpenFails,
            places: vec![block(0)],
        });
    }
    // A sparse index whose first entries are real: the first zero entry is named.
    let mut real = head(65536, 1 << 28);
    let start = 136 + 8 * ((1u64 << 28) + 1);
    for e in 0..1000u64 {
        real.extend_from_slice(&(start + e * 10).to_be_bytes());
    }
    cases.push(Case {
        label: "sparse index after 1000 real entries".into(),
        bytes: Bytes::Sparse {
            head: real,
            len: start + 65536,
        },
        expect: Expect::OpenFails,
        places: vec![block(1000)],
    });
    assert_none(run_cases(dir.path(), &base, &cases));
}

#[test]
fn offsets_past_the_end_or_wrapping() {
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let data = common_create::mixed(1_000_000);
    for (name, args) in [
        ("v2", &[][..]),
        ("v4-lz4", &["-c", "lz4"][..]),
        ("uzip-zstd", &["-c", "zstd"][..]),
        ("uzip-xz", &["-c", "xz:0", "--format", "uzip"][..]),
    ] {
        let base = Base::create(dir.path(), name, &data, args);
        let len = base.bytes.len() as u64;
        let n = base.n();
        let k = n / 2;
        let mut cases = Vec::new();
        for (what, value) in [
            ("EOF + 1", len + 1),
            ("the largest 60-bit offset", (1 << 60) - 1),
            ("u64::MAX", u64::MAX),
            ("u64::MAX - 7", u64::MAX - 7),
            (
                "bit 63 over the real offset",
                (1 << 63) | base.blocks[k as usize].0,
            ),
            ("0", 0),
            ("1", 1),
        ] {
            cases.push(Case::new(
                format!("entry {k} = {what}"),
                base.with_entry(k, value),
                Expect::Damaged,
                &[block(k), entry(k), block(k - 1)],
            ));
            cases.push(Case::new(
                format!("index end = {what}"),
                base.with_entry(n, value),
                Expect::Unknown,
                &[
                    "index end".into(),
                    block(n - 1),
                    entry(n),
                    "trailer".into(),
                    len.to_string(),
                ],
            ));
        }
        // Block k starting where block k - 1 starts: a zero-length block (zeros) and a block
        // holding two streams (the first decodes). Only the digest can tell.
        cases.push(Case::new(
            format!("entry {k} = entry {}", k - 1),
            base.with_entry(k, base.blocks[k as usize - 1].0),
            Expect::DigestCatches,
            &[],
        ));
        if name == "v4-lz4" {
            for flag in [1u64, 5, 15] {
                cases.push(Case::new(
                    format!("codec flag {flag} on block {k}"),
                    base.with_entry(k, (flag << 60) | base.blocks[k as usize].0),
                    Expect::Damaged,
                    &[block(k)],
                ));
            }
        }
        problems.extend(run_cases(dir.path(), &base, &cases));
    }
    assert_none(problems);
}

/// A zstd frame without a content size, made of RLE blocks of 128 KiB zeros, decoding to
/// `blocks` × 128 KiB; `window_log` is declared in its window descriptor.
fn zstd_rle_frame(blocks: u32, window_log: u8) -> Vec<u8> {
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame header descriptor: no content size, not single-segment, no checksum, no dict.
    frame.push(0x00);
    frame.push((window_log - 10) << 3);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        // Block header (little endian): last flag, type 1 (RLE), size = repetitions.
        let header = last | (1 << 1) | ((128 << 10) << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

fn compress(kind: CodecKind, level: i32, data: &[u8]) -> Vec<u8> {
    let spec = CodecSpec::new(kind, level).unwrap_or(CodecSpec::with_default_level(kind));
    let mut out = Vec::new();
    BlockCompressor::new(spec)
        .unwrap()
        .compress(data, &mut out)
        .unwrap();
    out
}

/// `xz -9 --check=crc32` of `len` zeros from a pipe: a stream declaring a 64 MiB dictionary.
fn xz_cli_zeros(len: usize) -> Vec<u8> {
    common_tools::require_tool("xz");
    let mut child = Command::new("xz")
        .args(["-9", "--check=crc32", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&vec![0u8; len]).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A bomb: what it is, the compressed bytes, and the codec flag it gets in a V4 index.
type Bomb = (String, Vec<u8>, Option<CodecKind>);

#[test]
fn decompression_bombs() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 16 << 20];
    let data = common_create::mixed(1_000_000);
    let mut problems = Vec::new();
    let bombs: Vec<(&str, &[&str], Vec<Bomb>)> = vec![
        (
            "v2",
            &[],
            vec![(
                "zlib 16 MiB of zeros".into(),
                compress(CodecKind::Zlib, 12, &zeros),
                None,
            )],
        ),
        (
            "uzip-zstd",
            &["-c", "zstd"],
            vec![
                (
                    "zstd 16 MiB with content size".into(),
                    compress(CodecKind::Zstd, 3, &zeros),
                    None,
                ),
                (
                    "zstd 16 MiB RLE, no content size".into(),
                    zstd_rle_frame(128, 17),
                    None,
                ),
                (
                    "zstd declaring a 2 TiB window".into(),
                    zstd_rle_frame(1, 41),
                    None,
                ),
            ],
        ),
        (
            "uzip-xz",
            &["-c", "xz:1", "--format", "uzip"],
            vec![
                (
                    "xz 16 MiB of zeros".into(),
                    compress(CodecKind::Xz, 6, &zeros),
                    None,
                ),
                (
                    "xz -9 (64 MiB dictionary) from a pipe".into(),
                    xz_cli_zeros(16 << 20),
                    None,
                ),
            ],
        ),
        (
            "v4",
            &["-c", "lz4"],
            vec![
                (
                    "lz4 4 MiB of zeros".into(),
                    compress(CodecKind::Lz4, 0, &zeros[..4 << 20]),
                    Some(CodecKind::Lz4),
                ),
                (
                    "xz 16 MiB of zeros in a v4 image".into(),
                    compress(CodecKind::Xz, 6, &zeros),
                    Some(CodecKind::Xz),
                ),
                (
                    "zlib 16 MiB of zeros in a v4 image".into(),
                    compress(CodecKind::Zlib, 12, &zeros),
                    Some(CodecKind::Zlib),
                ),
            ],
        ),
    ];
    for (name, args, payloads) in bombs {
        let base = Base::create(dir.path(), name, &data, args);
        let mut cases = Vec::new();
        for (what, payload, codec) in payloads {
            for k in [base.n() / 2, base.n() - 1] {
                cases.push(Case::new(
                    format!("{what} ({} bytes) as block {k}", payload.len()),
                    base.with_block(k, &payload, codec),
                    Expect::Damaged,
                    &[block(k)],
                ));
            }
        }
        problems.extend(run_cases(dir.path(), &base, &cases));
    }
    assert_none(problems);
}

#[test]
fn zero_length_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let empty = Base::fixture(dir.path(), "f10-empty.cloop");
    assert!(empty.reference.is_empty());
    let cases = vec![
        Case::new(
            "empty file",
            Vec::new(),
            Expect::OpenFails,
            &["0 bytes".into()],
        ),
        Case::new(
            "header only",
            empty.bytes[..136].to_vec(),
            Expect::OpenFails,
            &["136".into()],
        ),
        Case::new("zero blocks", empty.bytes.clone(), Expect::Harmless, &[]),
        Case::new(
            "zero blocks, index[0] past the end",
            {
                let mut b = empty.bytes.clone();
                b[136..144].copy_from_slice(&1000u64.to_be_bytes());
                b
            },
            Expect::OpenFails,
            &["1000".into()],
        ),
    ];
    problems.extend(run_cases(dir.path(), &empty, &cases));

    // An empty input makes one zero block (or none) in every format.
    for (name, args) in [
        ("v2-empty", &[][..]),
        ("uzip-zstd-empty", &["-c", "zstd", "--zero-blocks"][..]),
        ("v4-footer-empty", &["--format", "v4-footer"][..]),
    ] {
        let base = Base::create(dir.path(), name, &[], args);
        let case = Case::new("as made", base.bytes.clone(), Expect::Harmless, &[]);
        problems.extend(run_cases(dir.path(), &base, &[case]));
    }

    // Every index entry equal to the data start: all blocks zero-length, no data at all. uzip
    // defines such blocks as zeros; cloop readers read them as zeros too. Either way, no panic.
    let data = common_create::mixed(400_000);
    for (name, args) in [
        ("v2", &["--no-trailer"][..]),
        ("uzip-zlib", &["--format", "uzip", "--no-trailer"][..]),
        ("v4", &["--format", "v4", "--no-trailer"][..]),
    ] {
        let base = Base::create(dir.path(), name, &data, args);
        let start = base.blocks[0].0;
        let mut bytes = base.bytes[..start as usize].to_vec();
        for e in 0..=base.n() {
            let at = (base.index_offset + 8 * e) as usize;
            bytes[at..at + 8].copy_from_slice(&start.to_be_bytes());
        }
        let all_zero_len = Case::new(
            "all blocks zero-length",
            bytes.clone(),
            Expect::Unknown,
            &[],
        );
        let mut with_data = bytes;
        with_data.extend_from_slice(&base.bytes[start as usize..]);
        let trailing = Case::new(
            "all blocks zero-length, data after them",
            with_data,
            Expect::Unknown,
            &[],
        );
        problems.extend(run_cases(dir.path(), &base, &[all_zero_len, trailing]));
    }
    assert_none(problems);
}
