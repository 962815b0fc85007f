//! The `mkmodule` command line tool: a thin layer of clap commands over the libraries.

mod cmd;
mod open;
mod output;
mod progress;
mod remote;
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
    /// Attach an NBD export to /dev/nbdN and keep it attached across server restarts and
    /// failover (Linux, netlink).
    Connect(cmd::connect::Args),
    /// Fold a copy-on-write overlay (serve --cow FILE) and its image into a new image.
    Commit(cmd::commit::Args),
    /// Write an image as another format, codec or block size, copying the blocks that stay.
    Convert(cmd::convert::Args),
    /// Copy an image, reading from it only the blocks an older image here does not hold.
    Fetch(cmd::fetch::Args),
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
            Command::Convert(args) => cmd::convert::run(args),
            Command::Fetch(args) => cmd::fetch::run(args),
            Command::Connect(args) => cmd::connect::run(args),
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
/// `mkmodule rootfs.img -o KNOPPIX` works as users of create_compressed_fs expect. A first word
/// that is no command, no flag, not `-` and no existing file is refused as a usage error
/// (`mkmodule extrct X` is a typo, not an input named `extrct`), naming the nearest command.
fn with_default_command(mut args: Vec<OsString>) -> Result<Vec<OsString>, clap::Error> {
    const TOP_LEVEL: &[&str] = &["-h", "--help", "-V", "--version", "help"];
    let Some(first) = args.get(1) else {
        return Ok(args);
    };
    let word = first.to_str();
    let command = <Cli as clap::CommandFactory>::command();
    let is_command = word.is_some_and(|word| {
        command
            .get_subcommands()
            .any(|c| c.get_name() == word || c.get_all_aliases().any(|a| a == word))
    });
    if is_command || word.is_some_and(|word| TOP_LEVEL.contains(&word)) {
        return Ok(args);
    }
    if word.is_some_and(could_be_a_command) && !std::path::Path::new(first).exists() {
        let word = word.unwrap_or_default();
        return Err(unknown_word(word, &command));
    }
    args.insert(1, "create".into());
    Ok(args)
}

/// Whether `word` is spelt like a command (letters, digits, `-`, `_`, not starting with `-`)
/// rather than like a file name (`rootfs.img`, `./KNOPPIX`), which goes to `create` as its input
/// and, when missing, fails there naming the input.
fn could_be_a_command(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The usage error for a first word that is neither a command nor an existing file.
fn unknown_word(word: &str, command: &clap::Command) -> clap::Error {
    let visible: Vec<&str> = command
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name())
        .collect();
    let mut message = format!("`{word}` is neither a command nor an existing file");
    match nearest_command(word, &visible) {
        Some(nearest) => message.push_str(&format!("; did you mean `{nearest}`?")),
        None => message.push_str(&format!("; the commands are {}", visible.join(", "))),
    }
    command
        .clone()
        .error(clap::error::ErrorKind::InvalidSubcommand, message)
}

/// The command nearest to `word` by edit distance, when it is near enough to be a typo (at
/// most a third of the word's letters wrong, and at least one letter right).
fn nearest_command<'a>(word: &str, commands: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    commands
        .iter()
        .map(|&c| (strsim::levenshtein(&word, c), c))
        .filter(|&(distance, c)| distance <= limit && distance < c.len())
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}

fn main() -> ExitCode {
    let args = with_default_command(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let cli = Cli::parse_from(args);
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
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("rootfs.img");
        std::fs::write(&input, b"x").unwrap();
        let input = input.to_str().unwrap();
        assert_eq!(
            with_default_command(argv(&["mkmodule", input, "-o", "KNOPPIX"])).unwrap(),
            argv(&["mkmodule", "create", input, "-o", "KNOPPIX"])
        );
        assert_eq!(
            with_default_command(argv(&["mkmodule", "-", "-o", "-"])).unwrap(),
            argv(&["mkmodule", "create", "-", "-o", "-"])
        );
        // A missing file spelt like a file name goes to create, which names the input.
        assert_eq!(
            with_default_command(argv(&["mkmodule", "missing.img", "-o", "x"])).unwrap(),
            argv(&["mkmodule", "create", "missing.img", "-o", "x"])
        );
        // Flags go to create, which reports what is wrong with them.
        assert_eq!(
            with_default_command(argv(&["mkmodule", "-o", "x"])).unwrap(),
            argv(&["mkmodule", "create", "-o", "x"])
        );
    }

    #[test]
    fn an_existing_file_named_like_a_typo_is_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("extrct");
        std::fs::write(&input, b"x").unwrap();
        let input = input.to_str().unwrap();
        assert_eq!(
            with_default_command(argv(&["mkmodule", input, "-o", "out"])).unwrap(),
            argv(&["mkmodule", "create", input, "-o", "out"])
        );
    }

    #[test]
    fn a_mistyped_command_is_a_usage_error_with_a_suggestion() {
        let error =
            with_default_command(argv(&["mkmodule", "extrct-no-such-file", "X"])).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(
            text.contains("neither a command nor an existing file"),
            "{text}"
        );
        let error = with_default_command(argv(&["mkmodule", "extrct", "X"])).unwrap_err();
        assert!(
            error.to_string().contains("did you mean `extract`?"),
            "{error}"
        );
        let error = with_default_command(argv(&["mkmodule", "zzzzzzzz", "X"])).unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("did you mean"), "{text}");
        assert!(
            text.contains("the commands are create, info, extract"),
            "{text}"
        );
    }

    #[test]
    fn nearest_commands() {
        let commands = [
            "create", "info", "extract", "verify", "serve", "mount", "umount",
        ];
        assert_eq!(nearest_command("extrct", &commands), Some("extract"));
        assert_eq!(nearest_command("Verfy", &commands), Some("verify"));
        assert_eq!(nearest_command("serv", &commands), Some("serve"));
        assert_eq!(nearest_command("umonut", &commands), Some("umount"));
        assert_eq!(nearest_command("rootfs.img", &commands), None);
        assert_eq!(nearest_command("x", &commands), None);
    }

    #[test]
    fn commands_and_help_are_left_alone() {
        for args in [
            &["mkmodule", "info", "x"][..],
            &["mkmodule", "--help"],
            &["mkmodule"],
        ] {
            assert_eq!(with_default_command(argv(args)).unwrap(), argv(args));
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
