//! The data a sweep compresses: a raw file or block device, or the decoded content of a
//! cloop-family image; and writing a sample of it to a file.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mkmodule_format::{detect, PROBE_LEN};
use mkmodule_image::{ExposedSize, Image, OpenOptions};

use crate::sample::SamplePlan;
use crate::BenchError;

/// Where the bytes come from.
#[derive(Debug)]
pub enum Input {
    /// A raw file or block device, read as it is.
    Raw {
        /// Its path.
        path: PathBuf,
        /// The open file.
        file: File,
        /// Its length.
        len: u64,
    },
    /// A cloop-family image: its decoded content (the original length when mkmodule's trailer
    /// records it, else blocks x block size).
    Image(Box<Image>),
}

impl Input {
    /// Opens `path`: a cloop-family image (recognised by its header) is opened with the image
    /// reader, anything else is raw input.
    pub fn open(path: &Path) -> Result<Input, BenchError> {
        let io_err = |source| BenchError::Io {
            what: format!("cannot open the input {}", path.display()),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            return Err(BenchError::InputIsDirectory {
                path: path.to_path_buf(),
            });
        }
        let mut file = File::open(path).map_err(io_err)?;
        let len = if meta.is_file() {
            meta.len()
        } else {
            let end = file
                .seek(SeekFrom::End(0))
                .map_err(|source| BenchError::Io {
                    what: format!(
                        "cannot find the size of {} (bench needs a file or a block device, not a \
                     pipe)",
                        path.display()
                    ),
                    source,
                })?;
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            end
        };
        if len >= PROBE_LEN as u64 {
            let mut head = vec![0u8; PROBE_LEN];
            let mut tail = vec![0u8; PROBE_LEN];
            file.read_exact_at(&mut head, 0).map_err(io_err)?;
            file.read_exact_at(&mut tail, len - PROBE_LEN as u64)
                .map_err(io_err)?;
            if detect(&head, &tail, len).is_ok() {
                let options = OpenOptions {
                    exposed_size: ExposedSize::Original,
                    ..OpenOptions::default()
                };
                let image = Image::open_with(path, &options)?;
                return Ok(Input::Image(Box::new(image)));
            }
        }
        Ok(Input::Raw {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Bytes of content.
    pub fn len(&self) -> u64 {
        match self {
            Input::Raw { len, .. } => *len,
            Input::Image(image) => image.size(),
        }
    }

    /// Whether the input holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The path of a raw input, which a whole-input sweep packs directly.
    pub fn raw_path(&self) -> Option<&Path> {
        match self {
            Input::Raw { path, .. } => Some(path),
            Input::Image(_) => None,
        }
    }

    /// What the input is, for reports: `raw` or `cloop image (v2)`.
    pub fn kind(&self) -> String {
        match self {
            Input::Raw { .. } => "raw".to_string(),
            Input::Image(image) => format!("cloop image ({}), decoded", image.dialect()),
        }
    }

    /// Fills `buf` from `offset` (which lies inside the content).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BenchError> {
        match self {
            Input::Raw { file, path, .. } => {
                file.read_exact_at(buf, offset)
                    .map_err(|source| BenchError::Io {
                        what: format!("cannot read {} at offset {offset}", path.display()),
                        source,
                    })
            }
            Input::Image(image) => Ok(image.read_exact_at(buf, offset)?),
        }
    }

    /// Writes the runs of `plan` one after another to `out`; `progress` learns the bytes
    /// written so far.
    pub fn write_sample(
        &self,
        plan: &SamplePlan,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, BenchError> {
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut written = 0u64;
        for run in &plan.runs {
            let mut at = run.start;
            while at < run.end {
                let n = (run.end - at).min(CHUNK) as usize;
                self.read_exact_at(&mut buf[..n], at)?;
                out.write_all(&buf[..n]).map_err(|source| BenchError::Io {
                    what: "cannot write the sample".to_string(),
                    source,
                })?;
                at += n as u64;
                written += n as u64;
                progress(written);
            }
        }
        out.flush().map_err(|source| BenchError::Io {
            what: "cannot write the sample".to_string(),
            source,
        })?;
        Ok(written)
    }
}

/// Reads `buf.len()` bytes of `file` at `offset` (used to check what the reader returns).
pub(crate) fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}
