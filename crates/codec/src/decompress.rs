//! Decompressing one block into a caller's buffer, safely, with contexts kept between blocks.

use std::fmt;

use liblzma::stream::{Action, Status, Stream};
use mkmodule_format::CodecKind;

use crate::CodecError;

/// Memory the xz decoder may use per block. xz presets need up to 65 MiB (`-9`: 64 MiB
/// dictionary), so this accepts every preset and rejects hostile dictionaries of up to 4 GiB.
pub const XZ_MEMLIMIT: u64 = 96 << 20;

/// Largest zstd window (as a power of two) a frame may declare: 128 MiB, zstd's own default
/// decoder limit. Frames declaring more are refused before decoding. (The one-shot decoder used
/// here writes straight into the caller's buffer and allocates no window at all, so this is a
/// sanity bound; frames written with a known content size use a window no larger than it.)
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// zstd's message for `dstSize_tooSmall`.
const ZSTD_DST_TOO_SMALL: &str = "Destination buffer is too small";

/// Decompresses blocks of any codec; create one per thread and reuse it for every block.
pub struct BlockDecompressor {
    deflate: libdeflater::Decompressor,
    zstd: Option<Box<zstd::bulk::Decompressor<'static>>>,
}

impl fmt::Debug for BlockDecompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockDecompressor").finish_non_exhaustive()
    }
}

impl Default for BlockDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockDecompressor {
    /// A decompressor; the zstd context is allocated on first use.
    pub fn new() -> Self {
        BlockDecompressor {
            deflate: libdeflater::Decompressor::new(),
            zstd: None,
        }
    }

    /// Decodes the block `input` of codec `kind` into `out` and returns the bytes produced.
    ///
    /// Never writes past `out`. Errors on empty, truncated or corrupt input, on a failed
    /// integrity check, and on a block that would decode to more than `out.len()` bytes. A block
    /// may decode shorter than `out` (a uzip final block); callers decide whether that is fine,
    /// or use [`BlockDecompressor::decompress_exact`]. Bytes of `out` past the returned count
    /// are unspecified (the LZ4 decoder may use them as scratch).
    pub fn decompress(
        &mut self,
        kind: CodecKind,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        if input.is_empty() {
            return Err(CodecError::Empty { codec: kind });
        }
        let produced = match kind {
            CodecKind::Zlib => self.zlib(input, out)?,
            CodecKind::Zstd => self.zstd(input, out)?,
            CodecKind::Xz => xz(input, out)?,
            CodecKind::Lz4 => lz4(input, out)?,
            CodecKind::Lzo => lzo(input, out)?,
            CodecKind::None => {
                let limit = out.len();
                let dst = out
                    .get_mut(..input.len())
                    .ok_or(CodecError::OutputTooLarge { codec: kind, limit })?;
                dst.copy_from_slice(input);
                input.len()
            }
        };
        // Every decoder above is bounded by `out`; keep the contract checked anyway.
        debug_assert!(produced <= out.len());
        Ok(produced)
    }

    /// Like [`BlockDecompressor::decompress`], but the block must fill `out` exactly.
    pub fn decompress_exact(
        &mut self,
        kind: CodecKind,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let actual = self.decompress(kind, input, out)?;
        if actual == out.len() {
            Ok(())
        } else {
            Err(CodecError::SizeMismatch {
                codec: kind,
                expected: out.len(),
                actual,
            })
        }
    }

    /// zlib (RFC 1950) with Adler-32 verified; bytes after the stream's end are ignored.
    ///
    /// libdeflate's zlib decoder stops at the Adler-32 trailer and does not look at what
    /// follows, which is the qemu/cloop behaviour for slack after a stream.
    fn zlib(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        let codec = CodecKind::Zlib;
        self.deflate
            .zlib_decompress(input, out)
            .map_err(|e| match e {
                libdeflater::DecompressionError::InsufficientSpace => CodecError::OutputTooLarge {
                    codec,
                    limit: out.len(),
                },
                libdeflater::DecompressionError::BadData => CodecError::corrupt(
                    codec,
                    "invalid zlib stream (bad header, deflate data or Adler-32, or truncated)",
                ),
            })
    }

    /// One zstd frame, content checksum verified when present; bytes after the frame ignored.
    fn zstd(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        use zstd::zstd_safe;
        let codec = CodecKind::Zstd;
        let frame_len = zstd_safe::find_frame_compressed_size(input)
            .map_err(|code| CodecError::corrupt(codec, zstd_safe::get_error_name(code)))?;
        let frame = input
            .get(..frame_len)
            .ok_or_else(|| CodecError::corrupt(codec, "frame longer than the block"))?;
        let too_large = CodecError::OutputTooLarge {
            codec,
            limit: out.len(),
        };
        if let Some(window) = zstd_window_size(frame) {
            if window > 1u64 << ZSTD_WINDOW_LOG_MAX {
                return Err(CodecError::MemoryLimit {
                    codec,
                    limit: 1 << ZSTD_WINDOW_LOG_MAX,
                });
            }
        }
        if let Ok(Some(size)) = zstd_safe::get_frame_content_size(frame) {
            if size > out.len() as u64 {
                return Err(too_large);
            }
        }
        let dctx = match &mut self.zstd {
            Some(d) => d,
            slot => slot.insert(Box::new(zstd_decompressor()?)),
        };
        dctx.decompress_to_buffer(frame, out).map_err(|e| {
            let msg = e.to_string();
            if msg.contains(ZSTD_DST_TOO_SMALL) {
                too_large
            } else {
                CodecError::corrupt(codec, msg)
            }
        })
    }
}

