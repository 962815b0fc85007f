//! The `overlay_open` harness: a valid overlay file (header, two checkpoints, log records),
//! damaged as the input says, with its checksums optionally recomputed so that the damage
//! reaches the parsers behind them, then opened and used.
//!
//! Input: byte 0 is a set of flags, then 4-byte edits `[op, offset lo, offset hi, value]`.
//!
//! * flags 1: recompute the header CRC32 after the edits; 2: recompute both checkpoints'
//!   CRC32; 4: recompute the CRC32 of every log record that still parses as one; 8: open for
//!   writing (then write, trim and flush); 16: cut the file at the offset in the first edit.
//! * op % 3 is the area: 0 the 4 KiB header, 1 the first 8 KiB of metadata region 0 (its
//!   checkpoint and the start of its log), 2 the same of region 1. (op / 3) % 4 is what is done
//!   at the offset: 0 and 1 xor the byte with the value, 2 set it, 3 fill 8 bytes with it.
//!
//! The file format is the one `crates/overlay/src/journal.rs` documents; this harness knows
//! only where the checksums sit, so that a change there shows up as lost coverage, not as a
//! false crash.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mkmodule_blockdev::{BlockDevice, MemoryDevice};
use mkmodule_overlay::{Overlay, OverlayOptions};

/// Base size: 16 chunks of 4 KiB.
const BASE_LEN: usize = 64 << 10;
const CHUNK: u32 = 4096;
const HEADER_LEN: usize = 4096;
const CKPT_HEAD: usize = 32;
const RECORD_HEAD: usize = 24;
const RUN_LEN: usize = 16;
const MAX_RUNS: usize = 4096;
/// Bytes of each metadata region the edits reach.
const REGION_WINDOW: usize = 8192;
const PAGE: usize = 4096;

/// A valid overlay file, kept as the parts the edits reach (header and the start of each
/// metadata region) and the other non-zero pages, so that an input never copies or scans the
/// whole 2 MiB file (the harness's own byte loops are instrumented, hence slow).
struct Template {
    base: Arc<dyn BlockDevice>,
    /// Length of the whole file.
    file_len: usize,
    /// Header, region 0 and region 1 windows: file offset and bytes.
    windows: [(usize, Vec<u8>); 3],
    /// Non-zero pages outside the windows: file offset and bytes.
    pages: Vec<(usize, Vec<u8>)>,
    /// Offset of the log inside a region.
    log_offset: usize,
    path: PathBuf,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Makes the template once per process: an overlay with data, zero and base chunks in both
/// checkpoints and in several log records.
fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let content: Vec<u8> = (0..BASE_LEN).map(|i| (i * 13 % 251) as u8).collect();
        let base: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(content));
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let made = dir.join(format!(
            "mkmodule-fuzz-overlay-{}.template",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&made);
        let options = OverlayOptions::default()
            .with_chunk_size(CHUNK)
            .with_label("fuzz base");
        {
            let overlay = Overlay::create(&made, Arc::clone(&base), &options).expect("create");
            overlay.write_at(&[1; 5000], 0).expect("write");
            overlay.flush().expect("flush");
            overlay.trim(16384, 8192).expect("trim");
            overlay.flush().expect("flush");
            overlay.write_at(&[2; 100], 40000).expect("write");
            overlay.write_zeroes(49152, 4096, true).expect("zeroes");
            overlay.flush().expect("flush");
        }
        // Reopen once: the open starts a new checkpoint in the other region, so both hold one.
        {
            let overlay = Overlay::open(&made, Arc::clone(&base), &options).expect("reopen");
            overlay.write_at(&[3; 10], 60000).expect("write");
            overlay.flush().expect("flush");
        }
        let bytes = std::fs::read(&made).expect("read template");
        let _ = std::fs::remove_file(&made);
        let regions = [u64_at(&bytes, 40) as usize, u64_at(&bytes, 48) as usize];
        let table_len = u64_at(&bytes, regions[0] + 24) as usize;
        let log_offset = (CKPT_HEAD + table_len + 4).div_ceil(PAGE) * PAGE;
        let windows = [
            (0, bytes[..HEADER_LEN].to_vec()),
            (
                regions[0],
                bytes[regions[0]..regions[0] + REGION_WINDOW].to_vec(),
            ),
            (
                regions[1],
                bytes[regions[1]..regions[1] + REGION_WINDOW].to_vec(),
            ),
        ];
        let in_window = |at: usize| {
            windows
                .iter()
                .any(|(start, w)| (*start..start + w.len()).contains(&at))
        };
        let pages = bytes
            .chunks(PAGE)
            .enumerate()
            .map(|(k, page)| (k * PAGE, page))
            .filter(|(at, page)| !in_window(*at) && page.iter().any(|&x| x != 0))
            .map(|(at, page)| (at, page.to_vec()))
            .collect();
        Template {
            base,
            file_len: bytes.len(),
            windows,
            pages,
            log_offset,
            path: dir.join(format!("mkmodule-fuzz-overlay-{}.cow", std::process::id())),
        }
    })
}

