//! mkmodule's trailer (`Trailer::find`, `find_trailer`) on arbitrary bytes and file lengths.
//!
//! Input: 8 bytes of file length (little-endian), then the file's last bytes. Checks: a found
//! trailer has a digest of its algorithm's length, re-encodes to bytes that find the same
//! trailer (extension included), and `find_trailer` keeps it only when it matches the index's
//! end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkmodule_format::{find_trailer, parse_image, Dialect, Header, Trailer, TRAILER_LEN};

/// A small valid V2 image with one stored block, for `find_trailer`'s layout and index.
fn sample_index() -> &'static mkmodule_format::ParsedImage {
    static SAMPLE: std::sync::OnceLock<mkmodule_format::ParsedImage> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        let header = Header {
            block_size: 512,
            num_blocks: 1,
        };
        let mut image = header.encode(Dialect::LinuxV2).to_vec();
        let start = 136 + 16u64;
        image.extend_from_slice(&start.to_be_bytes());
        image.extend_from_slice(&(start + 11).to_be_bytes());
        // zlib stored block of 512 zero bytes would be longer: any 11 bytes will do here.
        image.extend_from_slice(&[0x78, 0x9c, 0x63, 0x60, 0x18, 0, 0, 0, 0, 0, 0]);
        parse_image(&image).expect("sample parses")
    })
}

fuzz_target!(|data: &[u8]| {
    // As a whole file.
    check(data, data.len() as u64);
    // With the claimed file length.
    if data.len() >= 8 {
        let mut len = [0u8; 8];
        len.copy_from_slice(&data[..8]);
        check(&data[8..], u64::from_le_bytes(len));
    }
});

fn check(tail: &[u8], file_len: u64) {
    let found = match Trailer::find(tail, file_len) {
        Ok(found) => found,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let sample = sample_index();
    let mut layout = sample.layout;
    layout.file_len = file_len;
    let kept = find_trailer(&layout, &sample.index, tail);
    let Some(trailer) = found else {
        assert!(matches!(kept, Ok(None)), "find_trailer invents a trailer");
        return;
    };
    assert_eq!(trailer.digest.len(), trailer.digest_algorithm.len());
    if let Ok(Some(k)) = &kept {
        assert_eq!(k, &trailer);
        assert_eq!(k.data_end, sample.index.data_end());
        assert!(k.data_end + TRAILER_LEN as u64 <= file_len);
    }
    // Re-encoding gives a trailer that reads back the same (the tool name is read lossily, so
    // compare it only when it was valid UTF-8 of at most 32 bytes).
    let bytes = trailer.encode();
    let again = Trailer::find(&bytes, file_len.max(TRAILER_LEN as u64))
        .expect("a re-encoded trailer is valid")
        .expect("a re-encoded trailer is found");
    assert_eq!(again.original_len, trailer.original_len);
    assert_eq!(again.digest_algorithm, trailer.digest_algorithm);
    assert_eq!(again.digest, trailer.digest);
    assert_eq!(again.data_end, trailer.data_end);
    assert_eq!(again.extension, trailer.extension);
    if !trailer.tool.contains('\u{fffd}') {
        assert_eq!(again.tool, trailer.tool);
    }
}
