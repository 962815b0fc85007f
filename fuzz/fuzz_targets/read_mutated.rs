//! A valid image of any dialect and codec mix, built from the input's content, then damaged by
//! the input's edits, opened and read through the reader.
//!
//! Input: `[dialect, codec mix, block size, flags, edit count, edits (4 bytes each)..., content]`.
//! Flags: 1 trailer, 2 no zero-length blocks, 4 no dedup, 8 pad the final block, 16 exposed
//! size is the original length. Edit: `[kind, position lo, position hi, value]`; kind (mod 4): 0
//! xor at the position from the start, 1 xor at the position from the end, 2 xor within the
//! header and index, 3 cut the file at the position.
//!
//! Checks: with no edit the image opens and reads back exactly its content (every dialect and
//! codec round-trips); with edits, whatever `exercise_image` checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkmodule_codec::CodecKind;
use mkmodule_format::{is_header_first, Dialect};
use mkmodule_fuzz::build::{build_image, expected_device, ImageSpec};

/// Content is limited to this many bytes (16 blocks of 4 KiB at most).
const MAX_CONTENT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let dialect = Dialect::ALL[usize::from(data[0]) % Dialect::ALL.len()];
    let mix = data[1];
    let codecs: Vec<CodecKind> = (0..3)
        .map(|k| CodecKind::ALL[usize::from((mix >> (2 * k)) ^ (mix >> 6)) % CodecKind::ALL.len()])
        .collect();
    let block_size = 512u32 << (data[2] % 4);
    let flags = data[3];
    let edit_count = usize::from(data[4] % 8);
    let edits_end = (5 + 4 * edit_count).min(data.len());
    let edits = &data[5..edits_end];
    let content = &data[edits_end..data.len().min(edits_end + MAX_CONTENT)];

    let mut spec = ImageSpec::new(dialect, block_size);
    spec.codecs = codecs;
    spec.trailer = flags & 1 != 0 && is_header_first(dialect);
    spec.zero_length &= flags & 2 == 0;
    spec.dedup &= flags & 4 == 0;
    spec.pad_final |= flags & 8 != 0;
    let original = flags & 16 != 0;
    let Some(mut image) = build_image(content, &spec) else {
        panic!("building a valid {dialect} image failed");
    };

    if edits.is_empty() {
        let device = mkmodule_fuzz::exercise_image(image, original)
            .unwrap_or_else(|| panic!("a valid {dialect} image does not read back"));
        let mut expected = expected_device(content, block_size);
        if original && spec.trailer {
            expected.truncate(content.len());
        }
        assert!(
            device == expected,
            "a valid {dialect} image reads back wrong"
        );
        return;
    }
    let meta_len = if is_header_first(dialect) {
        136 + 8 * (content.len().div_ceil(block_size as usize) + 1)
    } else {
        image.len()
    };
    for edit in edits.chunks_exact(4) {
        if image.is_empty() {
            break;
        }
        let pos = usize::from(u16::from_le_bytes([edit[1], edit[2]]));
        let len = image.len();
        match edit[0] % 4 {
            0 => image[pos % len] ^= edit[3],
            1 => image[len - 1 - pos % len] ^= edit[3],
            2 => {
                // Header and index: at the start of header-first images, at the end of footer
                // images.
                let span = meta_len.min(len);
                let at = if is_header_first(dialect) {
                    pos % span
                } else {
                    len - 1 - pos % span.min(136 + 8 * 17)
                };
                image[at] ^= edit[3];
            }
            _ => image.truncate(pos % len),
        }
    }
    mkmodule_fuzz::exercise_image(image, original);
});
