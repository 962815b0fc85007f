//! `mkmodule info` (being written).

/// Arguments of `mkmodule info`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `mkmodule info`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mkmodule info is not written yet")
}
