//! `mkmodule attach`: an image as a loop device (`/dev/loopN`), for scripts.

use std::path::PathBuf;

use anyhow::Result;
use mkmodule_mount::{Kind, Plan, RunDir};

use crate::cmd::fuse_daemon::ServerArgs;
use crate::cmd::mount::{absolute, image_path, Server};

/// Arguments of `mkmodule attach`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  dev=$(mkmodule attach KNOPPIX) && fsck -n \"$dev\"; mkmodule detach \"$dev\"
  mkmodule attach -P disk.cloop                    partitions appear as /dev/loopNp1, …")]
pub struct Args {
    /// The image (a raw file is attached as it is, through the same path).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// Scan the device for partitions (losetup --partscan).
    #[arg(short = 'P', long)]
    partscan: bool,

    /// Make the device writable: writes go to this copy-on-write overlay file (created if
    /// missing), the image is never modified.
    #[arg(long, value_name = "FILE")]
    cow: Option<PathBuf>,

    #[command(flatten)]
    server: ServerArgs,
}

/// Runs `mkmodule attach`: prints the device.
pub fn run(args: Args) -> Result<()> {
    let mut run_dir = RunDir::from_env();
    let image = image_path(&args.image)?;
    let cow = args.cow.as_deref().map(absolute).transpose()?;
    let images = vec![image];
    let mut server = Server::new(&images, cow.as_deref(), &args.server, false)?;
    let mut plan = Plan::new(Kind::Attach, images, None);
    plan.read_only = cow.is_none();
    plan.cow = cow;
    plan.partscan = args.partscan;
    let record = mkmodule_mount::mount(&mut run_dir, &plan, server.launcher())?;
    for device in record.devices() {
        println!("{}", device.display());
    }
    Ok(())
}
