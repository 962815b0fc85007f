//! Overlay files: identity checks, locking, damage, log wrap-around, hole punching.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use mkmodule_blockdev::{BlockDevice, MemoryDevice};

use super::*;
use crate::OverlayError;

#[test]
fn reopening_over_another_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let base = super::base(100_000, 1);
    let o = Overlay::create(&path, base.clone(), &options()).unwrap();
    o.write_at(b"x", 0).unwrap();
    drop(o);
    let other = super::base(100_000, 2);
    let err = Overlay::open(&path, other, &options()).unwrap_err();
    assert!(matches!(err, OverlayError::BaseMismatch { .. }), "{err}");
    assert!(err.to_string().contains("\"test base\""), "{err}");
    let bigger = super::base(100_001, 1);
    let err = Overlay::open(&path, bigger, &options()).unwrap_err();
    assert!(err.to_string().contains("100000 bytes"), "{err}");
    // The right base still works, and creating over an existing file is refused.
    open(&path, &base);
    let err = Overlay::create(&path, base, &options()).unwrap_err();
    assert!(matches!(err, OverlayError::Exists { .. }), "{err}");
}

#[test]
fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let base = super::base(50_000, 1);
    let o = Overlay::create(&path, base.clone(), &options()).unwrap();
    let err = Overlay::open(&path, base.clone(), &options()).unwrap_err();
    assert!(matches!(err, OverlayError::Locked { .. }), "{err}");
    let err = Overlay::open(&path, base.clone(), &options().read_only(true)).unwrap_err();
    assert!(matches!(err, OverlayError::Locked { .. }), "{err}");
    o.write_at(b"abc", 10).unwrap();
    drop(o);
    // Readers share the file and leave it untouched.
    let before = std::fs::read(&path).unwrap();
    let r1 = Overlay::open(&path, base.clone(), &options().read_only(true)).unwrap();
    let r2 = Overlay::open(&path, base.clone(), &options().read_only(true)).unwrap();
    let mut b = [0u8; 3];
    r2.read_at(&mut b, 10).unwrap();
    assert_eq!(&b, b"abc");
    assert!(r1.write_at(b"z", 0).is_err());
    drop((r1, r2));
    assert!(std::fs::read(&path).unwrap() == before);
}

