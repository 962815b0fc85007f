//! Writing output files safely, for every command that writes one (`create`, `extract`,
//! `commit`).
//!
//! An [`OutputFile`] is a temporary file beside the target, `.NAME.PID.RANDOM.partial`: the
//! process id lets a later run tell a dead run's leftover from a live run's file, the random
//! part makes the name unpredictable. [`OutputFile::commit`] syncs it, renames it to the target
//! (without replacing an existing file unless asked to) and syncs the directory. Dropped
//! without a commit (an error), or on SIGINT, SIGTERM or SIGHUP, the temporary file is removed;
//! a signal then ends the process with status 128 + the signal number. After a SIGKILL or a
//! power loss the file stays until the next [`OutputFile::create`] for the same target removes
//! it.
//!
//! Outputs that are not regular files (standard output, a block device, a FIFO, `/dev/null`)
//! are written in place by the commands; [`Destination::of`] tells them which case they have.

use std::fs::{self, File, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::{anyhow, bail, Context, Result};
use mkmodule_pack::OutputKind;

/// Ending of the temporary files written beside an output.
pub const TEMP_SUFFIX: &str = ".partial";

/// What a path named as an output is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Nothing (or a dangling symbolic link): a new file is made.
    Missing,
    /// A regular file: replaced only when the user asks for it.
    RegularFile,
    /// A directory: refused.
    Directory,
    /// A block device: written in place, never replaced.
    BlockDevice,
    /// Another special file (a FIFO, a character device such as `/dev/null`): written in
    /// place, never replaced.
    SpecialFile,
}

impl Destination {
    /// Looks at `path` (following symbolic links).
    pub fn of(path: &Path) -> Destination {
        match fs::metadata(path) {
            Err(_) => Destination::Missing,
            Ok(meta) if meta.is_dir() => Destination::Directory,
            Ok(meta) if meta.is_file() => Destination::RegularFile,
            Ok(meta) if meta.file_type().is_block_device() => Destination::BlockDevice,
            Ok(_) => Destination::SpecialFile,
        }
    }

    /// Looks at `output`, the new image of a command that makes one from existing files
    /// (`commit`, `convert`, `fetch`), and refuses it when it is one of `inputs`, a directory,
    /// or (without `force`) anything that exists.
    pub fn of_new_image(output: &Path, inputs: &[&Path], force: bool) -> Result<Destination> {
        for input in inputs {
            if same_file(output, input) {
                bail!(
                    "the new image {} would replace its input {}: write it elsewhere",
                    output.display(),
                    input.display()
                );
            }
        }
        let destination = Destination::of(output);
        if destination == Destination::Directory {
            bail!("{} is a directory", output.display());
        }
        if destination != Destination::Missing && !force {
            bail!("{} exists: pass --force to replace it", output.display());
        }
        Ok(destination)
    }
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What pack can do with an output written in place (standard output, a device, a FIFO): seek
/// when it is at its start and seeks, else only write forward.
pub fn in_place_kind(file: &mut File) -> OutputKind {
    if file.stream_position().ok() == Some(0) {
        OutputKind::Seekable
    } else {
        OutputKind::Sequential
    }
}

/// Whether [`OutputFile::commit`] may replace an existing file under the target name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Fail when the target exists by the time of the rename.
    Never,
    /// Replace an existing file (`-f`, `--force`).
    Existing,
}

/// A new output file being written under a temporary name beside its target.
#[derive(Debug)]
pub struct OutputFile {
    temp: Option<tempfile::NamedTempFile>,
    target: PathBuf,
    dir: PathBuf,
    replace: Replace,
    _cleanup: CleanupGuard,
}

