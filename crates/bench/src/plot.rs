//! An SVG scatter plot of a sweep: image size ratio against full-decode speed, one labelled
//! point per cell, readable without the table.
//!
//! * x: full-decode speed in MB/s of input on one thread, log scale (right is faster);
//! * y: image size / input size (down is smaller);
//! * colour: the codec; marker size: the block size; a filled marker meets the random-read
//!   latency bound, a hollow one does not; a ring marks the recommended cell;
//! * every point carries its label (`zstd:19 256K`), placed so labels do not overlap where
//!   that is possible, and a tooltip with all its numbers.

use std::fmt::Write as _;

use crate::measure::CellResult;
use crate::report::{fmt_bytes, fmt_us, Report};
use crate::size_label;

const WIDTH: f64 = 1120.0;
const HEIGHT: f64 = 740.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 860.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 650.0;
const FONT: f64 = 11.0;
/// Approximate advance of one character of an 11 px sans-serif font.
const CHAR_W: f64 = 6.1;

/// Colour of a codec family.
fn colour(codec: &str) -> &'static str {
    match codec.split(':').next().unwrap_or_default() {
        "zlib" => "#1f77b4",
        "zstd" => "#e6780b",
        "xz" => "#2ca02c",
        "lz4" => "#d62728",
        _ => "#7f7f7f",
    }
}

/// Marker radius for a block size: 3 px at 16 KiB, growing with its logarithm.
fn radius(block_size: u32) -> f64 {
    let steps = (f64::from(block_size) / 16384.0).log2();
    (3.5 + 1.3 * steps).clamp(2.5, 11.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// 1, 2, 5 x 10^k values from below `lo` to above `hi`.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut exp = lo.log10().floor() as i32 - 1;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(exp);
            if v >= lo * 0.999 && v <= hi * 1.001 {
                ticks.push(v);
            }
        }
        if 10f64.powi(exp) > hi {
            break;
        }
        exp += 1;
    }
    ticks
}

/// The 1-2-5 value just below `v` (or equal).
fn nice_below(v: f64) -> f64 {
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    let m = v / base;
    let pick = if m >= 5.0 {
        5.0
    } else if m >= 2.0 {
        2.0
    } else {
        1.0
    };
    pick * base
}

/// The 1-2-5 value just above `v` (or equal).
fn nice_above(v: f64) -> f64 {
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    let m = v / base;
    let pick = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    pick * base
}

/// A step of 1, 2 or 5 x 10^k giving about `count` intervals over `span`.
fn linear_step(span: f64, count: f64) -> f64 {
    let raw = (span / count).max(1e-9);
    nice_above(raw)
}

/// An axis-aligned box.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn overlap(&self, o: &Rect) -> f64 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0.0);
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0.0);
        w * h
    }

    fn outside(&self) -> f64 {
        let clip = Rect {
            x0: LEFT,
            y0: TOP,
            x1: RIGHT,
            y1: BOTTOM,
        };
        (self.x1 - self.x0) * (self.y1 - self.y0) - self.overlap(&clip)
    }
}

