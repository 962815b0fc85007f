//! Loop devices through `losetup`, and their state through `/sys/block/loopN/loop`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::{wait_until, Cmd};
use crate::MountError;

/// Read-ahead set on our loop devices, in KiB (the kernel's default is 128).
pub const READ_AHEAD_KB: u32 = 1024;

/// Attaches `file` to the first free loop device and returns the device (`/dev/loopN`).
///
/// The device uses direct I/O on the file where the kernel allows it: the loop driver then
/// keeps several requests in flight instead of one synchronous read at a time, which more than
/// doubles sequential reads through a FUSE file (measured: 166 → 457 MB/s on a 1 GiB ext4
/// image, with [`READ_AHEAD_KB`]), and no second copy of the data sits in the page cache.
pub fn attach(file: &Path, read_only: bool, partscan: bool) -> Result<PathBuf, MountError> {
    let device = match losetup(file, read_only, partscan, true) {
        Ok(device) => device,
        // An older kernel or losetup without direct I/O for this file: buffered, then.
        Err(MountError::Command { .. }) => losetup(file, read_only, partscan, false)?,
        Err(error) => return Err(error),
    };
    if let Some(name) = kernel_name(&device) {
        // Best effort: only speed depends on it.
        let _ = std::fs::write(
            format!("/sys/block/{name}/queue/read_ahead_kb"),
            READ_AHEAD_KB.to_string(),
        );
    }
    Ok(device)
}

fn losetup(
    file: &Path,
    read_only: bool,
    partscan: bool,
    direct_io: bool,
) -> Result<PathBuf, MountError> {
    let mut cmd = Cmd::new("losetup").arg("--find").arg("--show");
    if read_only {
        cmd = cmd.arg("--read-only");
    }
    if partscan {
        cmd = cmd.arg("--partscan");
    }
    if direct_io {
        cmd = cmd.arg("--direct-io=on");
    }
    let device = cmd.arg(file).run()?;
    if !device.starts_with("/dev/") || device.contains('\n') {
        return Err(MountError::LosetupOutput { output: device });
    }
    Ok(PathBuf::from(device))
}

/// Whether the loop device reads its file with direct I/O.
pub fn uses_direct_io(device: &Path) -> Option<bool> {
    let name = kernel_name(device)?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).ok()?;
    Some(text.trim() == "1")
}

/// The `loopN` name of a `/dev/loopN` path.
fn kernel_name(device: &Path) -> Option<&str> {
    let name = device.file_name()?.to_str()?;
    let number = name.strip_prefix("loop")?;
    (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

/// The file a loop device is attached to, or `None` when it is free (or not a loop device).
pub fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = kernel_name(device)?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix(" (deleted)").unwrap_or(text);
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// Whether the loop device is read-only.
pub fn is_read_only(device: &Path) -> Option<bool> {
    let name = kernel_name(device)?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/ro")).ok()?;
    Some(text.trim() == "1")
}

/// Detaches `device` if it is still attached to `file` (a loop number is reused once freed,
/// so a device attached to anything else is left alone), and waits until the kernel let go
/// of the file.
pub fn detach_from(device: &Path, file: &Path) -> Result<(), MountError> {
    if backing_file(device).as_deref() != Some(file) {
        return Ok(());
    }
    Cmd::new("losetup").arg("--detach").arg(device).run()?;
    // The kernel detaches at once when nobody has the device open; otherwise it marks the
    // device to detach at the last close ("autoclear") and losetup still succeeds.
    let timeout = Duration::from_secs(5);
    if wait_until(timeout, || backing_file(device).as_deref() != Some(file)) {
        Ok(())
    } else {
        Err(MountError::Busy {
            path: device.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_names() {
        assert_eq!(kernel_name(Path::new("/dev/loop12")), Some("loop12"));
        assert_eq!(kernel_name(Path::new("/dev/loop")), None);
        assert_eq!(kernel_name(Path::new("/dev/sda1")), None);
        assert_eq!(kernel_name(Path::new("/dev/loop1p2")), None);
    }

    #[test]
    fn non_loop_device_has_no_backing_file() {
        assert_eq!(backing_file(Path::new("/dev/null")), None);
    }
}
