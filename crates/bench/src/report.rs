//! The sweep's results: an aligned table, JSON, CSV, and the recommendation.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use mkmodule_format::Reader;
use serde::Serialize;

use crate::measure::CellResult;
use crate::sample::SamplePlan;
use crate::size_label;

/// How the compressed bytes were chosen.
#[derive(Debug, Clone, Serialize)]
pub struct SampleInfo {
    /// One sentence: `the whole input` or `N runs of 4 MiB spread evenly ...`.
    pub method: String,
    /// Bytes per run (the input length for the whole input).
    pub run_bytes: u64,
    /// Runs taken.
    pub runs: u64,
    /// Bytes compressed.
    pub bytes: u64,
    /// `bytes` / the input's length.
    pub fraction: f64,
}

impl SampleInfo {
    /// The description of `plan`.
    pub fn from_plan(plan: &SamplePlan) -> SampleInfo {
        SampleInfo {
            method: plan.describe(),
            run_bytes: plan.run_len,
            runs: plan.run_count(),
            bytes: plan.bytes(),
            fraction: plan.fraction(),
        }
    }
}

/// Everything a sweep measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Tool and version.
    pub tool: String,
    /// The input's path.
    pub input: String,
    /// `raw` or `cloop image (v2), decoded`.
    pub input_kind: String,
    /// The whole input's length.
    pub input_bytes: u64,
    /// What was compressed.
    pub sample: SampleInfo,
    /// Compressor threads.
    pub threads: usize,
    /// Decoder threads of the full-decode pass.
    pub decode_threads: usize,
    /// Rounds per cell (medians reported).
    pub rounds: usize,
    /// Bytes per random read.
    pub read_size: usize,
    /// The reader's cache size during the random reads: its default, scaled by the sample's
    /// share of the input.
    pub cache_bytes: u64,
    /// One entry per cell.
    pub cells: Vec<CellResult>,
    /// The pick, once [`Report::recommend`] ran.
    pub recommendation: Option<Recommendation>,
}

/// Who will read the recommended image: `mkmodule bench --for`.
///
/// The reader lists come from the dialect table ([`mkmodule_format::Dialect::spec`]): an
/// audience is satisfied by a cell whose dialect lists the readers it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audience {
    /// Every reader in [`Reader::ALL`] opens the image: the portable choice, and the default.
    #[default]
    Any,
    /// Only `mkmodule serve` or `mount`, which read every codec: no constraint.
    Serve,
    /// Linux `cloop.ko` (Knoppix and Debian live systems).
    Cloop,
    /// qemu's `cloop` block driver.
    Qemu,
    /// FreeBSD `geom_uzip`.
    GeomUzip,
    /// NetBSD `vnd`.
    Vnd,
}

impl Audience {
    /// Every audience, in the order `--for` lists them.
    pub const ALL: [Audience; 6] = [
        Audience::Cloop,
        Audience::Qemu,
        Audience::GeomUzip,
        Audience::Vnd,
        Audience::Serve,
        Audience::Any,
    ];

