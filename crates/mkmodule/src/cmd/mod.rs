//! One module per command: each has its clap `Args` and a `run` function.

pub mod attach;
pub mod bench;
pub mod commit;
pub mod connect;
pub mod convert;
pub mod create;
pub mod daemon_secrets;
pub mod detach;
pub mod docs;
pub mod extract;
pub mod fetch;
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

/// Exit status 3: the command ran but found damaged data (verify, and extract when the trailer
/// digest does not match).
pub const EXIT_DAMAGED: u8 = 3;

/// The exit status for an error: its own when it carries one, else 1.
///
/// Only [`ExitStatus`] asks for another status (3 from `verify`, which decides by
/// [`mkmodule_blockdev::ErrorKind::Corrupt`]); a library error's kind does not change it.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .downcast_ref::<ExitStatus>()
        .map_or(1, |status| status.code)
}

/// The error and its causes on one line, joined with `": "`.
///
/// The libraries give each cause either in their message or as `source()`, never both
/// (the error contract in `mkmodule_blockdev`), so a plain join prints every cause once. `main`
/// prints every command's error through it.
pub fn describe(error: &anyhow::Error) -> String {
    mkmodule_blockdev::chain_text(error.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_prints_each_cause_once() {
        // A library error whose operating-system cause is its source, not part of its message.
        let io = std::io::Error::other("Input/output error");
        let read = mkmodule_image::ImageError::BlockIo {
            block: 3,
            offset: 4096,
            len: 512,
            source: io,
        };
        let error = anyhow::Error::new(read).context("extracting img");
        let text = describe(&error);
        assert_eq!(
            text,
            "extracting img: block 3 at offset 4096 (512 bytes): read failed: Input/output error"
        );
        assert_eq!(text.matches("Input/output error").count(), 1, "{text}");
        assert_eq!(format!("{error:#}"), text);
        // The same through an I/O error, as a block device returns it.
        let read = mkmodule_image::ImageError::BlockIo {
            block: 3,
            offset: 4096,
            len: 512,
            source: std::io::Error::other("Input/output error"),
        };
        let error = anyhow::Error::new(std::io::Error::from(read)).context("serving img");
        assert_eq!(
            describe(&error),
            "serving img: block 3 at offset 4096 (512 bytes): read failed: Input/output error"
        );
        let status = anyhow::Error::new(ExitStatus {
            code: 3,
            message: "img is damaged".into(),
        });
        // main prints `describe` and takes the exit code from the same, untouched error.
        assert_eq!(describe(&status), "img is damaged");
        assert_eq!(exit_code(&status), 3);
    }
}
