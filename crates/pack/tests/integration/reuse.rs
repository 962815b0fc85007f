//! `pack_with_reuse`: an image packed with blocks copied from an older one is byte-identical to
//! one packed from scratch, for every written dialect and codec, over random edits (blocks
//! changed, inserted, deleted, a different final length), also when a block it copies is
//! damaged behind valid tables; options that differ are refused; a damaged older image gives its
//! damaged blocks up to compression, checked by its stored checks or, for an image written
//! before those, by decoding.

use std::io::Cursor;

use mkmodule_format::{
    parse_image, stored_check, BlockDigestAlgorithm, BlockKind, Dialect, HeaderPosition, Trailer,
};
use mkmodule_image::{Image, OpenOptions};
use mkmodule_pack::{
    pack_with_reuse, PackOptions, PackSummary, Plan, ProgressEvent, Reuse, ReuseCheck, ReuseError,
    Sink,
};
use mkmodule_testkit::data::{random, sample, Rng};

const BS: usize = 4096;

fn plan(dialect: Dialect, codec: &str, zero_blocks: bool, len: usize) -> Plan {
    PackOptions {
        dialect,
        codec: codec.parse().unwrap(),
        block_size: BS as u32,
        threads: 2,
        zero_blocks,
        input_len: Some(len as u64),
        ..PackOptions::portable()
    }
    .plan()
    .unwrap()
}

/// Packs `input` (in place, or streamed for footer dialects), copying from `reuse`; returns
/// the image, the summary and the blocks reported as rejected.
fn pack_bytes(
    input: &[u8],
    plan: &Plan,
    reuse: Option<&Reuse<'_>>,
) -> (Vec<u8>, PackSummary, Vec<(u64, u32)>) {
    let mut out = Cursor::new(Vec::new());
    let rejected = std::sync::Mutex::new(Vec::new());
    let progress = |event| {
        if let ProgressEvent::ReuseRejected { block, old_block } = event {
            rejected.lock().unwrap().push((block, old_block));
        }
    };
    let sink = match plan.dialect.spec().header_position {
        HeaderPosition::End => Sink::Stream(&mut out),
        _ => Sink::Seekable(&mut out),
    };
    let summary = pack_with_reuse(input, sink, plan, reuse, &progress).unwrap();
    (out.into_inner(), summary, rejected.into_inner().unwrap())
}

fn open(image: Vec<u8>) -> Image {
    Image::from_bytes(image, &OpenOptions::default()).unwrap()
}

/// A remaster of `old`: a few blocks changed in place, one deleted, one inserted, and a new
/// final length; all chosen by `rng`.
fn remaster(old: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut new = old.to_vec();
    let blocks = new.len() / BS;
    for _ in 0..3 {
        let at = rng.below((blocks * BS) as u64) as usize;
        new[at] ^= 0x5a;
    }
    let gone = rng.below(blocks as u64) as usize * BS;
    new.drain(gone..gone + BS);
    let at = rng.below((new.len() / BS) as u64) as usize * BS;
    let fresh = random(BS, rng.next());
    new.splice(at..at, fresh);
    let cut = rng.below(BS as u64) as usize;
    new.truncate(new.len() - cut);
    new
}

/// The dialects and block encoders written, with zero-length blocks where possible.
const CASES: &[(Dialect, &str, bool)] = &[
    (Dialect::LinuxV2, "zlib", false),
    (Dialect::LinuxV2, "zlib:0", false),
    (Dialect::LinuxV2, "best", false),
    (Dialect::LinuxV4, "xz:1", false),
    (Dialect::LinuxV4, "lz4", false),
    (Dialect::LinuxV4, "best", false),
    (Dialect::LinuxV4, "zlib:12", false),
    (Dialect::LinuxV4Footer, "zlib:9", false),
    (Dialect::LinuxV4Footer, "xz:2", false),
    (Dialect::LinuxV4Footer, "lz4", false),
    (Dialect::UzipZlib, "zlib", true),
    (Dialect::UzipZlibDedup, "zlib", false),
    (Dialect::UzipZlibDedup, "zlib", true),
    (Dialect::UzipXz, "xz:0", false),
    (Dialect::UzipXzDedup, "xz:0", true),
    (Dialect::UzipZstd, "zstd", false),
    (Dialect::UzipZstdDedup, "zstd:19", false),
];

