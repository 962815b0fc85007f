//! The reference images made by Debian's cloop-utils (`testdata/cloop-utils`) and their manifest.

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The reference fixtures directory (`testdata/cloop-utils`).
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("testdata/cloop-utils")
}

/// The path of the reference image `name`.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// One fixture as the manifest describes it.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Path of the image.
    pub path: PathBuf,
    /// File name.
    pub name: String,
    /// Block size.
    pub block_size: u32,
    /// Block count.
    pub num_blocks: u32,
    /// Input length.
    pub input_len: u64,
    /// Length of the decoded device (n × bs).
    pub raw_len: u64,
    /// SHA-256 of the decoded device.
    pub raw_sha256: String,
}

/// Every fixture in the manifest.
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest parses");
    let list = manifest.as_array().expect("manifest is a list");
    assert!(list.len() >= 10, "expected the ten reference fixtures");
    list.iter()
        .map(|entry| {
            let name = entry["name"].as_str().unwrap().to_string();
            Fixture {
                path: dir.join(&name),
                name,
                block_size: entry["block_size"].as_u64().unwrap() as u32,
                num_blocks: entry["num_blocks"].as_u64().unwrap() as u32,
                input_len: entry["input_len"].as_u64().unwrap(),
                raw_len: entry["raw_len"].as_u64().unwrap(),
                raw_sha256: entry["raw_sha256"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}