    /// The readers that must open the image (empty for [`Audience::Serve`]).
    pub fn required_readers(self) -> &'static [Reader] {
        match self {
            Audience::Any => &Reader::ALL,
            Audience::Serve => &[],
            Audience::Cloop => &[Reader::LinuxCloop],
            Audience::Qemu => &[Reader::Qemu],
            Audience::GeomUzip => &[Reader::FreeBsdGeomUzip],
            Audience::Vnd => &[Reader::NetBsdVnd],
        }
    }

    /// Whether an image opened by `readers` is good enough.
    pub fn satisfied_by(self, readers: &[Reader]) -> bool {
        self.required_readers().iter().all(|r| readers.contains(r))
    }

    /// Words for the recommendation: `every reader`, `Linux cloop.ko`, ...
    pub fn describe(self) -> String {
        match self {
            Audience::Any => "every reader".to_string(),
            Audience::Serve => "mkmodule serve/mount".to_string(),
            other => list_readers(other.required_readers()),
        }
    }

    /// The `--for` value.
    pub fn name(self) -> &'static str {
        match self {
            Audience::Any => "any",
            Audience::Serve => "serve",
            Audience::Cloop => "cloop",
            Audience::Qemu => "qemu",
            Audience::GeomUzip => "geom_uzip",
            Audience::Vnd => "vnd",
        }
    }

    /// The audience an old `--readers` value meant: `any` (no constraint) is now `serve`,
    /// `all` (every reader) is now `any`, `linux` is `cloop`, `freebsd` is `geom_uzip`,
    /// `netbsd` is `vnd`, `qemu` is `qemu`.
    pub fn from_readers_value(value: &str) -> Result<Audience, String> {
        Ok(match value.trim().to_ascii_lowercase().as_str() {
            "any" => Audience::Serve,
            "all" => Audience::Any,
            "linux" => Audience::Cloop,
            "freebsd" => Audience::GeomUzip,
            "netbsd" => Audience::Vnd,
            "qemu" => Audience::Qemu,
            other => {
                return Err(format!(
                    "unknown readers {other:?}: expected any, all, linux, freebsd, netbsd or \
                     qemu (or use --for {})",
                    for_values()
                ))
            }
        })
    }

    /// One line saying which audience the recommendation is for and how to pick another:
    /// `recommending for every reader (Linux cloop.ko, ...), the default; use --for serve if
    /// only mkmodule serve/mount will read the image, ...`.
    pub fn statement(self) -> String {
        let others = "--for cloop, qemu, geom_uzip or vnd for one reader";
        match self {
            Audience::Any => format!(
                "recommending for every reader ({}), the default; use --for serve if only \
                 mkmodule serve/mount will read the image, or {others}",
                Reader::ALL
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Audience::Serve => format!(
                "recommending for mkmodule serve/mount only (--for serve), which read every \
                 codec; use --for any for an image every reader opens, or {others}"
            ),
            other => format!(
                "recommending for {} (--for {}); use --for any for an image every reader \
                 opens, or --for serve if only mkmodule serve/mount will read it",
                other.describe(),
                other.name()
            ),
        }
    }
}

/// The `--for` values, for messages: `cloop, qemu, geom_uzip, vnd, serve or any`.
pub fn for_values() -> String {
    let names: Vec<&str> = Audience::ALL.iter().map(|a| a.name()).collect();
    let (last, rest) = names.split_last().expect("there are audiences");
    format!("{} or {last}", rest.join(", "))
}

impl FromStr for Audience {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Audience::ALL
            .iter()
            .copied()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| format!("unknown reader {:?}: expected {}", s.trim(), for_values()))
    }
}

/// Readers in a sentence: `Linux cloop.ko`, `qemu and NetBSD vnd`, `a, b and c`.
pub fn list_readers(readers: &[Reader]) -> String {
    let names: Vec<&str> = readers.iter().map(|r| r.name()).collect();
    join_with_and(&names)
}

/// `a`, `a and b`, `a, b and c`.
fn join_with_and(names: &[&str]) -> String {
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The recommended cell and why.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// Index into [`Report::cells`]; `None` when no cell is readable by the audience.
    pub cell: Option<usize>,
    /// Whether the pick meets the latency bound (otherwise it is the fastest reader instead).
    pub met: bool,
    /// The latency bound, microseconds.
    pub max_latency_us: f64,
    /// The `--for` value: who will read the image.
    #[serde(rename = "for")]
    pub audience: String,
    /// The readers that open the recommended image (empty when there is none).
    pub readers: Vec<String>,
    /// The recommendation in one line.
    pub text: String,
    /// The `mkmodule create` options that make the pick.
    pub create_options: Option<String>,
}