#[test]
fn reuse_gives_the_image_packed_from_scratch() {
    let mut rng = Rng(0x5eed);
    for &(dialect, codec, zero_blocks) in CASES {
        for round in 0..3 {
            let old = sample(20, BS, round * 700);
            let new = remaster(&old, &mut rng);
            let old_plan = plan(dialect, codec, zero_blocks, old.len());
            let (old_bytes, _, _) = pack_bytes(&old, &old_plan, None);
            let old_image = open(old_bytes.clone());
            let new_plan = plan(dialect, codec, zero_blocks, new.len());
            let (scratch, plain, _) = pack_bytes(&new, &new_plan, None);
            let reuse = Reuse::new(&old_image, &new_plan, 2).unwrap();
            assert_eq!(reuse.from_table(), dialect != Dialect::LinuxV4Footer);
            let (reused, summary, rejected) = pack_bytes(&new, &new_plan, Some(&reuse));
            let case = format!("{dialect} {codec} zero-blocks {zero_blocks} round {round}");
            assert!(scratch == reused, "{case}: the images differ");
            assert_eq!(plain.reused_blocks, 0, "{case}");
            assert!(summary.reused_blocks >= 5, "{case}: {summary:?}");
            assert!(rejected.is_empty(), "{case}: {rejected:?}");
            assert_eq!(reuse.stored_checks(), reuse.from_table(), "{case}");

            // One byte of a block that is copied, damaged behind OLD's valid tables: that block
            // is compressed instead, reported, and the image is still the one from scratch.
            let (damaged, victim) = damage_a_copied_block(old_bytes, &old, &new, &mut rng);
            let reuse = Reuse::new(&damaged, &new_plan, 2).unwrap();
            let (reused, _, rejected) = pack_bytes(&new, &new_plan, Some(&reuse));
            assert!(scratch == reused, "{case}: the images differ after damage");
            if reuse.from_table() {
                assert!(!rejected.is_empty(), "{case}: block {victim} was copied");
                assert!(rejected.iter().all(|&(_, old)| old == victim), "{case}");
            }
        }
    }
}

