//! Where a storm row's origin bytes went: each range request of the image in nginx's access log
//! is laid over the image's block index, and every byte is put in one class: a block the trace
//! reads, fetched for the first time or again; a block the trace never reads (read ahead, or
//! merged into a range); or no block at all (header, index, trailer, the opening probe).

use std::fmt::Write as _;

/// Bytes and requests of one row's image requests, by class.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Breakdown {
    /// Range requests of the image.
    pub requests: u64,
    /// Bytes of blocks the trace reads, fetched for the first time.
    pub needed: u64,
    /// Bytes of blocks the trace reads, fetched once more.
    pub again: u64,
    /// Requests that fetched a block the trace reads once more.
    pub again_requests: u64,
    /// Bytes of blocks the trace never reads.
    pub unread: u64,
    /// Requests that fetched a block the trace never reads.
    pub unread_requests: u64,
    /// Bytes outside every block: header, index, trailer.
    pub outside: u64,
    /// Requests without a single-range `Range` header (their bytes are in none of the above).
    pub unranged: u64,
}

/// Lays `requests` (first and last byte; `None` when the request had no single range, with its
/// body bytes) over the stored blocks `blocks` (`(offset, len)`, any order, no overlaps) of which
/// `read` (sorted) are the ones the trace reads.
pub fn breakdown(
    blocks: &[(u64, u32)],
    read: &[(u64, u32)],
    requests: &[(Option<(u64, u64)>, u64)],
) -> Breakdown {
    let mut sorted: Vec<(u64, u32)> = blocks.iter().copied().filter(|b| b.1 > 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut fetched = vec![false; sorted.len()];
    let mut out = Breakdown::default();
    for &(range, body) in requests {
        out.requests += 1;
        let Some((first, last)) = range else {
            out.unranged += body;
            continue;
        };
        let end = last + 1;
        let mut covered = 0u64;
        let (mut again, mut unread) = (false, false);
        // The first block ending after `first`.
        let mut k = sorted.partition_point(|&(offset, len)| offset + u64::from(len) <= first);
        while k < sorted.len() && sorted[k].0 < end {
            let (offset, len) = sorted[k];
            let bytes = end.min(offset + u64::from(len)) - first.max(offset);
            covered += bytes;
            if read.binary_search(&(offset, len)).is_ok() {
                if fetched[k] {
                    out.again += bytes;
                    again = true;
                } else {
                    out.needed += bytes;
                }
                fetched[k] = true;
            } else {
                out.unread += bytes;
                unread = true;
            }
            k += 1;
        }
        out.outside += (end - first) - covered;
        out.again_requests += u64::from(again);
        out.unread_requests += u64::from(unread);
    }
    out
}

/// The breakdown of each labelled row as a markdown table.
pub fn render(rows: &[(&str, &Breakdown)], compressed: u64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| server | requests | blocks read, first fetch MB | fetched again MB (requests) | blocks never read MB (requests) | header, index, trailer MB | other MB |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let mb = |b: u64| b as f64 / 1e6;
    for (label, b) in rows {
        let _ = writeln!(
            md,
            "| {label} | {} | {:.2} ({:.3}) | {:.2} ({}) | {:.2} ({}) | {:.3} | {:.2} |",
            b.requests,
            mb(b.needed),
            b.needed as f64 / compressed.max(1) as f64,
            mb(b.again),
            b.again_requests,
            mb(b.unread),
            b.unread_requests,
            mb(b.outside),
            mb(b.unranged),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_lands_in_one_class() {
        // Header 0..100, blocks at 100 (50), 150 (50), 200 (50), 250 (50); the trace reads the
        // first and the third.
        let blocks = [(150, 50), (100, 50), (200, 50), (250, 50)];
        let read = [(100, 50), (200, 50)];
        let requests = [
            (Some((0, 99)), 100),    // the header
            (Some((100, 149)), 50),  // a block read
            (Some((100, 249)), 150), // again, with one never read between
            (Some((250, 299)), 50),  // read ahead
            (None, 7),               // no range
        ];
        let b = breakdown(&blocks, &read, &requests);
        assert_eq!(
            b,
            Breakdown {
                requests: 5,
                needed: 100,
                again: 50,
                again_requests: 1,
                unread: 100,
                unread_requests: 2,
                outside: 100,
                unranged: 7,
            }
        );
        let md = render(&[("cold", &b)], 100);
        assert!(
            md.contains("| cold | 5 | 0.00 (1.000) | 0.00 (1) | 0.00 (2) | 0.000 | 0.00 |"),
            "{md}"
        );
    }

    #[test]
    fn a_range_starting_inside_a_block_counts_only_its_part() {
        let b = breakdown(
            &[(0, 100), (100, 100)],
            &[(100, 100)],
            &[(Some((50, 149)), 100)],
        );
        assert_eq!((b.unread, b.needed, b.outside), (50, 50, 0));
    }
}
