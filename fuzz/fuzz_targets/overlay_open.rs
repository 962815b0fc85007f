//! The overlay file's parsers (header, checkpoints, log replay) through `Overlay::open` on a
//! damaged valid file (see `mkmodule_fuzz::overlay`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mkmodule_fuzz::overlay::overlay_case(data);
});