/// The window size a zstd frame header declares, if it has a window descriptor.
///
/// Single-segment frames have none (their window is the content size, checked separately), and
/// skippable frames carry no window.
fn zstd_window_size(frame: &[u8]) -> Option<u64> {
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let (magic, rest) = frame.split_first_chunk::<4>()?;
    let (&descriptor, rest) = rest.split_first()?;
    if *magic != MAGIC || descriptor & 0x20 != 0 {
        return None;
    }
    let wd = *rest.first()?;
    let base = 1u64 << (10 + (wd >> 3));
    Some(base + base / 8 * u64::from(wd & 7))
}

/// A zstd decoder context that refuses windows above [`ZSTD_WINDOW_LOG_MAX`].
fn zstd_decompressor() -> Result<zstd::bulk::Decompressor<'static>, CodecError> {
    let err = |e: std::io::Error| CodecError::backend(CodecKind::Zstd, e);
    let mut d = zstd::bulk::Decompressor::new().map_err(err)?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
        ZSTD_WINDOW_LOG_MAX,
    ))
    .map_err(err)?;
    Ok(d)
}

/// One complete `.xz` stream: must reach stream end with its integrity check verified.
///
/// Any check type liblzma knows is verified (the writer uses CRC32); bytes after the stream
/// footer are ignored. Memory is bounded by [`XZ_MEMLIMIT`].
fn xz(input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    let codec = CodecKind::Xz;
    let map = |e: liblzma::stream::Error| match e {
        liblzma::stream::Error::MemLimit => CodecError::MemoryLimit {
            codec,
            limit: XZ_MEMLIMIT,
        },
        liblzma::stream::Error::Data => {
            CodecError::corrupt(codec, "compressed data or integrity check is corrupt")
        }
        liblzma::stream::Error::Format => CodecError::corrupt(codec, "not an .xz stream"),
        liblzma::stream::Error::Options => {
            CodecError::corrupt(codec, "unsupported options or filters in the stream")
        }
        other => CodecError::backend(codec, format!("{other:?}")),
    };
    let mut stream = Stream::new_stream_decoder(XZ_MEMLIMIT, 0).map_err(map)?;
    // Once `out` is full, decode into one spare byte: stream end there means the block fitted
    // exactly, a byte there means it decodes to more than `out`.
    let mut spare = [0u8; 1];
    loop {
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let in_pos = usize::try_from(in_before).unwrap_or(usize::MAX);
        let out_pos = usize::try_from(out_before).unwrap_or(usize::MAX);
        let rest = input.get(in_pos..).unwrap_or_default();
        let dst = match out.get_mut(out_pos..) {
            Some(dst) if !dst.is_empty() => dst,
            _ => &mut spare[..],
        };
        let status = stream.process(rest, dst, Action::Finish).map_err(map)?;
        if stream.total_out() > out.len() as u64 {
            return Err(CodecError::OutputTooLarge {
                codec,
                limit: out.len(),
            });
        }
        if status == Status::StreamEnd {
            // total_out <= out.len() was checked just above.
            return Ok(usize::try_from(stream.total_out()).unwrap_or(usize::MAX));
        }
        if (stream.total_in(), stream.total_out()) == (in_before, out_before) {
            return Err(CodecError::corrupt(
                codec,
                "truncated: the block ends before the end of the .xz stream",
            ));
        }
    }
}

/// One raw LZ4 block (no frame, no size prefix).
fn lz4(input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    let codec = CodecKind::Lz4;
    lz4_flex::block::decompress_into(input, out).map_err(|e| match e {
        lz4_flex::block::DecompressError::OutputTooSmall { .. } => CodecError::OutputTooLarge {
            codec,
            limit: out.len(),
        },
        other => CodecError::corrupt(codec, other.to_string()),
    })
}

/// One raw LZO1X block (no lzop header): the whole input is one stream ending in its end marker.
#[cfg(feature = "lzo")]
fn lzo(input: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
    let codec = CodecKind::Lzo;
    lzokay::decompress::decompress(input, out).map_err(|e| match e {
        lzokay::Error::OutputOverrun => CodecError::OutputTooLarge {
            codec,
            limit: out.len(),
        },
        lzokay::Error::InputOverrun => {
            CodecError::corrupt(codec, "truncated: the block ends inside the LZO1X stream")
        }
        lzokay::Error::InputNotConsumed => {
            CodecError::corrupt(codec, "bytes after the end of the LZO1X stream")
        }
        other => CodecError::corrupt(codec, format!("invalid LZO1X data: {other}")),
    })
}

/// LZO is not compiled in.
#[cfg(not(feature = "lzo"))]
fn lzo(_input: &[u8], _out: &mut [u8]) -> Result<usize, CodecError> {
    Err(CodecError::Unsupported {
        codec: CodecKind::Lzo,
    })
}
