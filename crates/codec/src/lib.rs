//! Block codecs for cloop-family images: zlib, zstd, xz, lz4, lzo and none.
//!
//! Each call compresses or decompresses exactly one block into a caller's buffer. Create one
//! [`BlockCompressor`] or [`BlockDecompressor`] per thread and reuse it: the codec contexts
//! (libdeflate, zstd) are allocated once. The encodings are the ones the readers expect
//! (docs/FORMAT.md §9):
//!
//! * zlib: an RFC 1950 stream (libdeflate); level 0 writes stored blocks.
//! * zstd: one frame with content size and XXH64 content checksum.
//! * xz: one complete `.xz` stream, LZMA2, CRC32 check, no BCJ.
//! * lz4: one raw LZ4 block, no frame and no size prefix.
//! * lzo: one raw LZO1X block (feature `lzo`, on by default).
//! * none: the bytes as they are.

mod compress;
mod decompress;
mod error;
mod spec;

pub use compress::BlockCompressor;
pub use decompress::{BlockDecompressor, XZ_MEMLIMIT, ZSTD_WINDOW_LOG_MAX};
pub use error::CodecError;
pub use mkmodule_format::CodecKind;
pub use spec::{codec_list, codec_syntax, level_range, CodecSpec, LevelRange};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_can_move_to_worker_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<BlockCompressor>();
        assert_send::<BlockDecompressor>();
        assert_send::<CodecError>();
    }
}