impl OutputFile {
    /// Creates `.NAME.PID.RANDOM.partial` in the target's directory (mode 0666 less the umask),
    /// registered for removal on a signal, after removing the leftovers of dead runs for the
    /// same target.
    pub fn create(target: &Path, replace: Replace) -> Result<OutputFile> {
        let dir = directory_of(target);
        if !dir.is_dir() {
            bail!("the output directory {} does not exist", dir.display());
        }
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("the output {} does not name a file", target.display()))?
            .to_string_lossy()
            .into_owned();
        remove_stale_temp_files(&dir, &name);
        let (temp, cleanup) = CleanupGuard::create_registered(target, || {
            tempfile::Builder::new()
                .prefix(&temp_prefix(&name, std::process::id()))
                .suffix(TEMP_SUFFIX)
                .permissions(Permissions::from_mode(0o666))
                .tempfile_in(&dir)
                .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
        })?;
        Ok(OutputFile {
            temp: Some(temp),
            target: target.to_path_buf(),
            dir,
            replace,
            _cleanup: cleanup,
        })
    }

    /// The temporary file, to write into.
    pub fn file(&self) -> &File {
        self.temp
            .as_ref()
            .expect("the file is there until commit")
            .as_file()
    }

    /// The temporary file, to write into through `Write` and `Seek`.
    pub fn file_mut(&mut self) -> &mut File {
        self.temp
            .as_mut()
            .expect("the file is there until commit")
            .as_file_mut()
    }

    /// The directory the output goes to (for scratch files that should share its disk).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the temporary file.
    #[cfg(test)]
    pub fn temp_path(&self) -> &Path {
        self.temp
            .as_ref()
            .expect("the file is there until commit")
            .path()
    }

    /// Syncs the file, renames it to the target and syncs the directory. `name` is how errors
    /// name the output.
    pub fn commit(mut self, name: &str) -> Result<()> {
        let temp = self.temp.take().expect("commit runs once");
        temp.as_file()
            .sync_all()
            .with_context(|| format!("cannot write {name}: syncing it to disk failed"))?;
        let persisted = match self.replace {
            Replace::Existing => temp.persist(&self.target),
            Replace::Never => temp.persist_noclobber(&self.target),
        };
        persisted.map_err(|e| {
            anyhow!(e.error).context(format!(
                "cannot rename the finished output to {}",
                self.target.display()
            ))
        })?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// The directory `path` is in (`.` for a bare name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Start of the name of the temporary file process `pid` writes for the output `name`:
/// `.NAME.PID.` (then a random part and [`TEMP_SUFFIX`]).
pub fn temp_prefix(name: &str, pid: u32) -> String {
    format!(".{name}.{pid}.")
}

/// The process id in `entry` when it is the name of a temporary file made for the output
/// `name` (`.NAME.PID.RANDOM.partial`, the random part letters and digits).
pub fn temp_owner(entry: &str, name: &str) -> Option<u32> {
    let rest = entry
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(TEMP_SUFFIX)?;
    let (pid, random) = rest.split_once('.')?;
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let random_ok = !random.is_empty() && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if digits && random_ok {
        pid.parse().ok()
    } else {
        None
    }
}

/// Removes the temporary files of earlier runs for the output `name` in `dir` whose process is
/// gone: a run killed by SIGKILL (or a crash, or power loss) cannot remove its own. Only
/// regular files of exactly our naming pattern are touched, only when /proc shows their process
/// no longer exists (a live process's file, or a file from another machine sharing the
/// directory whose pid happens to be live here, is left alone). Best effort: errors are ignored.
pub fn remove_stale_temp_files(dir: &Path, name: &str) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| temp_owner(n, name)) else {
            continue;
        };
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if regular && pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Bytes written between two background flushes of the output.
const SYNC_EVERY: u64 = 32 << 20;

/// Writes through to a file and has a helper thread flush it to disk every [`SYNC_EVERY`]
/// bytes, so disk writes overlap the work and the final fsync finds little left to do.
/// Errors of the background flushes are ignored: the final `sync_all` reports them.
pub struct SyncBehind<'a> {
    file: &'a mut File,
    unsynced: u64,
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<'a> SyncBehind<'a> {
    /// Wraps `file`; without a helper thread (it could not start) it just writes through.
    pub fn new(file: &'a mut File) -> SyncBehind<'a> {
        let (kick, thread) = match file.try_clone() {
            Ok(clone) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
                let thread = std::thread::Builder::new()
                    .name("mkmodule-sync".into())
                    .spawn(move || {
                        while rx.recv().is_ok() {
                            let _ = clone.sync_data();
                        }
                    })
                    .ok();
                (thread.is_some().then_some(tx), thread)
            }
            Err(_) => (None, None),
        };
        SyncBehind {
            file,
            unsynced: 0,
            kick,
            thread,
        }
    }
}