/// Picks the smallest image (then the fastest to decode) whose random-read p99 is at most
/// `max_latency`, among the cells `audience` can read; when none is fast enough, the one with
/// the lowest p99.
pub fn recommend(
    cells: &[CellResult],
    max_latency: Duration,
    audience: Audience,
) -> Recommendation {
    let bound = max_latency.as_secs_f64() * 1e6;
    let readable: Vec<usize> = (0..cells.len())
        .filter(|&i| audience.satisfied_by(cells[i].reader_set()))
        .collect();
    let base = Recommendation {
        cell: None,
        met: false,
        max_latency_us: bound,
        audience: audience.name().to_string(),
        readers: Vec::new(),
        text: String::new(),
        create_options: None,
    };
    if readable.is_empty() {
        return Recommendation {
            text: format!(
                "no combination swept is readable by {}: add a codec it reads (zlib is read \
                 by every reader)",
                audience.describe()
            ),
            ..base
        };
    }
    let fast: Vec<usize> = readable
        .iter()
        .copied()
        .filter(|&i| cells[i].reads > 0 && cells[i].read_p99_us <= bound)
        .collect();
    let (pick, met) = if fast.is_empty() {
        let pick = readable
            .iter()
            .copied()
            .min_by(|&a, &b| cells[a].read_p99_us.total_cmp(&cells[b].read_p99_us))
            .expect("readable is not empty");
        (pick, false)
    } else {
        let pick = fast
            .iter()
            .copied()
            .min_by(|&a, &b| {
                cells[a]
                    .image_bytes
                    .cmp(&cells[b].image_bytes)
                    .then(cells[b].decode_mb_s.total_cmp(&cells[a].decode_mb_s))
            })
            .expect("fast is not empty");
        (pick, true)
    };
    let c = &cells[pick];
    let options = format!("-B {} -c {}", size_label(c.block_size), c.codec);
    let mut reader_names: Vec<&str> = c.reader_set().iter().map(|r| r.name()).collect();
    reader_names.push("mkmodule serve/mount");
    let readers = format!("readable by {}", join_with_and(&reader_names));
    let estimate = if c.estimated_full_bytes != c.image_bytes {
        format!(
            ", about {} for the whole input",
            fmt_bytes(c.estimated_full_bytes)
        )
    } else {
        format!(", {}", fmt_bytes(c.image_bytes))
    };
    let text = if met {
        format!(
            "recommended: {options} ({}), {readers}: the smallest image (ratio {:.3}{estimate}) \
             for {} whose random {} read p99 ({}) stays under {}",
            c.dialect,
            c.ratio,
            audience.describe(),
            size_label(4096),
            fmt_us(c.read_p99_us),
            fmt_us(bound),
        )
    } else {
        format!(
            "no combination readable by {} keeps the random-read p99 under {}; the fastest is \
             {options} ({}, {readers}; p99 {}, ratio {:.3}{estimate}): raise --max-latency or \
             add smaller blocks or a faster codec",
            audience.describe(),
            fmt_us(bound),
            c.dialect,
            fmt_us(c.read_p99_us),
            c.ratio,
        )
    };
    Recommendation {
        cell: Some(pick),
        met,
        readers: c
            .reader_set()
            .iter()
            .map(|r| r.name().to_string())
            .collect(),
        text,
        create_options: Some(options),
        ..base
    }
}

impl Report {
    /// Fills in [`Report::recommendation`] for `audience`.
    pub fn recommend(&mut self, max_latency: Duration, audience: Audience) {
        self.recommendation = Some(recommend(&self.cells, max_latency, audience));
    }

    /// The index of the recommended cell, if any.
    pub fn recommended(&self) -> Option<usize> {
        self.recommendation.as_ref().and_then(|r| r.cell)
    }

