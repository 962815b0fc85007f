//! Compressing one block into a caller's buffer, with the codec context kept between blocks.

use std::fmt;

use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
use mkmodule_format::CodecKind;

use crate::{CodecError, CodecSpec};

/// The smallest LZMA2 dictionary liblzma accepts.
const XZ_MIN_DICT: u32 = 4096;

/// An LZO1X stream of no bytes: the end-of-stream instruction alone, as liblzo2 writes it.
#[cfg(feature = "lzo")]
const LZO_END_MARKER: [u8; 3] = [0x11, 0x00, 0x00];

/// The codec context a [`BlockCompressor`] keeps between blocks.
enum Engine {
    Zlib(libdeflater::Compressor),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Xz(u32),
    Lz4,
    #[cfg(feature = "lzo")]
    Lzo(Box<lzokay::compress::Dict>),
    None,
}

/// Compresses blocks with one [`CodecSpec`]; create one per thread and reuse it for every block.
pub struct BlockCompressor {
    spec: CodecSpec,
    engine: Engine,
}

impl fmt::Debug for BlockCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCompressor")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl BlockCompressor {
    /// A compressor for `spec`, with its codec context allocated once here.
    pub fn new(spec: CodecSpec) -> Result<Self, CodecError> {
        let kind = spec.kind();
        let level = spec.level().unwrap_or(0);
        let engine = match kind {
            CodecKind::Zlib => {
                let lvl = libdeflater::CompressionLvl::new(level).map_err(|_| {
                    CodecError::InvalidLevel {
                        codec: kind,
                        level,
                        min: 0,
                        max: 12,
                    }
                })?;
                Engine::Zlib(libdeflater::Compressor::new(lvl))
            }
            CodecKind::Zstd => Engine::Zstd(Box::new(zstd_compressor(level)?)),
            CodecKind::Xz => {
                Engine::Xz(u32::try_from(level).map_err(|_| CodecError::InvalidLevel {
                    codec: kind,
                    level,
                    min: 0,
                    max: 9,
                })?)
            }
            CodecKind::Lz4 => Engine::Lz4,
            #[cfg(feature = "lzo")]
            CodecKind::Lzo => Engine::Lzo(lzokay::compress::Dict::new()),
            #[cfg(not(feature = "lzo"))]
            CodecKind::Lzo => return Err(CodecError::Unsupported { codec: kind }),
            CodecKind::None => Engine::None,
        };
        Ok(BlockCompressor { spec, engine })
    }

    /// The spec this compressor was made for.
    pub fn spec(&self) -> CodecSpec {
        self.spec
    }

    /// Replaces `out`'s contents with `input` compressed as one block, reusing `out`'s capacity.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        let kind = self.spec.kind();
        match &mut self.engine {
            Engine::Zlib(c) => {
                out.resize(c.zlib_compress_bound(input.len()), 0);
                let n = c
                    .zlib_compress(input, out)
                    .map_err(|e| CodecError::backend(kind, e))?;
                out.truncate(n);
            }
            Engine::Zstd(c) => {
                out.reserve(zstd::zstd_safe::compress_bound(input.len()));
                c.compress_to_buffer(input, out)
                    .map_err(|e| CodecError::backend(kind, e))?;
            }
            Engine::Xz(preset) => xz_compress(*preset, input, out)?,
            Engine::Lz4 => {
                out.resize(lz4_flex::block::get_maximum_output_size(input.len()), 0);
                let n = lz4_flex::block::compress_into(input, out)
                    .map_err(|e| CodecError::backend(kind, e))?;
                out.truncate(n);
            }
            // lzokay encodes no input as an invalid stream (a stray first byte before the end
            // marker, which liblzo2 refuses); liblzo2 writes the end marker alone.
            #[cfg(feature = "lzo")]
            Engine::Lzo(_) if input.is_empty() => out.extend_from_slice(&LZO_END_MARKER),
            #[cfg(feature = "lzo")]
            Engine::Lzo(dict) => {
                out.resize(lzokay::compress::compress_worst_size(input.len()), 0);
                let n = lzokay::compress::compress_no_alloc(input, out, dict)
                    .map_err(|e| CodecError::backend(kind, e))?;
                out.truncate(n);
            }
            Engine::None => out.extend_from_slice(input),
        }
        Ok(())
    }
}

/// A zstd context that writes one frame per call with content size and XXH64 checksum.
fn zstd_compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>, CodecError> {
    use zstd::zstd_safe::CParameter;
    let err = |e: std::io::Error| CodecError::backend(CodecKind::Zstd, e);
    let mut c = zstd::bulk::Compressor::new(level).map_err(err)?;
    c.set_parameter(CParameter::ChecksumFlag(true))
        .map_err(err)?;
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    Ok(c)
}

/// Dictionary size of xz presets 0..=9 (liblzma's table).
fn xz_preset_dict(preset: u32) -> u32 {
    const MIB: u32 = 1 << 20;
    match preset {
        0 => 256 << 10,
        1 => MIB,
        2 => 2 * MIB,
        3 | 4 => 4 * MIB,
        5 | 6 => 8 * MIB,
        7 => 16 * MIB,
        8 => 32 * MIB,
        _ => 64 * MIB,
    }
}

/// Writes one complete `.xz` stream (LZMA2, CRC32, no BCJ) for `input` into `out`.
///
/// The preset's dictionary is shrunk to the smallest power of two that holds the whole block:
/// the output decodes the same everywhere, and encoder and decoder memory stay small.
fn xz_compress(preset: u32, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let kind = CodecKind::Xz;
    let err = |e: liblzma::stream::Error| CodecError::backend(kind, format!("{e:?}"));
    let mut opts = LzmaOptions::new_preset(preset).map_err(err)?;
    let fit = u32::try_from(input.len())
        .unwrap_or(u32::MAX)
        .checked_next_power_of_two()
        .unwrap_or(u32::MAX);
    opts.dict_size(fit.clamp(XZ_MIN_DICT, xz_preset_dict(preset)));
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let mut stream = Stream::new_stream_encoder(&filters, Check::Crc32).map_err(err)?;
    out.reserve(input.len() + input.len() / 64 + 128);
    loop {
        if out.len() == out.capacity() {
            out.reserve(4096);
        }
        // total_in never exceeds input.len(), so this never panics.
        let consumed = usize::try_from(stream.total_in()).unwrap_or(input.len());
        let rest = input.get(consumed..).unwrap_or_default();
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        match stream.process_vec(rest, out, Action::Finish).map_err(err)? {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::GetCheck | Status::MemNeeded => {}
        }
        let stalled = (stream.total_in(), stream.total_out()) == (in_before, out_before);
        if stalled && out.len() < out.capacity() {
            return Err(CodecError::backend(kind, "encoder made no progress"));
        }
    }
}