impl Write for SyncBehind<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            if let Some(kick) = &self.kick {
                // A flush already pending covers these bytes too.
                let _ = kick.try_send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for SyncBehind<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Drop for SyncBehind<'_> {
    fn drop(&mut self) {
        self.kick = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A temporary file to remove when a signal stops the process, and its target's name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    temp: PathBuf,
    target: PathBuf,
}

/// Temporary files to remove when a signal stops the process.
static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// Has its file removed on a signal while alive (on drop the file is forgotten: by then it was
/// renamed into place, or `tempfile` removed it).
#[derive(Debug)]
struct CleanupGuard(Pending);

impl CleanupGuard {
    /// Creates the temporary file for `target` with `create` and registers it, with the signal
    /// handler installed first and the list locked throughout: a signal arriving meanwhile is
    /// handled once the file is on the list, so it is removed too.
    fn create_registered(
        target: &Path,
        create: impl FnOnce() -> Result<tempfile::NamedTempFile>,
    ) -> Result<(tempfile::NamedTempFile, CleanupGuard)> {
        HANDLER.call_once(install_signal_handler);
        let mut all = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let temp = create()?;
        let pending = Pending {
            temp: temp.path().to_path_buf(),
            target: target.to_path_buf(),
        };
        all.push(pending.clone());
        Ok((temp, CleanupGuard(pending)))
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        let mut all = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|p| p != &self.0);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the registered temporary files and exit with 128 +
/// the signal number.
fn install_signal_handler() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("mkmodule-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let mut targets = Vec::new();
                let all = PENDING.lock().unwrap_or_else(|e| e.into_inner());
                for pending in all.iter() {
                    let _ = fs::remove_file(&pending.temp);
                    targets.push(pending.target.display().to_string());
                }
                if targets.is_empty() {
                    eprintln!("mkmodule: stopped by signal {signal}");
                } else {
                    eprintln!(
                        "mkmodule: stopped by signal {signal}; {} was not written",
                        targets.join(", ")
                    );
                }
                std::process::exit(128 + signal);
            }
        });
    if spawned.is_err() {
        eprintln!("mkmodule: warning: cannot watch for signals");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn temp_names_carry_the_pid_and_only_ours_match() {
        let name = format!("{}abc123{TEMP_SUFFIX}", temp_prefix("KNOPPIX", 4242));
        assert_eq!(name, ".KNOPPIX.4242.abc123.partial");
        assert_eq!(temp_owner(&name, "KNOPPIX"), Some(4242));
        // Another output whose name extends ours, old names without a pid, other endings.
        for other in [
            ".KNOPPIX.1.4242.abc123.partial",
            ".KNOPPIX.abc123.partial",
            ".KNOPPIX.4242.abc123.part",
            ".KNOPPIX.x42.abc123.partial",
            "KNOPPIX.4242.abc123.partial",
            ".KNOPPIX.4242..partial",
        ] {
            assert_eq!(temp_owner(other, "KNOPPIX"), None, "{other}");
        }
        assert_eq!(temp_owner(".a.b.7.Zz9.partial", "a.b"), Some(7));
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's limit (4194304) is never alive.
        let dead = format!(".out.img.{}.dead01{TEMP_SUFFIX}", 99_999_999u32);
        let alive = format!(".out.img.{}.live01{TEMP_SUFFIX}", std::process::id());
        let init = format!(".out.img.1.init01{TEMP_SUFFIX}");
        let other = format!(".other.img.{}.dead02{TEMP_SUFFIX}", 99_999_999u32);
        for name in [&dead, &alive, &init, &other] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_temp_files(dir.path(), "out.img");
        let mut expected = vec![alive, init, other];
        expected.sort();
        assert_eq!(names_in(dir.path()), expected);
    }

    #[test]
    fn a_committed_file_appears_under_the_target_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.img");
        let mut out = OutputFile::create(&target, Replace::Never).unwrap();
        let temp_name = out.temp_path().file_name().unwrap().to_string_lossy();
        assert_eq!(
            temp_owner(&temp_name, "out.img"),
            Some(std::process::id()),
            "{temp_name}"
        );
        out.file_mut().write_all(b"image").unwrap();
        out.commit("out.img").unwrap();
        assert_eq!(names_in(dir.path()), ["out.img"]);
        assert_eq!(fs::read(&target).unwrap(), b"image");
    }

    #[test]
    fn an_uncommitted_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputFile::create(&dir.path().join("out.img"), Replace::Never).unwrap();
        out.file().write_all(b"half").unwrap();
        drop(out);
        assert_eq!(names_in(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn an_existing_file_is_replaced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.img");
        fs::write(&target, b"precious").unwrap();
        let out = OutputFile::create(&target, Replace::Never).unwrap();
        out.file().write_all(b"new").unwrap();
        let error = out.commit("out.img").unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot rename the finished output"),
            "{error:#}"
        );
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert_eq!(names_in(dir.path()), ["out.img"]);
        let out = OutputFile::create(&target, Replace::Existing).unwrap();
        out.file().write_all(b"new").unwrap();
        out.commit("out.img").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn destinations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Destination::of(&dir.path().join("no")),
            Destination::Missing
        );
        assert_eq!(Destination::of(dir.path()), Destination::Directory);
        fs::write(dir.path().join("f"), b"").unwrap();
        assert_eq!(
            Destination::of(&dir.path().join("f")),
            Destination::RegularFile
        );
        assert_eq!(
            Destination::of(Path::new("/dev/null")),
            Destination::SpecialFile
        );
    }

    #[test]
    fn a_missing_directory_is_named() {
        let error = OutputFile::create(Path::new("/nonexistent-dir/out.img"), Replace::Never)
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not exist"), "{error}");
    }
}
