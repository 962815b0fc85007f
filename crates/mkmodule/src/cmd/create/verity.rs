//! `create --verity`: the dm-verity options, the sidecar hash file and its report.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use mkmodule_pack::verity::{
    check_verity_block_size, HashTreeBuilder, VerityParams, VerityTree, VERITY_BLOCK_SIZE,
    VERITY_HASH_ALGORITHM,
};

use crate::output::{OutputFile, Replace};

/// The hash file written beside `image`: `IMAGE.verity`.
pub use mkmodule_pack::verity::hash_file_path as sidecar_path;

/// The tree's parameters from `--verity-salt` and `--verity-uuid` (random when not given),
/// refused for a block size that does not split into 4096-byte data blocks.
pub fn params(salt: Option<&str>, uuid: Option<&str>, block_size: u32) -> Result<VerityParams> {
    check_verity_block_size(block_size).map_err(|e| anyhow!("--verity: {e}"))?;
    let salt = match salt {
        None => random_bytes::<32>()?.to_vec(),
        Some("" | "-") => Vec::new(),
        Some(text) => parse_hex(text).ok_or_else(|| {
            anyhow!("--verity-salt {text:?} is not hexadecimal bytes (or - for no salt)")
        })?,
    };
    let uuid = match uuid {
        None => random_uuid()?,
        Some(text) => parse_uuid(text).ok_or_else(|| {
            anyhow!(
                "--verity-uuid {text:?} is not a UUID like 12345678-1234-5678-1234-567812345678"
            )
        })?,
    };
    Ok(VerityParams::new(salt, uuid)?)
}

/// A tree builder spilling its hashes to an unnamed scratch file in `dir`.
pub fn builder(params: VerityParams, dir: &Path) -> Result<HashTreeBuilder<File>> {
    let spill = tempfile::tempfile_in(dir)
        .with_context(|| format!("cannot create a scratch file in {}", dir.display()))?;
    Ok(HashTreeBuilder::new(params, spill))
}

/// Finishes the tree into `sidecar` (its temporary file); the caller commits it.
pub fn finish(
    builder: HashTreeBuilder<File>,
    sidecar: &mut OutputFile,
    name: &str,
) -> Result<VerityTree> {
    let mut out = BufWriter::new(sidecar.file_mut());
    let tree = builder
        .finish(&mut out)
        .with_context(|| format!("cannot write {name}"))?;
    out.flush()
        .with_context(|| format!("cannot write {name}"))?;
    Ok(tree)
}

/// Opens the sidecar's temporary file, refusing an existing one unless `force`.
pub fn create_sidecar(path: &Path, force: bool) -> Result<OutputFile> {
    if !force && path.symlink_metadata().is_ok() {
        bail!(
            "the hash file {} exists: add -f to overwrite it",
            path.display()
        );
    }
    let replace = if force {
        Replace::Existing
    } else {
        Replace::Never
    };
    OutputFile::create(path, replace)
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The report's `verity` object.
pub fn json(tree: &VerityTree, hash_file: &str) -> serde_json::Value {
    serde_json::json!({
        "root_hash": hex(&tree.root_hash),
        "salt": hex(&tree.salt),
        "uuid": uuid_text(&tree.uuid),
        "hash_file": hash_file,
        "data_blocks": tree.data_blocks,
        "hash_algorithm": VERITY_HASH_ALGORITHM,
        "data_block_size": VERITY_BLOCK_SIZE,
        "hash_block_size": VERITY_BLOCK_SIZE,
    })
}

/// The report's line.
pub fn line(tree: &VerityTree, hash_file: &str) -> String {
    let salt = if tree.salt.is_empty() {
        "-".to_string()
    } else {
        hex(&tree.salt)
    };
    format!(
        "mkmodule: {hash_file}: dm-verity root hash {}, salt {salt}, {} data blocks of {}",
        hex(&tree.root_hash),
        tree.data_blocks,
        VERITY_BLOCK_SIZE,
    )
}

/// The UUID in its usual text form.
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    let h = hex(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    parse_hex(&groups.concat())?.try_into().ok()
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read random bytes for the dm-verity salt and UUID")?;
    Ok(bytes)
}

/// A random (version 4) UUID, as veritysetup makes one.
fn random_uuid() -> Result<[u8; 16]> {
    let mut uuid = random_bytes::<16>()?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_and_uuids() {
        let p = params(
            Some("00ff"),
            Some("12345678-1234-5678-1234-567812345678"),
            65536,
        )
        .unwrap();
        assert_eq!(p.salt(), &[0x00, 0xff]);
        assert_eq!(uuid_text(p.uuid()), "12345678-1234-5678-1234-567812345678");
        assert!(params(Some("-"), None, 4096).unwrap().salt().is_empty());
        assert_eq!(params(None, None, 4096).unwrap().salt().len(), 32);
        assert!(params(Some("abc"), None, 4096).is_err());
        assert!(params(None, Some("1234"), 4096).is_err());
        let err = params(None, None, 512).unwrap_err().to_string();
        assert_eq!(
            err,
            "--verity: a dm-verity hash tree needs a block size that is a multiple of 4096, not \
             512"
        );
    }

    #[test]
    fn the_sidecar_is_named_after_the_image() {
        assert_eq!(
            sidecar_path(Path::new("dir/KNOPPIX")),
            std::path::PathBuf::from("dir/KNOPPIX.verity")
        );
    }
}
