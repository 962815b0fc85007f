//! A bootable live ISO (Knoppix layout) around images compressed by mkmodule: what
//! `cargo xtask live-iso` makes and the live boot tests boot.
//!
//! The ISO holds `boot/vmlinuz`, `boot/initrd.gz`, `KNOPPIX/KNOPPIX` (the root image compressed
//! by `mkmodule create`) and `KNOPPIX/modules/NN-NAME.mo` (each module compressed the same way,
//! numbered in the order given: the helper stacks them in name order). `grub-mkrescue` (Debian's
//! grub-pc-bin, grub-efi-amd64-bin, mtools and xorriso) makes it a hybrid image that boots by
//! El Torito from BIOS and UEFI, and from a USB stick. Without a given initramfs one is built
//! here: static busybox, mkmodule, util-linux's losetup, the `dist/lib/mkmodule-live` helper,
//! the kernel modules the live stage needs (from an unpacked Debian kernel package) and a
//! small `/init` that runs the helper and switches to the union.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kernel modules the initramfs loads, with their dependencies: the loop device, FUSE,
/// overlayfs, ISO 9660, CD drives (IDE, AHCI, SCSI), virtio and USB disks, ext4 and vfat for
/// the medium and the changes partition.
pub const INITRAMFS_MODULES: &[&str] = &[
    "loop",
    "fuse",
    "overlay",
    "isofs",
    "ata_piix",
    "ata_generic",
    "ahci",
    "sr_mod",
    "sd_mod",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
];

/// What to put on the ISO.
#[derive(Debug, Clone)]
pub struct LiveIso {
    /// The root filesystem image (raw: ext4, squashfs, …) that becomes `KNOPPIX/KNOPPIX`.
    pub root: PathBuf,
    /// Module filesystem images, stacked over the root in this order (the last on top).
    pub modules: Vec<PathBuf>,
    /// The mkmodule binary that compresses the images and goes into the initramfs.
    pub mkmodule: PathBuf,
    /// The `mkmodule-live` helper (`dist/lib/mkmodule-live`).
    pub helper: PathBuf,
    /// The kernel; default: the newest `boot/vmlinuz-*` of `kernel_dir`.
    pub kernel: Option<PathBuf>,
    /// The initramfs; default: built here with the modules of `kernel_dir`.
    pub initrd: Option<PathBuf>,
    /// An unpacked Debian kernel package (`boot/`, `lib/modules/VERSION/`).
    pub kernel_dir: PathBuf,
    /// The ISO's volume label, which the boot entries name (`mkmodule.live=LABEL`).
    pub label: String,
    /// Words added to the kernel command line of every boot entry.
    pub append: String,
    /// Seconds the boot menu waits.
    pub menu_seconds: u32,
    /// Scratch directory (the ISO tree and the initramfs are built there).
    pub work: PathBuf,
    /// The ISO to write.
    pub output: PathBuf,
}

fn error(message: String) -> io::Error {
    io::Error::other(message)
}

/// Runs a command, failing with its stderr.
fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| error(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(error(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The path of `tool` on PATH or in the sbin directories.
fn which(tool: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            error(format!(
                "{tool} not found (apt-get install {})",
                crate::tools::debian_package(tool)
            ))
        })
}

/// The newest `boot/vmlinuz-VERSION` of an unpacked kernel package, and VERSION.
pub fn kernel_of(kernel_dir: &Path) -> io::Result<(PathBuf, String)> {
    let boot = kernel_dir.join("boot");
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(&boot)
        .map_err(|e| error(format!("{}: {e}", boot.display())))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let version = path
                .file_name()?
                .to_str()?
                .strip_prefix("vmlinuz-")?
                .to_owned();
            Some((path, version))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| error(format!("no vmlinuz-* in {}", boot.display())))
}