#[test]
fn not_an_overlay_and_damaged_headers() {
    let dir = tempfile::tempdir().unwrap();
    let base = super::base(50_000, 1);
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![1u8; 10_000]).unwrap();
    let err = Overlay::open(&junk, base.clone(), &options()).unwrap_err();
    assert!(matches!(err, OverlayError::NotOverlay { .. }), "{err}");
    let short = dir.path().join("short");
    std::fs::write(&short, b"MKM").unwrap();
    assert!(Overlay::open(&short, base.clone(), &options()).is_err());
    let path = dir.path().join("o.cow");
    drop(Overlay::create(&path, base.clone(), &options()).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = Overlay::open(&path, base.clone(), &options()).unwrap_err();
    assert!(matches!(err, OverlayError::Corrupt { .. }), "{err}");
    bytes[20] ^= 1;
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = Overlay::open(&path, base, &options()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn the_log_wraps_into_new_checkpoints() {
    // 4096 chunks; every flush changes every other chunk, so each flush writes ~2048 runs
    // (32 KiB of records) and the 1 MiB log fills after ~32 flushes.
    let chunks = 4096u64;
    let size = chunks * u64::from(CHUNK);
    let base: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(vec![0u8; size as usize]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let o = Overlay::create(&path, base.clone(), &options()).unwrap();
    let c = u64::from(CHUNK);
    for round in 0..40u64 {
        for i in (round % 2..chunks).step_by(2) {
            if (i / 2 + round) % 3 == 0 {
                o.trim(i * c, c).unwrap();
            } else {
                o.write_at(&[(round as u8) | 1; 8], i * c).unwrap();
            }
        }
        o.flush().unwrap();
    }
    let want = contents(&o);
    drop(o);
    let o = open(&path, &base);
    assert_eq!(contents(&o), want);
}

#[test]
fn trimmed_chunks_give_their_space_back() {
    let size = 256 * u64::from(CHUNK);
    let base: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(vec![3u8; size as usize]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let o = Overlay::create(&path, base.clone(), &options()).unwrap();
    o.write_at(&vec![9u8; size as usize], 0).unwrap();
    o.flush().unwrap();
    let full = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(full >= size, "{full} bytes allocated for {size} written");
    o.trim(0, size).unwrap();
    o.flush().unwrap();
    let after = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        after < full - size / 2,
        "trimming {size} bytes left {after} of {full} bytes allocated"
    );
    let mut b = vec![1u8; 4096];
    o.read_at(&mut b, 8192).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

/// Regression (fuzz target `overlay_open`): a header whose checksum is valid but whose base
/// size lies near 2^64 made the layout computation overflow and panic while the header was
/// decoded. It must be refused as damaged, naming the size.
#[test]
fn a_header_with_a_base_size_near_2_pow_64_is_refused_as_damaged_not_a_panic() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let base = super::base(65_536, 1);
    drop(Overlay::create(&path, base.clone(), &options()).unwrap());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut header = vec![0u8; 4096];
    file.read_exact_at(&mut header, 0).unwrap();
    for base_size in [
        u64::MAX,
        u64::MAX - 4095,
        0xffff_0000_0001_0000, // the fuzzer's input: the top 16 bits flipped
        1 << 63,
    ] {
        header[16..24].copy_from_slice(&base_size.to_le_bytes());
        let crc = crc32fast::hash(&header[..4092]);
        header[4092..].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&header, 0).unwrap();
        for read_only in [true, false] {
            let err = Overlay::open(&path, base.clone(), &options().read_only(read_only))
                .expect_err("a damaged header was accepted");
            assert!(matches!(err, OverlayError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains(&base_size.to_string()), "{err}");
        }
    }
}

/// Regression (fuzz target `overlay_open`): a checkpoint with a valid checksum and generation
/// `u64::MAX` was taken as current, and opening the file for writing then overflowed computing
/// the next generation. Such a checkpoint counts as damaged: the other one is used, and with
/// both so marked the file is refused.
#[test]
fn a_checkpoint_of_generation_u64_max_counts_as_damaged_not_a_panic() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.cow");
    let base = super::base(65_536, 1);
    let o = Overlay::create(&path, base.clone(), &options()).unwrap();
    o.write_at(&[5; 100], 8192).unwrap();
    drop(o);
    // Reopening writes the next checkpoint into the other region: both regions hold one.
    drop(open(&path, &base));
    let layout = crate::journal::Layout::new(u64::from(CHUNK), 65_536).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let set_max_generation = |region: u64| {
        let mut ckpt = vec![0u8; 32 + layout.table_len as usize + 4];
        file.read_exact_at(&mut ckpt, region).unwrap();
        ckpt[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let end = ckpt.len() - 4;
        let crc = crc32fast::hash(&ckpt[..end]);
        ckpt[end..].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&ckpt, region).unwrap();
    };
    set_max_generation(layout.regions[0]);
    // The other checkpoint still holds the state: opening for writing works and keeps the data.
    let o = open(&path, &base);
    let mut b = [0u8; 100];
    o.read_at(&mut b, 8192).unwrap();
    assert_eq!(b, [5; 100]);
    o.write_at(b"ok", 0).unwrap();
    o.flush().unwrap();
    drop(o);
    set_max_generation(layout.regions[0]);
    set_max_generation(layout.regions[1]);
    for read_only in [false, true] {
        let err = Overlay::open(&path, base.clone(), &options().read_only(read_only))
            .expect_err("checkpoints of generation u64::MAX were accepted");
        assert!(matches!(err, OverlayError::Corrupt { .. }), "{err}");
    }
}
