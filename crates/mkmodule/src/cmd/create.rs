//! `mkmodule create` (being written).

/// Arguments of `mkmodule create`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `mkmodule create`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mkmodule create is not written yet")
}
