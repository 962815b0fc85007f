//! Opening an image: detect the dialect, read and validate the index and trailer, find the zero
//! blocks, set up cache and read-ahead. No byte is served before all of that succeeded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mkmodule_format::{
    detect, find_trailer, BlockIndex, FormatError, Layout, Trailer, ENTRY_LEN, IDENTIFY_LEN,
    PROBE_LEN,
};

use crate::cache::BlockCache;
use crate::decode::Blocks;
use crate::image::Image;
use crate::image_core::Core;
use crate::mmap::MappedFile;
use crate::readahead::ReadAhead;
use crate::source::{file_len, FileSource, ImageSource, MemorySource, Source};
use crate::zero_map::ZeroMap;
use crate::ImageError;

/// Which size an image exposes to readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExposedSize {
    /// Blocks × block size: what every cloop reader exposes (Linux, qemu, FreeBSD). The default.
    #[default]
    Padded,
    /// The exact original input length when mkmodule's trailer records it, else as `Padded`.
    Original,
}

/// How to open an image; `OpenOptions::default()` suits most readers.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Byte limit of the cache of decoded blocks (default 32 MiB; 0 disables caching).
    pub cache_bytes: u64,
    /// Bytes to decode ahead of a sequential reader (default 4 MiB; 0 disables read-ahead).
    /// Limited to half the cache, so blocks decoded ahead are not evicted before they are read.
    /// A source that wants asked-for reads only ([`ImageSource::asked_only`], a remote one) gets
    /// no read-ahead: the value then bounds only hints ([`crate::Image::prefetch`]).
    pub readahead: u64,
    /// Threads of the read-ahead pool, started on the first sequential read (default: the
    /// number of cores, at most 8).
    pub readahead_threads: usize,
    /// Map the file into memory instead of reading it with `pread` (default off).
    ///
    /// Saves a copy per block, but the image must not change while it is open: if the file is
    /// truncated, touching a mapped page past its new end raises `SIGBUS` and kills the process,
    /// where `pread` would return an error naming the block.
    pub mmap: bool,
    /// Padded or original size (default padded).
    pub exposed_size: ExposedSize,
    /// Find blocks whose compressed bytes equal those of a decoded zero block (default on; the
    /// cost is a few reads at open). Off: only zero-length blocks are known zero.
    pub scan_zero_blocks: bool,
}

/// Default byte limit of the block cache.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;
/// Default read-ahead in bytes.
pub const DEFAULT_READAHEAD: u64 = 4 << 20;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            readahead: DEFAULT_READAHEAD,
            readahead_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
            mmap: false,
            exposed_size: ExposedSize::Padded,
            scan_zero_blocks: true,
        }
    }
}

impl Image {
    /// Opens an image with [`OpenOptions::default`].
    pub fn open(path: impl AsRef<Path>) -> Result<Image, ImageError> {
        Image::open_with(path, &OpenOptions::default())
    }

    /// Opens an image: detects its dialect, reads and validates its index and trailer, and
    /// finds its zero blocks, before serving a byte.
    pub fn open_with(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Image, ImageError> {
        let path = path.as_ref();
        let open_error = |source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_error)?;
        let len = file_len(&file).map_err(open_error)?;
        // The header, index and trailer are always read with positioned reads; only then is the
        // file mapped, when asked.
        let reading = Source::new(Box::new(FileSource::new(
            file.try_clone().map_err(open_error)?,
        )));
        let parsed = Parsed::read(&reading, len)?;
        let source: Box<dyn ImageSource> = if options.mmap {
            Box::new(MappedFile::map(&file).map_err(open_error)?)
        } else {
            Box::new(FileSource::new(file))
        };
        Ok(Image::assemble(
            path.to_path_buf(),
            Source::new(source),
            parsed,
            options,
        ))
    }

    /// Opens an image whose bytes come from `source`, with the same checks as
    /// [`Image::open_with`]; `name` stands for the image in messages and [`Image::path`].
    ///
    /// [`OpenOptions::mmap`] is ignored: the source decides how it reads.
    pub fn open_source(
        source: Box<dyn ImageSource>,
        name: impl Into<PathBuf>,
        options: &OpenOptions,
    ) -> Result<Image, ImageError> {
        let name = name.into();
        let source = Source::new(source);
        let len = source.len().map_err(|source| ImageError::Open {
            path: name.clone(),
            source,
        })?;
        let parsed = Parsed::read(&source, len)?;
        Ok(Image::assemble(name, source, parsed, options))
    }

