//! The dm-verity superblock reader (`verify --verity` reads it from `IMAGE.verity`, a file that
//! may be damaged or forged) on arbitrary bytes.
//!
//! Checks: no panic; an accepted superblock has a salt of at most 256 bytes, and the level sizes
//! worked out from its data-block count shrink to one hash block (or none for one data block).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkmodule_pack::verity::{parse_superblock, tree_levels};

fuzz_target!(|data: &[u8]| {
    let Ok((params, data_blocks)) = parse_superblock(data) else {
        return;
    };
    assert!(params.salt().len() <= 256);
    let levels = tree_levels(data_blocks);
    assert!(levels.windows(2).all(|pair| pair[1] <= pair[0]));
    match levels.last() {
        Some(&top) => assert_eq!(top, 1, "{levels:?}"),
        None => assert!(data_blocks <= 1),
    }
});
