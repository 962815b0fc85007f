//! Decoding one block: fetch its compressed bytes, run its codec, apply the leniency rules of
//! docs/FORMAT.md §8.

use std::cell::RefCell;
use std::io;

use mkmodule_codec::BlockDecompressor;
use mkmodule_format::{BlockEntry, BlockIndex, BlockKind, Layout};

use crate::source::Source;
use crate::ImageError;

/// A thread's codec contexts and its buffer for compressed bytes.
struct Context {
    decompressor: BlockDecompressor,
    scratch: Vec<u8>,
}

impl Context {
    fn new() -> Context {
        Context {
            decompressor: BlockDecompressor::new(),
            scratch: Vec::new(),
        }
    }
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// A scratch buffer larger than this is freed after use instead of living as long as its thread
/// (only images with multi-megabyte blocks need one).
const KEEP_SCRATCH: usize = 4 << 20;

/// Runs `f` with this thread's context, creating it on first use.
fn with_context<R>(f: impl FnOnce(&mut Context) -> R) -> R {
    let mut f = Some(f);
    let result = CONTEXT.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        let ctx = slot.get_or_insert_with(Context::new);
        let result = (f.take()?)(ctx);
        if ctx.scratch.capacity() > KEEP_SCRATCH {
            ctx.scratch = Vec::new();
        }
        Some(result)
    });
    match (result, f) {
        (Ok(Some(result)), _) => result,
        // The thread-local is gone (thread exiting) or busy: use a throwaway context.
        (_, Some(f)) => f(&mut Context::new()),
        (_, None) => unreachable!("the closure ran but gave no result"),
    }
}

/// What a decoder needs to know about an image.
#[derive(Clone, Copy)]
pub(crate) struct Blocks<'a> {
    /// Where the compressed bytes are.
    pub source: &'a Source,
    /// Where header and index sit, and the dialect.
    pub layout: &'a Layout,
    /// The validated index.
    pub index: &'a BlockIndex,
}

impl Blocks<'_> {
    /// Decodes block `block` into `out`, which must be one block size long.
    ///
    /// Zero-length blocks give zeros; a final block that decodes short is zero-filled; any other
    /// short block is an error. In uzip dialects a final block that fails to decode and whose
    /// bytes are all zero reads as zeros, as geom_uzip does (docs/FORMAT.md §8).
    pub(crate) fn decode(&self, block: u32, out: &mut [u8]) -> Result<(), ImageError> {
        self.decode_fetched(block, None, out)
    }

    /// As [`Blocks::decode`], from the block's compressed bytes when already `fetched`.
    pub(crate) fn decode_fetched(
        &self,
        block: u32,
        fetched: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let entry = *self
            .index
            .get(block as usize)
            .ok_or(ImageError::NoSuchBlock {
                block: u64::from(block),
                num_blocks: self.index.header().num_blocks,
            })?;
        if entry.kind == BlockKind::Zero {
            out.fill(0);
            return Ok(());
        }
        let last = block as usize + 1 == self.index.len();
        let zero_final_ok = last && self.layout.dialect.spec().zero_length_blocks;
        with_context(|ctx| {
            let Context {
                decompressor,
                scratch,
            } = ctx;
            if let Some(bytes) = fetched.filter(|b| b.len() == entry.len as usize) {
                return decode_bytes(decompressor, block, &entry, bytes, out, last, zero_final_ok);
            }
            let result =
                self.source
                    .with_bytes(entry.offset, entry.len as usize, scratch, |bytes| {
                        decode_bytes(decompressor, block, &entry, bytes, out, last, zero_final_ok)
                    });
            result.unwrap_or_else(|source| Err(self.read_error(block, &entry, source)))
        })
    }

    /// The compressed bytes of the stored blocks among `blocks` (`None` for the others), read
    /// with one [`crate::ImageSource::read_many_at`] call, so a remote source can fetch
    /// adjacent blocks with one request.
    pub(crate) fn read_many(&self, blocks: &[u32]) -> io::Result<Vec<Option<Vec<u8>>>> {
        let mut bytes: Vec<Option<Vec<u8>>> = blocks
            .iter()
            .map(|&b| match self.index.get(b as usize) {
                Some(e) if e.kind == BlockKind::Stored && e.len > 0 => {
                    Some(vec![0u8; e.len as usize])
                }
                _ => None,
            })
            .collect();
        let mut reads: Vec<(u64, &mut [u8])> = blocks
            .iter()
            .zip(bytes.iter_mut())
            .filter_map(|(&b, buf)| {
                let entry = self.index.get(b as usize)?;
                Some((entry.offset, buf.as_mut()?.as_mut_slice()))
            })
            .collect();
        reads.sort_by_key(|(offset, _)| *offset);
        self.source.read_many_at(&mut reads)?;
        Ok(bytes)
    }

    /// The error for a failed read of a block's bytes.
    fn read_error(&self, block: u32, entry: &BlockEntry, source: io::Error) -> ImageError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            ImageError::Truncated {
                block,
                offset: entry.offset,
                len: entry.len,
                file_len: self.source.len().unwrap_or(self.layout.file_len),
            }
        } else {
            ImageError::BlockIo {
                block,
                offset: entry.offset,
                len: entry.len,
                source,
            }
        }
    }
}

/// Decodes one block's bytes into `out` under the leniency rules (see [`Blocks::decode`]).
fn decode_bytes(
    decompressor: &mut BlockDecompressor,
    block: u32,
    entry: &BlockEntry,
    bytes: &[u8],
    out: &mut [u8],
    last: bool,
    zero_final_ok: bool,
) -> Result<(), ImageError> {
    match decompressor.decompress(entry.codec, bytes, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) if last => {
            out[n..].fill(0);
            Ok(())
        }
        Ok(n) => Err(ImageError::ShortBlock {
            block,
            offset: entry.offset,
            len: entry.len,
            codec: entry.codec,
            decoded: n,
            expected: out.len() as u32,
        }),
        Err(_) if zero_final_ok && bytes.iter().all(|&b| b == 0) => {
            out.fill(0);
            Ok(())
        }
        Err(problem) => Err(ImageError::Decode {
            block,
            offset: entry.offset,
            len: entry.len,
            codec: entry.codec,
            problem,
        }),
    }
}
