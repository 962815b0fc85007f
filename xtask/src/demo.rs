//! `cargo xtask demo`: the main job on a sample, end to end.
//!
//! Builds an ext4 image of this machine's man pages, compresses it with `mkmodule` in the
//! portable profile, shows `info`, verifies it, extracts it again and checks the bytes, and
//! asks qemu's cloop driver and Debian's extract_compressed_fs to read it too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run};

/// Where the demo keeps its files (inside the target directory, out of git).
fn demo_dir() -> PathBuf {
    PathBuf::from("target/demo")
}

/// Runs the demo.
pub fn demo() -> Result<()> {
    cargo(&["build", "--release", "-p", "mkmodule"])?;
    let mkmodule = Path::new("target/release/mkmodule");
    let dir = demo_dir();
    std::fs::create_dir_all(&dir)?;
    let sample = dir.join("sample.ext4");
    let image = dir.join("sample.cloop");
    let back = dir.join("sample.back");
    if !sample.exists() {
        let source = ["/usr/share/man", "/usr/share/doc"]
            .into_iter()
            .find(|d| Path::new(d).is_dir())
            .context("no /usr/share/man or /usr/share/doc to build a sample filesystem from")?;
        eprintln!("demo: building {} from {source}", sample.display());
        let file = std::fs::File::create(&sample)?;
        file.set_len(256 << 20)?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d", source])
            .arg(&sample))?;
    }
    run(Command::new(mkmodule)
        .arg(&sample)
        .arg("-o")
        .arg(&image)
        .arg("-f"))?;
    run(Command::new(mkmodule).arg("info").arg(&image))?;
    run(Command::new(mkmodule).arg("verify").arg(&image))?;
    run(Command::new(mkmodule)
        .arg("extract")
        .arg(&image)
        .arg("-o")
        .arg(&back)
        .arg("-f"))?;
    same_bytes(&sample, &back)?;
    eprintln!("demo: extract gives back the sample byte for byte");
    let qemu_out = dir.join("sample.qemu");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "cloop", "-O", "raw"])
        .arg(&image)
        .arg(&qemu_out))?;
    same_prefix(&sample, &qemu_out)?;
    eprintln!("demo: qemu-img's cloop driver reads the image");
    let extract_out = dir.join("sample.extract");
    let _ = std::fs::remove_file(&extract_out);
    run(Command::new("extract_compressed_fs")
        .arg(&image)
        .arg(&extract_out))?;
    same_prefix(&sample, &extract_out)?;
    eprintln!("demo: extract_compressed_fs reads the image");
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> Result<()> {
    if std::fs::read(a)? != std::fs::read(b)? {
        bail!("{} and {} differ", a.display(), b.display());
    }
    Ok(())
}

/// `b` must start with all of `a` and hold only zeros after it (the padded final block).
fn same_prefix(a: &Path, b: &Path) -> Result<()> {
    let (a_bytes, b_bytes) = (std::fs::read(a)?, std::fs::read(b)?);
    if b_bytes.len() < a_bytes.len()
        || b_bytes[..a_bytes.len()] != a_bytes[..]
        || b_bytes[a_bytes.len()..].iter().any(|&x| x != 0)
    {
        bail!("{} does not reproduce {}", b.display(), a.display());
    }
    Ok(())
}
