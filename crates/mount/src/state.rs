//! What mkmodule set up, kept as an undo log in a run directory (`/run/mkmodule` by default):
//! one JSON record per mount, union or attached device, rewritten after every step, so that
//! `mkmodule umount` (or a failed mount rolling back) can undo exactly what was done, in
//! reverse order, even after a crash half-way.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::IoContext;
use crate::MountError;

/// Environment variable naming another run directory (tests, unusual hosts).
pub const RUN_DIR_ENV: &str = "MKMODULE_RUN_DIR";
/// The run directory when [`RUN_DIR_ENV`] is not set.
pub const DEFAULT_RUN_DIR: &str = "/run/mkmodule";
/// Version of the record format.
pub const RECORD_VERSION: u32 = 1;

/// What a record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One image, its filesystem mounted on a directory.
    Mount,
    /// Module images stacked with overlayfs on a directory.
    Union,
    /// One image as a loop device, nothing mounted.
    Attach,
}

impl Kind {
    /// The prefix of record ids of this kind.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Mount => "mount",
            Kind::Union => "union",
            Kind::Attach => "attach",
        }
    }
}

/// One thing that was done, with what it takes to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A directory was created: removed (when empty) on undo.
    Dir {
        /// The directory.
        path: PathBuf,
    },
    /// A file was created: removed on undo.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A FUSE server serves the image files on `mountpoint`: the mount point is unmounted and
    /// the process awaited (and signalled if it lingers) on undo.
    Fuse {
        /// The FUSE mount point.
        mountpoint: PathBuf,
        /// The server's process id.
        pid: u32,
        /// Its start time (`/proc/PID/stat` field 22), so a reused pid is never signalled.
        start_time: u64,
    },
    /// A loop device was attached to `file`: detached on undo (if still attached to it).
    Loop {
        /// `/dev/loopN`.
        device: PathBuf,
        /// The backing file.
        file: PathBuf,
    },
    /// A filesystem was mounted: unmounted on undo.
    Mount {
        /// The mount point.
        target: PathBuf,
        /// The device or source name.
        source: String,
        /// The filesystem type.
        fstype: String,
    },
}

/// A record of one mount, union or attached device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Unique name; the record is `<run dir>/<id>.json`, its files in `<run dir>/<id>/`.
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// The mount point (canonical) for mounts and unions.
    pub target: Option<PathBuf>,
    /// The images, lowest layer first.
    pub images: Vec<PathBuf>,
    /// Whether the device(s) and mount are read-only.
    pub read_only: bool,
    /// Copy-on-write overlay file, if any.
    pub cow: Option<PathBuf>,
    /// Persistent changes directory of a union (None: tmpfs).
    pub changes: Option<PathBuf>,
    /// Seconds since the epoch when it was made.
    pub created: u64,
    /// What was done, in order; undone in reverse.
    pub steps: Vec<Step>,
}

