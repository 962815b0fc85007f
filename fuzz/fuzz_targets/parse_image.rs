//! Format detection, header and index parsing of arbitrary bytes (`mkmodule_format`).
//!
//! Checks, beyond "no panic": `parse_image` and `detect` on the file's ends agree; every entry
//! of an accepted index lies inside the file and within its codec's length limit, uses a codec
//! its dialect allows, and back-references point at earlier stored blocks; an accepted index
//! re-encodes to one that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkmodule_format::{
    block_len_limit, detect, encode_index, parse_image, BlockIndex, BlockKind, IndexEntry,
    PROBE_LEN,
};

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    let head = &data[..len.min(PROBE_LEN)];
    let tail = &data[len.saturating_sub(PROBE_LEN)..];
    let layout = detect(head, tail, len as u64);
    let parsed = match parse_image(data) {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(
        layout.as_ref().ok(),
        Some(&parsed.layout),
        "detect disagrees"
    );
    let layout = parsed.layout;
    let index = &parsed.index;
    let header = layout.header;
    assert_eq!(index.len(), header.num_blocks as usize);
    assert!(index.data_end() <= layout.file_len);
    let (data_start, data_limit) = layout.data_area();
    for (i, entry) in index.blocks().iter().enumerate() {
        assert!(layout.dialect.allows_codec(entry.codec), "block {i}: codec");
        assert!(
            entry.end() <= layout.file_len,
            "block {i} ends past the file"
        );
        assert!(
            entry.offset >= data_start.min(data_limit),
            "block {i} before the data"
        );
        assert!(
            u64::from(entry.len) <= block_len_limit(entry.codec, header.block_size),
            "block {i} longer than its limit"
        );
        match entry.kind {
            BlockKind::Zero => assert_eq!(entry.len, 0),
            BlockKind::Stored => assert!(entry.len > 0),
            BlockKind::Shared { of } => {
                assert!((of as usize) < i, "block {i} refers forward");
                let target = index.blocks()[of as usize];
                assert_eq!(target.kind, BlockKind::Stored);
                assert_eq!((target.offset, target.len), (entry.offset, entry.len));
            }
        }
    }
    if let Some(trailer) = &parsed.trailer {
        assert_eq!(trailer.data_end, index.data_end());
    }
    // Re-encoding: the entries and end as parsed give the same index (not for uzip before
    // version 4, whose derived end may trim the final block).
    if !layout.lenient_end() {
        let entries: Vec<IndexEntry> = index
            .blocks()
            .iter()
            .map(|e| IndexEntry {
                offset: e.offset,
                codec: e.codec,
            })
            .collect();
        let bytes = encode_index(layout.dialect, header, &entries, index.data_end())
            .expect("a parsed index re-encodes");
        let again = BlockIndex::parse(&layout, &bytes).expect("a re-encoded index parses");
        assert_eq!(&again, index, "re-encoded index differs");
    }
});
