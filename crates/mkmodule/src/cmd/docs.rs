//! `mkmodule docs man|completions SHELL`: the manual page and shell completions, generated from
//! the same clap definition as `--help`, so they never disagree with the tool.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap_complete::Shell;

/// What to print.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// The manual page in roff (`mkmodule docs man > mkmodule.1`), one section per command.
    Man {
        /// Write one page per file into DIR instead: `mkmodule.1` and `mkmodule-COMMAND.1`
        /// for each command, as a distribution installs them.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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

/// The pages: the top-level command, then one per visible command named `mkmodule-COMMAND`.
fn pages(command: &clap::Command) -> Vec<clap::Command> {
    let subs = command.get_subcommands().filter(|c| !c.is_hide_set());
    let subs = subs.map(|sub| {
        let name = format!("{}-{}", command.get_name(), sub.get_name());
        sub.clone().name(name.clone()).bin_name(name)
    });
    std::iter::once(command.clone()).chain(subs).collect()
}

/// Writes the manual page: the top-level page followed by one page per visible command.
fn man(command: &clap::Command, out: &mut impl Write) -> Result<()> {
    for page in pages(command) {
        clap_mangen::Man::new(page).render(out)?;
    }
    Ok(())
}

/// Writes each page to `DIR/NAME.1`.
fn man_dir(command: &clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for page in pages(command) {
        let path = dir.join(format!("{}.1", page.get_name()));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `mkmodule docs`.
pub fn run(mut command: clap::Command, args: Args) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.what {
        What::Man { dir: Some(dir) } => return man_dir(&command, &dir),
        What::Man { dir: None } => man(&command, &mut out).context("writing the manual page")?,
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

    #[test]
    fn man_dir_writes_a_file_per_page() {
        let dir = tempfile::tempdir().unwrap();
        man_dir(&sample(), dir.path()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["mkmodule-info.1", "mkmodule.1"]);
        let info = std::fs::read_to_string(dir.path().join("mkmodule-info.1")).unwrap();
        assert!(info.contains(".TH mkmodule-info"), "{info}");
    }
}
