//! `cargo deny` over the dependency graph, with the rules of deny.toml: licences, bans and
//! sources always; advisories only when the RustSec advisory database can be fetched.

use std::process::{Command, Stdio};

use anyhow::Result;

use crate::cargo;

/// Runs the checks. Licences, bans and sources need nothing but the lock file and crates.io.
/// Advisories need a fresh copy of the RustSec database, a git repository on a host that a
/// machine without general network access cannot reach: then they are reported as not checked
/// (never as passed) and the run goes on.
pub fn deny() -> Result<()> {
    cargo(&["deny", "--locked", "check", "licenses", "bans", "sources"])?;
    if fetch_advisory_db() {
        // Checked against the copy just fetched; findings fail the run.
        cargo(&["deny", "--locked", "--offline", "check", "advisories"])?;
    } else {
        eprintln!(
            "xtask: cargo deny: advisories NOT CHECKED: the RustSec advisory database could not \
             be fetched (no network access to it); licences, bans and sources were checked. \
             Run `cargo deny check advisories` where it can be fetched."
        );
    }
    Ok(())
}

/// Fetches (or updates) cargo-deny's copy of the advisory database; whether that worked.
fn fetch_advisory_db() -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: {cargo} deny fetch db");
    Command::new(cargo)
        .args(["deny", "fetch", "db"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
