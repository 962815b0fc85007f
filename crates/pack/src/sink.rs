//! Where the image goes and in what order its parts are written: in place (blocks, then header
//! and index at the start), spooled (blocks to a scratch file, then everything front to back),
//! or streamed (footer images: lead-in, blocks, index, header).

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use mkmodule_format::{
    header_first_data_start, is_header_first, BlockDigestAlgorithm, DigestAlgorithm,
    DigestTableRef, Header, StoredChecksRef, Trailer, TrailerExtension, HEADER_LEN, PREAMBLE_LEN,
};

use crate::block::Reused;
use crate::error::{ImagePart, PackError};
use crate::options::Plan;
use crate::pipeline::{self, Input, InputStats};
use crate::reuse::Reuse;
use crate::summary::ProgressEvent;
use crate::writer::ImageBuilder;

/// Output buffer in front of the sink: coalesces small blocks (an all-zero block compresses to
/// a few hundred bytes) into few large writes.
const WRITE_BUFFER: usize = 1 << 20;

/// Something to write an image into that can seek (a file, a block device, a `Cursor`).
pub trait SeekWrite: Write + Seek {}
impl<T: Write + Seek + ?Sized> SeekWrite for T {}

/// A scratch file for compressed blocks: written, rewound, read back.
pub trait Spool: Read + Write + Seek {}
impl<T: Read + Write + Seek + ?Sized> Spool for T {}

/// Where the image goes.
pub enum Sink<'a> {
    /// A seekable output where the image starts at offset 0. Header-first images are written in
    /// place: blocks first, then header and index at the start; this needs the block count up
    /// front, i.e. [`crate::PackOptions::input_len`]. Footer images are written front to back.
    Seekable(&'a mut dyn SeekWrite),
    /// Any output plus a spool: for header-first images whose block count is unknown (a stream
    /// without `--size`). The compressed blocks go to the spool; once all are there, header,
    /// index and blocks are written to `output` front to back. The spool should be a file, never
    /// memory: it holds the whole block area.
    Spooled {
        /// The image's destination (need not seek).
        output: &'a mut dyn Write,
        /// Scratch storage for the blocks, rewound before use.
        spool: &'a mut dyn Spool,
    },
    /// A sequential output (a pipe): footer images only, whose index follows the blocks.
    Stream(&'a mut dyn Write),
}

/// What the caller has to write an image into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A new file of the caller's, written from offset 0, with room beside it for a spool file.
    NewFile,
    /// An existing output that seeks, where the image starts at offset 0 (a device, a regular
    /// file given as standard output); no spool file.
    Seekable,
    /// An output that only goes forward: a pipe, a socket, a file not at its start.
    Sequential,
}

/// Which [`Sink`] to build for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// [`Sink::Seekable`].
    Seekable,
    /// [`Sink::Spooled`].
    Spooled,
    /// [`Sink::Stream`].
    Stream,
}

impl SinkKind {
    /// The sink for `plan` and an output of `kind`, named `name` in the error (`standard
    /// output`, `the device /dev/sdb`): footer images stream to anything; header-first images
    /// are written in place when the input length is known and the output seeks, spooled
    /// beside a new file when the length is unknown, and refused otherwise.
    pub fn choose(plan: &Plan, kind: OutputKind, name: &str) -> Result<SinkKind, PackError> {
        let chosen = if !is_header_first(plan.dialect) {
            SinkKind::Stream
        } else {
            match (kind, plan.input_len) {
                (OutputKind::NewFile | OutputKind::Seekable, Some(_)) => SinkKind::Seekable,
                (OutputKind::NewFile, None) => SinkKind::Spooled,
                _ => {
                    return Err(PackError::OutputCannotHold {
                        dialect: plan.dialect,
                        output: name.to_string(),
                    })
                }
            }
        };
        chosen.check(plan)?;
        Ok(chosen)
    }