/// Recomputes the CRC32 of the checkpoint at `at` from its recorded table length.
fn fix_checkpoint(b: &mut [u8], at: usize) {
    if at + CKPT_HEAD > b.len() {
        return;
    }
    let table_len = u64_at(b, at + 24);
    let Some(end) = usize::try_from(table_len)
        .ok()
        .and_then(|t| (at + CKPT_HEAD).checked_add(t))
        .filter(|&end| end + 4 <= b.len())
    else {
        return;
    };
    let crc = crc32fast::hash(&b[at..end]);
    b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the CRC32 of each record of the log starting at `at`, as long as records parse.
fn fix_records(b: &mut [u8], mut at: usize, limit: usize) {
    let limit = limit.min(b.len());
    while at + RECORD_HEAD + 4 <= limit && &b[at..at + 4] == b"MKOJ" {
        let count = u32_at(b, at + 4) as usize;
        if count == 0 || count > MAX_RUNS {
            return;
        }
        let end = at + RECORD_HEAD + count * RUN_LEN;
        if end + 4 > limit {
            return;
        }
        let crc = crc32fast::hash(&b[at..end]);
        b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        at = end + 4;
    }
}

/// Runs one input (see the module documentation).
pub fn overlay_case(data: &[u8]) {
    let t = template();
    let Some((&flags, edits)) = data.split_first() else {
        return;
    };
    let mut windows: Vec<Vec<u8>> = t.windows.iter().map(|(_, w)| w.clone()).collect();
    let mut cut = None;
    for (k, edit) in edits.chunks_exact(4).enumerate() {
        let area = usize::from(edit[0] % 3);
        let window = &mut windows[area];
        let offset = usize::from(u16::from_le_bytes([edit[1], edit[2]])) % window.len();
        if k == 0 && flags & 16 != 0 {
            cut = Some(t.windows[area].0 + offset);
        }
        match (edit[0] / 3) % 4 {
            // Set one byte, or fill an 8-byte field: extreme counts, sizes and generations.
            2 => window[offset] = edit[3],
            3 => {
                let end = (offset + 8).min(window.len());
                window[offset..end].fill(edit[3]);
            }
            _ => window[offset] ^= edit[3],
        }
    }
    if flags & 1 != 0 {
        let header = &mut windows[0];
        let crc = crc32fast::hash(&header[..HEADER_LEN - 4]);
        header[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    for region in &mut windows[1..] {
        if flags & 2 != 0 {
            fix_checkpoint(region, 0);
        }
        if flags & 4 != 0 {
            fix_records(region, t.log_offset, REGION_WINDOW);
        }
    }
    write_file(t, &windows, cut);

    let writable = flags & 8 != 0;
    let options = OverlayOptions::default().read_only(!writable);
    let overlay = match Overlay::open(&t.path, Arc::clone(&t.base), &options) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let size = overlay.size();
    assert_eq!(
        size,
        t.base.size(),
        "an overlay over another size was opened"
    );
    let mut buf = vec![0u8; size as usize];
    overlay
        .read_at(&mut buf, 0)
        .expect("reading an opened overlay");
    let extents = overlay.extents(0, size).expect("extents");
    let covered: u64 = extents.iter().map(|e| e.len).sum();
    assert!(covered <= size, "extents past the end");
    for e in extents.iter().scan(0u64, |at, e| {
        let start = *at;
        *at += e.len;
        Some((start, *e))
    }) {
        let (start, extent) = e;
        if extent.zero && start + extent.len <= size {
            let range = &buf[start as usize..(start + extent.len) as usize];
            assert!(
                range.iter().all(|&x| x == 0),
                "a zero extent reads non-zero"
            );
        }
    }
    let _ = overlay.stats();
    if writable {
        overlay.write_at(&[9; 6000], 30000).expect("write");
        overlay.trim(45056, 4096).expect("trim");
        overlay.flush().expect("flush after replay");
        let mut again = vec![0u8; 6000];
        overlay.read_at(&mut again, 30000).expect("read back");
        assert!(again.iter().all(|&x| x == 9), "a write did not read back");
    }
    drop(overlay);
}

/// Writes the overlay file: the template's pages, the edited windows, then the cut.
fn write_file(t: &Template, windows: &[Vec<u8>], cut: Option<usize>) {
    use std::os::unix::fs::FileExt;
    // Truncating to nothing first frees the previous input's pages.
    let file = std::fs::File::create(&t.path).expect("create the overlay file");
    file.set_len(t.file_len as u64)
        .expect("size the overlay file");
    for (at, page) in &t.pages {
        file.write_all_at(page, *at as u64).expect("write a page");
    }
    for ((at, _), bytes) in t.windows.iter().zip(windows) {
        file.write_all_at(bytes, *at as u64)
            .expect("write a window");
    }
    if let Some(len) = cut {
        file.set_len(len as u64).expect("cut the overlay file");
    }
}
