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

/// The error and its causes on one line (joined with `": "`), each cause once: the libraries'
/// errors print their I/O or codec cause in their own message *and* report it as their source,
/// which `{:#}` would print twice. `main` prints every command's error through it.
pub fn describe(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_prints_each_cause_once() {
        /// Prints its cause in its own message and also reports it as its source, as the
        /// libraries' errors do.
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "reading block 3: {}", self.0)
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::other("Input/output error");
        let error = anyhow::Error::new(Wrapped(io)).context("extracting img");
        assert_eq!(
            format!("{error:#}"),
            "extracting img: reading block 3: Input/output error: Input/output error"
        );
        assert_eq!(
            describe(&error),
            "extracting img: reading block 3: Input/output error"
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
