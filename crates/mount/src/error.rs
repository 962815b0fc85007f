//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// What went wrong while mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A file system call failed; `context` says which and on what.
    #[error("{context}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A helper program (losetup, mount, blkid, …) could not be started.
    #[error("cannot run {program}: {source} (it comes with util-linux / mount on Debian)")]
    Spawn {
        /// The program's name.
        program: String,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A mount point could not be unmounted because something still uses it.
    #[error("{}: target is busy (a process has a file open there or its working directory inside); close it and run `mkmodule umount` again", path.display())]
    Busy {
        /// The busy mount point or device.
        path: PathBuf,
    },
    /// Waited too long.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: u64,
    },
    /// The FUSE server process failed before it was ready.
    #[error("the FUSE server did not start: {0}")]
    Server(String),
    /// The target is already mounted by mkmodule.
    #[error("{} is already mounted by mkmodule (record {record}); run `mkmodule umount {}` first", path.display(), path.display())]
    AlreadyMounted {
        /// The mount point.
        path: PathBuf,
        /// The record that says so.
        record: PathBuf,
    },
    /// blkid found no filesystem on a device.
    #[error("no filesystem found on {} (blkid recognises no signature); give -t FSTYPE, or use `mkmodule attach` for the raw device", device.display())]
    NoFilesystem {
        /// The loop device.
        device: PathBuf,
    },
    /// Nothing that mkmodule mounted matches the argument.
    #[error("{}: not mounted or attached by mkmodule (no record in {})", what.display(), run_dir.display())]
    NotFound {
        /// The mount point or device asked for.
        what: PathBuf,
        /// Where the records are.
        run_dir: PathBuf,
    },
    /// A state record cannot be read or written.
    #[error("state record {}: {message}", path.display())]
    State {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The request itself cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
}

impl MountError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> MountError {
        MountError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`MountError::Io`] with the context `f()` returns.
    fn context_with(self, f: impl FnOnce() -> String) -> Result<T, MountError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context_with(self, f: impl FnOnce() -> String) -> Result<T, MountError> {
        self.map_err(|source| MountError::io(f(), source))
    }
}
