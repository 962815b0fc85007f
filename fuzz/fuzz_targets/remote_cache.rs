//! The files of an image URL's disk cache (`--cache-dir`), which anything with access to the
//! directory may have damaged or written: the URL records (`origins/…`) and the entry files.
//!
//! Input: `[mode: 1][length: 2]` then the file's bytes.
//!
//! Checks: no panic; an accepted URL record has a 64-digit hex identity and is exactly the
//! text the cache writes for it; an entry file is accepted only as the cache writes it for
//! its data, and an entry written for the input's bytes reads back as those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkmodule_remote::{entry_data, entry_file, format_origin, parse_origin};

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, a, b], file)) = data.split_first_chunk::<3>() else {
        return;
    };
    if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(file) else {
            return;
        };
        if let Some(record) = parse_origin(text) {
            assert_eq!(record.identity.len(), 64);
            assert!(record.identity.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(format_origin(&record), text);
        }
    } else {
        let len = usize::from(u16::from_le_bytes([a, b]));
        if let Some(found) = entry_data(file, len) {
            assert_eq!(found.len(), len);
            assert_eq!(entry_file(found), file);
        }
        let written = entry_file(file);
        assert_eq!(entry_data(&written, file.len()), Some(file));
        assert_eq!(entry_data(&written, file.len() + 1), None);
    }
});
