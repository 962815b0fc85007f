//! `serve`'s export table: the exports given on the command line and in the exports file,
//! opened (with their overlays under `--cow`), and reloaded on SIGHUP without dropping an
//! export that fails to reopen.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use mkmodule_blockdev::{BlockDevice, FileDevice};
use mkmodule_image::OpenOptions;
use mkmodule_nbd::{DefaultExport, ExportEntry, ReloadHandle};
use mkmodule_overlay::{Overlay, OverlayOptions};

use crate::cmd::describe;
use crate::open::{open_device, open_overlay, url_of, Found, OverlayStore};
use crate::remote::RemoteArgs;
use crate::units::human_bytes;

/// One export as given on the command line or in the exports file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExportSpec {
    /// The export name clients ask for.
    pub name: String,
    /// The image or raw file.
    pub path: PathBuf,
}

/// Splits `NAME=IMAGE` or `IMAGE` (named after its stem, or `fallback_name`).
pub(super) fn parse_export(text: &str, fallback_name: Option<&str>) -> Result<ExportSpec> {
    if let Some((name, path)) = text.split_once('=') {
        if !name.is_empty() && !name.contains('/') {
            return Ok(ExportSpec {
                name: name.to_string(),
                path: PathBuf::from(path),
            });
        }
    }
    let path = PathBuf::from(text);
    let name = match fallback_name {
        Some(name) => name.to_string(),
        // An image URL: named after the last part of its path, whatever its query says.
        None if url_of(&path).is_some() => {
            let no_query = text.split(['?', '#']).next().unwrap_or(text);
            Path::new(no_query)
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| !s.is_empty())
                .with_context(|| format!("cannot name an export after {text:?}: use NAME={text}"))?
                .to_string()
        }
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("cannot name an export after {text:?}: use NAME={text}"))?
            .to_string(),
    };
    Ok(ExportSpec { name, path })
}

/// Opens `path` as a cloop image, or as a raw file when it carries no cloop signature; with
/// a description for the log.
fn open_export(
    path: &Path,
    cache_bytes: u64,
    remote: &RemoteArgs,
) -> Result<(Arc<dyn BlockDevice>, String)> {
    let options = OpenOptions {
        cache_bytes,
        ..OpenOptions::default()
    };
    let opened = open_device(path, &options, remote)?;
    let what = match &opened.found {
        Found::Image(image) => format!(
            "{} image, {} blocks of {}, {}",
            image.dialect(),
            image.num_blocks(),
            human_bytes(u64::from(image.block_size())),
            human_bytes(image.size())
        ),
        Found::Raw => format!("raw file, {}", human_bytes(opened.device.size())),
    };
    Ok((opened.device, what))
}

/// Puts a copy-on-write overlay over `base`: in memory, or in `file` (opened or created).
fn add_overlay(
    base: Arc<dyn BlockDevice>,
    image: &Path,
    file: Option<&Path>,
    chunk_size: u32,
) -> Result<(Arc<Overlay>, String)> {
    let options = OverlayOptions::default()
        .with_chunk_size(chunk_size)
        .with_label(image.display().to_string());
    let store = match file {
        None => OverlayStore::Memory,
        Some(file) => OverlayStore::File(file),
    };
    let overlay = open_overlay(base, store, &options)?;
    let stats = overlay.stats();
    let what = match file {
        None => format!(
            "writable, changes in memory in chunks of {}",
            human_bytes(u64::from(stats.chunk_size))
        ),
        Some(file) => format!(
            "writable, changes in {} ({} chunks of {} written, {} zeroed)",
            file.display(),
            stats.data_chunks,
            human_bytes(u64::from(stats.chunk_size)),
            stats.zero_chunks
        ),
    };
    Ok((overlay, what))
}