    /// Pretty JSON of the whole report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// A header line and one line per cell, comma separated (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "codec,block_size,dialect,readers,image,input_bytes,image_bytes,ratio,\
             estimated_full_bytes,zero_blocks,blocks,compress_seconds,compress_mb_s,\
             decode_seconds,decode_mb_s,reads,read_p50_us,read_p99_us,cache_hit_ratio,\
             read_cache_bytes\n",
        );
        for c in &self.cells {
            let fields = [
                c.codec.clone(),
                c.block_size.to_string(),
                c.dialect.clone(),
                c.readers.join(";"),
                c.image.clone().unwrap_or_default(),
                c.input_bytes.to_string(),
                c.image_bytes.to_string(),
                format!("{:.6}", c.ratio),
                c.estimated_full_bytes.to_string(),
                c.zero_blocks.to_string(),
                c.blocks.to_string(),
                format!("{:.6}", c.compress_seconds),
                format!("{:.2}", c.compress_mb_s),
                format!("{:.6}", c.decode_seconds),
                format!("{:.2}", c.decode_mb_s),
                c.reads.to_string(),
                format!("{:.2}", c.read_p50_us),
                format!("{:.2}", c.read_p99_us),
                format!("{:.4}", c.cache_hit_ratio),
                c.read_cache_bytes.to_string(),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }

    /// The lines above the table: input, sample, threads.
    pub fn heading(&self) -> String {
        let sample = &self.sample;
        let mut text = format!(
            "input {}: {} ({} bytes, {})\n",
            self.input,
            fmt_bytes(self.input_bytes),
            group(self.input_bytes),
            self.input_kind
        );
        if sample.runs == 1 && sample.bytes == self.input_bytes {
            text.push_str("compressed: the whole input\n");
        } else {
            let _ = writeln!(
                text,
                "compressed: a sample of {} ({} bytes): {}",
                fmt_bytes(sample.bytes),
                group(sample.bytes),
                sample.method
            );
        }
        let _ = writeln!(
            text,
            "compress: {} thread{}; decode: {} thread, every block; reads: {} random {} B reads, \
             {}; medians of {} round{}",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.decode_threads,
            self.cells.iter().map(|c| c.reads).max().unwrap_or(0),
            self.read_size,
            if self.cache_bytes >= mkmodule_image::DEFAULT_CACHE_BYTES {
                format!("default cache ({})", fmt_bytes(self.cache_bytes))
            } else {
                format!(
                    "the default cache ({}) scaled to the sample: {}",
                    fmt_bytes(mkmodule_image::DEFAULT_CACHE_BYTES),
                    fmt_bytes(self.cache_bytes)
                )
            },
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
        );
        text
    }

    /// The aligned table, one row per cell, the recommended one marked with `*`.
    pub fn table(&self) -> String {
        let sampled = self.sample.bytes != self.input_bytes;
        let mut headers = vec![
            ("", false),
            ("codec", false),
            ("block", true),
            ("format", false),
            ("readers", false),
            ("image", true),
            ("ratio", true),
        ];
        if sampled {
            headers.push(("whole input", true));
        }
        headers.extend([
            ("compress MB/s", true),
            ("decode MB/s", true),
            ("4K read p50", true),
            ("p99", true),
        ]);
        let pick = self.recommended();
        let rows: Vec<Vec<String>> = self
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut row = vec![
                    if Some(i) == pick { "*" } else { "" }.to_string(),
                    c.codec.clone(),
                    size_label(c.block_size),
                    c.dialect.clone(),
                    readers_label(c.reader_set()),
                    fmt_bytes(c.image_bytes),
                    format!("{:.3}", c.ratio),
                ];
                if sampled {
                    row.push(format!("~{}", fmt_bytes(c.estimated_full_bytes)));
                }
                row.extend([
                    format!("{:.0}", c.compress_mb_s),
                    format!("{:.0}", c.decode_mb_s),
                    fmt_us(c.read_p50_us),
                    fmt_us(c.read_p99_us),
                ]);
                row
            })
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let mut text = String::new();
            for (k, ((cell, (_, right)), w)) in cells.iter().zip(&headers).zip(&widths).enumerate()
            {
                if k > 0 {
                    text.push_str(if k == 1 { " " } else { "  " });
                }
                let pad = w - cell.chars().count();
                if *right {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
            }
            text.trim_end().to_string() + "\n"
        };
        let mut out = line(headers.iter().map(|(h, _)| h.to_string()).collect());
        for row in rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// The readers of a dialect in a few words: `all 5 readers`, or their names.