    /// Refuses a sink that cannot hold `plan`'s layout: a header-first image streamed, or
    /// written in place without its length.
    pub fn check(self, plan: &Plan) -> Result<(), PackError> {
        let header_first = is_header_first(plan.dialect);
        match self {
            SinkKind::Stream if header_first => Err(PackError::CannotStream {
                dialect: plan.dialect,
            }),
            SinkKind::Seekable if header_first && plan.input_len.is_none() => {
                Err(PackError::InPlaceNeedsLength {
                    dialect: plan.dialect,
                })
            }
            _ => Ok(()),
        }
    }
}

impl Sink<'_> {
    /// Which kind of sink this is.
    pub fn kind(&self) -> SinkKind {
        match self {
            Sink::Seekable(_) => SinkKind::Seekable,
            Sink::Spooled { .. } => SinkKind::Spooled,
            Sink::Stream(_) => SinkKind::Stream,
        }
    }
}

/// Writes the whole image into `sink`; returns what the reader saw, `index[n]` and the image
/// length.
pub(crate) fn write_image<R: Read + Send>(
    input: Input<'_, R>,
    sink: Sink<'_>,
    plan: &Plan,
    builder: &mut ImageBuilder<'_>,
    reuse: Option<&Reuse<'_>>,
    progress: &dyn Fn(ProgressEvent),
) -> Result<(InputStats, u64, u64), PackError> {
    let run = Conveyor {
        plan,
        reuse,
        progress,
    };
    let header_first = is_header_first(plan.dialect);
    Ok(match sink {
        Sink::Seekable(out) if header_first => {
            let len = plan.input_len.unwrap_or_default();
            let n = plan.num_blocks_for(len);
            let base = header_first_data_start(n as u32);
            out.seek(SeekFrom::Start(base))
                .map_err(|e| PackError::write(ImagePart::Block(0), base, e))?;
            let mut body = BufWriter::with_capacity(WRITE_BUFFER, &mut *out);
            let stats = run.blocks(input, builder, &mut body, Some(base))?;
            let data_end = base + builder.data_len();
            flush(body, ImagePart::LastBlocks, data_end)?;
            progress(ProgressEvent::Finishing);
            out.seek(SeekFrom::Start(0))
                .map_err(|e| PackError::write(ImagePart::Header, 0, e))?;
            let mut head = BufWriter::with_capacity(WRITE_BUFFER, &mut *out);
            write_head(plan, builder, &mut head)?;
            flush(head, ImagePart::Index, HEADER_LEN)?;
            out.seek(SeekFrom::Start(data_end))
                .map_err(|e| PackError::write(ImagePart::Trailer, data_end, e))?;
            let image_len = write_tail(plan, &stats, builder, data_end, &mut *out)?;
            (stats, data_end, image_len)
        }
        Sink::Spooled { output, spool } if header_first => {
            spool
                .seek(SeekFrom::Start(0))
                .map_err(|e| PackError::write(ImagePart::SpoolStart, 0, e))?;
            let mut body = BufWriter::with_capacity(WRITE_BUFFER, &mut *spool);
            let stats = run.blocks(input, builder, &mut body, None)?;
            flush(body, ImagePart::LastSpooledBlocks, builder.data_len())?;
            progress(ProgressEvent::Finishing);
            let base = header_first_data_start(builder.num_blocks() as u32);
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, &mut *output);
            write_head(plan, builder, &mut out)?;
            spool
                .seek(SeekFrom::Start(0))
                .map_err(|e| PackError::write(ImagePart::BlocksFromSpool, base, e))?;
            let copied = io::copy(&mut (&mut *spool).take(builder.data_len()), &mut out)
                .map_err(|e| PackError::write(ImagePart::BlocksFromSpool, base, e))?;
            if copied != builder.data_len() {
                return Err(PackError::write(
                    ImagePart::BlocksFromSpool,
                    base + copied,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the spool file is short"),
                ));
            }
            let data_end = base + builder.data_len();
            let image_len = write_tail(plan, &stats, builder, data_end, &mut out)?;
            flush(out, ImagePart::End, data_end)?;
            (stats, data_end, image_len)
        }
        Sink::Stream(_) if header_first => {
            return Err(PackError::CannotStream {
                dialect: plan.dialect,
            })
        }
        Sink::Seekable(out) => write_footer(input, &run, builder, out)?,
        Sink::Spooled { output, .. } | Sink::Stream(output) => {
            write_footer(input, &run, builder, output)?
        }
    })
}

