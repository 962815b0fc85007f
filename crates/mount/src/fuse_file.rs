//! A FUSE filesystem that shows block exports as regular files: one directory (the mount
//! point) holding one file per export, the size of the export, read through
//! [`BlockDevice::read_at`] (and written through [`BlockDevice::write_at`] when the export is writable).
//! A loop device over such a file is a block device backed by a cloop image, with neither
//! `cloop.ko` nor `nbd.ko`.
//!
//! Files are opened in `direct_io` mode: the kernel sends every read to us instead of keeping
//! a second copy in the page cache (the filesystem on the loop device caches already, and the
//! image reader keeps its own cache of decoded blocks).

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session,
    WriteFlags,
};
use mkmodule_blockdev::BlockDevice;

/// How long the kernel may cache names and attributes: they never change.
const TTL: Duration = Duration::from_secs(3600);
/// Largest read or write we accept in one request (the kernel asks for far less).
const MAX_IO: u32 = 1 << 20;
/// `fallocate` mode bits (linux/falloc.h).
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// One file of the filesystem.
pub struct ExportFile {
    /// Its name in the mount point (no `/`).
    pub name: String,
    /// What it reads from (and writes to).
    pub export: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for ExportFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportFile")
            .field("name", &self.name)
            .field("size", &self.export.size())
            .field("read_only", &self.export.is_read_only())
            .finish()
    }
}

/// How the filesystem is served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Threads reading requests from the kernel (reads of different blocks decode in parallel).
    pub threads: usize,
    /// Name shown as the mount's source in `/proc/self/mountinfo`.
    pub fs_name: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            threads: 4,
            fs_name: "mkmodule".to_string(),
        }
    }
}

/// The filesystem: inode 1 is the directory, inode `2 + i` is file `i`.
#[derive(Debug)]
pub struct ExportFs {
    files: Vec<ExportFile>,
    uid: u32,
    gid: u32,
    time: SystemTime,
}

/// Maps an export's error to the errno the reader of the file sees.
fn errno_of(error: &io::Error) -> Errno {
    match error.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        None => match error.kind() {
            io::ErrorKind::PermissionDenied => Errno::EPERM,
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            io::ErrorKind::Unsupported => Errno::EOPNOTSUPP,
            io::ErrorKind::OutOfMemory => Errno::ENOMEM,
            _ => Errno::EIO,
        },
    }
}

impl ExportFs {
    /// A filesystem showing `files`.
    pub fn new(files: Vec<ExportFile>) -> io::Result<ExportFs> {
        for (i, file) in files.iter().enumerate() {
            if file.name.is_empty()
                || file.name == "."
                || file.name == ".."
                || file.name.contains(['/', '\0'])
                || files[..i].iter().any(|f| f.name == file.name)
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad or repeated file name {:?}", file.name),
                ));
            }
        }
        Ok(ExportFs {
            files,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            time: SystemTime::now(),
        })
    }

    /// Whether any file is writable.
    fn writable(&self) -> bool {
        self.files.iter().any(|f| !f.export.is_read_only())
    }

    fn file(&self, ino: INodeNo) -> Option<&ExportFile> {
        let index = ino.0.checked_sub(2)?;
        self.files.get(usize::try_from(index).ok()?)
    }

    fn dir_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file_attr(&self, ino: INodeNo, file: &ExportFile) -> FileAttr {
        let size = file.export.size();
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind: FileType::RegularFile,
            perm: if file.export.is_read_only() {
                0o444
            } else {
                0o644
            },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        if ino == INodeNo::ROOT {
            Some(self.dir_attr())
        } else {
            self.file(ino).map(|file| self.file_attr(ino, file))
        }
    }

    /// Checks a write-like request on `ino` and returns its file.
    fn writable_file(&self, ino: INodeNo) -> Result<&ExportFile, Errno> {
        match self.file(ino) {
            None if ino == INodeNo::ROOT => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
            Some(file) if file.export.is_read_only() => Err(Errno::EROFS),
            Some(file) => Ok(file),
        }
    }
}

