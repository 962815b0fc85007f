//! `Image::from_bytes`: an image held in memory reads exactly like the same bytes in a file, and
//! is refused with the same errors.

use crate::common;

use std::io::Read;

use common::{build, fixtures, sample, sha256_hex, Spec};
use mkmodule_codec::CodecKind;
use mkmodule_format::{Dialect, FormatError};
use mkmodule_image::{ExposedSize, Image, ImageError, OpenOptions};

#[test]
fn fixtures_from_memory_read_back_to_their_raw_sha256() {
    for fixture in fixtures() {
        let bytes = std::fs::read(&fixture.path).unwrap();
        let image = Image::from_bytes(bytes, &OpenOptions::default()).unwrap();
        let name = &fixture.name;
        assert_eq!(image.path(), std::path::Path::new(""), "{name}");
        assert_eq!(image.num_blocks(), fixture.num_blocks, "{name}");
        assert_eq!(image.size(), fixture.raw_len, "{name}");
        let mut data = Vec::new();
        image.reader().read_to_end(&mut data).unwrap();
        assert_eq!(sha256_hex(&data), fixture.raw_sha256, "{name}");
    }
}

#[test]
fn every_dialect_from_memory_matches_the_file_reader() {
    let data = sample(9, 4096, 1000);
    let dir = tempfile::tempdir().unwrap();
    for dialect in Dialect::ALL {
        let mut spec = Spec::new(dialect, 4096);
        spec.trailer = mkmodule_format::is_header_first(dialect);
        let built = build(&data, &spec);
        let path = dir.path().join(dialect.name());
        std::fs::write(&path, &built.image).unwrap();
        let options = OpenOptions {
            exposed_size: ExposedSize::Original,
            ..OpenOptions::default()
        };
        let from_file = Image::open_with(&path, &options).unwrap();
        let in_memory = Image::from_bytes(built.image.clone(), &options).unwrap();
        let label = dialect.name();
        assert_eq!(in_memory.dialect(), dialect, "{label}");
        assert_eq!(in_memory.size(), from_file.size(), "{label}");
        assert_eq!(in_memory.trailer(), from_file.trailer(), "{label}");
        assert_eq!(in_memory.zero_blocks(), from_file.zero_blocks(), "{label}");
        let mut a = vec![0u8; from_file.size() as usize];
        let mut b = vec![0u8; in_memory.size() as usize];
        from_file.read_at(&mut a, 0).unwrap();
        in_memory.read_at(&mut b, 0).unwrap();
        assert!(a == b, "{label}: memory and file reads differ");
        assert_eq!(&b[..], &built.expected[..b.len()], "{label}");
    }
}

#[test]
fn mmap_is_ignored_for_memory_images() {
    let built = build(&sample(3, 512, 0), &Spec::new(Dialect::LinuxV2, 512));
    let options = OpenOptions {
        mmap: true,
        ..OpenOptions::default()
    };
    let image = Image::from_bytes(built.image, &options).unwrap();
    let mut all = vec![0u8; image.size() as usize];
    image.read_at(&mut all, 0).unwrap();
    assert_eq!(all, built.expected);
}

#[test]
fn bad_memory_images_are_refused_like_files() {
    let options = OpenOptions::default();
    assert!(matches!(
        Image::from_bytes(Vec::new(), &options),
        Err(ImageError::Format(FormatError::TooShort { len: 0, .. }))
    ));
    assert!(matches!(
        Image::from_bytes(vec![b'x'; 1000], &options),
        Err(ImageError::Format(FormatError::NotCloop { .. }))
    ));
    // A block cut short by truncation is reported with its number, not a panic.
    let built = build(
        &sample(4, 4096, 0),
        &Spec::new(Dialect::LinuxV4, 4096).codecs(&[CodecKind::Xz, CodecKind::Lz4]),
    );
    let index = built.index();
    let last = *index.get(3).unwrap();
    let mut cut = built.image.clone();
    cut.truncate(last.offset as usize + 1);
    // The index says the data runs past the file: refused at open.
    assert!(Image::from_bytes(cut, &options).is_err());
}
