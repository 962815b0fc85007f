//! `mkmodule detach`: release loop devices made by `mkmodule attach`.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `mkmodule detach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Loop devices printed by `mkmodule attach`.
    #[arg(required = true, value_name = "DEVICE")]
    devices: Vec<PathBuf>,
}

/// Runs `mkmodule detach`.
pub fn run(args: Args) -> Result<()> {
    crate::cmd::umount::take_down(&args.devices, true)
}
