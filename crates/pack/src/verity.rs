//! A dm-verity hash tree, built while the image is written.
//!
//! The tree is the one `veritysetup format` writes with its defaults: hash type 1, SHA-256,
//! 4096-byte data and hash blocks, and the 512-byte superblock at the start of the hash file
//! (docs/FORMAT.md §13). Every hash is `SHA-256(salt || block)`, for data blocks and hash blocks
//! alike. Level 0 holds the hashes of the data blocks, each level above holds the hashes of the
//! hash blocks below it, and the top level is a single hash block whose hash is the root hash. A
//! level is a whole number of hash blocks (128 hashes each), its last block zero-padded. In the
//! file, the superblock fills the first hash block, then come the levels, top level first. With
//! a single data block there is no level at all: the root hash is that block's hash.
//!
//! The compressor threads hash the data blocks ([`leaf_digests`]); the in-order writer hands the
//! hashes to a [`HashTreeBuilder`], which spills them to the file it was given. Upper levels
//! are computed from the spilled level when the data ends, reading one hash block at a time, so
//! memory does not grow with the input.

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use mkmodule_blockdev::ErrorKind;
use sha2::{Digest, Sha256};

/// Bytes per data block and per hash block (veritysetup's default for both).
pub const VERITY_BLOCK_SIZE: u32 = 4096;

/// Bytes of a SHA-256 digest.
pub const VERITY_DIGEST_LEN: usize = 32;

/// The longest salt the superblock holds.
pub const MAX_SALT_LEN: usize = 256;

/// Bytes of the superblock (it is padded to a whole hash block in the file).
pub const SUPERBLOCK_LEN: usize = 512;

/// The hash algorithm's name, as the superblock and veritysetup spell it.
pub const VERITY_HASH_ALGORITHM: &str = "sha256";

const BLOCK: usize = VERITY_BLOCK_SIZE as usize;
const HASHES_PER_BLOCK: u64 = (BLOCK / VERITY_DIGEST_LEN) as u64;

/// One SHA-256 digest.
pub type VerityDigest = [u8; VERITY_DIGEST_LEN];

/// Why a hash tree cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// The salt is longer than the superblock holds.
    #[error("a dm-verity salt of {len} bytes is too long: the most is {MAX_SALT_LEN}")]
    SaltTooLong {
        /// The salt's length.
        len: usize,
    },
    /// The image's block size does not split into whole dm-verity data blocks.
    #[error(
        "a dm-verity hash tree needs a block size that is a multiple of {VERITY_BLOCK_SIZE}, \
         not {block_size}"
    )]
    BlockSize {
        /// The image's block size.
        block_size: u32,
    },
    /// There was no data block to hash.
    #[error("a dm-verity hash tree needs at least one data block")]
    NoData,
    /// A hash file's superblock is not one this module writes.
    #[error("not a dm-verity hash file of the kind mkmodule writes: {0}")]
    Superblock(&'static str),
    /// Reading or writing the spill file or the hash file failed.
    #[error("cannot write the dm-verity hash tree")]
    Io(#[source] io::Error),
}

impl VerityError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VerityError::SaltTooLong { .. }
            | VerityError::BlockSize { .. }
            | VerityError::NoData => ErrorKind::Config,
            VerityError::Superblock(_) => ErrorKind::Corrupt,
            VerityError::Io(_) => ErrorKind::Io,
        }
    }
}

/// Refuses an image block size that does not split into whole 4096-byte data blocks.
pub fn check_verity_block_size(block_size: u32) -> Result<(), VerityError> {
    if block_size == 0 || block_size % VERITY_BLOCK_SIZE != 0 {
        return Err(VerityError::BlockSize { block_size });
    }
    Ok(())
}

/// What the superblock records besides the tree's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    salt: Vec<u8>,
    uuid: [u8; 16],
}

impl VerityParams {
    /// Parameters with `salt` (empty for none) and the hash file's `uuid`.
    pub fn new(salt: Vec<u8>, uuid: [u8; 16]) -> Result<VerityParams, VerityError> {
        if salt.len() > MAX_SALT_LEN {
            return Err(VerityError::SaltTooLong { len: salt.len() });
        }
        Ok(VerityParams { salt, uuid })
    }