pub fn readers_label(readers: &[Reader]) -> String {
    if Audience::Any.satisfied_by(readers) {
        "all".to_string()
    } else {
        readers
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// A byte count for people: `227.3 MiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `829423616` -> `829,423,616`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (k, ch) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Microseconds for people: `85 us`, `1.24 ms`, `15.3 ms`.
pub fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.1} us")
    } else if us < 1000.0 {
        format!("{us:.0} us")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// Parses a duration: `2ms`, `500us` (or `µs`), `1.5s`, `250ns`; a bare number is
/// milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 2ms, 500us or 1s"))?;
    let scale = match unit.trim() {
        "" | "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "s" => 1.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ns, us, ms or s"
            ))
        }
    };
    let secs = value * scale;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_format::Dialect;

    /// A cell with made-up measurements.
    fn fake(
        codec: &str,
        bs: u32,
        dialect: Dialect,
        bytes: u64,
        p99: f64,
        decode: f64,
    ) -> CellResult {
        CellResult {
            codec: codec.to_string(),
            block_size: bs,
            dialect: dialect.name().to_string(),
            readers: dialect
                .spec()
                .readers
                .iter()
                .map(|r| r.name().to_string())
                .collect(),
            image: None,
            input_bytes: 1000,
            image_bytes: bytes,
            ratio: bytes as f64 / 1000.0,
            estimated_full_bytes: bytes * 10,
            zero_blocks: 0,
            blocks: 10,
            compress_seconds: 1.0,
            compress_mb_s: 100.0,
            decode_seconds: 1.0,
            decode_mb_s: decode,
            reads: 100,
            read_p50_us: p99 / 2.0,
            read_p99_us: p99,
            cache_hit_ratio: 0.1,
            read_cache_bytes: 1 << 20,
            dialect_kind: Some(dialect),
        }
    }

    fn cells() -> Vec<CellResult> {
        vec![
            fake("zlib:9", 65536, Dialect::LinuxV2, 300, 400.0, 900.0), // 0
            fake("zlib:9", 1 << 20, Dialect::LinuxV2, 280, 5000.0, 950.0), // 1
            fake("zstd:19", 65536, Dialect::UzipZstd, 250, 300.0, 1500.0), // 2
            fake("zstd:19", 1 << 20, Dialect::UzipZstd, 200, 3000.0, 1600.0), // 3
            fake("xz:6", 131072, Dialect::LinuxV4, 220, 1900.0, 80.0),  // 4
            fake("xz:6", 1 << 20, Dialect::LinuxV4, 190, 15000.0, 90.0), // 5
            fake("lz4", 65536, Dialect::LinuxV4, 400, 100.0, 3000.0),   // 6
            fake("zlib:12", 65536, Dialect::LinuxV2, 290, 1999.0, 850.0), // 7
        ]
    }

    #[test]
    fn picks_the_smallest_image_under_the_latency_bound() {
        let c = cells();
        let ms2 = Duration::from_millis(2);
        let r = recommend(&c, ms2, Audience::Serve);
        assert_eq!(r.cell, Some(4), "{}", r.text);
        assert!(r.met);
        assert!(
            r.text.starts_with("recommended: -B 128K -c xz:6 (v4)"),
            "{}",
            r.text
        );
        assert_eq!(r.create_options.as_deref(), Some("-B 128K -c xz:6"));
        // Tighter bound: xz at 128K (1.9 ms) is out, zstd 64K (0.3 ms) is the smallest left.
        let r = recommend(&c, Duration::from_micros(1000), Audience::Serve);
        assert_eq!(r.cell, Some(2));
        // Every reader: zlib only; zlib:12 64K (p99 1.999 ms) beats zlib:9 64K.
        let r = recommend(&c, ms2, Audience::Any);
        assert_eq!(r.cell, Some(7));
        // Linux: v2 and v4 images; xz 128K is the smallest under 2 ms.
        assert_eq!(recommend(&c, ms2, Audience::Cloop).cell, Some(4));
        // FreeBSD: v2 (geom_uzip reads V2.0) and uzip-zstd; zstd 64K is the smallest.
        assert_eq!(recommend(&c, ms2, Audience::GeomUzip).cell, Some(2));
        // A loose bound: the smallest of all.
        assert_eq!(
            recommend(&c, Duration::from_secs(1), Audience::Serve).cell,
            Some(5)
        );
    }

    /// Cells where zstd is both the smallest and the fastest: the pick only an audience
    /// constraint keeps away from.
    fn zstd_wins_everything() -> Vec<CellResult> {
        vec![
            fake("zstd:19", 65536, Dialect::UzipZstd, 100, 100.0, 2000.0), // 0
            fake("zlib:9", 65536, Dialect::LinuxV2, 300, 400.0, 900.0),    // 1
            fake("xz:6", 65536, Dialect::LinuxV4, 200, 900.0, 80.0),       // 2
        ]
    }

    #[test]
    fn a_zstd_cell_is_never_recommended_for_cloop() {
        let c = zstd_wins_everything();
        for bound in [
            Duration::from_micros(10),
            Duration::from_millis(2),
            Duration::from_secs(10),
        ] {
            for audience in [
                Audience::Cloop,
                Audience::Qemu,
                Audience::Vnd,
                Audience::Any,
            ] {
                let r = recommend(&c, bound, audience);
                let pick = r.cell.expect("zlib is read by every reader");
                assert_ne!(
                    c[pick].codec, "zstd:19",
                    "{audience:?} {bound:?}: {}",
                    r.text
                );
                assert!(audience.satisfied_by(c[pick].reader_set()));
            }
        }
        // cloop.ko reads V4 too: xz is the smallest it opens.
        let r = recommend(&c, Duration::from_millis(2), Audience::Cloop);
        assert_eq!(r.cell, Some(2));
        assert_eq!(r.audience, "cloop");
        assert_eq!(r.readers, vec!["Linux cloop.ko"]);
        assert!(
            r.text
                .starts_with("recommended: -B 64K -c xz:6 (v4), readable by Linux cloop.ko"),
            "{}",
            r.text
        );
        // Every reader: only the V2 zlib image, and the line names them all.
        let r = recommend(&c, Duration::from_millis(2), Audience::Any);
        assert_eq!(r.cell, Some(1));
        for reader in Reader::ALL {
            assert!(r.text.contains(reader.name()), "{}", r.text);
            assert!(r.readers.contains(&reader.name().to_string()));
        }
        let only_zstd = vec![c[0].clone()];
        let r = recommend(&only_zstd, Duration::from_millis(2), Audience::Cloop);
        assert_eq!(r.cell, None);
        assert!(r.readers.is_empty());
    }

    #[test]
    fn serve_and_geom_uzip_may_pick_zstd() {
        let c = zstd_wins_everything();
        for audience in [Audience::Serve, Audience::GeomUzip] {
            let r = recommend(&c, Duration::from_millis(2), audience);
            assert_eq!(r.cell, Some(0), "{audience:?}: {}", r.text);
            assert_eq!(r.readers, vec!["FreeBSD geom_uzip"]);
            assert!(
                r.text
                    .contains("readable by FreeBSD geom_uzip and mkmodule serve/mount"),
                "{}",
                r.text
            );
        }
        let r = recommend(&c, Duration::from_millis(2), Audience::Serve);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["for"], "serve");
        assert_eq!(json["readers"][0], "FreeBSD geom_uzip");
    }

    #[test]
    fn the_default_audience_is_every_reader_and_says_how_to_change_it() {
        assert_eq!(Audience::default(), Audience::Any);
        let all = Reader::ALL.to_vec();
        assert!(Audience::Any.satisfied_by(&all));
        assert!(!Audience::Any.satisfied_by(&[Reader::LinuxCloop]));
        assert!(Audience::Serve.satisfied_by(&[]));
        let statement = Audience::Any.statement();
        assert!(
            statement.starts_with("recommending for every reader ("),
            "{statement}"
        );
        for reader in Reader::ALL {
            assert!(statement.contains(reader.name()), "{statement}");
        }
        assert!(statement.contains("--for serve"), "{statement}");
        assert!(Audience::Cloop.statement().contains("--for any"));
        assert!(Audience::Serve.statement().contains("--for any"));
        for audience in Audience::ALL {
            assert_eq!(audience.name().parse::<Audience>(), Ok(audience));
        }
        assert_eq!("geom-uzip".parse::<Audience>(), Ok(Audience::GeomUzip));
        assert_eq!(for_values(), "cloop, qemu, geom_uzip, vnd, serve or any");
    }

    #[test]
    fn old_readers_values_keep_their_meaning() {
        let old = |v: &str| Audience::from_readers_value(v).unwrap();
        // `any` asked for nothing; `all` asked for every reader.
        assert_eq!(old("any"), Audience::Serve);
        assert_eq!(old("all"), Audience::Any);
        assert_eq!(old("linux"), Audience::Cloop);
        assert_eq!(old("freebsd"), Audience::GeomUzip);
        assert_eq!(old("netbsd"), Audience::Vnd);
        assert_eq!(old("qemu"), Audience::Qemu);
        assert!(Audience::from_readers_value("cloop").is_err());
    }

    #[test]
    fn equal_sizes_go_to_the_faster_decoder() {
        let c = vec![
            fake("zlib:9", 65536, Dialect::LinuxV2, 300, 400.0, 900.0),
            fake("zlib:12", 65536, Dialect::LinuxV2, 300, 400.0, 950.0),
        ];
        assert_eq!(
            recommend(&c, Duration::from_millis(2), Audience::Serve).cell,
            Some(1)
        );
    }

    #[test]
    fn nothing_fast_enough_gives_the_fastest_and_says_so() {
        let c = cells();
        let r = recommend(&c, Duration::from_micros(50), Audience::Serve);
        assert!(!r.met);
        assert_eq!(r.cell, Some(6));
        assert!(r.text.starts_with("no combination"), "{}", r.text);
        let only_zstd = vec![c[2].clone(), c[3].clone()];
        let r = recommend(&only_zstd, Duration::from_millis(2), Audience::Cloop);
        assert_eq!(r.cell, None);
        assert!(r.text.contains("Linux cloop.ko"), "{}", r.text);
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_cell() {
        let mut report = Report {
            tool: "t".into(),
            input: "in, with comma".into(),
            input_kind: "raw".into(),
            input_bytes: 10_000,
            sample: SampleInfo::from_plan(&SamplePlan::whole(1000)),
            threads: 2,
            decode_threads: 1,
            rounds: 1,
            read_size: 4096,
            cache_bytes: 32 << 20,
            cells: cells(),
            recommendation: None,
        };
        report.cells[0].image = Some("/tmp/a,b.cloop".into());
        let csv = report.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 9);
        assert!(lines[0].starts_with("codec,block_size,dialect,readers"));
        assert!(lines[1].contains("\"/tmp/a,b.cloop\""));
        report.recommend(Duration::from_millis(2), Audience::Serve);
        let table = report.table();
        assert_eq!(table.lines().count(), 9);
        let marked: Vec<&str> = table.lines().filter(|l| l.starts_with('*')).collect();
        assert_eq!(marked.len(), 1);
        assert!(marked[0].contains("xz:6"));
        // Columns line up: every row as long as the header once trailing spaces are gone
        // (right-aligned last column).
        let width = table.lines().next().unwrap().chars().count();
        assert!(table.lines().all(|l| l.chars().count() == width), "{table}");
    }

    #[test]
    fn durations_and_numbers_for_people() {
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_millis(3)));
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("2 parsecs").is_err());
        assert_eq!(group(829_423_616), "829,423,616");
        assert_eq!(group(12), "12");
        assert_eq!(fmt_us(85.2), "85 us");
        assert_eq!(fmt_us(0.34), "0.3 us");
        assert_eq!(fmt_us(1240.0), "1.24 ms");
        assert_eq!(fmt_bytes(1 << 20), "1.0 MiB");
        assert_eq!("any".parse::<Audience>(), Ok(Audience::Any));
        assert!("windows".parse::<Audience>().is_err());
    }
}