impl LiveIso {
    /// Builds the ISO.
    pub fn build(&self) -> io::Result<()> {
        for tool in ["grub-mkrescue", "xorriso", "mformat"] {
            which(tool)?;
        }
        let tree = self.work.join("iso");
        if tree.exists() {
            std::fs::remove_dir_all(&tree)?;
        }
        let images = tree.join("KNOPPIX");
        std::fs::create_dir_all(images.join("modules"))?;
        std::fs::create_dir_all(tree.join("boot/grub"))?;
        self.compress(&self.root, &images.join("KNOPPIX"))?;
        for (n, module) in self.modules.iter().enumerate() {
            let stem = module
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("module")
                .replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                    "_",
                );
            let name = format!("{:02}-{stem}.mo", n + 1);
            self.compress(module, &images.join("modules").join(name))?;
        }
        let kernel = match &self.kernel {
            Some(kernel) => kernel.clone(),
            None => kernel_of(&self.kernel_dir)?.0,
        };
        std::fs::copy(&kernel, tree.join("boot/vmlinuz"))
            .map_err(|e| error(format!("{}: {e}", kernel.display())))?;
        match &self.initrd {
            Some(initrd) => {
                std::fs::copy(initrd, tree.join("boot/initrd.gz"))
                    .map_err(|e| error(format!("{}: {e}", initrd.display())))?;
            }
            None => self.build_initramfs(&tree.join("boot/initrd.gz"))?,
        }
        std::fs::write(tree.join("boot/grub/grub.cfg"), self.grub_cfg())?;
        run(Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&self.output)
            .arg(&tree)
            .args(["--", "-volid", &self.label]))?;
        Ok(())
    }

    fn compress(&self, input: &Path, output: &Path) -> io::Result<()> {
        run(Command::new(&self.mkmodule)
            .arg("create")
            .arg(input)
            .arg("-o")
            .arg(output)
            .arg("--quiet"))
        .map(drop)
    }

    /// The boot menu: the live system, and the same copied to RAM; serial console last, so
    /// it is /dev/console.
    pub fn grub_cfg(&self) -> String {
        let mut cfg = String::new();
        let common = format!(
            "mkmodule.live={} console=tty0 console=ttyS0,115200 {}",
            self.label, self.append
        );
        let _ = writeln!(
            cfg,
            "serial --unit=0 --speed=115200\nterminal_input serial console\n\
             terminal_output serial console\nset default=0\nset timeout={}\n",
            self.menu_seconds
        );
        for (title, extra) in [
            ("mkmodule live", ""),
            ("mkmodule live, copied to RAM", " mkmodule.toram"),
        ] {
            let _ = writeln!(
                cfg,
                "menuentry \"{title}\" {{\n    linux /boot/vmlinuz {}{extra}\n    initrd /boot/initrd.gz\n}}",
                common.trim_end()
            );
        }
        cfg
    }

    /// A busybox initramfs with mkmodule, losetup, the helper and the kernel modules.
    fn build_initramfs(&self, output: &Path) -> io::Result<()> {
        let root = self.work.join("initramfs");
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        for dir in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "run", "newroot", "tmp",
        ] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        copy_with_libs(&static_busybox()?, &root, "bin/busybox")?;
        copy_with_libs(&self.mkmodule, &root, "sbin/mkmodule")?;
        let _ = run(Command::new("strip").arg(root.join("sbin/mkmodule")));
        // util-linux's: `mkmodule attach` asks for direct I/O, which busybox's lacks.
        copy_with_libs(&which("losetup")?, &root, "sbin/losetup")?;
        // Debian's busybox has no blkid applet.
        copy_with_libs(&which("blkid")?, &root, "sbin/blkid")?;
        std::fs::copy(&self.helper, root.join("sbin/mkmodule-live"))?;
        set_executable(&root.join("sbin/mkmodule-live"))?;
        let order = self.copy_modules(&root)?;
        std::fs::write(root.join("etc/modules"), order.join("\n") + "\n")?;
        std::fs::write(root.join("init"), INIT)?;
        set_executable(&root.join("init"))?;
        run(Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . | cpio -o -H newc --quiet | gzip -1 >\"$2\"")
            .arg("sh")
            .arg(&root)
            .arg(output))
        .map(drop)
    }

    /// Copies [`INITRAMFS_MODULES`] and their dependencies (modules.dep) to `lib/modules/`,
    /// uncompressed; returns their names in load order.
    fn copy_modules(&self, root: &Path) -> io::Result<Vec<String>> {
        let (_, version) = kernel_of(&self.kernel_dir)?;
        let dir = self.kernel_dir.join("lib/modules").join(&version);
        let dep = std::fs::read_to_string(dir.join("modules.dep"))
            .map_err(|e| error(format!("{}/modules.dep: {e}", dir.display())))?;
        let mut table = BTreeMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps: Vec<String> = deps.split_whitespace().map(module_name).collect();
            table.insert(module_name(path), (path.to_owned(), deps));
        }
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in INITRAMFS_MODULES {
            add_module(name, &table, &mut seen, &mut order);
        }
        let out = root.join("lib/modules");
        std::fs::create_dir_all(&out)?;
        for name in &order {
            let src = dir.join(&table[name].0);
            let dest = out.join(format!("{name}.ko"));
            let src_text = src.to_string_lossy();
            let decompress = if src_text.ends_with(".xz") {
                Some("xz")
            } else if src_text.ends_with(".zst") {
                Some("zstd")
            } else if src_text.ends_with(".gz") {
                Some("gzip")
            } else {
                None
            };
            match decompress {
                Some(tool) => {
                    let out = Command::new(tool)
                        .arg("-dc")
                        .arg(&src)
                        .output()
                        .map_err(|e| error(format!("{tool}: {e}")))?;
                    std::fs::write(&dest, out.stdout)?;
                }
                None => {
                    std::fs::copy(&src, &dest)?;
                }
            }
        }
        Ok(order)
    }
}