/// Flips a byte in the middle of the compressed bytes of a block of `image` (made of `old`)
/// whose content is a whole block of `new`, past the first blocks (which `Reuse::new` compresses
/// again to check the encoder); returns the damaged image and the block.
fn damage_a_copied_block(
    mut bytes: Vec<u8>,
    old: &[u8],
    new: &[u8],
    rng: &mut Rng,
) -> (Image, u32) {
    let index = parse_image(&bytes).unwrap().index;
    let whole = |i: usize| &old[i * BS..(i + 1) * BS];
    let wanted: Vec<&[u8]> = new.chunks_exact(BS).collect();
    let candidates: Vec<usize> = (4..old.len() / BS - 1)
        .filter(|&i| {
            let content = whole(i);
            index.get(i).unwrap().kind == BlockKind::Stored
                && content.iter().any(|&b| b != 0)
                && (0..i).all(|j| whole(j) != content)
                && wanted.contains(&content)
        })
        .collect();
    let victim = candidates[rng.below(candidates.len() as u64) as usize];
    let entry = *index.get(victim).unwrap();
    bytes[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0x5a;
    (open(bytes), victim as u32)
}

/// `image` as a release before the stored-check table wrote it: the trailer does not point to
/// the table (its bytes stay, unused).
fn without_stored_checks(mut image: Vec<u8>) -> Vec<u8> {
    let at = image.len() - mkmodule_format::TRAILER_LEN;
    let mut trailer = Trailer::find(&image, image.len() as u64).unwrap().unwrap();
    assert!(trailer.extension.stored_checks.is_some());
    trailer.extension.stored_checks = None;
    image[at..].copy_from_slice(&trailer.encode());
    image
}

/// A damaged stored-check table is reported and not used: the blocks are decoded instead.
#[test]
fn a_damaged_stored_check_table_is_not_trusted() {
    let data = sample(10, BS, 3);
    let plan = plan(Dialect::LinuxV2, "zlib", false, data.len());
    let (mut image, _, _) = pack_bytes(&data, &plan, None);
    let checks = open(image.clone())
        .trailer()
        .unwrap()
        .extension
        .stored_checks
        .unwrap();
    image[checks.offset as usize + 5] ^= 1;
    let old = open(image);
    let reuse = Reuse::new(&old, &plan, 1).unwrap();
    assert!(!reuse.stored_checks());
    let problem = reuse.checks_problem().unwrap().to_string();
    assert!(problem.contains("stored-check table"), "{problem}");
    let (again, summary, _) = pack_bytes(&data, &plan, Some(&reuse));
    assert!(again == pack_bytes(&data, &plan, None).0);
    assert!(summary.reused_blocks > 0);
}

/// An older image without stored checks, damaged: its blocks are decoded before they are copied
/// (also with the default check), so the damaged one is compressed again.
#[test]
fn an_older_image_without_stored_checks_is_checked_by_decoding() {
    let data = sample(14, BS, 0);
    let plan = plan(Dialect::LinuxV4, "lz4", false, data.len());
    let (image, _, _) = pack_bytes(&data, &plan, None);
    let mut image = without_stored_checks(image);
    let parsed = parse_image(&image).unwrap();
    let victim = (5..14)
        .find(|&i| {
            parsed.index.get(i).unwrap().kind == BlockKind::Stored
                && data[i * BS..(i + 1) * BS].iter().any(|&b| b != 0)
        })
        .unwrap();
    let entry = *parsed.index.get(victim).unwrap();
    image[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0xff;
    let old = open(image);
    assert!(old.stored_checks().unwrap().is_none());
    let reuse = Reuse::new(&old, &plan, 1).unwrap();
    assert!(reuse.from_table() && !reuse.stored_checks());
    let (again, summary, rejected) = pack_bytes(&data, &plan, Some(&reuse));
    assert!(again == pack_bytes(&data, &plan, None).0);
    // Every new block of that content wanted the damaged block.
    assert!(
        rejected.contains(&(victim as u64, victim as u32)),
        "{rejected:?}"
    );
    assert!(rejected.iter().all(|&(_, old)| old == victim as u32));
    assert_eq!(summary.rejected_blocks, rejected.len() as u64);
}

/// Every block of an identical input that is not all zeros is copied.
#[test]
fn an_unchanged_input_copies_every_stored_block() {
    let data = sample(30, BS, 0);
    let plan = plan(Dialect::UzipZstdDedup, "zstd", false, data.len());
    let (image, first, _) = pack_bytes(&data, &plan, None);
    let old = open(image.clone());
    let reuse = Reuse::new(&old, &plan, 1).unwrap();
    let (again, summary, _) = pack_bytes(&data, &plan, Some(&reuse));
    assert!(again == image);
    let nonzero = (0..30).filter(|&i| data[i * BS..(i + 1) * BS].iter().any(|&b| b != 0));
    assert_eq!(summary.reused_blocks, nonzero.count() as u64);
    assert_eq!(summary.reused_blocks + first.zero_blocks, 30);
}

#[test]
fn other_options_are_refused_with_what_to_give() {
    let data = sample(8, BS, 0);
    let old_plan = plan(Dialect::LinuxV2, "zlib", false, data.len());
    let old = open(pack_bytes(&data, &old_plan, None).0);
    let refusal = |plan: Plan| Reuse::new(&old, &plan, 1).unwrap_err();
    // v4 writes v2's zlib blocks the same way; lz4 blocks are no v2 blocks.
    assert!(Reuse::new(&old, &plan(Dialect::LinuxV4, "zlib", false, data.len()), 1).is_ok());
    let err = refusal(plan(Dialect::LinuxV4, "lz4", false, data.len()));
    assert!(matches!(err, ReuseError::Dialect { .. }));
    assert_eq!(
        err.to_string(),
        "it is a v2 image, and the new one is v4: give --format v2"
    );
    let err = refusal(plan(Dialect::LinuxV2, "zlib:9", false, data.len()));
    assert_eq!(
        err.to_string(),
        "its blocks were compressed as zlib:5, and the new image's as zlib:9: give --codec \
         zlib:5"
    );
    let mut other_size = plan(Dialect::LinuxV2, "zlib", false, data.len());
    other_size.block_size = 8192;
    assert!(matches!(
        refusal(other_size),
        ReuseError::BlockSize {
            old: 4096,
            new: 8192
        }
    ));
}

/// Without a recorded encoder (no trailer), a block of OLD is compressed again to check it.
#[test]
fn an_image_without_a_trailer_is_checked_by_compressing_a_block() {
    let data = sample(8, BS, 0);
    let mut old_plan = plan(Dialect::LinuxV2, "zlib:9", false, data.len());
    old_plan.trailer = false;
    let old = open(pack_bytes(&data, &old_plan, None).0);
    assert!(old.trailer().is_none());
    let err = Reuse::new(&old, &plan(Dialect::LinuxV2, "zlib", false, data.len()), 1);
    assert!(matches!(err, Err(ReuseError::Encoder { .. })), "{err:?}");
    let same = plan(Dialect::LinuxV2, "zlib:9", false, data.len());
    let reuse = Reuse::new(&old, &same, 1).unwrap();
    assert!(!reuse.from_table());
    let (image, summary, _) = pack_bytes(&data, &same, Some(&reuse));
    assert!(image == pack_bytes(&data, &same, None).0);
    assert!(summary.reused_blocks > 0);
}

/// Bytes flipped inside a compressed block of OLD, behind its valid tables: with either check
/// (its stored checks, or decoding) that block is compressed again and reported, and the image
/// is still the one packed from scratch.
#[test]
fn a_damaged_block_of_the_older_image_is_compressed_again() {
    let data = sample(14, BS, 0);
    let plan = plan(Dialect::LinuxV2, "zlib", false, data.len());
    let (mut image, _, _) = pack_bytes(&data, &plan, None);
    let parsed = parse_image(&image).unwrap();
    let victim = (0..14)
        .find(|&i| parsed.index.get(i).unwrap().kind == BlockKind::Stored && i % 7 == 2)
        .unwrap();
    let entry = *parsed.index.get(victim).unwrap();
    image[(entry.offset + u64::from(entry.len) / 2) as usize] ^= 0xff;
    let old = open(image);
    for check in [ReuseCheck::Table, ReuseCheck::Decode] {
        let reuse = Reuse::new(&old, &plan, 1).unwrap().with_check(check);
        assert_eq!(reuse.stored_checks(), check == ReuseCheck::Table);
        let (again, summary, rejected) = pack_bytes(&data, &plan, Some(&reuse));
        assert!(again == pack_bytes(&data, &plan, None).0, "{check:?}");
        assert_eq!(rejected, [(victim as u64, victim as u32)], "{check:?}");
        assert_eq!(summary.rejected_blocks, 1);
    }
}

/// The table written holds the digests a decoder computes; a damaged table is reported and
/// the digests are computed by decoding instead.
#[test]
fn the_digest_table_matches_the_blocks_and_damage_is_reported() {
    use mkmodule_image::DigestOrigin;
    for dialect in [Dialect::LinuxV2, Dialect::UzipZstd] {
        let data = sample(9, BS, 1000);
        let (mut image, summary, _) =
            pack_bytes(&data, &plan(dialect, "best", false, data.len()), None);
        assert_eq!(image.len() % 512, 0);
        let opened = open(image.clone());
        let trailer = opened.trailer().unwrap();
        assert_eq!(trailer.original_len, data.len() as u64);
        let table = trailer.extension.digest_table.unwrap();
        assert_eq!(table.entries, 9);
        assert_eq!(table.offset + 9 * 16 + 136, image.len() as u64);
        // The stored checks lie just before it: the CRC32 of each block's bytes as stored.
        let checks = trailer.extension.stored_checks.unwrap();
        assert_eq!(checks.offset + 9 * 4, table.offset);
        assert!(checks.offset >= summary.data_end);
        let parsed = parse_image(&image).unwrap();
        let expected_checks: Vec<u32> = (0..9)
            .map(|i| {
                let e = parsed.index.get(i).unwrap();
                stored_check(&image[e.offset as usize..e.end() as usize])
            })
            .collect();
        assert_eq!(opened.stored_checks().unwrap().unwrap(), expected_checks);
        let stored = opened.digest_table().unwrap().unwrap();
        assert_eq!(stored.algorithm, BlockDigestAlgorithm::Blake3);
        let computed = opened.block_digests(1, BlockDigestAlgorithm::Blake3);
        assert!(matches!(computed.origin, DigestOrigin::Table));
        let mut padded = data.clone();
        padded.resize(9 * BS, 0);
        let expected: Vec<_> = padded
            .chunks(BS)
            .map(|b| BlockDigestAlgorithm::Blake3.digest(b, BS as u32))
            .collect();
        assert_eq!(stored.digests, expected);
        let sha256 = opened.block_digests(1, BlockDigestAlgorithm::Sha256);
        assert!(matches!(
            sha256.origin,
            DigestOrigin::OtherAlgorithm {
                table: BlockDigestAlgorithm::Blake3
            }
        ));
        let sha256_expected: Vec<_> = padded
            .chunks(BS)
            .map(|b| Some(BlockDigestAlgorithm::Sha256.digest(b, BS as u32)))
            .collect();
        assert_eq!(sha256.digests, sha256_expected);

        image[table.offset as usize + 20] ^= 1;
        let damaged = open(image);
        assert!(
            damaged.trailer_problem().is_none(),
            "the trailer itself is fine"
        );
        let err = damaged.digest_table().unwrap_err();
        assert!(err.to_string().contains("block-digest table"), "{err}");
        let fallback = damaged.block_digests(1, BlockDigestAlgorithm::Blake3);
        match fallback.origin {
            DigestOrigin::Decoded { problem: Some(_) } => {}
            other => panic!("{other:?}"),
        }
        let decoded: Vec<_> = fallback.digests.into_iter().map(Option::unwrap).collect();
        assert_eq!(decoded, expected);
    }
}
