//! Arbitrary bytes opened as an image (any dialect, any codec) and every block read through the
//! reader: `Image::from_bytes`, `block`, `read_at`, the `Read` reader, extents and zero map.
//! See `mkmodule_fuzz::exercise_image` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The length's parity picks the exposed size, so both paths are reached without taking a
    // byte away from the image.
    mkmodule_fuzz::exercise_image(data.to_vec(), data.len() % 2 == 1);
});
