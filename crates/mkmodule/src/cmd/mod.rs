//! One module per command: each has its clap `Args` and a `run` function.

pub mod attach;
pub mod bench;
pub mod commit;
pub mod create;
pub mod detach;
pub mod docs;
pub mod extract;
pub mod fuse_daemon;
pub mod info;
pub mod mount;
pub mod serve;
pub mod umount;
pub mod verify;

/// An error that asks for a specific exit status (otherwise 1).
#[derive(Debug)]
pub struct ExitStatus {
    /// The process exit status.
    pub code: u8,
    /// What to tell the user.
    pub message: String,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitStatus {}

/// Exit status 3: the command ran but found damaged data (verify).
pub const EXIT_DAMAGED: u8 = 3;

/// The exit status for an error: its own when it carries one, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .downcast_ref::<ExitStatus>()
        .map_or(1, |status| status.code)
}
