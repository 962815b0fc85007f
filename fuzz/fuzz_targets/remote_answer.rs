//! The checks an image URL's answers go through (`mkmodule-remote`): the probe that opens the
//! image, and each range answer's status, ETag and Content-Range before its body is read.
//!
//! Input: `[status selector: 2][flags: 1][start: 8][span: 2][pinned length: 8]`, then text
//! lines: the Content-Range (used as is, or appended to one made from the numbers), the
//! answer's ETag and the pinned ETag.
//!
//! Checks: no panic; a range answer is accepted only when it is a 206 whose Content-Range is
//! exactly the range asked for out of the pinned length and whose ETag (when both sides have
//! one) is the pinned one; one called a changed image shows a change (412, another ETag or
//! length); the probe accepts only `bytes 0-0/LEN` with 206 (or an empty image's 416); a
//! parsed Content-Range has start <= end and reads back the same once written out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkmodule_remote::{check_range_answer, parse_content_range, probe_answer, Failure, Pin};

fn u64_at(data: &[u8], at: usize, len: usize) -> u64 {
    let mut bytes = [0u8; 8];
    if let Some(slice) = data.get(at..at + len) {
        bytes[..len].copy_from_slice(slice);
    }
    u64::from_le_bytes(bytes)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 21 {
        return;
    }
    let status = match data[0] % 8 {
        0..=3 => 206,
        4 => 200,
        5 => 412,
        6 => 416,
        _ => u16::from(data[1]) * 3 + 100,
    };
    let flags = data[2];
    let start = u64_at(data, 3, 8) >> (flags & 0x3f);
    let end = start.saturating_add(u64_at(data, 11, 2));
    let total = u64_at(data, 13, 8) >> (data[1] & 0x3f);
    let text = String::from_utf8_lossy(&data[21..]);
    let mut lines = text.split('\n');
    let raw_range = lines.next().unwrap_or_default();
    let etag = lines.next().filter(|_| flags & 0x40 != 0);
    let pinned_etag = lines.next().map(str::to_string);
    let content_range = if flags & 0x80 != 0 {
        format!("bytes {start}-{end}/{total}{raw_range}")
    } else {
        raw_range.to_string()
    };
    let pin = Pin {
        len: total,
        etag: pinned_etag.clone(),
        last_modified: None,
    };
    let parsed = parse_content_range(&content_range);

    if let Some((range, length)) = parsed {
        let written = format!(
            "bytes {}/{}",
            range.map_or("*".to_string(), |(s, e)| format!("{s}-{e}")),
            length.map_or("*".to_string(), |l| l.to_string())
        );
        assert_eq!(parse_content_range(&written), parsed, "{written:?}");
        if let Some((s, e)) = range {
            assert!(s <= e);
        }
    }

    let etags_differ = matches!((etag, &pinned_etag), (Some(a), Some(b)) if a != b);
    let other_length = matches!(parsed, Some((_, Some(t))) if t != total);
    match check_range_answer(status, etag, &content_range, start, end, &pin) {
        Ok(()) => {
            assert_eq!(status, 206);
            assert_eq!(parsed, Some((Some((start, end)), Some(total))));
            assert!(!etags_differ);
        }
        Err(Failure::Changed(what)) => {
            assert!(status == 412 || etags_differ || other_length, "{what}");
        }
        Err(Failure::Attempt(_)) => assert!(!(status == 412 || (status == 206 && etags_differ))),
    }

    match probe_answer(status, &content_range) {
        Ok(len) => assert!(
            (status == 206 && parsed == Some((Some((0, 0)), Some(len))))
                || (status == 416 && len == 0 && parsed == Some((None, Some(0))))
        ),
        Err(_) => assert!(!(status == 206 && matches!(parsed, Some((Some((0, 0)), Some(_)))))),
    }
});