/// Reads an exports file: one `NAME=IMAGE` or `IMAGE` per line, `#` comments, paths relative
/// to the file's directory.
pub(super) fn read_exports_file(file: &Path) -> Result<Vec<ExportSpec>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the exports file {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `NAME = IMAGE` may have blanks around the '='.
        let line = match line.split_once('=') {
            Some((name, path)) if !name.contains('/') => {
                format!("{}={}", name.trim_end(), path.trim_start())
            }
            _ => line.to_string(),
        };
        let mut spec = parse_export(&line, None)
            .with_context(|| format!("{} line {}", file.display(), number + 1))?;
        if spec.path.is_relative() && url_of(&spec.path).is_none() {
            spec.path = base.join(&spec.path);
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// What identifies an image file's contents well enough to notice a replaced or rewritten file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

/// One export being served, with what it was opened from.
#[derive(Clone)]
struct Live {
    spec: ExportSpec,
    id: Option<FileId>,
    description: String,
    export: Arc<dyn BlockDevice>,
    /// The image's dm-verity hash tree (`IMAGE.verity`, from `create --verity`), served as the
    /// export `NAME.verity` beside it; never under --cow, whose writes the tree cannot follow.
    verity: Option<Arc<dyn BlockDevice>>,
}

/// The server's export table for `live`: each export, and after it `NAME.verity` where the
/// image has a hash tree.
fn entries_of(live: &[Live]) -> Vec<ExportEntry> {
    let mut entries = Vec::new();
    for l in live {
        entries.push(ExportEntry {
            name: l.spec.name.clone(),
            description: l.description.clone(),
            export: Arc::clone(&l.export),
        });
        if let Some(tree) = &l.verity {
            entries.push(ExportEntry {
                name: format!("{}.verity", l.spec.name),
                description: format!("dm-verity hash tree of {}", l.spec.name),
                export: Arc::clone(tree),
            });
        }
    }
    entries
}

/// How exports are opened: cache size, overlays, descriptions.
pub(super) struct Opener {
    cache_size: u64,
    /// `Some(None)`: overlays in memory; `Some(Some(file))`: the one overlay file.
    cow: Option<Option<PathBuf>>,
    chunk_size: u32,
    description: Option<String>,
    /// Overlays kept in files, flushed at exit.
    file_overlays: Mutex<Vec<Arc<Overlay>>>,
    /// How image URLs are read.
    remote: RemoteArgs,
}

impl Opener {
    /// An opener: image caches of `cache_size` bytes; with `cow`, overlays in memory
    /// (`Some(None)`) or in the one file (`Some(Some(file))`) of `chunk_size`-byte chunks;
    /// `description` for every export, or each one's path.
    pub fn new(
        cache_size: u64,
        cow: Option<Option<PathBuf>>,
        chunk_size: u32,
        description: Option<String>,
        remote: RemoteArgs,
    ) -> Opener {
        Opener {
            cache_size,
            cow,
            chunk_size,
            description,
            file_overlays: Mutex::new(Vec::new()),
            remote,
        }
    }

    fn open(&self, spec: &ExportSpec) -> Result<Live> {
        let id = file_id(&spec.path);
        let (mut export, mut what) = open_export(&spec.path, self.cache_size, &self.remote)?;
        if let Some(cow_file) = &self.cow {
            let (overlay, how) =
                add_overlay(export, &spec.path, cow_file.as_deref(), self.chunk_size)?;
            if overlay.path().is_some() {
                self.file_overlays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(overlay.clone());
            }
            export = overlay;
            what = format!("{what}; {how}");
        }
        let description = self
            .description
            .clone()
            .unwrap_or_else(|| shown_name(&spec.path));
        eprintln!(
            "mkmodule: export {:?}: {} ({what})",
            spec.name,
            shown_path(&spec.path)
        );
        let sidecar = mkmodule_pack::verity::hash_file_path(&spec.path);
        let verity: Option<Arc<dyn BlockDevice>> = if self.cow.is_none() && sidecar.is_file() {
            let tree = FileDevice::open(&sidecar)
                .with_context(|| format!("opening the hash tree {}", sidecar.display()))?;
            eprintln!(
                "mkmodule: export \"{}.verity\": {} (dm-verity hash tree)",
                spec.name,
                sidecar.display()
            );
            Some(Arc::new(tree))
        } else {
            None
        };
        Ok(Live {
            spec: spec.clone(),
            id,
            description,
            export,
            verity,
        })
    }
}

/// The export list: where it comes from and what is served now.
pub(super) struct Exports {
    command_line: Vec<ExportSpec>,
    file: Option<PathBuf>,
    opener: Opener,
    live: Vec<Live>,
}

impl Exports {
    /// The exports given on the command line and in `file`, none open yet.
    pub fn new(command_line: Vec<ExportSpec>, file: Option<PathBuf>, opener: Opener) -> Exports {
        Exports {
            command_line,
            file,
            opener,
            live: Vec::new(),
        }
    }

    /// All specs, command line first; refuses a name used twice.
    fn specs(&self) -> Result<Vec<ExportSpec>> {
        let mut specs = self.command_line.clone();
        if let Some(file) = &self.file {
            specs.extend(read_exports_file(file)?);
        }
        let mut seen = HashSet::new();
        for spec in &specs {
            if !seen.insert(spec.name.as_str()) {
                bail!("export name {:?} is given twice", spec.name);
            }
        }
        if specs.is_empty() {
            bail!("no image to serve: the command line and the exports file list none");
        }
        Ok(specs)
    }

    /// Opens every export; any failure is fatal (used at start).
    pub fn open_all(&mut self) -> Result<()> {
        let specs = self.specs()?;
        if let (Some(Some(file)), true) = (&self.opener.cow, specs.len() > 1) {
            bail!(
                "--cow {} keeps the changes of one image, but {} images are served: give one \
                 image, or --cow without FILE for overlays in memory",
                file.display(),
                specs.len()
            );
        }
        self.live = specs
            .iter()
            .map(|spec| self.opener.open(spec))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The table for the NBD server.
    pub fn entries(&self) -> Vec<ExportEntry> {
        entries_of(&self.live)
    }

    /// Works out the next table: unchanged images keep their open export, changed or new ones
    /// are opened, and an image that fails to open keeps its old export (or is left out when it
    /// is new). Under --cow an export that stays keeps its overlay whatever happened to its
    /// image: two overlays over one export would disagree. Returns the table and a summary;
    /// an unreadable exports file or a bad table refuses the whole reload.
    fn next(&self) -> Result<(Vec<Live>, String)> {
        let specs = self.specs()?;
        let mut next = Vec::new();
        let mut notes = Vec::new();
        for spec in &specs {
            let old = self.live.iter().find(|l| l.spec.name == spec.name);
            if let Some(old) = old {
                // An image URL is opened again: the origin may hold another image now, which
                // new connections get (open ones keep theirs).
                let same = old.spec.path == spec.path
                    && url_of(&spec.path).is_none()
                    && old.id == file_id(&spec.path);
                if same {
                    next.push(old.clone());
                    continue;
                }
                if self.opener.cow.is_some() {
                    eprintln!(
                        "mkmodule: export {:?}: {} changed, but under --cow the export keeps \
                         the image its overlay was made over (restart to change it)",
                        spec.name,
                        shown_path(&spec.path)
                    );
                    next.push(old.clone());
                    continue;
                }
            }
            match (self.opener.open(spec), old) {
                (Ok(live), old) => {
                    notes.push(format!(
                        "{} {:?}",
                        if old.is_some() { "reopened" } else { "added" },
                        spec.name
                    ));
                    next.push(live);
                }
                (Err(e), Some(old)) => {
                    eprintln!(
                        "mkmodule: error: export {:?}: {}; keeping the export opened from {}",
                        spec.name,
                        describe(&e),
                        shown_path(&old.spec.path)
                    );
                    notes.push(format!("kept {:?} (reopen failed)", spec.name));
                    next.push(old.clone());
                }
                (Err(e), None) => {
                    eprintln!(
                        "mkmodule: error: export {:?}: {}; not added",
                        spec.name,
                        describe(&e)
                    );
                    notes.push(format!("not added {:?}", spec.name));
                }
            }
        }
        for old in &self.live {
            if !next.iter().any(|l| l.spec.name == old.spec.name) {
                notes.push(format!("removed {:?}", old.spec.name));
            }
        }
        if next.is_empty() {
            bail!("no export could be opened");
        }
        let summary = if notes.is_empty() {
            "nothing changed".to_string()
        } else {
            notes.join(", ")
        };
        Ok((next, summary))
    }

    /// SIGHUP: swaps in the next table; established connections are untouched.
    pub fn reload(&mut self, server: &ReloadHandle) -> Result<String> {
        let (next, summary) = self.next()?;
        let entries = entries_of(&next);
        server
            .replace_exports(entries, DefaultExport::First)
            .context("the new export table")?;
        self.live = next;
        Ok(summary)
    }

    /// One line for the service manager: how many exports, and their names.
    pub fn status(&self) -> String {
        let names: Vec<&str> = self.live.iter().map(|l| l.spec.name.as_str()).collect();
        format!("serving {} export(s): {}", names.len(), names.join(" "))
    }

    /// The overlays kept in files, to flush at exit.
    pub fn file_overlays(&self) -> Vec<Arc<Overlay>> {
        std::mem::take(
            &mut *self
                .opener
                .file_overlays
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(
            parse_export("/srv/KNOPPIX", None).unwrap(),
            ExportSpec {
                name: "KNOPPIX".into(),
                path: "/srv/KNOPPIX".into()
            }
        );
        assert_eq!(
            parse_export("live=/srv/a.cloop", None).unwrap(),
            ExportSpec {
                name: "live".into(),
                path: "/srv/a.cloop".into()
            }
        );
        assert_eq!(
            parse_export("/srv/a.cloop", Some("root")).unwrap(),
            ExportSpec {
                name: "root".into(),
                path: "/srv/a.cloop".into()
            }
        );
        // A path with '=' in a directory name is a path, not NAME=IMAGE.
        assert_eq!(parse_export("/a=b/c.img", None).unwrap().name, "c");
    }

    #[test]
    fn exports_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exports");
        std::fs::write(
            &file,
            "# boot images\n\n  live = sub/a.img\nroot=/srv/root.cloop\nplain.img\n",
        )
        .unwrap();
        let specs = read_exports_file(&file).unwrap();
        let got: Vec<(&str, PathBuf)> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.path.clone()))
            .collect();
        assert_eq!(got[0], ("live", dir.path().join("sub/a.img")));
        assert_eq!(got[1], ("root", PathBuf::from("/srv/root.cloop")));
        assert_eq!(got[2], ("plain", dir.path().join("plain.img")));
        assert_eq!(got.len(), 3);
        std::fs::write(&file, "/a=b/c.img\n").unwrap();
        assert_eq!(read_exports_file(&file).unwrap()[0].name, "c");
        std::fs::write(&file, "ok=x.img\n/\n").unwrap();
        assert!(read_exports_file(&file).is_err());
    }

    fn random_file(path: &Path, len: usize, seed: u8) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect();
        std::fs::write(path, data).unwrap();
    }

    fn exports_from(file: &Path) -> Exports {
        Exports {
            command_line: Vec::new(),
            file: Some(file.to_path_buf()),
            opener: Opener::new(1 << 20, None, 64 << 10, None, RemoteArgs::default()),
            live: Vec::new(),
        }
    }

    #[test]
    fn reload_reopens_changed_images_and_keeps_what_fails() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        random_file(&d.join("a.img"), 8192, 1);
        random_file(&d.join("b.img"), 4096, 2);
        let file = d.join("exports");
        std::fs::write(&file, "a=a.img\nb=b.img\n").unwrap();
        let mut exports = exports_from(&file);
        exports.open_all().unwrap();
        let first: Vec<Arc<dyn BlockDevice>> =
            exports.live.iter().map(|l| l.export.clone()).collect();

        // Nothing changed: the very same open exports.
        let (next, summary) = exports.next().unwrap();
        assert_eq!(summary, "nothing changed");
        assert!(Arc::ptr_eq(&next[0].export, &first[0]));
        assert!(Arc::ptr_eq(&next[1].export, &first[1]));

        // a.img replaced (new inode), b.img gone, c added, d missing.
        random_file(&d.join("a.new"), 16384, 3);
        std::fs::rename(d.join("a.new"), d.join("a.img")).unwrap();
        std::fs::remove_file(d.join("b.img")).unwrap();
        random_file(&d.join("c.img"), 512, 4);
        std::fs::write(&file, "a=a.img\nb=b.img\nc=c.img\nd=d.img\n").unwrap();
        let (next, summary) = exports.next().unwrap();
        assert_eq!(
            summary,
            r#"reopened "a", kept "b" (reopen failed), added "c", not added "d""#
        );
        let names: Vec<&str> = next.iter().map(|l| l.spec.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(next[0].export.size(), 16384);
        assert!(Arc::ptr_eq(&next[1].export, &first[1]));
        exports.live = next;

        // Removing a line removes the export; a bad file or an empty list refuses the reload.
        std::fs::write(&file, "c=c.img\n").unwrap();
        let (next, summary) = exports.next().unwrap();
        assert_eq!(summary, r#"removed "a", removed "b""#);
        assert_eq!(next.len(), 1);
        std::fs::write(&file, "c=c.img\nc=a.img\n").unwrap();
        let err = exports.next().err().unwrap().to_string();
        assert!(err.contains("twice"), "{err}");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(exports.next().is_err());
        std::fs::write(&file, "x=missing.img\n").unwrap();
        assert!(exports.next().is_err());
        std::fs::remove_file(&file).unwrap();
        assert!(exports.next().is_err());
    }
}

/// An image path as the server's log shows it: a URL without its query (a presigned URL's
/// query is a credential), a file as it is.
fn shown_path(path: &Path) -> String {
    match url_of(path) {
        Some(url) => mkmodule_remote::shown_url(url),
        None => path.display().to_string(),
    }
}

/// What clients are told an image is called when no `--description` is given: its file name
/// only. Never the directory, nor an URL's host or query (a presigned URL's query is a
/// credential).
fn shown_name(path: &std::path::Path) -> String {
    match crate::open::url_of(path) {
        Some(url) => {
            let without_query = url.split(['?', '#']).next().unwrap_or_default();
            without_query
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        }
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod shown_name_tests {
    use super::shown_name;
    use std::path::Path;

    #[test]
    fn clients_see_the_file_name_only() {
        assert_eq!(shown_name(Path::new("/srv/images/KNOPPIX")), "KNOPPIX");
        assert_eq!(
            shown_name(Path::new(
                "https://origin.example/farm/root.cloop?X-Amz-Signature=secret"
            )),
            "root.cloop"
        );
        assert_eq!(shown_name(Path::new("http://h/a/b.img#frag")), "b.img");
    }
}