    /// The salt (empty when there is none).
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The UUID recorded in the superblock.
    pub fn uuid(&self) -> &[u8; 16] {
        &self.uuid
    }
}

/// The hash of one block: `SHA-256(salt || block)`.
pub fn block_digest(salt: &[u8], block: &[u8]) -> VerityDigest {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(block);
    hasher.finalize().into()
}

/// Appends to `out` the hashes of the 4096-byte data blocks of `span` bytes starting with
/// `data`; the bytes past `data` (a short final image block) count as zeros.
pub fn leaf_digests(salt: &[u8], data: &[u8], span: usize, out: &mut Vec<VerityDigest>) {
    let zeros = [0u8; BLOCK];
    let mut at = 0;
    while at < span {
        let end = (at + BLOCK).min(data.len());
        if at + BLOCK <= data.len() {
            out.push(block_digest(salt, &data[at..at + BLOCK]));
        } else if at < data.len() {
            let mut padded = [0u8; BLOCK];
            padded[..end - at].copy_from_slice(&data[at..end]);
            out.push(block_digest(salt, &padded));
        } else {
            out.push(block_digest(salt, &zeros));
        }
        at += BLOCK;
    }
}

/// Takes the data blocks' hashes in data order (the in-order writer feeds one).
pub(crate) trait DigestSink {
    /// Adds the hashes of the next data blocks.
    fn push_digests(&mut self, digests: &[VerityDigest]);
}

impl<S: Read + Write + Seek> DigestSink for HashTreeBuilder<S> {
    fn push_digests(&mut self, digests: &[VerityDigest]) {
        HashTreeBuilder::push_digests(self, digests);
    }
}

/// Where the hash file of `image` lives: beside it, named `IMAGE.verity` (docs/FORMAT.md §13).
pub fn hash_file_path(image: &std::path::Path) -> std::path::PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".verity");
    std::path::PathBuf::from(name)
}

/// Hash blocks per level for `data_blocks` data blocks, level 0 first (none for one block).
pub fn tree_levels(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut below = data_blocks;
    while below > 1 {
        below = below.div_ceil(HASHES_PER_BLOCK);
        levels.push(below);
    }
    levels
}

/// Reads a superblock as [`HashTreeBuilder::finish`] writes it: the parameters and the number
/// of data blocks.
pub fn parse_superblock(bytes: &[u8]) -> Result<(VerityParams, u64), VerityError> {
    let bad = VerityError::Superblock;
    if bytes.len() < SUPERBLOCK_LEN || &bytes[0..8] != b"verity\0\0" {
        return Err(bad("no \"verity\" signature"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(8) != 1 || u32_at(12) != 1 {
        return Err(bad("only superblock version 1 with hash type 1 is read"));
    }
    let algorithm = &bytes[32..64];
    let name_len = algorithm.iter().position(|&b| b == 0).unwrap_or(32);
    if &algorithm[..name_len] != VERITY_HASH_ALGORITHM.as_bytes() {
        return Err(bad("only sha256 is read"));
    }
    if u32_at(64) != VERITY_BLOCK_SIZE || u32_at(68) != VERITY_BLOCK_SIZE {
        return Err(bad("only 4096-byte data and hash blocks are read"));
    }
    let data_blocks = u64::from_le_bytes(bytes[72..80].try_into().expect("8 bytes"));
    let salt_len = usize::from(u16::from_le_bytes([bytes[80], bytes[81]]));
    if salt_len > MAX_SALT_LEN {
        return Err(bad("the salt length is larger than 256"));
    }
    let uuid: [u8; 16] = bytes[16..32].try_into().expect("16 bytes");
    let params = VerityParams::new(bytes[88..88 + salt_len].to_vec(), uuid)?;
    Ok((params, data_blocks))
}

/// The finished tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    /// The root hash: what `veritysetup open` and the kernel are given.
    pub root_hash: VerityDigest,
    /// The salt (empty when there is none).
    pub salt: Vec<u8>,
    /// The UUID in the superblock.
    pub uuid: [u8; 16],
    /// 4096-byte data blocks covered.
    pub data_blocks: u64,
    /// Bytes of the hash file.
    pub hash_file_len: u64,
}

/// Where one level lives in the spill file.
#[derive(Debug, Clone, Copy)]
struct Level {
    offset: u64,
    blocks: u64,
}

/// Builds a hash tree from the data blocks' hashes, in data order.
///
/// I/O errors while spilling are kept and reported by [`HashTreeBuilder::finish`], so the
/// caller feeding hashes need not handle them block by block.
pub struct HashTreeBuilder<S: Read + Write + Seek> {
    params: VerityParams,
    spill: BufWriter<S>,
    leaves: u64,
    error: Option<io::Error>,
}

impl<S: Read + Write + Seek> std::fmt::Debug for HashTreeBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashTreeBuilder")
            .field("params", &self.params)
            .field("leaves", &self.leaves)
            .finish_non_exhaustive()
    }
}

