//! The host's tools and kernel interfaces: running util-linux commands, reading
//! `/proc/self/mountinfo`, watching and signalling processes. No `unsafe`: the privileged work
//! is done by `mount`, `umount`, `losetup` and `blkid`, whose messages users already know.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::MountError;

/// A command line to run once, with its output captured.
#[derive(Debug)]
pub(crate) struct Cmd {
    program: &'static str,
    args: Vec<OsString>,
}

impl Cmd {
    /// Starts a command line.
    pub(crate) fn new(program: &'static str) -> Cmd {
        Cmd {
            program,
            args: Vec::new(),
        }
    }

    /// Adds an argument.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// The command line as a user would type it (for messages).
    pub(crate) fn display(&self) -> String {
        let mut line = self.program.to_string();
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            line.push(' ');
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                line.push_str(&format!("{arg:?}"));
            } else {
                line.push_str(&arg);
            }
        }
        line
    }

    /// Runs it; returns its trimmed stdout, or an error carrying its stderr.
    pub(crate) fn run(self) -> Result<String, MountError> {
        let output = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| MountError::Spawn {
                program: self.program.to_string(),
                source,
            })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).trim().to_string());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(MountError::Command {
            command: self.display(),
            status: output.status.to_string(),
            stderr: if stderr.is_empty() {
                "(no message)".to_string()
            } else {
                stderr
            },
        })
    }
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path field.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The mount points listed in mountinfo text, in mount order.
pub(crate) fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

/// Every mount point of this mount namespace, in mount order.
pub fn mount_points() -> Result<Vec<PathBuf>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| MountError::io("reading /proc/self/mountinfo", e))?;
    Ok(parse_mount_points(&text))
}

/// Whether `path` (absolute, canonical) is a mount point now.
pub fn is_mount_point(path: &Path) -> Result<bool, MountError> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// Runs `umount PATH`; a busy target becomes [`MountError::Busy`].
pub(crate) fn umount(path: &Path) -> Result<(), MountError> {
    match Cmd::new("umount").arg(path).run() {
        Ok(_) => Ok(()),
        Err(MountError::Command { stderr, .. }) if stderr.contains("busy") => {
            Err(MountError::Busy {
                path: path.to_path_buf(),
            })
        }
        Err(error) => Err(error),
    }
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A process as `/proc/PID/stat` shows it: its state letter and start time (clock ticks after
/// boot), which together with the pid name one process for good (pids are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `R`, `S`, `D`, `Z` (exited, not yet reaped), …
    pub state: char,
    /// Field 22 of `/proc/PID/stat`.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat` text (the command name may hold spaces and parentheses).
pub(crate) fn parse_stat(text: &str) -> Option<ProcessInfo> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt, majflt,
    // cmajflt, utime, stime, cutime, cstime, priority, nice, num_threads, itrealvalue: 18 fields,
    // then starttime.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcessInfo { state, start_time })
}

/// The process with this pid, if one exists (zombies included).
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Whether the process `pid` that started at `start_time` is still running (a zombie has
/// finished: in this kind of container nobody may ever reap it).
pub fn is_running(pid: u32, start_time: u64) -> bool {
    matches!(process_info(pid), Some(info)
        if info.start_time == start_time && info.state != 'Z' && info.state != 'X')
}

/// Sends SIGTERM to `pid`.
pub(crate) fn terminate(pid: u32) -> Result<(), MountError> {
    let raw = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(MountError::BadPid { pid })?;
    rustix::process::kill_process(raw, rustix::process::Signal::TERM)
        .map_err(|e| MountError::io(format!("signalling process {pid}"), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mount_points(text),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
    }

    #[test]
    fn stat_with_odd_command_name() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 987654 \
                    1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcessInfo {
                state: 'S',
                start_time: 987654
            })
        );
    }

    #[test]
    fn own_process_is_running() {
        let info = process_info(std::process::id()).expect("own /proc entry");
        assert!(is_running(std::process::id(), info.start_time));
        assert!(!is_running(std::process::id(), info.start_time + 1));
    }

    #[test]
    fn command_line_display_quotes_spaces() {
        let cmd = Cmd::new("mount").arg("-o").arg("ro").arg("/a b");
        assert_eq!(cmd.display(), "mount -o ro \"/a b\"");
    }
}