/// The SVG document for `report` (its recommendation, if any, is marked).
pub fn svg(report: &Report) -> String {
    let cells = &report.cells;
    let bound_us = report
        .recommendation
        .as_ref()
        .map(|r| r.max_latency_us)
        .unwrap_or(f64::INFINITY);
    let pick = report.recommended();

    // Scales.
    let speeds: Vec<f64> = cells.iter().map(|c| c.decode_mb_s.max(0.01)).collect();
    let ratios: Vec<f64> = cells.iter().map(|c| c.ratio).collect();
    let (smin, smax) = min_max(&speeds).unwrap_or((1.0, 10.0));
    let (xlo, xhi) = if smax / smin < 1.5 {
        (nice_below(smin / 1.5), nice_above(smax * 1.5))
    } else {
        (nice_below(smin / 1.15), nice_above(smax * 1.15))
    };
    let (rmin, rmax) = min_max(&ratios).unwrap_or((0.0, 1.0));
    let pad = ((rmax - rmin) * 0.08).max(0.005);
    let step = linear_step(rmax - rmin + 2.0 * pad, 6.0);
    let ylo = ((rmin - pad) / step).floor() * step;
    let yhi = ((rmax + pad) / step).ceil() * step;
    let ylo = ylo.max(0.0);
    let x_of =
        |v: f64| LEFT + (v.log10() - xlo.log10()) / (xhi.log10() - xlo.log10()) * (RIGHT - LEFT);
    let y_of = |v: f64| BOTTOM - (v - ylo) / (yhi - ylo).max(1e-12) * (BOTTOM - TOP);

    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="{FONT}">"#
    );
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );

    // Title and subtitle.
    let name = std::path::Path::new(&report.input)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| report.input.clone());
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="28" font-size="17" font-weight="bold">{}</text>"#,
        escape(&format!(
            "mkmodule bench: {name} ({}) — image size vs decode speed",
            fmt_bytes(report.input_bytes)
        ))
    );
    let sample = if report.sample.bytes == report.input_bytes {
        "whole input compressed".to_string()
    } else {
        format!(
            "sample of {}: {}",
            fmt_bytes(report.sample.bytes),
            report.sample.method
        )
    };
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="48" fill="#444">{}</text>"##,
        escape(&format!(
            "{sample}; {} cells; down is smaller, right is faster to decode",
            cells.len()
        ))
    );

    // Grid, ticks and axes.
    let _ = writeln!(
        out,
        r##"<g class="grid" stroke="#e2e2e2" stroke-width="1">"##
    );
    let xticks = log_ticks(xlo, xhi);
    for &t in &xticks {
        let x = x_of(t);
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}"/>"#
        );
    }
    let mut yticks = Vec::new();
    let mut v = ylo;
    while v <= yhi + step * 0.001 {
        yticks.push(v);
        v += step;
    }
    for &t in &yticks {
        let y = y_of(t);
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}"/>"#
        );
    }
    let _ = writeln!(out, "</g>");
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        out,
        r##"<g class="x-ticks" text-anchor="middle" fill="#222">"##
    );
    for &t in &xticks {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            x_of(t),
            BOTTOM + 16.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(out, "</g>");
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let _ = writeln!(
        out,
        r##"<g class="y-ticks" text-anchor="end" fill="#222">"##
    );
    for &t in &yticks {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}">{t:.decimals$}</text>"#,
            LEFT - 6.0,
            y_of(t) + 4.0
        );
    }
    let _ = writeln!(out, "</g>");
    let _ = writeln!(
        out,
        r#"<text class="x-title" x="{:.1}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 40.0,
        escape(&format!(
            "full decode speed, MB/s of input, {} thread (log scale)",
            report.decode_threads
        ))
    );
    let ymid = (TOP + BOTTOM) / 2.0;
    let _ = writeln!(
        out,
        r#"<text class="y-title" x="24" y="{ymid:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 24 {ymid:.1})">image size / input size (ratio)</text>"#
    );

    // Points, then labels placed around them.
    let centres: Vec<(f64, f64, f64)> = cells
        .iter()
        .map(|c| {
            (
                x_of(c.decode_mb_s.max(0.01)),
                y_of(c.ratio),
                radius(c.block_size),
            )
        })
        .collect();
    let mut taken: Vec<Rect> = centres
        .iter()
        .map(|&(x, y, r)| Rect {
            x0: x - r,
            y0: y - r,
            x1: x + r,
            y1: y + r,
        })
        .collect();
    let _ = writeln!(out, r#"<g class="cells">"#);
    for (i, (c, &(x, y, r))) in cells.iter().zip(&centres).enumerate() {
        let fill = colour(&c.codec);
        let fast = c.reads > 0 && c.read_p99_us <= bound_us;
        let label = format!("{} {}", c.codec, size_label(c.block_size));
        let _ = writeln!(
            out,
            r#"<g class="cell" data-codec="{}" data-block-size="{}">"#,
            escape(&c.codec),
            c.block_size
        );
        let _ = writeln!(out, "<title>{}</title>", escape(&tooltip(c)));
        if Some(i) == pick {
            let _ = writeln!(
                out,
                r##"<circle class="recommended" cx="{x:.1}" cy="{y:.1}" r="{:.1}" fill="none" stroke="#000" stroke-width="2"/>"##,
                r + 5.0
            );
        }
        let _ = writeln!(
            out,
            r#"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="{}" stroke="{fill}" stroke-width="2" fill-opacity="0.85"/>"#,
            if fast { fill } else { "white" }
        );
        let ring = if Some(i) == pick { 5.0 } else { 0.0 };
        let place = place_label(&label, x, y, r + ring, &taken);
        taken.push(place.rect);
        if place.far {
            let (ex, ey) = nearest(&place.rect, x, y);
            let _ = writeln!(
                out,
                r##"<line class="leader" x1="{x:.1}" y1="{y:.1}" x2="{ex:.1}" y2="{ey:.1}" stroke="#999" stroke-width="0.8"/>"##
            );
        }
        let _ = writeln!(
            out,
            r##"<text class="label" x="{:.1}" y="{:.1}" text-anchor="{}" fill="#111" stroke="white" stroke-width="3" stroke-linejoin="round" paint-order="stroke">{}</text>"##,
            place.x,
            place.y,
            place.anchor,
            escape(&label)
        );
        let _ = writeln!(out, "</g>");
    }
    let _ = writeln!(out, "</g>");

    legend(&mut out, cells, bound_us, pick.is_some());

    if let Some(rec) = &report.recommendation {
        let lines = wrap(&rec.text, 140);
        for (k, line) in lines.iter().take(2).enumerate() {
            let _ = writeln!(
                out,
                r##"<text class="recommendation" x="{LEFT}" y="{}" fill="#222">{}</text>"##,
                HEIGHT - 32.0 + 15.0 * k as f64,
                escape(&if k == 1 && lines.len() > 2 {
                    shorten(&format!("{line} {}", lines[2..].join(" ")), 140)
                } else {
                    line.clone()
                })
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
}

fn fmt_tick(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn tooltip(c: &CellResult) -> String {
    format!(
        "{} {} ({}): image {} (ratio {:.3}), compress {:.0} MB/s, decode {:.0} MB/s, 4 KiB \
         random read p50 {} p99 {}; readers: {}",
        c.codec,
        size_label(c.block_size),
        c.dialect,
        fmt_bytes(c.image_bytes),
        c.ratio,
        c.compress_mb_s,
        c.decode_mb_s,
        fmt_us(c.read_p50_us),
        fmt_us(c.read_p99_us),
        c.readers.join(", ")
    )
}

/// Where a label goes: text position and anchor, its box, and whether it sits away from its
/// point (then a leader line joins them).
struct Placement {
    x: f64,
    y: f64,
    anchor: &'static str,
    rect: Rect,
    far: bool,
}

/// Chooses where `label` goes around the point at (`x`, `y`) with radius `r`: of eight
/// directions on rings further and further out, the position with the least overlap with what
/// is already drawn (labels and points), staying in the plot, each ring out costing a little.
fn place_label(label: &str, x: f64, y: f64, r: f64, taken: &[Rect]) -> Placement {
    let w = label.chars().count() as f64 * CHAR_W;
    let h = FONT + 1.0;
    let rect_of = |tx: f64, ty: f64, anchor: &str| {
        let x0 = match anchor {
            "start" => tx,
            "end" => tx - w,
            _ => tx - w / 2.0,
        };
        Rect {
            x0,
            y0: ty - h + 2.0,
            x1: x0 + w,
            y1: ty + 2.0,
        }
    };
    let mut best: Option<(f64, Placement)> = None;
    for ring in 0..5u8 {
        let cost = 40.0 * f64::from(ring);
        let gap = r + 3.0 + 14.0 * f64::from(ring);
        // (text x, baseline y, anchor) for: right, left, above, below, and the diagonals.
        let candidates = [
            (x + gap, y + 4.0, "start"),
            (x - gap, y + 4.0, "end"),
            (x, y - gap - 2.0, "middle"),
            (x, y + gap + h - 2.0, "middle"),
            (x + gap * 0.8, y - gap * 0.8, "start"),
            (x + gap * 0.8, y + gap * 0.8 + h - 3.0, "start"),
            (x - gap * 0.8, y - gap * 0.8, "end"),
            (x - gap * 0.8, y + gap * 0.8 + h - 3.0, "end"),
        ];
        for (tx, ty, anchor) in candidates {
            let rect = rect_of(tx, ty, anchor);
            let score =
                taken.iter().map(|t| t.overlap(&rect)).sum::<f64>() + 10.0 * rect.outside() + cost;
            if best.as_ref().is_none_or(|(b, _)| score < *b - 1e-9) {
                best = Some((
                    score,
                    Placement {
                        x: tx,
                        y: ty,
                        anchor,
                        rect,
                        far: ring > 0,
                    },
                ));
            }
        }
        // A free spot on this ring: no later ring can beat it.
        if best.as_ref().is_some_and(|(b, _)| *b <= cost) {
            break;
        }
    }
    best.map(|(_, p)| p).expect("at least one candidate")
}

/// The point of `rect` nearest to (`x`, `y`).
fn nearest(rect: &Rect, x: f64, y: f64) -> (f64, f64) {
    (x.clamp(rect.x0, rect.x1), y.clamp(rect.y0, rect.y1))
}

/// The legend on the right: codecs (colours), block sizes (marker sizes), what filled,
/// hollow and ringed markers mean.
fn legend(out: &mut String, cells: &[CellResult], bound_us: f64, has_pick: bool) {
    let x = RIGHT + 24.0;
    let mut y = TOP + 4.0;
    let _ = writeln!(out, r#"<g class="legend">"#);
    let _ = writeln!(
        out,
        r#"<text x="{x}" y="{y}" font-weight="bold" font-size="12">codec</text>"#
    );
    y += 8.0;
    let mut families: Vec<&str> = Vec::new();
    for c in cells {
        let family = c.codec.split(':').next().unwrap_or_default();
        if !families.contains(&family) {
            families.push(family);
        }
    }
    for family in &families {
        y += 18.0;
        let levels: Vec<String> = cells
            .iter()
            .filter(|c| c.codec.split(':').next() == Some(family))
            .map(|c| c.codec.clone())
            .fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="6" fill="{}"/>"#,
            x + 6.0,
            y - 4.0,
            colour(family)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{y:.1}">{}</text>"#,
            x + 18.0,
            escape(&shorten(&levels.join(", "), 32))
        );
    }
    y += 34.0;
    let _ = writeln!(
        out,
        r#"<text x="{x}" y="{y}" font-weight="bold" font-size="12">block size</text>"#
    );
    y += 8.0;
    let mut sizes: Vec<u32> = cells.iter().map(|c| c.block_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for bs in sizes {
        let r = radius(bs);
        y += (2.0 * r + 6.0).max(18.0);
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="{r:.1}" fill="#999"/>"##,
            x + 11.0,
            y - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{y:.1}">{}</text>"#,
            x + 28.0,
            size_label(bs)
        );
    }
    if bound_us.is_finite() {
        y += 36.0;
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{y}" font-weight="bold" font-size="12">random 4 KiB read p99</text>"#
        );
        y += 24.0;
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="6" fill="#555" stroke="#555" stroke-width="2"/>"##,
            x + 6.0,
            y - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{y:.1}">{}</text>"#,
            x + 18.0,
            escape(&format!("filled: at most {}", fmt_us(bound_us)))
        );
        y += 20.0;
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="6" fill="white" stroke="#555" stroke-width="2"/>"##,
            x + 6.0,
            y - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{y:.1}">{}</text>"#,
            x + 18.0,
            escape(&format!("hollow: over {}", fmt_us(bound_us)))
        );
    }
    if has_pick {
        y += 24.0;
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="9" fill="none" stroke="#000" stroke-width="2"/>"##,
            x + 6.0,
            y - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{y:.1}">recommended</text>"#,
            x + 22.0
        );
    }
    let _ = writeln!(out, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_1_2_5() {
        assert_eq!(
            log_ticks(50.0, 2000.0),
            vec![50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(nice_below(73.0), 50.0);
        assert_eq!(nice_above(73.0), 100.0);
        assert_eq!(nice_above(0.013), 0.02);
        assert_eq!(linear_step(0.3, 6.0), 0.05);
    }

    #[test]
    fn labels_avoid_each_other() {
        let first = place_label("zlib:9 64K", 300.0, 300.0, 5.0, &[]);
        assert!(!first.far);
        let second = place_label("zlib:9 128K", 302.0, 301.0, 5.0, &[first.rect]);
        assert_eq!(second.rect.overlap(&first.rect), 0.0);
    }
}