impl<S: Read + Write + Seek> HashTreeBuilder<S> {
    /// A builder that spills the hashes to `spill`, an empty scratch file.
    pub fn new(params: VerityParams, spill: S) -> HashTreeBuilder<S> {
        HashTreeBuilder {
            params,
            spill: BufWriter::with_capacity(1 << 16, spill),
            leaves: 0,
            error: None,
        }
    }

    /// The parameters the tree is built with.
    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// Data blocks hashed so far.
    pub fn data_blocks(&self) -> u64 {
        self.leaves
    }

    /// Hashes one 4096-byte data block (shorter: padded with zeros) and adds it.
    pub fn push_data_block(&mut self, block: &[u8]) {
        let mut digests = Vec::with_capacity(1);
        leaf_digests(&self.params.salt, block, BLOCK, &mut digests);
        self.push_digests(&digests);
    }

    /// Adds the hashes of the next data blocks, in data order.
    pub fn push_digests(&mut self, digests: &[VerityDigest]) {
        if self.error.is_some() {
            return;
        }
        for digest in digests {
            if let Err(e) = self.spill.write_all(digest) {
                self.error = Some(e);
                return;
            }
        }
        self.leaves += digests.len() as u64;
    }

    /// Computes the upper levels and writes the hash file (superblock, then the levels from the
    /// top down) to `out`.
    pub fn finish(self, out: &mut dyn Write) -> Result<VerityTree, VerityError> {
        if let Some(e) = self.error {
            return Err(VerityError::Io(e));
        }
        if self.leaves == 0 {
            return Err(VerityError::NoData);
        }
        let mut spill = self
            .spill
            .into_inner()
            .map_err(|e| VerityError::Io(e.into_error()))?;
        let salt = &self.params.salt;
        let (root_hash, levels) = if self.leaves == 1 {
            spill.seek(SeekFrom::Start(0)).map_err(VerityError::Io)?;
            let mut root = [0u8; VERITY_DIGEST_LEN];
            spill.read_exact(&mut root).map_err(VerityError::Io)?;
            (root, Vec::new())
        } else {
            build_levels(&mut spill, salt, self.leaves).map_err(VerityError::Io)?
        };
        let mut head = [0u8; BLOCK];
        head[..SUPERBLOCK_LEN].copy_from_slice(&superblock(&self.params, self.leaves));
        out.write_all(&head).map_err(VerityError::Io)?;
        let mut block = [0u8; BLOCK];
        for level in levels.iter().rev() {
            spill
                .seek(SeekFrom::Start(level.offset))
                .map_err(VerityError::Io)?;
            for _ in 0..level.blocks {
                spill.read_exact(&mut block).map_err(VerityError::Io)?;
                out.write_all(&block).map_err(VerityError::Io)?;
            }
        }
        let tree_blocks: u64 = levels.iter().map(|l| l.blocks).sum();
        Ok(VerityTree {
            root_hash,
            salt: self.params.salt,
            uuid: self.params.uuid,
            data_blocks: self.leaves,
            hash_file_len: (1 + tree_blocks) * BLOCK as u64,
        })
    }
}

