//! Putting it together: FUSE server → loop devices → filesystem mounts → (overlayfs), each
//! step written to the record before the next, and undone in reverse by [`undo`].

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::IoContext;
use crate::server::{start_time_of, Launcher};
use crate::state::{Kind, Record, RunDir, Step};
use crate::sys::{self, is_mount_point, is_running, wait_until, Cmd};
use crate::{loopdev, MountError};

/// What to set up.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Mount, union or attach.
    pub kind: Kind,
    /// The images (lowest layer first); recorded for `mkmodule mount` listings.
    pub images: Vec<PathBuf>,
    /// The names the FUSE server gives the images' files, in the same order.
    pub file_names: Vec<String>,
    /// The mount point (mount and union).
    pub target: Option<PathBuf>,
    /// Read-only devices and mounts (false only with a copy-on-write overlay).
    pub read_only: bool,
    /// Copy-on-write overlay file, recorded for listings.
    pub cow: Option<PathBuf>,
    /// Filesystem type of the image(s); detected with blkid when `None`.
    pub fstype: Option<String>,
    /// Extra mount options for the target mount (`-o`).
    pub options: Option<String>,
    /// A union's persistent changes directory (`upper/` and `work/` inside); tmpfs when `None`.
    pub changes: Option<PathBuf>,
    /// Scan attached devices for partitions (`losetup --partscan`).
    pub partscan: bool,
}

impl Plan {
    /// A plan of `kind` for `images`, files named `0-<name>`, `1-<name>`, … read-only.
    pub fn new(kind: Kind, images: Vec<PathBuf>, target: Option<PathBuf>) -> Plan {
        let file_names = file_names(&images);
        Plan {
            kind,
            images,
            file_names,
            target,
            read_only: true,
            cow: None,
            fstype: None,
            options: None,
            changes: None,
            partscan: false,
        }
    }
}

/// Names for the images' files in the FUSE mount point: `<index>-<file name>`, with anything
/// odd replaced, so `losetup --list` shows which image a device reads. An image URL is named
/// after the last part of its path, never its query (a presigned URL's query is a credential).
pub fn file_names(images: &[PathBuf]) -> Vec<String> {
    images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let text = image.to_string_lossy();
            let lower = text.get(..8).unwrap_or(&text).to_ascii_lowercase();
            let base = if lower.starts_with("http://") || lower.starts_with("https://") {
                let path = text.split(['?', '#']).next().unwrap_or_default();
                path.rsplit('/').next().unwrap_or_default().to_string()
            } else {
                image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let name: String = base
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .take(64)
                .collect();
            if name.is_empty() {
                format!("{i}")
            } else {
                format!("{i}-{name}")
            }
        })
        .collect()
}

/// Characters overlayfs' option syntax reserves, refused in paths it is given.
const OVERLAY_RESERVED: [char; 3] = [',', ':', '\\'];