/// What every run of the conveyor is given.
struct Conveyor<'a> {
    plan: &'a Plan,
    reuse: Option<&'a Reuse<'a>>,
    progress: &'a dyn Fn(ProgressEvent),
}

impl Conveyor<'_> {
    /// Runs the conveyor, writing each block through the builder.
    fn blocks<R: Read + Send>(
        &self,
        input: Input<'_, R>,
        builder: &mut ImageBuilder<'_>,
        body: &mut dyn Write,
        base: Option<u64>,
    ) -> Result<pipeline::InputStats, PackError> {
        let progress = self.progress;
        pipeline::run(input, self.plan, self.reuse, |done| {
            if let Reused::Rejected { old_block } = done.reused {
                progress(ProgressEvent::ReuseRejected {
                    block: done.block,
                    old_block,
                });
            }
            builder.push(done, body, base)?;
            let counts = builder.counts();
            progress(ProgressEvent::Blocks {
                blocks: counts.blocks,
                input_bytes: counts.input_bytes,
                output_bytes: builder.data_len(),
            });
            Ok(())
        })
    }
}

fn flush<W: Write>(writer: BufWriter<W>, part: ImagePart, offset: u64) -> Result<(), PackError> {
    let mut inner = writer
        .into_inner()
        .map_err(|e| PackError::write(part, offset, e.into_error()))?;
    inner.flush().map_err(|e| PackError::write(part, offset, e))
}

/// Header and index of a header-first image.
fn write_head(
    plan: &Plan,
    builder: &ImageBuilder<'_>,
    out: &mut dyn Write,
) -> Result<(), PackError> {
    let n = builder.num_blocks() as u32;
    let header = Header {
        block_size: plan.block_size,
        num_blocks: n,
    };
    out.write_all(&header.encode(plan.dialect))
        .map_err(|e| PackError::write(ImagePart::Header, 0, e))?;
    builder.write_index(header_first_data_start(n), HEADER_LEN, out)
}

/// What follows `index[n]` in a header-first image: padding, the block-digest table and the
/// trailer (docs/FORMAT.md §12), or the padding to 512 of uzip images, or nothing. Returns the
/// image length.
fn write_tail<W: Write + ?Sized>(
    plan: &Plan,
    stats: &pipeline::InputStats,
    builder: &ImageBuilder<'_>,
    data_end: u64,
    out: &mut W,
) -> Result<u64, PackError> {
    let mut write = |bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|e| PackError::write(ImagePart::Trailer, data_end, e))
    };
    if !plan.trailer {
        let padding = match plan.dialect.spec().short_final_block {
            true => (512 - data_end % 512) % 512,
            false => 0,
        };
        write(&vec![0; padding as usize])?;
        return Ok(data_end + padding);
    }
    let (checks, table) = (builder.stored_checks(), builder.digest_table());
    let tables_len = (checks.len() + table.len()) as u64;
    let padding = Trailer::padding_before(data_end + tables_len);
    let checks_at = data_end + padding;
    let table_at = checks_at + checks.len() as u64;
    let trailer = Trailer {
        original_len: stats.len,
        digest_algorithm: match stats.digest {
            Some(_) => DigestAlgorithm::WRITTEN,
            None => DigestAlgorithm::None,
        },
        digest: stats.digest.clone().unwrap_or_default(),
        data_end,
        tool: plan.tool.clone(),
        extension: TrailerExtension {
            encoding: Some(plan.encoding),
            digest_table: Some(DigestTableRef::for_table(
                BlockDigestAlgorithm::WRITTEN,
                table_at,
                table,
            )),
            stored_checks: Some(StoredChecksRef::for_table(checks_at, checks)),
        },
    };
    write(&vec![0; padding as usize])?;
    write(checks)?;
    write(table)?;
    let trailer = trailer.encode();
    write(&trailer)?;
    Ok(table_at + table.len() as u64 + trailer.len() as u64)
}

