//! `mkmodule mount`: mount an image's filesystem, or stack module images with overlayfs, on a
//! host without `cloop.ko` or `nbd.ko` (FUSE file + loop device). Also lists what is mounted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use anyhow::{bail, Context, Result};
use mkmodule_mount::server::{InProcess, Launcher, SpawnServer};
use mkmodule_mount::{Kind, Plan, Record, RunDir};

use crate::cmd::daemon_secrets::{self, Secrets};
use crate::cmd::fuse_daemon::{self, ServerArgs};

/// Arguments of `mkmodule mount`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mkmodule mount KNOPPIX /mnt/knoppix               read-only, filesystem detected by blkid
  mkmodule mount --cow root.cow root.cloop /mnt     writable; writes go to root.cow only
  mkmodule mount --union /mnt/live base.cloop x11.cloop apps.cloop
  mkmodule mount --union /mnt/live --changes /var/live base.cloop apps.cloop
  mkmodule mount                                    list what mkmodule has mounted
  mkmodule umount /mnt/knoppix                      take it all down again
Needs root, /dev/fuse and loop devices; no cloop or nbd kernel module, no fusermount.
State is kept in /run/mkmodule (or $MKMODULE_RUN_DIR).")]
pub struct Args {
    /// IMAGE DIR: the image and the directory to mount its filesystem on. With --union: the
    /// module images, lowest first; where files overlap, the later module wins. None at all:
    /// list what mkmodule has mounted.
    #[arg(value_name = "IMAGE DIR | MODULE")]
    paths: Vec<PathBuf>,

    /// Stack the module images with overlayfs on DIR, under a writable changes layer.
    #[arg(long, value_name = "DIR")]
    union: Option<PathBuf>,

    /// Keep the union's changes in PATH (PATH/upper and PATH/work) across mounts, instead of
    /// in a tmpfs that vanishes at umount.
    #[arg(long, value_name = "PATH", requires = "union")]
    changes: Option<PathBuf>,

    /// Mount read-write: writes go to this copy-on-write overlay file (created if missing),
    /// the image is never modified. `mkmodule commit` folds it into a new image.
    #[arg(long, value_name = "FILE", conflicts_with = "union")]
    cow: Option<PathBuf>,

    /// Filesystem type (default: detected by blkid); with --union, that of every module.
    #[arg(short = 't', long = "type", value_name = "FSTYPE")]
    fstype: Option<String>,

    /// Extra mount options, e.g. noatime (with --union: for the overlayfs mount).
    #[arg(short = 'o', long = "options", value_name = "OPTIONS")]
    options: Option<String>,

    /// Serve the image from this process instead of a background one; stop with Ctrl-C (or
    /// `mkmodule umount DIR` from elsewhere), which takes everything down.
    #[arg(long)]
    foreground: bool,

    #[command(flatten)]
    server: ServerArgs,
}

/// The absolute, resolved path of an image (an image URL as it is), or a clear error.
pub fn image_path(path: &Path) -> Result<PathBuf> {
    if crate::open::url_of(path).is_some() {
        return Ok(path.to_path_buf());
    }
    let resolved = path
        .canonicalize()
        .with_context(|| format!("image {}", path.display()))?;
    if !resolved.is_file() {
        bail!("image {} is not a regular file", path.display());
    }
    Ok(resolved)
}

/// How the FUSE server is started: a background process, or a thread of this one.
pub enum Server {
    /// `@mkmodule-fuse __fuse-daemon …` in its own session.
    Background(SpawnServer),
    /// `--foreground`.
    Foreground(InProcess),
}

impl Server {
    /// Opens the images (so errors show here, with their numbers) and prepares the server.
    pub fn new(
        images: &[PathBuf],
        cow: Option<&Path>,
        server: &ServerArgs,
        foreground: bool,
    ) -> Result<Server> {
        let files = fuse_daemon::export_files(images, cow, server)?;
        if foreground {
            return Ok(Server::Foreground(InProcess::new(
                files,
                Default::default(),
            )));
        }
        drop(files); // the daemon opens them again (a cow file is locked by one process)
        let exe = std::env::current_exe().context("finding this program to start the server")?;
        let mut args: Vec<OsString> = vec!["__fuse-daemon".into()];
        args.extend(server.to_args());
        if let Some(cow) = cow {
            args.push("--cow".into());
            args.push(cow.into());
        }
        // Absolute paths and URL placeholders: never taken for options.
        let (shown, secrets) = Secrets::split(images, &server.remote.http_headers);
        args.extend(shown);
        Ok(Server::Background(
            SpawnServer::new(exe, args)
                .with_arg0(fuse_daemon::DAEMON_ARGV0)
                .with_env(daemon_secrets::ENV, secrets.encode()),
        ))
    }

    /// The launcher to give [`mkmodule_mount::mount`].
    pub fn launcher(&mut self) -> &mut dyn Launcher {
        match self {
            Server::Background(spawn) => spawn,
            Server::Foreground(in_process) => in_process,
        }
    }

