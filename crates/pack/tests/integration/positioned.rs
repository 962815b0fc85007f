//! `pack_file`: the compressors read a file at its offsets instead of a reader thread cutting a
//! stream. The image is byte-identical to the one packed from the same bytes as a stream, for
//! every written dialect, for short, empty and whole-block inputs, for an input that starts
//! inside its file, with blocks copied from an older image and with a dm-verity tree; a file
//! shorter or longer than announced is refused, naming the lengths.

use std::fs::File;
use std::io::{Cursor, Write};

use mkmodule_format::{Dialect, HeaderPosition};
use mkmodule_image::{Image, OpenOptions};
use mkmodule_pack::verity::{HashTreeBuilder, VerityParams};
use mkmodule_pack::{
    pack_file, pack_with_reuse, pack_with_verity, PackError, PackOptions, Plan, Reuse, Sink,
};
use mkmodule_testkit::data::{random, sample};

/// `len` bytes of mixed content (text, zeros, random, repeats).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut data = sample(len / BS + 1, BS, 0);
    data.truncate(len);
    let at = len / 3;
    let noise = random(len / 5, seed);
    data[at..at + noise.len()].copy_from_slice(&noise);
    data
}

const BS: usize = 4096;

/// A plan for `dialect` with the first of zlib, lz4, xz and zstd it takes.
fn plan(dialect: Dialect, len: usize) -> Plan {
    ["zlib", "lz4", "xz", "zstd"]
        .iter()
        .find_map(|codec| {
            PackOptions {
                dialect,
                codec: codec.parse().unwrap(),
                block_size: BS as u32,
                threads: 3,
                input_len: Some(len as u64),
                ..PackOptions::portable()
            }
            .plan()
            .ok()
        })
        .expect("a codec the dialect writes")
}

/// A file holding `skip` bytes of something else, then `data`.
fn file_with(data: &[u8], skip: usize) -> File {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&random(skip, 5)).unwrap();
    file.write_all(data).unwrap();
    file
}

fn sink_for<'a>(plan: &Plan, out: &'a mut Cursor<Vec<u8>>) -> Sink<'a> {
    match plan.dialect.spec().header_position {
        HeaderPosition::End => Sink::Stream(out),
        _ => Sink::Seekable(out),
    }
}

/// The image of `data` packed as a stream, and packed from `file` at offset `skip`.
fn both(
    data: &[u8],
    plan: &Plan,
    skip: usize,
    reuse: Option<&Reuse<'_>>,
) -> (Vec<u8>, Result<Vec<u8>, PackError>) {
    let mut streamed = Cursor::new(Vec::new());
    pack_with_reuse(data, sink_for(plan, &mut streamed), plan, reuse, &|_| {}).unwrap();
    let file = file_with(data, skip);
    let mut positioned = Cursor::new(Vec::new());
    let result = pack_file::<File>(
        &file,
        skip as u64,
        sink_for(plan, &mut positioned),
        plan,
        None,
        reuse,
        &|_| {},
    );
    (
        streamed.into_inner(),
        result.map(|_| positioned.into_inner()),
    )
}

#[test]
fn every_dialect_and_length_gives_the_streamed_image() {
    for dialect in Dialect::WRITTEN {
        for len in [0, 1, BS - 1, BS, 7 * BS + 100, 40 * BS] {
            let data = content(len, 11);
            let plan = plan(dialect, len);
            let (streamed, positioned) = both(&data, &plan, 0, None);
            assert!(
                streamed == positioned.unwrap(),
                "{dialect} {len}: the images differ"
            );
        }
    }
}

#[test]
fn an_input_inside_its_file_and_copied_blocks_give_the_streamed_image() {
    let old = content(30 * BS, 3);
    let mut new = old.clone();
    new[4 * BS..5 * BS].copy_from_slice(&random(BS, 9));
    new.extend_from_slice(&random(3 * BS + 10, 4));
    let old_plan = plan(Dialect::LinuxV2, old.len());
    let mut old_image = Cursor::new(Vec::new());
    pack_with_reuse(
        &old[..],
        sink_for(&old_plan, &mut old_image),
        &old_plan,
        None,
        &|_| {},
    )
    .unwrap();
    let old_image = Image::from_bytes(old_image.into_inner(), &OpenOptions::default()).unwrap();
    let new_plan = plan(Dialect::LinuxV2, new.len());
    let reuse = Reuse::new(&old_image, &new_plan, 2).unwrap();
    for skip in [0, 1, 4096, 12_345] {
        let (streamed, positioned) = both(&new, &new_plan, skip, Some(&reuse));
        assert!(streamed == positioned.unwrap(), "from offset {skip}");
    }
}

#[test]
fn a_verity_tree_is_the_same_from_a_file() {
    let data = content(20 * BS + 300, 8);
    let plan = plan(Dialect::LinuxV2, data.len());
    let params = || VerityParams::new(vec![1, 2, 3], [7; 16]).unwrap();
    let mut streamed = Cursor::new(Vec::new());
    let mut tree = HashTreeBuilder::new(params(), Cursor::new(Vec::new()));
    pack_with_verity(
        &data[..],
        Sink::Seekable(&mut streamed),
        &plan,
        &mut tree,
        None,
        &|_| {},
    )
    .unwrap();
    let mut streamed_tree = Vec::new();
    let streamed_root = tree.finish(&mut streamed_tree).unwrap().root_hash;

    let file = file_with(&data, 0);
    let mut positioned = Cursor::new(Vec::new());
    let mut tree = HashTreeBuilder::new(params(), Cursor::new(Vec::new()));
    pack_file(
        &file,
        0,
        Sink::Seekable(&mut positioned),
        &plan,
        Some(&mut tree),
        None,
        &|_| {},
    )
    .unwrap();
    let mut positioned_tree = Vec::new();
    let positioned_root = tree.finish(&mut positioned_tree).unwrap().root_hash;
    assert!(streamed.into_inner() == positioned.into_inner());
    assert_eq!(streamed_root, positioned_root);
    assert!(streamed_tree == positioned_tree);
}

#[test]
fn a_file_of_another_length_is_refused() {
    let data = content(10 * BS + 5, 2);
    // The file holds fewer bytes than the plan announces.
    let file = file_with(&data, 0);
    let longer = plan(Dialect::LinuxV2, data.len() + 3 * BS);
    let mut out = Cursor::new(Vec::new());
    let err = pack_file::<File>(
        &file,
        0,
        Sink::Seekable(&mut out),
        &longer,
        None,
        None,
        &|_| {},
    )
    .unwrap_err();
    match err {
        PackError::InputShorter { expected, actual } => {
            assert_eq!(expected, data.len() as u64 + 3 * BS as u64);
            assert_eq!(actual, data.len() as u64);
        }
        other => panic!("{other:?}"),
    }
    // The file holds more.
    let shorter = plan(Dialect::LinuxV2, data.len() - 5);
    let mut out = Cursor::new(Vec::new());
    let err = pack_file::<File>(
        &file,
        0,
        Sink::Seekable(&mut out),
        &shorter,
        None,
        None,
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, PackError::InputLonger { expected } if expected == data.len() as u64 - 5),
        "{err:?}"
    );
    // A plan without a length cannot read a file at its offsets.
    let unknown = PackOptions {
        block_size: BS as u32,
        ..PackOptions::portable()
    }
    .plan()
    .unwrap();
    let mut out = Cursor::new(Vec::new());
    let err = pack_file::<File>(
        &file,
        0,
        Sink::Seekable(&mut out),
        &unknown,
        None,
        None,
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, PackError::Internal(_)), "{err:?}");
}
