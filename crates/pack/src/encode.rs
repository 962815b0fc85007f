//! Compressing one block the way the plan says: one codec or the smallest of several, with the
//! level-0 zlib fallback for blocks that do not shrink.

use mkmodule_codec::{BlockCompressor, CodecError, CodecKind, CodecSpec};

use crate::options::Plan;

/// How a block was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoding {
    /// Codec of the bytes.
    pub codec: CodecKind,
    /// The block did not shrink (it is stored as level-0 zlib where the dialect has zlib).
    pub incompressible: bool,
}

/// One thread's codec contexts, reused for every block.
pub(crate) struct BlockEncoder {
    candidates: Vec<BlockCompressor>,
    stored: Option<BlockCompressor>,
    scratch: Vec<u8>,
}

impl BlockEncoder {
    /// Contexts for every codec the plan may use.
    pub fn new(plan: &Plan) -> Result<BlockEncoder, (CodecSpec, CodecError)> {
        let make = |spec: CodecSpec| BlockCompressor::new(spec).map_err(|e| (spec, e));
        let candidates = plan
            .candidates
            .iter()
            .map(|&spec| make(spec))
            .collect::<Result<Vec<_>, _>>()?;
        let stored = if plan.stored_fallback {
            let spec = CodecSpec::new(CodecKind::Zlib, 0)
                .map_err(|e| (CodecSpec::with_default_level(CodecKind::Zlib), e))?;
            Some(make(spec)?)
        } else {
            None
        };
        Ok(BlockEncoder {
            candidates,
            stored,
            scratch: Vec::new(),
        })
    }

    /// The first codec tried (named in errors).
    pub fn primary(&self) -> CodecKind {
        self.candidates[0].spec().kind()
    }

    /// Compresses `input` into `out`: the smallest candidate (ties go to the first), replaced by
    /// level-0 zlib when the result is not smaller than the input and stored zlib is smaller.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Encoding, CodecError> {
        let (first, rest) = self
            .candidates
            .split_first_mut()
            .expect("at least one codec");
        first.compress(input, out)?;
        let mut codec = first.spec().kind();
        for other in rest {
            other.compress(input, &mut self.scratch)?;
            if self.scratch.len() < out.len() {
                std::mem::swap(out, &mut self.scratch);
                codec = other.spec().kind();
            }
        }
        let incompressible = out.len() >= input.len();
        if let Some(raw) = self.stored.as_mut().filter(|_| incompressible) {
            raw.compress(input, &mut self.scratch)?;
            if self.scratch.len() < out.len() {
                std::mem::swap(out, &mut self.scratch);
                codec = CodecKind::Zlib;
            }
        }
        Ok(Encoding {
            codec,
            incompressible,
        })
    }
}
