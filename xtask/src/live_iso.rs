//! `cargo xtask live-iso`: a bootable live ISO (Knoppix layout) from a root filesystem image
//! and module images, the remastering recipe as one command. The ISO itself is made by
//! [`mkmodule_testkit::live_iso`], which the live boot tests use too.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mkmodule_testkit::live_iso::LiveIso;

use crate::cargo;
use crate::common::workspace_root;

/// Where `scripts/install-guest-kernel.sh` unpacks the Debian kernel.
const GUEST_KERNEL: &str = "/var/cache/mkmodule/guest-kernel";

/// `cargo xtask live-iso --root ROOT.img [--module M.img ...] [--kernel K --initrd I]
/// [--kernel-dir DIR] [--label L] [--append WORDS] [--menu-seconds N] [--mkmodule BIN]
/// -o live.iso`.
pub fn live_iso(args: &[String]) -> Result<()> {
    let mut root = None;
    let mut modules = Vec::new();
    let mut kernel = None;
    let mut initrd = None;
    let mut kernel_dir = std::env::var_os("MKMODULE_GUEST_KERNEL_DIR")
        .map_or_else(|| PathBuf::from(GUEST_KERNEL), PathBuf::from);
    let mut label = "MKMODULE_LIVE".to_string();
    let mut append = String::new();
    let mut menu_seconds = 5u32;
    let mut mkmodule = None;
    let mut output = None;
    let mut words = args.iter();
    let value = |words: &mut std::slice::Iter<String>, flag: &str| -> Result<String> {
        words
            .next()
            .cloned()
            .with_context(|| format!("{flag} needs a value"))
    };
    while let Some(word) = words.next() {
        match word.as_str() {
            "--root" => root = Some(PathBuf::from(value(&mut words, word)?)),
            "--module" => modules.push(PathBuf::from(value(&mut words, word)?)),
            "--kernel" => kernel = Some(PathBuf::from(value(&mut words, word)?)),
            "--initrd" => initrd = Some(PathBuf::from(value(&mut words, word)?)),
            "--kernel-dir" => kernel_dir = PathBuf::from(value(&mut words, word)?),
            "--label" => label = value(&mut words, word)?,
            "--append" => append = value(&mut words, word)?,
            "--menu-seconds" => {
                let text = value(&mut words, word)?;
                menu_seconds = text
                    .parse()
                    .with_context(|| format!("--menu-seconds {text:?} is not a number"))?;
            }
            "--mkmodule" => mkmodule = Some(PathBuf::from(value(&mut words, word)?)),
            "-o" | "--output" => output = Some(PathBuf::from(value(&mut words, word)?)),
            other => bail!("live-iso: unknown argument {other:?} (see cargo xtask help)"),
        }
    }
    let Some(root) = root else {
        bail!("live-iso: --root ROOT.img is required");
    };
    let Some(output) = output else {
        bail!("live-iso: -o live.iso is required");
    };
    if !label
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        || label.is_empty()
        || label.len() > 32
    {
        bail!("live-iso: --label must be 1-32 of A-Z, 0-9 and _ (an ISO 9660 volume id)");
    }
    let workspace = workspace_root()?;
    let mkmodule = match mkmodule {
        Some(path) => path,
        None => {
            cargo(&["build", "--release", "-p", "mkmodule"])?;
            workspace.join("target/release/mkmodule")
        }
    };
    let work = workspace.join("target/live-iso");
    std::fs::create_dir_all(&work)?;
    let iso = LiveIso {
        root,
        modules,
        mkmodule,
        helper: workspace.join("dist/lib/mkmodule-live"),
        kernel,
        initrd,
        kernel_dir,
        label,
        append,
        menu_seconds,
        work,
        output: output.clone(),
    };
    iso.build()
        .with_context(|| format!("building {}", output.display()))?;
    println!("live-iso: wrote {}", output.display());
    Ok(())
}
