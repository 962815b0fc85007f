//! `mkmodule verify` (being written).

/// Arguments of `mkmodule verify`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `mkmodule verify`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mkmodule verify is not written yet")
}