/// A footer image, front to back: lead-in, blocks, index, header.
fn write_footer<R: Read + Send, W: Write + ?Sized>(
    input: Input<'_, R>,
    run: &Conveyor<'_>,
    builder: &mut ImageBuilder<'_>,
    out: &mut W,
) -> Result<(pipeline::InputStats, u64, u64), PackError> {
    let (plan, progress) = (run.plan, run.progress);
    let base = PREAMBLE_LEN as u64;
    let mut body = BufWriter::with_capacity(WRITE_BUFFER, out);
    body.write_all(&mkmodule_format::Dialect::footer_lead_in())
        .map_err(|e| PackError::write(ImagePart::LeadIn, 0, e))?;
    let stats = run.blocks(input, builder, &mut body, Some(base))?;
    progress(ProgressEvent::Finishing);
    let data_end = base + builder.data_len();
    builder.write_index(base, data_end, &mut body)?;
    let header = Header {
        block_size: plan.block_size,
        num_blocks: builder.num_blocks() as u32,
    };
    let header_at = data_end + header.index_len();
    body.write_all(&header.encode(plan.dialect))
        .map_err(|e| PackError::write(ImagePart::Header, header_at, e))?;
    flush(body, ImagePart::Header, header_at)?;
    Ok((stats, data_end, header_at + HEADER_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::PackOptions;
    use mkmodule_format::Dialect;

    fn plan(dialect: Dialect, input_len: Option<u64>) -> Plan {
        let options = PackOptions {
            dialect,
            input_len,
            ..PackOptions::portable()
        };
        options.plan().unwrap()
    }

    #[test]
    fn footer_images_stream_to_anything() {
        let footer = plan(Dialect::LinuxV4Footer, None);
        for kind in [
            OutputKind::NewFile,
            OutputKind::Seekable,
            OutputKind::Sequential,
        ] {
            assert_eq!(
                SinkKind::choose(&footer, kind, "x").unwrap(),
                SinkKind::Stream
            );
        }
    }

    #[test]
    fn header_first_images_need_a_length_and_a_seek_or_a_spool() {
        let known = plan(Dialect::LinuxV2, Some(1 << 20));
        let unknown = plan(Dialect::LinuxV2, None);
        let choose = |plan: &Plan, kind| SinkKind::choose(plan, kind, "standard output");
        assert_eq!(
            choose(&known, OutputKind::NewFile).unwrap(),
            SinkKind::Seekable
        );
        assert_eq!(
            choose(&known, OutputKind::Seekable).unwrap(),
            SinkKind::Seekable
        );
        assert_eq!(
            choose(&unknown, OutputKind::NewFile).unwrap(),
            SinkKind::Spooled
        );
        for (plan, kind) in [
            (&known, OutputKind::Sequential),
            (&unknown, OutputKind::Seekable),
            (&unknown, OutputKind::Sequential),
        ] {
            let error = choose(plan, kind).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("a v2 image cannot go to standard output here"),
                "{error}"
            );
        }
    }

    #[test]
    fn sinks_that_cannot_hold_the_layout_are_refused() {
        let unknown = plan(Dialect::LinuxV2, None);
        assert!(matches!(
            SinkKind::Stream.check(&unknown),
            Err(PackError::CannotStream { .. })
        ));
        assert!(matches!(
            SinkKind::Seekable.check(&unknown),
            Err(PackError::InPlaceNeedsLength { .. })
        ));
        assert!(SinkKind::Spooled.check(&unknown).is_ok());
    }
}
