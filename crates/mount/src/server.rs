//! Starting the FUSE server: in a background process that outlives the command (the usual
//! case), or in this process (`--foreground`).
//!
//! The background server is this program again, started through `setsid` (its own session:
//! no terminal signals reach it) with a hidden subcommand; there is no `fork` without
//! `unsafe`. It tells the parent on its stdout, in one line, that it is ready
//! ([`announce_ready`]) or why it failed ([`announce_error`]); its stderr goes to a log file
//! kept with the record.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::error::IoContext;
use crate::fuse_file::{self, ExportFile, ServeOptions};
use crate::sys::{process_info, wait_until};
use crate::MountError;

/// Starts a FUSE server on a mount point.
pub trait Launcher {
    /// Serves the files on `mountpoint`, writing diagnostics to `log`; returns the server's
    /// process id once the files can be opened.
    fn launch(&mut self, mountpoint: &Path, log: &Path) -> Result<u32, MountError>;
}

const READY: &str = "READY";
const ERROR: &str = "ERROR";

/// Tells the parent that the files are ready (server side).
pub fn announce_ready() -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{READY} {}", std::process::id())?;
    out.flush()
}

/// Tells the parent why the server cannot start (server side).
pub fn announce_error(message: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{ERROR} {}", message.replace('\n', " "));
    let _ = out.flush();
}

/// Server side of a background server: mounts `files` on `mountpoint`, announces readiness,
/// and serves until the mount point is unmounted. Errors before readiness are announced too.
pub fn serve(
    mountpoint: &Path,
    files: Vec<ExportFile>,
    options: &ServeOptions,
) -> Result<(), MountError> {
    let session = match fuse_file::mount(mountpoint, files, options) {
        Ok(session) => session,
        Err(error) => {
            let message = format!("mounting FUSE on {}: {error}", mountpoint.display());
            announce_error(&message);
            return Err(MountError::Server(message));
        }
    };
    announce_ready().context_with(|| "telling the parent process that we are ready".into())?;
    session
        .run()
        .context_with(|| format!("serving FUSE on {}", mountpoint.display()))
}

/// Starts `PROGRAM ARGS… --mountpoint DIR` as a background server.
#[derive(Clone)]
pub struct SpawnServer {
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
    arg0: Option<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl SpawnServer {
    /// A server started as `setsid PROGRAM ARGS… --mountpoint DIR`.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> SpawnServer {
        SpawnServer {
            program: program.into(),
            args,
            timeout: Duration::from_secs(60),
            arg0: None,
            env: Vec::new(),
        }
    }

    /// Starts the program directly under this argv[0] instead of through `setsid` (which
    /// cannot set it); the server then leaves its caller's session itself. systemd spares
    /// processes whose argv[0] starts with '@' when it leaves the initramfs and at shutdown.
    pub fn with_arg0(mut self, arg0: impl Into<OsString>) -> SpawnServer {
        self.arg0 = Some(arg0.into());
        self
    }

    /// Sets an environment variable of the server: the way to hand it what must not show in
    /// its command line, which every user can read (`/proc/PID/environ` is its owner's only).
    pub fn with_env(
        mut self,
        name: impl Into<OsString>,
        value: impl Into<OsString>,
    ) -> SpawnServer {
        self.env.push((name.into(), value.into()));
        self
    }

    /// How long to wait for the server to become ready (default 60 s: opening a large image
    /// reads its whole index).
    pub fn with_timeout(mut self, timeout: Duration) -> SpawnServer {
        self.timeout = timeout;
        self
    }
}

impl std::fmt::Debug for SpawnServer {
    /// The environment's names only: its values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnServer")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("arg0", &self.arg0)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

/// Kills and reaps a child that did not become ready.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of the log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

impl Launcher for SpawnServer {
    fn launch(&mut self, mountpoint: &Path, log: &Path) -> Result<u32, MountError> {
        let log_file = File::create(log).context_with(|| format!("creating {}", log.display()))?;
        let (mut command, program) = match &self.arg0 {
            Some(arg0) => {
                let mut command = Command::new(&self.program);
                command.arg0(arg0);
                (command, self.program.display().to_string())
            }
            None => {
                let mut command = Command::new("setsid");
                command.arg(&self.program);
                (command, "setsid".to_string())
            }
        };
        let mut child = command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--mountpoint")
            .arg(mountpoint)
            // Paths are absolute; a daemon must not keep the caller's directory busy.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|source| MountError::Spawn { program, source })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
        });
        let line = match rx.recv_timeout(self.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => {
                stop(&mut child);
                return Err(MountError::io("reading from the FUSE server", error));
            }
            Err(_) => {
                stop(&mut child);
                return Err(MountError::Timeout {
                    what: format!("the FUSE server on {}", mountpoint.display()),
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        let line = line.trim();
        if let Some(pid) = line
            .strip_prefix(READY)
            .and_then(|rest| rest.trim().parse::<u32>().ok())
        {
            // The child runs on, reparented when we exit; dropping `child` neither kills nor
            // waits.
            return Ok(pid);
        }
        // Failed: collect its exit status and message.
        let exited = wait_until(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            stop(&mut child);
        }
        let message = match line.strip_prefix(ERROR) {
            Some(message) => message.trim().to_string(),
            None if line.is_empty() => {
                let tail = log_tail(log);
                if tail.is_empty() {
                    "it exited without a word".to_string()
                } else {
                    tail
                }
            }
            None => format!("unexpected answer {line:?}"),
        };
        Err(MountError::Server(message))
    }
}

/// Serves the files from a thread of this process (`--foreground`).
#[derive(Debug)]
pub struct InProcess {
    files: Option<Vec<ExportFile>>,
    options: ServeOptions,
    session: Option<fuser::BackgroundSession>,
}

impl InProcess {
    /// A launcher that will serve `files`.
    pub fn new(files: Vec<ExportFile>, options: ServeOptions) -> InProcess {
        InProcess {
            files: Some(files),
            options,
            session: None,
        }
    }

    /// Waits until the FUSE mount point is unmounted (by `mkmodule umount` or by
    /// [`crate::undo`] from this process).
    pub fn wait(mut self) -> Result<(), MountError> {
        match self.session.take() {
            Some(session) => session
                .join()
                .context_with(|| "serving FUSE in the foreground".into()),
            None => Ok(()),
        }
    }
}

impl Launcher for InProcess {
    fn launch(&mut self, mountpoint: &Path, _log: &Path) -> Result<u32, MountError> {
        let files = self.files.take().ok_or(MountError::AlreadyStarted)?;
        let session = fuse_file::mount(mountpoint, files, &self.options)
            .and_then(fuser::Session::spawn)
            .context_with(|| format!("mounting FUSE on {}", mountpoint.display()))?;
        self.session = Some(session);
        Ok(std::process::id())
    }
}

/// The start time of a process we just learnt the pid of.
pub(crate) fn start_time_of(pid: u32) -> Result<u64, MountError> {
    process_info(pid)
        .map(|info| info.start_time)
        .ok_or(MountError::Vanished { pid })
}