    /// With `--foreground`, serves until the mount is taken down, by a signal here (then we
    /// take it down) or by `mkmodule umount` elsewhere.
    pub fn finish(self, run: &RunDir, record: &Record) -> Result<()> {
        let Server::Foreground(in_process) = self else {
            return Ok(());
        };
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .context("installing signal handlers")?;
        let handle = signals.handle();
        let (tx, rx) = mpsc::channel();
        let signal_tx = tx.clone();
        thread::spawn(move || {
            for signal in signals.forever() {
                if signal_tx.send(Some(signal)).is_err() {
                    break;
                }
            }
        });
        let session = thread::spawn(move || {
            let result = in_process.wait();
            let _ = tx.send(None);
            result
        });
        let what = record.target.as_deref().map_or_else(
            || {
                record
                    .devices()
                    .first()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            },
            |t| t.display().to_string(),
        );
        eprintln!("mkmodule: serving {what} in the foreground; Ctrl-C or `mkmodule umount {what}` ends it");
        // A signal: take everything down, which unmounts the FUSE filesystem and so ends the
        // session. If that fails (a busy mount point), keep serving: exiting now would leave
        // a mounted filesystem over a dead server.
        while let Ok(Some(_signal)) = rx.recv() {
            let taken_down = run
                .find_id(&record.id)
                .and_then(|mut record| mkmodule_mount::undo(run, &mut record));
            if let Err(error) = taken_down {
                eprintln!(
                    "mkmodule: {}; still serving, signal again to retry",
                    mkmodule_blockdev::chain_text(&error)
                );
            }
        }
        handle.close();
        session
            .join()
            .map_err(|_| anyhow::anyhow!("the FUSE server thread panicked"))??;
        Ok(())
    }
}

/// Runs `mkmodule mount`.
pub fn run(args: Args) -> Result<()> {
    let mut run_dir = RunDir::from_env();
    if args.paths.is_empty() && args.union.is_none() {
        return list(&run_dir);
    }
    let (kind, images, target) = match &args.union {
        Some(dir) => {
            if args.paths.is_empty() {
                bail!("--union {} needs at least one module image", dir.display());
            }
            (Kind::Union, args.paths.clone(), dir.clone())
        }
        None => match args.paths.as_slice() {
            [image, dir] => (Kind::Mount, vec![image.clone()], dir.clone()),
            _ => bail!(
                "mount takes IMAGE DIR (got {} paths); to stack modules, use --union DIR MODULE…",
                args.paths.len()
            ),
        },
    };
    let images = images
        .iter()
        .map(|p| image_path(p))
        .collect::<Result<Vec<_>>>()?;
    let target = target
        .canonicalize()
        .with_context(|| format!("mount point {}", target.display()))?;
    let changes = match &args.changes {
        Some(path) => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating the changes directory {}", path.display()))?;
            Some(path.canonicalize()?)
        }
        None => None,
    };
    let cow = args.cow.as_deref().map(absolute).transpose()?;

    let mut server = Server::new(&images, cow.as_deref(), &args.server, args.foreground)?;
    let mut plan = Plan::new(kind, images, Some(target));
    plan.read_only = cow.is_none();
    plan.cow = cow;
    plan.fstype.clone_from(&args.fstype);
    plan.options.clone_from(&args.options);
    plan.changes = changes;
    let record = mkmodule_mount::mount(&mut run_dir, &plan, server.launcher())?;
    server.finish(&run_dir, &record)
}

/// `path` made absolute (it need not exist yet).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Prints one line per record.
fn list(run: &RunDir) -> Result<()> {
    for (_, record) in run.records()? {
        let devices: Vec<String> = record
            .devices()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let images: Vec<String> = record
            .images
            .iter()
            .map(|i| i.display().to_string())
            .collect();
        let fstype = match record.kind {
            Kind::Attach => "attached".to_string(),
            Kind::Union => "union".to_string(),
            Kind::Mount => record
                .mounts()
                .first()
                .map_or("?".to_string(), |(_, t)| (*t).to_string()),
        };
        // A union's layers are read-only, the union itself writable.
        let mode = if record.read_only && record.kind != Kind::Union {
            "ro"
        } else {
            "rw"
        };
        let on = record
            .target
            .as_deref()
            .map_or("-".to_string(), |t| t.display().to_string());
        let mut line = format!(
            "{on}\t{fstype}\t{mode}\t{}\t{}",
            devices.join(","),
            images.join(",")
        );
        if let Some(cow) = &record.cow {
            line.push_str(&format!("\tcow={}", cow.display()));
        }
        if let Some(changes) = &record.changes {
            line.push_str(&format!("\tchanges={}", changes.display()));
        }
        if let Some(pid) = record.server_pid() {
            line.push_str(&format!("\tpid={pid}"));
        }
        println!("{line}");
    }
    Ok(())
}