fn check_overlay_path(path: &Path, what: &'static str) -> Result<(), MountError> {
    let text = path.to_string_lossy();
    if text.contains(OVERLAY_RESERVED) || text.contains(char::is_whitespace) {
        return Err(MountError::OverlayPath {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The overlayfs options of a union: the LAST layer is the topmost, so it comes first in
/// `lowerdir`.
pub fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    extra: Option<&str>,
) -> String {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if let Some(extra) = extra.filter(|e| !e.is_empty()) {
        options.push(',');
        options.push_str(extra);
    }
    options
}

/// The filesystem type on `device`, from blkid.
pub fn detect_fstype(device: &Path) -> Result<String, MountError> {
    let result = Cmd::new("blkid")
        .arg("-p")
        .arg("-o")
        .arg("value")
        .arg("-s")
        .arg("TYPE")
        .arg(device)
        .run();
    match result {
        Ok(fstype) if !fstype.is_empty() && !fstype.contains(char::is_whitespace) => Ok(fstype),
        // blkid exits 2 when it finds nothing.
        Ok(_) | Err(MountError::Command { .. }) => Err(MountError::NoFilesystem {
            device: device.to_path_buf(),
        }),
        Err(error) => Err(error),
    }
}

/// One record being built: each step is saved as soon as it is done.
struct Builder<'a> {
    run: &'a RunDir,
    record: Record,
}

impl Builder<'_> {
    fn push(&mut self, step: Step) -> Result<(), MountError> {
        self.record.steps.push(step);
        self.run.save(&self.record)
    }

    fn mkdir(&mut self, path: &Path) -> Result<(), MountError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .context_with(|| format!("creating {}", path.display()))?;
        self.push(Step::Dir {
            path: path.to_path_buf(),
        })
    }

    fn mount(
        &mut self,
        device: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<(), MountError> {
        Cmd::new("mount")
            .arg("-t")
            .arg(fstype)
            .arg("-o")
            .arg(options)
            .arg(device)
            .arg(target)
            .run()?;
        self.push(Step::Mount {
            target: target.to_path_buf(),
            source: device.display().to_string(),
            fstype: fstype.to_string(),
        })
    }
}

/// Sets up what `plan` describes; on failure undoes what was done and returns the error.
pub fn mount(
    run: &mut RunDir,
    plan: &Plan,
    launcher: &mut dyn Launcher,
) -> Result<Record, MountError> {
    validate(plan)?;
    let mut record = run.begin(plan.kind, plan.target.as_deref(), &plan.images)?;
    record.read_only = plan.read_only;
    record.cow.clone_from(&plan.cow);
    record.changes.clone_from(&plan.changes);
    let mut builder = Builder { run, record };
    match build(&mut builder, plan, launcher) {
        Ok(()) => Ok(builder.record),
        Err(error) => {
            let mut record = builder.record;
            match undo(run, &mut record) {
                Ok(()) => Err(error),
                Err(cleanup) => Err(MountError::UndoFailed {
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                    record: run.record_path(&record.id),
                }),
            }
        }
    }
}

fn validate(plan: &Plan) -> Result<(), MountError> {
    if plan.images.is_empty() || plan.images.len() != plan.file_names.len() {
        return Err(MountError::NoImage);
    }
    match plan.kind {
        Kind::Attach => {}
        Kind::Mount | Kind::Union => {
            let target = plan.target.as_deref().ok_or(MountError::NoMountPoint)?;
            if !target.is_dir() {
                return Err(MountError::NotADirectory {
                    path: target.to_path_buf(),
                });
            }
        }
    }
    if plan.kind == Kind::Mount && plan.images.len() != 1 {
        return Err(MountError::SeveralImages);
    }
    if plan.kind == Kind::Union {
        if !plan.read_only {
            return Err(MountError::WritableUnion);
        }
        if let Some(changes) = &plan.changes {
            check_overlay_path(changes, "the changes directory")?;
        }
    }
    if let Some(fstype) = &plan.fstype {
        if fstype.is_empty() || fstype.contains([',', ' ', '/']) {
            return Err(MountError::BadFsType {
                fstype: fstype.clone(),
            });
        }
    }
    Ok(())
}

fn build(b: &mut Builder<'_>, plan: &Plan, launcher: &mut dyn Launcher) -> Result<(), MountError> {
    let work = b.run.work_dir(&b.record.id);
    b.mkdir(&work)?;
    let fuse_dir = work.join("fuse");
    b.mkdir(&fuse_dir)?;
    let log = work.join("server.log");
    b.push(Step::File { path: log.clone() })?;
    let pid = launcher.launch(&fuse_dir, &log)?;
    let start_time = start_time_of(pid)?;
    b.push(Step::Fuse {
        mountpoint: fuse_dir.clone(),
        pid,
        start_time,
    })?;

    let mut devices = Vec::new();
    for name in &plan.file_names {
        let file = fuse_dir.join(name);
        let device = loopdev::attach(&file, plan.read_only, plan.partscan)?;
        b.push(Step::Loop {
            device: device.clone(),
            file,
        })?;
        devices.push(device);
    }

    let ro = if plan.read_only { "ro" } else { "rw" };
    match plan.kind {
        Kind::Attach => {}
        Kind::Mount => {
            let target = plan.target.as_deref().expect("validated");
            let fstype = match &plan.fstype {
                Some(fstype) => fstype.clone(),
                None => detect_fstype(&devices[0])?,
            };
            let options = match plan.options.as_deref().filter(|o| !o.is_empty()) {
                Some(extra) => format!("{ro},{extra}"),
                None => ro.to_string(),
            };
            b.mount(&devices[0], target, &fstype, &options)?;
        }
        Kind::Union => {
            let target = plan.target.as_deref().expect("validated");
            check_overlay_path(&work, "the run directory")?;
            let mut layers = Vec::new();
            for (i, device) in devices.iter().enumerate() {
                let layer = work.join(format!("layer{i}"));
                b.mkdir(&layer)?;
                let fstype = match &plan.fstype {
                    Some(fstype) => fstype.clone(),
                    None => detect_fstype(device)?,
                };
                b.mount(device, &layer, &fstype, "ro")?;
                layers.push(layer);
            }
            let changes = match &plan.changes {
                Some(changes) => changes.clone(),
                None => {
                    let changes = work.join("changes");
                    b.mkdir(&changes)?;
                    b.mount(
                        Path::new("mkmodule-changes"),
                        &changes,
                        "tmpfs",
                        "mode=0755",
                    )?;
                    changes
                }
            };
            let upper = changes.join("upper");
            let overlay_work = changes.join("work");
            for dir in [&upper, &overlay_work] {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .context_with(|| format!("creating {}", dir.display()))?;
            }
            let options = overlay_options(&layers, &upper, &overlay_work, plan.options.as_deref());
            b.mount(Path::new("mkmodule-union"), target, "overlay", &options)?;
        }
    }
    Ok(())
}

/// Undoes a record's steps in reverse order, saving it after each, and deletes it when all
/// are undone. On an error (a busy mount point, say) the record keeps what is left, so running
/// it again finishes the job.
pub fn undo(run: &RunDir, record: &mut Record) -> Result<(), MountError> {
    while let Some(step) = record.steps.last().cloned() {
        undo_step(&step)?;
        record.steps.pop();
        run.save(record)?;
    }
    run.remove(record)
}

fn undo_step(step: &Step) -> Result<(), MountError> {
    match step {
        Step::Mount { target, .. } => {
            if is_mount_point(target)? {
                sys::umount(target)?;
            }
            Ok(())
        }
        Step::Loop { device, file } => loopdev::detach_from(device, file),
        Step::Fuse {
            mountpoint,
            pid,
            start_time,
        } => {
            // The loop driver may hold the file a moment after the detach: retry while busy.
            if is_mount_point(mountpoint)? {
                let mut last = Ok(());
                let done = wait_until(Duration::from_secs(5), || {
                    last = sys::umount(mountpoint);
                    !matches!(last, Err(MountError::Busy { .. }))
                });
                if !done {
                    return last;
                }
                last?;
            }
            if *pid == std::process::id() {
                return Ok(()); // --foreground: this process is the server.
            }
            let gone = || !is_running(*pid, *start_time);
            if wait_until(Duration::from_secs(10), gone) {
                return Ok(());
            }
            sys::terminate(*pid)?;
            if wait_until(Duration::from_secs(5), gone) {
                Ok(())
            } else {
                Err(MountError::Timeout {
                    what: format!("the FUSE server (process {pid}) to exit"),
                    seconds: 15,
                })
            }
        }
        Step::File { path } => match fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(MountError::io(
                format!("removing {}", path.display()),
                error,
            )),
            _ => Ok(()),
        },
        Step::Dir { path } => match fs::remove_dir(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(MountError::io(
                format!("removing {}", path.display()),
                error,
            )),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_layer_is_topmost() {
        let layers = vec![PathBuf::from("/r/layer0"), PathBuf::from("/r/layer1")];
        assert_eq!(
            overlay_options(&layers, Path::new("/c/upper"), Path::new("/c/work"), None),
            "lowerdir=/r/layer1:/r/layer0,upperdir=/c/upper,workdir=/c/work"
        );
        assert_eq!(
            overlay_options(
                &layers[..1],
                Path::new("/u"),
                Path::new("/w"),
                Some("noatime")
            ),
            "lowerdir=/r/layer0,upperdir=/u,workdir=/w,noatime"
        );
    }

    #[test]
    fn file_names_name_the_images() {
        let names = file_names(&[
            PathBuf::from("/a/KNOPPIX"),
            PathBuf::from("/b/my module.cloop"),
            PathBuf::from("/"),
        ]);
        assert_eq!(names, vec!["0-KNOPPIX", "1-my_module.cloop", "2"]);
        let urls = file_names(&[
            PathBuf::from("https://cdn.example/isos/KNOPPIX?X-Amz-Signature=abc&x=/y"),
            PathBuf::from("http://cdn.example/"),
            PathBuf::from("HTTP://cdn.example/a/b.cloop#part"),
        ]);
        assert_eq!(urls, vec!["0-KNOPPIX", "1", "2-b.cloop"]);
    }

    #[test]
    fn overlay_paths_are_checked() {
        assert!(check_overlay_path(Path::new("/var/changes"), "x").is_ok());
        for bad in ["/a,b", "/a:b", "/a b", "/a\\b"] {
            assert!(check_overlay_path(Path::new(bad), "x").is_err());
        }
    }

    #[test]
    fn undo_removes_dirs_and_files_in_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::new(dir.path().join("run"));
        let mut record = run.begin(Kind::Attach, None, &[]).unwrap();
        let work = run.work_dir(&record.id);
        fs::create_dir(&work).unwrap();
        fs::write(work.join("log"), "x").unwrap();
        record.steps.push(Step::Dir { path: work.clone() });
        record.steps.push(Step::File {
            path: work.join("log"),
        });
        run.save(&record).unwrap();
        undo(&run, &mut record).unwrap();
        assert!(!work.exists());
        assert!(run.records().unwrap().is_empty());
    }
}
