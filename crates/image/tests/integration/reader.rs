//! The `Read + Seek` adapter behaves like a file over the exposed device.

use crate::common;

use std::io::{Read, Seek, SeekFrom, Write};

use common::{build, sample, Spec};
use mkmodule_format::Dialect;
use mkmodule_image::Image;

#[test]
fn read_and_seek_like_a_file() {
    let bs = 4096;
    let data = sample(9, bs, 500);
    let built = build(&data, &Spec::new(Dialect::UzipZlib, bs as u32));
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&built.image).unwrap();
    let image = Image::open(file.path()).unwrap();
    let expected = &built.expected;
    let size = expected.len() as u64;

    let mut reader = image.reader();
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert!(all == *expected);
    assert_eq!(reader.position(), size);
    assert_eq!(reader.read(&mut [0u8; 10]).unwrap(), 0);

    // Small reads inside one block, then across a boundary.
    assert_eq!(reader.seek(SeekFrom::Start(4090)).unwrap(), 4090);
    let mut small = [0u8; 4];
    reader.read_exact(&mut small).unwrap();
    assert_eq!(small, expected[4090..4094]);
    let mut across = [0u8; 100];
    reader.read_exact(&mut across).unwrap();
    assert_eq!(across[..], expected[4094..4194]);

    assert_eq!(reader.seek(SeekFrom::End(-10)).unwrap(), size - 10);
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail[..], expected[expected.len() - 10..]);

    assert_eq!(reader.seek(SeekFrom::Current(-20)).unwrap(), size - 20);
    assert!(reader.seek(SeekFrom::Current(-(size as i64) - 1)).is_err());
    assert_eq!(
        reader.position(),
        size - 20,
        "a failed seek leaves the position alone"
    );

    // Past the end: reads give 0 bytes, like a file.
    reader.seek(SeekFrom::Start(size + 1000)).unwrap();
    assert_eq!(reader.read(&mut [0u8; 10]).unwrap(), 0);

    // A reader is a plain io::Read: io::copy works.
    let mut reader = image.reader();
    let mut sink = Vec::new();
    assert_eq!(std::io::copy(&mut reader, &mut sink).unwrap(), size);
    assert!(sink == *expected);
}
