//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

use mkmodule_blockdev::ErrorKind;

/// What went wrong while mounting or unmounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("cannot run {program} (it comes with util-linux / mount on Debian)")]
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
    /// The FUSE server process failed before it was ready; the text is what it reported.
    #[error("the FUSE server did not start: {0}")]
    Server(String),
    /// The FUSE server process disappeared right after it was started.
    #[error("the FUSE server did not start: process {pid} vanished right after starting")]
    Vanished {
        /// Its process id.
        pid: u32,
    },
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
    /// A state record cannot be encoded or decoded.
    #[error("state record {}: {message}", path.display())]
    State {
        /// The record file.
        path: PathBuf,
        /// What the JSON library said.
        message: String,
    },
    /// A state record of the same name exists already.
    #[error("state record {}: exists already", path.display())]
    RecordExists {
        /// The record file.
        path: PathBuf,
    },
    /// A state record of another format version.
    #[error("state record {}: format version {found} (this mkmodule reads {supported})", path.display())]
    RecordVersion {
        /// The record file.
        path: PathBuf,
        /// The version it has.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// losetup printed something other than a device name.
    #[error("losetup printed {output:?} where a device name was expected")]
    LosetupOutput {
        /// What it printed.
        output: String,
    },
    /// A path overlayfs cannot take in its mount options.
    #[error("{what} {} cannot be given to overlayfs: its path holds ',', ':', '\\' or a space", path.display())]
    OverlayPath {
        /// What the path is ("the changes directory", ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A mount was asked for without an image (or with names not matching the images).
    #[error("no image to mount")]
    NoImage,
    /// A mount was asked for without a mount point.
    #[error("no mount point")]
    NoMountPoint,
    /// The mount point is not a directory.
    #[error("mount point {} is not a directory", path.display())]
    NotADirectory {
        /// The mount point.
        path: PathBuf,
    },
    /// A plain mount was given several images.
    #[error("a plain mount takes one image; stack several with --union")]
    SeveralImages,
    /// A union was asked for with writable layers.
    #[error("union layers are read-only: changes go to the changes layer")]
    WritableUnion,
    /// A filesystem type mount(8) cannot take.
    #[error("bad filesystem type {fstype:?}")]
    BadFsType {
        /// The type given.
        fstype: String,
    },
    /// The in-process FUSE server was started twice.
    #[error("the FUSE server was started already")]
    AlreadyStarted,
    /// A process id that is not a valid pid.
    #[error("bad process id {pid}")]
    BadPid {
        /// The number given.
        pid: u32,
    },
    /// A step failed and undoing the steps done before it failed too; both are told.
    ///
    /// Both errors are part of the message, each with its whole chain of causes; neither is
    /// reported again as the source.
    #[error(
        "{}; undoing the steps done so far failed too: {} \
         (the record {} is kept: run `mkmodule umount` on the mount point or device)",
        mkmodule_blockdev::chain_text(error.as_ref()),
        mkmodule_blockdev::chain_text(cleanup.as_ref()),
        record.display()
    )]
    UndoFailed {
        /// The step's error.
        error: Box<MountError>,
        /// Why undoing failed.
        cleanup: Box<MountError>,
        /// The state record kept for a later `mkmodule umount`.
        record: PathBuf,
    },
}

impl MountError {
    /// What kind of failure this is: the system or a helper program failing, a request that
    /// cannot be carried out as given, or a damaged state record.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MountError::Io { .. }
            | MountError::Spawn { .. }
            | MountError::Command { .. }
            | MountError::Busy { .. }
            | MountError::Timeout { .. }
            | MountError::Server(_)
            | MountError::Vanished { .. }
            | MountError::LosetupOutput { .. } => ErrorKind::Io,
            MountError::State { .. } => ErrorKind::Corrupt,
            MountError::RecordVersion { .. } => ErrorKind::Unsupported,
            MountError::AlreadyMounted { .. }
            | MountError::NoFilesystem { .. }
            | MountError::NotFound { .. }
            | MountError::RecordExists { .. }
            | MountError::OverlayPath { .. }
            | MountError::NoImage
            | MountError::NoMountPoint
            | MountError::NotADirectory { .. }
            | MountError::SeveralImages
            | MountError::WritableUnion
            | MountError::BadFsType { .. }
            | MountError::AlreadyStarted
            | MountError::BadPid { .. } => ErrorKind::Config,
            MountError::UndoFailed { error, .. } => error.kind(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once_and_the_kind_follows_the_failure() {
        let spawn = MountError::Spawn {
            program: "losetup".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let text = mkmodule_blockdev::chain_text(&spawn);
        assert!(
            text.starts_with("cannot run losetup (it comes with"),
            "{text}"
        );
        assert_eq!(text.matches("not found").count(), 1, "{text}");
        assert_eq!(spawn.kind(), ErrorKind::Io);
        assert_eq!(MountError::NoImage.kind(), ErrorKind::Config);
        let undo = MountError::UndoFailed {
            error: Box::new(MountError::NoMountPoint),
            cleanup: Box::new(MountError::BadPid { pid: 0 }),
            record: PathBuf::from("r.json"),
        };
        assert_eq!(undo.kind(), ErrorKind::Config);
        assert!(undo.to_string().starts_with("no mount point; undoing"));
        let undo = MountError::UndoFailed {
            error: Box::new(MountError::io("mounting /m", io::Error::other("EIO here"))),
            cleanup: Box::new(MountError::io(
                "removing /r",
                io::Error::other("EBUSY here"),
            )),
            record: PathBuf::from("r.json"),
        };
        let text = mkmodule_blockdev::chain_text(&undo);
        assert!(
            text.starts_with("mounting /m: EIO here; undoing the steps done so far failed too: removing /r: EBUSY here"),
            "{text}"
        );
        assert!(std::error::Error::source(&undo).is_none());
    }
}