/// Pads level 0 in `spill` to a whole hash block and appends every level above it; returns the
/// root hash and the levels, bottom first.
fn build_levels<S: Read + Write + Seek>(
    spill: &mut S,
    salt: &[u8],
    leaves: u64,
) -> io::Result<(VerityDigest, Vec<Level>)> {
    let level0 = Level {
        offset: 0,
        blocks: leaves.div_ceil(HASHES_PER_BLOCK),
    };
    let level0_len = level0.blocks * BLOCK as u64;
    spill.seek(SeekFrom::Start(leaves * VERITY_DIGEST_LEN as u64))?;
    let pad = (level0_len - leaves * VERITY_DIGEST_LEN as u64) as usize;
    spill.write_all(&vec![0u8; pad])?;
    let mut levels = vec![level0];
    let mut block = [0u8; BLOCK];
    let mut next = [0u8; BLOCK];
    loop {
        let below = *levels.last().expect("level 0 is there");
        if below.blocks == 1 {
            spill.seek(SeekFrom::Start(below.offset))?;
            spill.read_exact(&mut block)?;
            return Ok((block_digest(salt, &block), levels));
        }
        let above = Level {
            offset: below.offset + below.blocks * BLOCK as u64,
            blocks: below.blocks.div_ceil(HASHES_PER_BLOCK),
        };
        let mut write_at = above.offset;
        let mut filled = 0;
        for i in 0..below.blocks {
            spill.seek(SeekFrom::Start(below.offset + i * BLOCK as u64))?;
            spill.read_exact(&mut block)?;
            let digest = block_digest(salt, &block);
            next[filled..filled + VERITY_DIGEST_LEN].copy_from_slice(&digest);
            filled += VERITY_DIGEST_LEN;
            if filled == BLOCK || i + 1 == below.blocks {
                next[filled..].fill(0);
                spill.seek(SeekFrom::Start(write_at))?;
                spill.write_all(&next)?;
                write_at += BLOCK as u64;
                filled = 0;
            }
        }
        levels.push(above);
    }
}