impl Record {
    /// The loop devices, in image order.
    pub fn devices(&self) -> Vec<&Path> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Loop { device, .. } => Some(device.as_path()),
                _ => None,
            })
            .collect()
    }

    /// The filesystem mounts (layers of a union first, the target last).
    pub fn mounts(&self) -> Vec<(&Path, &str)> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Mount { target, fstype, .. } => Some((target.as_path(), fstype.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The FUSE server's process id, if it was started.
    pub fn server_pid(&self) -> Option<u32> {
        self.steps.iter().find_map(|step| match step {
            Step::Fuse { pid, .. } => Some(*pid),
            _ => None,
        })
    }
}

/// The directory holding the records and the per-record work directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

/// Hex SHA-256 prefix of some bytes: stable names for paths.
fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RunDir {
    /// The run directory at `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    /// `$MKMODULE_RUN_DIR`, else `/run/mkmodule`.
    pub fn from_env() -> RunDir {
        match std::env::var_os(RUN_DIR_ENV) {
            Some(path) if !path.is_empty() => RunDir::new(path),
            _ => RunDir::new(DEFAULT_RUN_DIR),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record file of `id`.
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.path.join(format!("{id}.json"))
    }

    /// The work directory of `id` (FUSE mount point, layer mount points, log).
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    /// Creates the run directory (mode 0700) if needed, and returns it canonical.
    fn ensure(&self) -> Result<PathBuf, MountError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .context_with(|| format!("creating the run directory {}", self.path.display()))?;
        self.path
            .canonicalize()
            .context_with(|| format!("resolving {}", self.path.display()))
    }

    /// Starts a record: a fresh id (derived from the target for mounts and unions, so that a
    /// second mount on the same directory is refused even when two race), the record file
    /// created exclusively.
    pub fn begin(
        &mut self,
        kind: Kind,
        target: Option<&Path>,
        images: &[PathBuf],
    ) -> Result<Record, MountError> {
        self.path = self.ensure()?;
        let id = match target {
            Some(target) => format!(
                "{}-{}",
                kind.prefix(),
                short_hash(target.as_os_str().as_encoded_bytes())
            ),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let seed = format!("{images:?} {} {nanos}", std::process::id());
                format!("{}-{}", kind.prefix(), short_hash(seed.as_bytes()))
            }
        };
        if let Some(target) = target {
            // A record under another id (other kind) for the same target also counts.
            if let Some((path, _)) = self
                .records()?
                .into_iter()
                .find(|(_, r)| r.target.as_deref() == Some(target))
            {
                return Err(MountError::AlreadyMounted {
                    path: target.to_path_buf(),
                    record: path,
                });
            }
        }
        let record = Record {
            version: RECORD_VERSION,
            id: id.clone(),
            kind,
            target: target.map(Path::to_path_buf),
            images: images.to_vec(),
            read_only: true,
            cow: None,
            changes: None,
            created: now(),
            steps: Vec::new(),
        };
        let path = self.record_path(&id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match file {
            Ok(file) => write_record(file, &record, &path)?,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(match target {
                    Some(target) => MountError::AlreadyMounted {
                        path: target.to_path_buf(),
                        record: path,
                    },
                    None => MountError::RecordExists { path },
                });
            }
            Err(error) => {
                return Err(MountError::io(
                    format!("creating the record {}", path.display()),
                    error,
                ))
            }
        }
        Ok(record)
    }

    /// Rewrites a record (atomically: a temporary file renamed over it).
    pub fn save(&self, record: &Record) -> Result<(), MountError> {
        let path = self.record_path(&record.id);
        let temp = self.path.join(format!(".{}.json.tmp", record.id));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .context_with(|| format!("writing {}", temp.display()))?;
        write_record(file, record, &temp)?;
        fs::rename(&temp, &path).context_with(|| format!("replacing {}", path.display()))
    }

    /// Deletes a record.
    pub fn remove(&self, record: &Record) -> Result<(), MountError> {
        let path = self.record_path(&record.id);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(MountError::io(
                format!("removing {}", path.display()),
                error,
            )),
            _ => Ok(()),
        }
    }

    /// Every record, with its file, oldest first. A missing run directory means none.
    pub fn records(&self) -> Result<Vec<(PathBuf, Record)>, MountError> {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(MountError::io(
                    format!("listing {}", self.path.display()),
                    error,
                ))
            }
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.context_with(|| format!("listing {}", self.path.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            records.push((path.clone(), read_record(&path)?));
        }
        records.sort_by(|a, b| (a.1.created, &a.1.id).cmp(&(b.1.created, &b.1.id)));
        Ok(records)
    }

    /// The record with this id.
    pub fn find_id(&self, id: &str) -> Result<Record, MountError> {
        read_record(&self.record_path(id))
    }

    /// The record for a mount point or a loop device.
    pub fn find(&self, what: &Path) -> Result<Record, MountError> {
        let records = self.records()?;
        let is_device = what.starts_with("/dev");
        let wanted = if is_device {
            what.canonicalize().unwrap_or_else(|_| what.to_path_buf())
        } else {
            canonical_or_absolute(what)
        };
        records
            .into_iter()
            .map(|(_, record)| record)
            .find(|record| {
                if is_device {
                    record
                        .devices()
                        .iter()
                        .any(|d| *d == wanted || d.canonicalize().is_ok_and(|d| d == wanted))
                } else {
                    record.target.as_deref() == Some(wanted.as_path())
                }
            })
            .ok_or_else(|| MountError::NotFound {
                what: what.to_path_buf(),
                run_dir: self.path.clone(),
            })
    }
}

/// `path` canonical, or made absolute by hand when it cannot be resolved (a dead mount).
pub fn canonical_or_absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn write_record(mut file: File, record: &Record, path: &Path) -> Result<(), MountError> {
    let mut text = serde_json::to_string_pretty(record).map_err(|e| MountError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .context_with(|| format!("writing {}", path.display()))
}

fn read_record(path: &Path) -> Result<Record, MountError> {
    let text = fs::read_to_string(path).context_with(|| format!("reading {}", path.display()))?;
    let record: Record = serde_json::from_str(&text).map_err(|e| MountError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if record.version != RECORD_VERSION {
        return Err(MountError::RecordVersion {
            path: path.to_path_buf(),
            found: record.version,
            supported: RECORD_VERSION,
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::new(dir.path().join("run"));
        let target = dir.path().canonicalize().unwrap();
        let mut record = run
            .begin(Kind::Mount, Some(&target), &[PathBuf::from("/x/KNOPPIX")])
            .unwrap();
        record.steps.push(Step::Loop {
            device: PathBuf::from("/dev/loop99"),
            file: PathBuf::from("/run/x/fuse/0-KNOPPIX"),
        });
        run.save(&record).unwrap();
        assert_eq!(run.find(&target).unwrap(), record);
        assert_eq!(run.find(Path::new("/dev/loop99")).unwrap(), record);
        assert_eq!(record.devices(), vec![Path::new("/dev/loop99")]);
        // A second mount on the same directory is refused.
        assert!(matches!(
            run.begin(Kind::Union, Some(&target), &[]),
            Err(MountError::AlreadyMounted { .. })
        ));
        run.remove(&record).unwrap();
        assert!(matches!(
            run.find(&target),
            Err(MountError::NotFound { .. })
        ));
        assert!(run.records().unwrap().is_empty());
    }

    #[test]
    fn attach_ids_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::new(dir.path());
        let a = run.begin(Kind::Attach, None, &[]).unwrap();
        let b = run.begin(Kind::Attach, None, &[]).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(run.records().unwrap().len(), 2);
    }
}
