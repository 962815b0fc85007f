//! `mkmodule umount`: take down what `mkmodule mount` (or `attach`) set up.

use std::path::PathBuf;

use anyhow::{bail, Result};
use mkmodule_mount::RunDir;

/// Arguments of `mkmodule umount`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Undoes every step in reverse: the filesystem or overlayfs mount, the union's layers and tmpfs,
the loop devices, the FUSE mount and its server process, the record in /run/mkmodule. If a
mount point is busy, nothing past it is undone and running the command again finishes the job.")]
pub struct Args {
    /// Mount points (or loop devices) set up by `mkmodule mount` or `mkmodule attach`.
    #[arg(required = true, value_name = "DIR|DEVICE")]
    targets: Vec<PathBuf>,
}

/// Runs `mkmodule umount`.
pub fn run(args: Args) -> Result<()> {
    take_down(&args.targets, false)
}

/// Undoes the records of `targets`; with `attached_only`, refuses records that mount a
/// filesystem (`detach` must not unmount anything behind the user's back).
pub fn take_down(targets: &[PathBuf], attached_only: bool) -> Result<()> {
    let run = RunDir::from_env();
    let mut failed = 0;
    for target in targets {
        let result = run
            .find(target)
            .map_err(anyhow::Error::from)
            .and_then(|mut record| {
                if attached_only {
                    if let Some(dir) = &record.target {
                        bail!(
                            "{} backs the mount on {}: use `mkmodule umount {}`",
                            target.display(),
                            dir.display(),
                            dir.display()
                        );
                    }
                }
                mkmodule_mount::undo(&run, &mut record)?;
                Ok(())
            });
        if let Err(error) = result {
            failed += 1;
            if targets.len() == 1 {
                return Err(error);
            }
            eprintln!("mkmodule: {error:#}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {} could not be taken down", targets.len());
    }
    Ok(())
}