/// `kernel/fs/fuse/fuse.ko.xz` → `fuse`; dashes as underscores.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn add_module(
    name: &str,
    table: &BTreeMap<String, (String, Vec<String>)>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(name.to_owned()) {
        return;
    }
    // Not in modules.dep: built into the kernel.
    let Some((_, deps)) = table.get(name) else {
        return;
    };
    for dep in deps {
        add_module(dep, table, seen, order);
    }
    order.push(name.to_owned());
}

/// A static busybox (the initramfs has no loader otherwise: busybox-static).
fn static_busybox() -> io::Result<PathBuf> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = Path::new(candidate);
        if path.is_file() && !Command::new("ldd").arg(path).output()?.status.success() {
            return Ok(path.to_owned());
        }
    }
    Err(error(
        "no static busybox (apt-get install busybox-static)".into(),
    ))
}

/// Copies a program and the shared libraries ldd names into `root`.
fn copy_with_libs(program: &Path, root: &Path, dest: &str) -> io::Result<()> {
    std::fs::copy(program, root.join(dest))
        .map_err(|e| error(format!("{}: {e}", program.display())))?;
    let ldd = Command::new("ldd").arg(program).output()?;
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if let Some(lib) = word.strip_prefix('/').map(|_| Path::new(word)) {
            let target = root.join(word.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(lib, &target)?;
        }
    }
    Ok(())
}

fn set_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// The initramfs's `/init`: loads the modules, runs the helper, moves /run and /dev into the
/// union and switches to it (`init=` names the program, default /sbin/init). When the helper
/// fails, a shell on the console (with `mkmodule.noshell`: power off).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
while read -r m; do
    insmod "/lib/modules/$m.ko" 2>/dev/null
done </etc/modules
echo "mkmodule-live: initramfs up at $(cut -d' ' -f1 /proc/uptime) s"
init=/sbin/init
for word in $(cat /proc/cmdline); do
    case $word in init=*) init=${word#*=} ;; esac
done
if ! mkmodule-live mount /newroot; then
    if grep -qw mkmodule.noshell /proc/cmdline; then
        echo "mkmodule-live: the live system could not be mounted (above); powering off"
        poweroff -f
    fi
    echo "mkmodule-live: the live system could not be mounted (above); here is a shell"
    exec sh
fi
mkdir -p /newroot/run /newroot/dev
mount --move /run /newroot/run
mount --move /dev /newroot/dev
echo "mkmodule-live: switching to the live system at $(cut -d' ' -f1 /proc/uptime) s"
umount /proc /sys
exec switch_root /newroot "$init"
"#;
