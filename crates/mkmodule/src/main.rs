//! The `mkmodule` command line tool: a thin layer of clap commands over the libraries.

mod cmd;
mod open;
mod output;
mod progress;
mod systemd;
mod units;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Compressed block images of the cloop family (Knoppix, create_compressed_fs, mkuzip).
///
/// With no command, `mkmodule INPUT -o OUTPUT` runs `create`.
#[derive(Debug, Parser)]
#[command(
    name = "mkmodule",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compress a filesystem or disk image into a cloop-family image (the default command).
    Create(cmd::create::Args),
    /// Show an image's dialect, codecs, block size, sizes, ratio and trailer.
    Info(cmd::info::Args),
    /// Decompress an image back to the raw filesystem or disk image.
    Extract(cmd::extract::Args),
    /// Decode every block and check the recorded digest; report each bad block.
    Verify(cmd::verify::Args),
    /// Serve images over NBD (read-only unless --cow), for qemu, nbd-client, nbdfuse and booting
    /// machines.
    Serve(cmd::serve::Args),
    /// Fold a copy-on-write overlay (serve --cow FILE) and its image into a new image.
    Commit(cmd::commit::Args),
    /// Mount an image's filesystem (or stack module images with --union) via FUSE + loop.
    Mount(cmd::mount::Args),
    /// Take down what `mount` or `attach` set up: mounts, loop devices, FUSE server.
    Umount(cmd::umount::Args),
    /// Attach an image to a loop device and print it (/dev/loopN), for scripts.
    Attach(cmd::attach::Args),
    /// Release a loop device made by `attach`.
    Detach(cmd::detach::Args),
    /// Sweep block sizes x codecs over your own data: size, speed, read latency, a pick.
    Bench(cmd::bench::Args),
    /// Print the manual page (roff) or shell completions, made from this command line's own
    /// definition.
    #[command(name = "docs", hide = true)]
    Docs(cmd::docs::Args),
    /// The background FUSE server of `mount` and `attach` (internal).
    #[command(name = "__fuse-daemon", hide = true)]
    FuseDaemon(cmd::fuse_daemon::Args),
}

impl Command {
    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Create(args) => cmd::create::run(args),
            Command::Info(args) => cmd::info::run(args),
            Command::Extract(args) => cmd::extract::run(args),
            Command::Verify(args) => cmd::verify::run(args),
            Command::Serve(args) => cmd::serve::run(args),
            Command::Commit(args) => cmd::commit::run(args),
            Command::Mount(args) => cmd::mount::run(args),
            Command::Umount(args) => cmd::umount::run(args),
            Command::Attach(args) => cmd::attach::run(args),
            Command::Detach(args) => cmd::detach::run(args),
            Command::Bench(args) => cmd::bench::run(args),
            Command::FuseDaemon(args) => cmd::fuse_daemon::run(args),
            Command::Docs(args) => cmd::docs::run(<Cli as clap::CommandFactory>::command(), args),
        }
    }
}

/// Inserts `create` when the first argument is neither a command nor a top-level flag, so that
/// `mkmodule rootfs.img -o KNOPPIX` works as users of create_compressed_fs expect.
fn with_default_command(mut args: Vec<OsString>) -> Vec<OsString> {
    const TOP_LEVEL: &[&str] = &["-h", "--help", "-V", "--version", "help"];
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    let is_command = <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first));
    if !is_command && !TOP_LEVEL.contains(&first) {
        args.insert(1, "create".into());
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_default_command(std::env::args_os().collect()));
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mkmodule: {}", cmd::describe(&error));
            ExitCode::from(cmd::exit_code(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn bare_input_means_create() {
        assert_eq!(
            with_default_command(argv(&["mkmodule", "rootfs.img", "-o", "KNOPPIX"])),
            argv(&["mkmodule", "create", "rootfs.img", "-o", "KNOPPIX"])
        );
        assert_eq!(
            with_default_command(argv(&["mkmodule", "-", "-o", "-"])),
            argv(&["mkmodule", "create", "-", "-o", "-"])
        );
    }

    #[test]
    fn commands_and_help_are_left_alone() {
        for args in [
            &["mkmodule", "info", "x"][..],
            &["mkmodule", "--help"],
            &["mkmodule"],
        ] {
            assert_eq!(with_default_command(argv(args)), argv(args));
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
