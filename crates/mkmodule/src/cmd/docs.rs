//! `mkmodule docs man|completions SHELL`: the manual page and shell completions, generated from
//! the same clap definition as `--help`, so they never disagree with the tool.

use std::io::Write;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// What to print.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// The manual page in roff (`mkmodule docs man > mkmodule.1`), one section per command.
    Man,
    /// A completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// Arguments of `mkmodule docs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

/// Writes the manual page: the top-level page followed by one page per visible command.
fn man(command: &clap::Command, out: &mut impl Write) -> Result<()> {
    clap_mangen::Man::new(command.clone()).render(out)?;
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("mkmodule-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).bin_name(name);
        clap_mangen::Man::new(page).render(out)?;
    }
    Ok(())
}

/// Runs `mkmodule docs`.
pub fn run(mut command: clap::Command, args: Args) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.what {
        What::Man => man(&command, &mut out).context("writing the manual page")?,
        What::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "mkmodule", &mut out)
        }
    }
    out.flush().context("writing to standard output")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("mkmodule")
            .about("test")
            .subcommand(clap::Command::new("info").about("Show an image"))
            .subcommand(clap::Command::new("hidden").hide(true))
    }

    #[test]
    fn man_page_has_a_section_per_visible_command() {
        let mut out = Vec::new();
        man(&sample(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(".TH mkmodule"), "{text}");
        assert!(text.contains(".TH mkmodule-info"), "{text}");
        assert!(!text.contains("mkmodule-hidden"), "{text}");
    }
}
