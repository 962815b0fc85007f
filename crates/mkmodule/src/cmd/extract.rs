//! `mkmodule extract` (being written).

/// Arguments of `mkmodule extract`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `mkmodule extract`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mkmodule extract is not written yet")
}