    /// Opens an image held in memory, with the same checks as [`Image::open_with`].
    ///
    /// For images that do not live in a file: received over a network, embedded, or made by a
    /// test or a fuzzer. [`Image::path`] is empty, and [`OpenOptions::mmap`] is ignored.
    ///
    /// ```
    /// use mkmodule_image::{Image, ImageError, OpenOptions};
    /// use mkmodule_format::FormatError;
    ///
    /// let err = Image::from_bytes(b"not an image".to_vec(), &OpenOptions::default()).unwrap_err();
    /// assert!(matches!(err, ImageError::Format(FormatError::TooShort { .. })));
    /// ```
    pub fn from_bytes(bytes: Vec<u8>, options: &OpenOptions) -> Result<Image, ImageError> {
        Image::open_source(Box::new(MemorySource::new(bytes)), PathBuf::new(), options)
    }

    /// Builds the image from its validated parts: finds the zero blocks and sets up cache and
    /// read-ahead.
    fn assemble(path: PathBuf, source: Source, parsed: Parsed, options: &OpenOptions) -> Image {
        let Parsed {
            layout,
            index,
            trailer,
            trailer_problem,
        } = parsed;
        let padded = layout.header.device_size();
        let size = match (options.exposed_size, &trailer, &trailer_problem) {
            (ExposedSize::Original, Some(t), None) => t.original_len,
            _ => padded,
        };
        let zero = ZeroMap::build(
            Blocks {
                source: &source,
                layout: &layout,
                index: &index,
            },
            options.scan_zero_blocks,
        );
        let block_size = layout.header.block_size;
        let cache = BlockCache::new(options.cache_bytes, block_size);
        let window = (options.readahead / u64::from(block_size))
            .min(cache.capacity() as u64 / 2)
            .min(u64::from(u32::MAX)) as u32;
        let ahead = ReadAhead::new(window, options.readahead_threads, source.asked_only());
        let core = Core {
            path,
            source,
            layout,
            index,
            trailer,
            trailer_problem,
            zero,
            cache,
            size,
            zero_block: OnceLock::new(),
        };
        Image {
            core: Arc::new(core),
            ahead,
        }
    }
}

/// What is read and checked before an image serves a byte.
struct Parsed {
    layout: Layout,
    index: BlockIndex,
    trailer: Option<Trailer>,
    trailer_problem: Option<ImageError>,
}

impl Parsed {
    /// Detects the layout of the `len`-byte image in `source`, reads and validates its index
    /// and looks for its trailer.
    fn read(source: &Source, len: u64) -> Result<Parsed, ImageError> {
        let probe = PROBE_LEN.min(usize::try_from(len).unwrap_or(PROBE_LEN));
        let head = read_at(source, probe, 0)?;
        let tail = read_at(source, probe, len - probe as u64)?;
        let layout = match detect(&head, &tail, len) {
            // Not an image: look further into the file so the error can say what it is instead.
            Err(FormatError::NotCloop { .. }) if len > probe as u64 => {
                let wider = IDENTIFY_LEN.min(usize::try_from(len).unwrap_or(IDENTIFY_LEN));
                detect(&read_at(source, wider, 0)?, &tail, len)?
            }
            other => other?,
        };
        let index_len = usize::try_from(layout.index_len()).map_err(|_| ImageError::Io {
            offset: layout.index_offset,
            len: layout.index_len(),
            source: std::io::Error::other("the index does not fit in memory"),
        })?;
        let index_bytes = read_index(source, &layout, index_len)?;
        let index = BlockIndex::parse(&layout, &index_bytes)?;
        drop(index_bytes);

        let padded = layout.header.device_size();
        let (trailer, trailer_problem) = match find_trailer(&layout, &index, &tail) {
            Ok(Some(t)) if t.original_len > padded => {
                let problem = ImageError::TrailerLength {
                    original_len: t.original_len,
                    padded,
                };
                (Some(t), Some(problem))
            }
            Ok(trailer) => (trailer, None),
            Err(e) => (None, Some(ImageError::Format(e))),
        };
        Ok(Parsed {
            layout,
            index,
            trailer,
            trailer_problem,
        })
    }
}

