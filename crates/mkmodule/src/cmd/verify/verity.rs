//! `verify --verity`: recompute the dm-verity hash tree of the image's device and compare it
//! with the hash file beside the image, naming the first data block whose hash differs.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use mkmodule_blockdev::chain_text;
use mkmodule_image::{Decoded, Image, ParallelOptions};
use mkmodule_pack::verity::{
    hash_file_path, leaf_digests, parse_superblock, tree_levels, HashTreeBuilder,
    VERITY_BLOCK_SIZE, VERITY_DIGEST_LEN,
};
use serde::Serialize;

/// What the dm-verity check found.
#[derive(Debug, Serialize)]
pub struct VerityReport {
    /// The hash file.
    pub hash_file: String,
    /// Whether the hash file matches the image.
    pub ok: bool,
    /// The root hash recomputed from the image (absent when it could not be).
    pub root_hash: Option<String>,
    /// 4096-byte data blocks the hash file covers.
    pub data_blocks: u64,
    /// The first data block whose hash differs from the hash file's.
    pub first_bad_data_block: Option<u64>,
    /// What is wrong, in one sentence.
    pub problem: Option<String>,
}

/// Checks `image`'s device against `IMAGE.verity`.
pub fn check(image: &Image, path: &Path, threads: usize) -> VerityReport {
    let hash_path = hash_file_path(path);
    let mut report = VerityReport {
        hash_file: hash_path.display().to_string(),
        ok: false,
        root_hash: None,
        data_blocks: 0,
        first_bad_data_block: None,
        problem: None,
    };
    if let Err(problem) = compare(image, &hash_path, threads, &mut report) {
        report.problem = Some(problem);
    }
    report.ok = report.problem.is_none();
    report
}

fn compare(
    image: &Image,
    hash_path: &Path,
    threads: usize,
    report: &mut VerityReport,
) -> Result<(), String> {
    let name = hash_path.display();
    let open = |e: io::Error| format!("cannot read {name}: {e}");
    let mut superblock = vec![0u8; VERITY_BLOCK_SIZE as usize];
    File::open(hash_path)
        .and_then(|mut f| f.read_exact(&mut superblock))
        .map_err(open)?;
    let (params, data_blocks) =
        parse_superblock(&superblock).map_err(|e| format!("{name}: {e}"))?;
    report.data_blocks = data_blocks;
    let device_blocks = image.padded_size() / u64::from(VERITY_BLOCK_SIZE);
    if data_blocks != device_blocks {
        return Err(format!(
            "{name} covers {data_blocks} data blocks, the image's device holds {device_blocks}"
        ));
    }
    if image.block_size() % VERITY_BLOCK_SIZE != 0 {
        return Err(format!(
            "the image's block size {} is not a multiple of {VERITY_BLOCK_SIZE}",
            image.block_size()
        ));
    }
    let spill = tempfile::tempfile().map_err(|e| format!("cannot create a scratch file: {e}"))?;
    let mut builder = HashTreeBuilder::new(params, spill);
    let bs = image.block_size() as usize;
    let zeros = vec![0u8; bs];
    let mut leaves = Vec::new();
    let mut bad_block = None;
    let pass = ParallelOptions {
        threads,
        skip_zero: true,
    };
    let _ = image.par_blocks_ordered(pass, |block, decoded| {
        let data = match decoded {
            Ok(Decoded::Data(data)) => data,
            Ok(Decoded::Zero) => &zeros[..],
            Err(error) => {
                bad_block = Some(format!(
                    "image block {block} cannot be read: {}",
                    chain_text(&error)
                ));
                return Err(());
            }
        };
        leaves.clear();
        leaf_digests(builder.params().salt(), data, bs, &mut leaves);
        builder.push_digests(&leaves);
        Ok(())
    });
    if let Some(problem) = bad_block {
        return Err(problem);
    }
    let levels = tree_levels(data_blocks);
    let upper: u64 = levels.iter().skip(1).sum();
    let level0_at = (1 + upper) * u64::from(VERITY_BLOCK_SIZE);
    let expected = BufReader::new(File::open(hash_path).map_err(open)?);
    let mut compare = CompareWriter::new(expected);
    let tree = builder
        .finish(&mut compare)
        .map_err(|e| format!("cannot recompute the tree: {e}"))?;
    report.root_hash = Some(tree.root_hash.iter().map(|b| format!("{b:02x}")).collect());
    let longer = compare.expected_is_longer().map_err(open)?;
    let first_bad_leaf = compare.first_difference_from(level0_at);
    if let Some(at) = first_bad_leaf {
        let data_block = (at - level0_at) / VERITY_DIGEST_LEN as u64;
        report.first_bad_data_block = Some(data_block);
        return Err(format!(
            "data block {data_block} (device offset {}, image block {}) does not match its hash \
             in {name}",
            data_block * u64::from(VERITY_BLOCK_SIZE),
            data_block * u64::from(VERITY_BLOCK_SIZE) / bs as u64
        ));
    }
    if let Some(at) = compare.first_difference {
        return Err(format!(
            "{name} differs from the recomputed tree at byte {at}"
        ));
    }
    if longer {
        return Err(format!("{name} is longer than its tree"));
    }
    Ok(())
}

/// A writer that compares what it is given with a reader, remembering where they differ.
struct CompareWriter<R: Read> {
    expected: R,
    at: u64,
    /// The first differing byte offset.
    first_difference: Option<u64>,
    /// The first differing offset in each hash block that differs, in order.
    differences: Vec<u64>,
    buffer: Vec<u8>,
}

impl<R: Read> CompareWriter<R> {
    fn new(expected: R) -> CompareWriter<R> {
        CompareWriter {
            expected,
            at: 0,
            first_difference: None,
            differences: Vec::new(),
            buffer: Vec::new(),
        }
    }

    /// The first difference at or after `offset`, rounded down to a hash.
    fn first_difference_from(&self, offset: u64) -> Option<u64> {
        self.differences
            .iter()
            .find(|&&d| d >= offset)
            .map(|&d| offset + (d - offset) / VERITY_DIGEST_LEN as u64 * VERITY_DIGEST_LEN as u64)
    }

    /// Whether the expected file holds bytes past what was written.
    fn expected_is_longer(&mut self) -> io::Result<bool> {
        let mut probe = [0u8; 1];
        Ok(self.expected.read(&mut probe)? > 0)
    }
}

impl<R: Read> Write for CompareWriter<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.resize(buf.len(), 0);
        let mut got = 0;
        while got < buf.len() {
            match self.expected.read(&mut self.buffer[got..])? {
                0 => break,
                n => got += n,
            }
        }
        let differing: Vec<usize> = buf
            .iter()
            .zip(&self.buffer[..got])
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        for i in differing {
            self.note(self.at + i as u64);
        }
        if got < buf.len() {
            self.note(self.at + got as u64);
        }
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Read> CompareWriter<R> {
    /// Keeps the first difference overall and the first in each hash block (enough to find the
    /// first one in level 0 without keeping every byte).
    fn note(&mut self, offset: u64) {
        self.first_difference.get_or_insert(offset);
        let block = offset / u64::from(VERITY_BLOCK_SIZE);
        if self
            .differences
            .last()
            .is_none_or(|&last| last / u64::from(VERITY_BLOCK_SIZE) != block)
        {
            self.differences.push(offset);
        }
    }
}