/// The 512-byte superblock veritysetup writes (all integers little-endian).
fn superblock(params: &VerityParams, data_blocks: u64) -> [u8; SUPERBLOCK_LEN] {
    let mut sb = [0u8; SUPERBLOCK_LEN];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: salt first
    sb[16..32].copy_from_slice(&params.uuid);
    sb[32..32 + VERITY_HASH_ALGORITHM.len()].copy_from_slice(VERITY_HASH_ALGORITHM.as_bytes());
    sb[64..68].copy_from_slice(&VERITY_BLOCK_SIZE.to_le_bytes());
    sb[68..72].copy_from_slice(&VERITY_BLOCK_SIZE.to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(params.salt.len() as u16).to_le_bytes());
    sb[88..88 + params.salt.len()].copy_from_slice(&params.salt);
    sb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56,
        0x78,
    ];

    fn tree(salt: &[u8], data: &[u8]) -> (VerityTree, Vec<u8>) {
        let params = VerityParams::new(salt.to_vec(), UUID).unwrap();
        let mut builder = HashTreeBuilder::new(params, Cursor::new(Vec::new()));
        for block in data.chunks(BLOCK) {
            builder.push_data_block(block);
        }
        let mut file = Vec::new();
        let tree = builder.finish(&mut file).unwrap();
        (tree, file)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn one_block_has_no_level_and_its_hash_is_the_root() {
        let data = pattern(BLOCK);
        let (tree, file) = tree(&[1, 2, 3], &data);
        assert_eq!(tree.root_hash, block_digest(&[1, 2, 3], &data));
        assert_eq!(file.len(), BLOCK);
        assert_eq!(tree.hash_file_len, BLOCK as u64);
    }

    #[test]
    fn superblock_layout() {
        let (_, file) = tree(&[0x00, 0x11, 0x22, 0x33], &pattern(BLOCK));
        assert_eq!(&file[..8], b"verity\0\0");
        assert_eq!(&file[8..16], &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&file[16..32], &UUID);
        assert_eq!(&file[32..38], b"sha256");
        assert_eq!(&file[64..72], &[0, 0x10, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&file[72..80], &1u64.to_le_bytes());
        assert_eq!(&file[80..82], &[4, 0]);
        assert_eq!(&file[88..92], &[0x00, 0x11, 0x22, 0x33]);
        assert!(file[92..].iter().all(|&b| b == 0));
    }

    #[test]
    fn two_blocks_make_one_level() {
        let data = pattern(2 * BLOCK);
        let salt = b"salt";
        let (tree, file) = tree(salt, &data);
        let mut level0 = [0u8; BLOCK];
        level0[..32].copy_from_slice(&block_digest(salt, &data[..BLOCK]));
        level0[32..64].copy_from_slice(&block_digest(salt, &data[BLOCK..]));
        assert_eq!(file.len(), 2 * BLOCK);
        assert_eq!(&file[BLOCK..], &level0);
        assert_eq!(tree.root_hash, block_digest(salt, &level0));
    }

    #[test]
    fn levels_are_written_top_first() {
        // 129 data blocks: two level-0 hash blocks under one level-1 block.
        let data = pattern(129 * BLOCK);
        let (tree, file) = tree(&[], &data);
        assert_eq!(file.len(), 4 * BLOCK);
        let level1 = &file[BLOCK..2 * BLOCK];
        let level0 = &file[2 * BLOCK..];
        assert_eq!(&level1[..32], &block_digest(&[], &level0[..BLOCK]));
        assert_eq!(&level1[32..64], &block_digest(&[], &level0[BLOCK..]));
        assert!(level1[64..].iter().all(|&b| b == 0));
        assert_eq!(
            &level0[BLOCK..BLOCK + 32],
            &block_digest(&[], &data[128 * BLOCK..])
        );
        assert!(level0[BLOCK + 32..].iter().all(|&b| b == 0));
        assert_eq!(tree.root_hash, block_digest(&[], level1));
        assert_eq!(tree.data_blocks, 129);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn matches_veritysetup_format() {
        // `veritysetup format --salt 73616c74 --uuid 12345678-1234-5678-1234-567812345678`
        // over the same 129 blocks.
        let (tree, file) = tree(b"salt", &pattern(129 * BLOCK));
        assert_eq!(
            hex(&tree.root_hash),
            "be37e2ba9377002aa363a7e839959ed96410ba50ee4b442ebff2ad5c764acbab"
        );
        assert_eq!(
            hex(&Sha256::digest(&file)),
            "57f502afbd4b2a6fe3863106e6e45592a8a67f755bd58abd60c436f0f599ee53"
        );
    }

    #[test]
    fn a_short_block_is_hashed_zero_padded() {
        let mut out = Vec::new();
        leaf_digests(b"s", &[7u8; 100], 2 * BLOCK, &mut out);
        let mut padded = [0u8; BLOCK];
        padded[..100].fill(7);
        assert_eq!(
            out,
            [block_digest(b"s", &padded), block_digest(b"s", &[0; BLOCK])]
        );
    }

    #[test]
    fn superblocks_read_back_and_levels_count() {
        let (_, file) = tree(b"abc", &pattern(2 * BLOCK));
        let (params, blocks) = parse_superblock(&file).unwrap();
        assert_eq!(
            (params.salt(), params.uuid(), blocks),
            (&b"abc"[..], &UUID, 2)
        );
        assert!(matches!(
            parse_superblock(&[0; 512]),
            Err(VerityError::Superblock(_))
        ));
        assert_eq!(tree_levels(1), Vec::<u64>::new());
        assert_eq!(tree_levels(128), [1]);
        assert_eq!(tree_levels(129), [2, 1]);
        assert_eq!(tree_levels(128 * 128 + 1), [129, 2, 1]);
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            VerityParams::new(vec![0; 257], UUID),
            Err(VerityError::SaltTooLong { len: 257 })
        ));
        assert!(check_verity_block_size(65536).is_ok());
        let err = check_verity_block_size(512).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "a dm-verity hash tree needs a block size that is a multiple of 4096, not 512"
        );
        let builder = HashTreeBuilder::new(
            VerityParams::new(Vec::new(), UUID).unwrap(),
            Cursor::new(Vec::new()),
        );
        assert!(matches!(
            builder.finish(&mut Vec::new()),
            Err(VerityError::NoData)
        ));
    }
}