/// Bytes of the index read (and their entries checked) at a time.
const INDEX_PIECE: usize = 1 << 20;

/// Reads the `len`-byte index of `layout`, [`INDEX_PIECE`] bytes at a time, checking each
/// piece's entries before reading the next. The buffer grows with what was read, so a header
/// claiming billions of blocks over a sparse or garbage index fails at its first bad entry with
/// little memory used, instead of after reading gigabytes of zeros (or failing to allocate).
fn read_index(source: &Source, layout: &Layout, len: usize) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::with_capacity(len.min(INDEX_PIECE));
    while bytes.len() < len {
        let at = bytes.len();
        let take = (len - at).min(INDEX_PIECE);
        let offset = layout.index_offset + at as u64;
        bytes.resize(at + take, 0);
        source
            .read_exact_at(&mut bytes[at..], offset)
            .map_err(|source| ImageError::Io {
                offset,
                len: take as u64,
                source,
            })?;
        // `at` is a multiple of the entry length: every piece but the last is.
        BlockIndex::check_entries(layout, (at / ENTRY_LEN as usize) as u64, &bytes[at..])?;
    }
    Ok(bytes)
}

/// Reads `len` bytes at `offset` into a new buffer.
fn read_at(source: &Source, len: usize, offset: u64) -> Result<Vec<u8>, ImageError> {
    let mut buf = vec![0u8; len];
    source
        .read_exact_at(&mut buf, offset)
        .map_err(|source| ImageError::Io {
            offset,
            len: len as u64,
            source,
        })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_format::{Dialect, FormatError, Header};

    /// A header claiming 2^27 blocks (8 TiB at 64 KiB) over a 1 GiB sparse, all-zero index: the
    /// open fails at block 0 after reading one piece, not after reading the whole index.
    #[test]
    fn a_sparse_index_fails_at_its_first_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let n = 1u32 << 27;
        let header = Header {
            block_size: 65536,
            num_blocks: n,
        };
        let file = File::create(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &header.encode(Dialect::LinuxV2), 0)
            .unwrap();
        file.set_len(136 + header.index_len() + 4096).unwrap();
        let source = Source::new(Box::new(FileSource::new(File::open(&path).unwrap())));
        let layout = {
            let head = read_at(&source, PROBE_LEN, 0).unwrap();
            detect(&head, &head, 136 + header.index_len() + 4096).unwrap()
        };
        match read_index(&source, &layout, header.index_len() as usize) {
            Err(ImageError::Format(FormatError::OffsetBeforeData {
                block: 0,
                offset: 0,
                ..
            })) => {}
            other => panic!("{:?}", other.map(|b| b.len())),
        }
        let err = Image::open(&path).unwrap_err();
        assert!(
            err.to_string().starts_with("block 0 starts at offset 0"),
            "{err}"
        );
    }

    /// Pieces are cut at entry boundaries, and an index longer than one piece reads whole.
    #[test]
    fn an_index_of_several_pieces_reads_whole() {
        let n = (INDEX_PIECE / 8 * 2 + 100) as u32;
        let header = Header {
            block_size: 512,
            num_blocks: n,
        };
        let mut bytes = header.encode(Dialect::UzipZlib).to_vec();
        let start = 136 + header.index_len();
        for _ in 0..=n {
            // Every block zero-length (uzip allows it): all entries point at the data start.
            bytes.extend_from_slice(&start.to_be_bytes());
        }
        let len = bytes.len() as u64;
        let source = Source::new(Box::new(MemorySource::new(bytes.clone())));
        let layout = detect(&bytes, &bytes, len).unwrap();
        let index = read_index(&source, &layout, header.index_len() as usize).unwrap();
        assert_eq!(index, bytes[136..]);
        let image = Image::from_bytes(bytes, &OpenOptions::default()).unwrap();
        assert_eq!(image.num_blocks(), n);
    }
}