impl Filesystem for ExportFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Ask for large requests; the kernel keeps its own limit when it allows less.
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_write(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match self.files.iter().position(|f| OsStr::new(&f.name) == name) {
            Some(index) => {
                let ino = INodeNo(index as u64 + 2);
                reply.entry(
                    &TTL,
                    &self.file_attr(ino, &self.files[index]),
                    Generation(0),
                );
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The size of a block export is fixed; ownership and modes are not ours to change.
        if size.is_some_and(|s| s != attr.size) || mode.is_some() || uid.is_some() || gid.is_some()
        {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(file) = self.file(ino) else {
            return reply.error(if ino == INodeNo::ROOT {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        let wants_write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        if wants_write && file.export.is_read_only() {
            return reply.error(Errno::EROFS);
        }
        if flags.0 & libc_o_trunc() != 0 {
            return reply.error(Errno::EPERM);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.file(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let total = file.export.size();
        if offset >= total {
            return reply.data(&[]);
        }
        let len = u64::from(size.min(MAX_IO)).min(total - offset) as usize;
        let mut buf = vec![0u8; len];
        match file.export.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(error) => {
                eprintln!(
                    "mkmodule: {}: read of {len} bytes at offset {offset} failed: {}",
                    file.name,
                    mkmodule_blockdev::chain_text(&error)
                );
                reply.error(errno_of(&error));
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.writable_file(ino) {
            Ok(file) => file,
            Err(errno) => return reply.error(errno),
        };
        let total = file.export.size();
        if offset >= total {
            return reply.error(Errno::ENOSPC);
        }
        // A block device takes what fits and reports a short write for the rest.
        let len = (data.len() as u64).min(total - offset) as usize;
        match file.export.write_at(&data[..len], offset) {
            Ok(()) => reply.written(len as u32),
            Err(error) => {
                eprintln!(
                    "mkmodule: {}: write of {len} bytes at offset {offset} failed: {}",
                    file.name,
                    mkmodule_blockdev::chain_text(&error)
                );
                reply.error(errno_of(&error));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.file(ino) {
            Some(file) if !file.export.is_read_only() => match file.export.flush() {
                Ok(()) => reply.ok(),
                Err(error) => {
                    eprintln!(
                        "mkmodule: {}: flush failed: {}",
                        file.name,
                        mkmodule_blockdev::chain_text(&error)
                    );
                    reply.error(errno_of(&error));
                }
            },
            _ => reply.ok(),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let file = match self.writable_file(ino) {
            Ok(file) => file,
            Err(errno) => return reply.error(errno),
        };
        let total = file.export.size();
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EINVAL);
        };
        if mode == 0 || mode == FALLOC_FL_KEEP_SIZE {
            // Space inside the export always "exists"; it cannot grow.
            return if end <= total || mode == FALLOC_FL_KEEP_SIZE {
                reply.ok()
            } else {
                reply.error(Errno::EFBIG)
            };
        }
        let punch = mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        let zero = mode & !FALLOC_FL_KEEP_SIZE == FALLOC_FL_ZERO_RANGE;
        if !(punch || zero) || !file.export.can_write_zeroes() {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let end = end.min(total);
        if offset >= end {
            return reply.ok();
        }
        // Both must read back as zeros afterwards: write-zeroes, allowed to free space when
        // punching.
        match file.export.write_zeroes(offset, end - offset, punch) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno_of(&error)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
        ]
        .into_iter()
        .chain(self.files.iter().enumerate().map(|(i, f)| {
            (
                INodeNo(i as u64 + 2),
                FileType::RegularFile,
                f.name.as_str(),
            )
        }));
        for (index, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(ino, index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes: u64 = self.files.iter().map(|f| f.export.size()).sum();
        reply.statfs(
            bytes.div_ceil(4096),
            0,
            0,
            self.files.len() as u64 + 1,
            0,
            4096,
            255,
            4096,
        );
    }
}

/// `O_TRUNC` (the same on every Linux architecture).
const fn libc_o_trunc() -> i32 {
    0o1000
}

/// Mounts the filesystem on `mountpoint` (which must be an empty directory); returns once the
/// kernel has finished the FUSE handshake, so the files can be opened as soon as the session
/// runs ([`Session::run`] in this thread, or [`Session::spawn`]).
pub fn mount(
    mountpoint: &Path,
    files: Vec<ExportFile>,
    options: &ServeOptions,
) -> io::Result<Session<ExportFs>> {
    let fs = ExportFs::new(files)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(options.fs_name.clone()),
        MountOption::Subtype("mkmodule".to_string()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
        if fs.writable() {
            MountOption::RW
        } else {
            MountOption::RO
        },
    ];
    config.n_threads = Some(options.threads.max(1));
    Session::new(fs, mountpoint, &config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkmodule_blockdev::MemoryDevice;

    fn file(name: &str) -> ExportFile {
        ExportFile {
            name: name.to_string(),
            export: Arc::new(MemoryDevice::new(vec![7u8; 4096])),
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(ExportFs::new(vec![file("a"), file("b")]).is_ok());
        for bad in [
            vec![file("a"), file("a")],
            vec![file("a/b")],
            vec![file("..")],
        ] {
            assert!(ExportFs::new(bad).is_err());
        }
    }

    #[test]
    fn attributes() {
        let fs = ExportFs::new(vec![file("0-root")]).unwrap();
        let attr = fs.attr(INodeNo(2)).unwrap();
        assert_eq!(attr.size, 4096);
        assert_eq!(attr.perm, 0o444);
        assert_eq!(attr.kind, FileType::RegularFile);
        assert_eq!(fs.attr(INodeNo::ROOT).unwrap().kind, FileType::Directory);
        assert!(fs.attr(INodeNo(3)).is_none());
        assert!(!fs.writable());
    }
}
