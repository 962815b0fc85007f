//! `cargo xtask deb`: the Debian package, assembled with `dpkg-deb` from the workspace.
//!
//! What goes where (Debian paths, the same on Ubuntu):
//!
//! | path | from |
//! |---|---|
//! | `/usr/bin/mkmodule` | the built binary, stripped |
//! | `/usr/share/man/man1/mkmodule.1.gz`, `mkmodule-COMMAND.1.gz` | `mkmodule docs man --dir` |
//! | `/usr/share/bash-completion/completions/mkmodule`, `/usr/share/zsh/vendor-completions/_mkmodule`, `/usr/share/fish/vendor_completions.d/mkmodule.fish` | `mkmodule docs completions SHELL` |
//! | `/usr/lib/systemd/system/mkmodule-serve.{socket,service}` | `dist/systemd` |
//! | `/etc/mkmodule/exports` (conffile) | `dist/systemd/exports.example`, its examples commented out |
//! | `/usr/lib/mkmodule/mkmodule-nbdroot` | `dist/lib` |
//! | `/usr/share/initramfs-tools/{hooks,scripts/local-top,scripts/init-bottom}/mkmodule-nbd` | `dist/initramfs-tools` |
//! | `/usr/lib/dracut/modules.d/95mkmodule-nbd/` | `dist/dracut` |
//! | `/usr/share/doc/mkmodule/` | `copyright` (DEP-5), `changelog.Debian.gz`, the READMEs |
//! | `/usr/share/lintian/overrides/mkmodule` | `dist/lintian-overrides`, each override explained |
//!
//! Maintainer scripts are those `dh_installsystemd --no-enable --no-start` would write, plus an
//! `update-initramfs` trigger: the units are not enabled (the server refuses to start with an
//! empty exports file, which is what a fresh install has) and never restarted by an upgrade (a
//! restart cuts off every machine that runs from the server through the kernel's NBD client).
//! They only keep systemd's enablement state right across upgrade, remove and purge.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// The package's name.
pub const PACKAGE: &str = "mkmodule";

/// The Debian revision appended to the workspace version.
const REVISION: &str = "1";

/// The systemd units shipped, in the order their maintainer-script snippets act on them.
const UNITS: [&str; 2] = ["mkmodule-serve.socket", "mkmodule-serve.service"];

/// What to package and where to put it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The workspace root (holds `dist/`, `README.md`).
    pub root: PathBuf,
    /// The `mkmodule` binary to ship; it is copied and stripped, never modified in place.
    pub binary: PathBuf,
    /// The directory the `.deb` is written to (created if missing).
    pub out_dir: PathBuf,
}

/// Builds the package and returns the path of the `.deb`.
pub fn build(options: &Options) -> Result<PathBuf> {
    let version = format!("{}-{REVISION}", env!("CARGO_PKG_VERSION"));
    let arch = output("dpkg", &["--print-architecture"])?
        .trim()
        .to_string();
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("creating {}", options.out_dir.display()))?;
    let stage = options.out_dir.join(format!("{PACKAGE}-deb-root"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let tree = Tree { root: &stage };
    let dist = options.root.join("dist");

    let bin = tree.copy(&options.binary, "usr/bin/mkmodule", 0o755)?;
    run(Command::new("strip")
        .args([
            "--remove-section=.comment",
            "--remove-section=.note",
            "--strip-unneeded",
        ])
        .arg(&bin))?;
    man_pages(&tree, &bin)?;
    completions(&tree, &bin)?;

    for unit in UNITS {
        tree.copy(
            &dist.join("systemd").join(unit),
            &format!("usr/lib/systemd/system/{unit}"),
            0o644,
        )?;
    }
    let example = read(&dist.join("systemd/exports.example"))?;
    tree.write("etc/mkmodule/exports", exports_conffile(&example), 0o644)?;
    tree.copy(
        &dist.join("lib/mkmodule-nbdroot"),
        "usr/lib/mkmodule/mkmodule-nbdroot",
        0o755,
    )?;
    for script in ["hooks", "scripts/local-top", "scripts/init-bottom"] {
        tree.copy(
            &dist
                .join("initramfs-tools")
                .join(script)
                .join("mkmodule-nbd"),
            &format!("usr/share/initramfs-tools/{script}/mkmodule-nbd"),
            0o755,
        )?;
    }
    let dracut = dist.join("dracut/95mkmodule-nbd");
    for entry in sorted_dir(&dracut)? {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        tree.copy(
            &entry,
            &format!("usr/lib/dracut/modules.d/95mkmodule-nbd/{name}"),
            0o755,
        )?;
    }

    let doc = format!("usr/share/doc/{PACKAGE}");
    tree.write(&format!("{doc}/copyright"), copyright(), 0o644)?;
    tree.copy(
        &options.root.join("README.md"),
        &format!("{doc}/README.md"),
        0o644,
    )?;
    tree.copy(
        &dist.join("README.md"),
        &format!("{doc}/README.boot.md"),
        0o644,
    )?;
    tree.copy(
        &dist.join("lintian-overrides"),
        &format!("usr/share/lintian/overrides/{PACKAGE}"),
        0o644,
    )?;
    let changelog = tree.write(
        &format!("{doc}/changelog.Debian"),
        changelog(&version, &options.root)?,
        0o644,
    )?;
    gzip(&changelog)?;

    let depends = shlib_depends(&bin, &options.out_dir)?;
    let size_kib = installed_size(&stage)?;
    let control = control(&version, &arch, &depends, size_kib);
    tree.write("DEBIAN/control", control, 0o644)?;
    tree.write("DEBIAN/conffiles", "/etc/mkmodule/exports\n".into(), 0o644)?;
    tree.write("DEBIAN/triggers", TRIGGERS.into(), 0o644)?;
    tree.write("DEBIAN/postinst", postinst(), 0o755)?;
    tree.write("DEBIAN/prerm", prerm(), 0o755)?;
    tree.write("DEBIAN/postrm", postrm(), 0o755)?;
    md5sums(&stage)?;

    let deb = options
        .out_dir
        .join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(deb)
}

/// The staging tree the package is built from.
struct Tree<'a> {
    root: &'a Path,
}

impl Tree<'_> {
    /// The absolute path of `rel`, its parent directories created (mode 755).
    fn path(&self, rel: &str) -> Result<PathBuf> {
        let path = self.root.join(rel);
        let parent = path.parent().expect("a path inside the tree");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        Ok(path)
    }

    /// Copies `from` to `rel` with `mode`.
    fn copy(&self, from: &Path, rel: &str, mode: u32) -> Result<PathBuf> {
        let path = self.path(rel)?;
        std::fs::copy(from, &path)
            .with_context(|| format!("copying {} to {}", from.display(), path.display()))?;
        set_mode(&path, mode)?;
        Ok(path)
    }

    /// Writes `text` to `rel` with `mode`.
    fn write(&self, rel: &str, text: String, mode: u32) -> Result<PathBuf> {
        let path = self.path(rel)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, mode)?;
        Ok(path)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The entries of `dir`, by name.
fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

/// Runs a command, failing when it does.
fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {:?} (is it installed?)", command.get_program()))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

/// Runs a command and returns its standard output.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{program} printed no text"))
}

/// Compresses `path` to `path.gz` the way dh_compress does (`gzip -9n`: no name, no time).
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// The manual pages, one per command, compressed.
fn man_pages(tree: &Tree, bin: &Path) -> Result<()> {
    let dir = tree.path("usr/share/man/man1/mkmodule.1")?;
    let dir = dir.parent().unwrap();
    run(Command::new(bin).args(["docs", "man", "--dir"]).arg(dir))?;
    for page in sorted_dir(dir)? {
        set_mode(&page, 0o644)?;
        gzip(&page)?;
    }
    Ok(())
}

/// The completions of bash, zsh and fish where Debian's packages of those shells look.
fn completions(tree: &Tree, bin: &Path) -> Result<()> {
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/mkmodule"),
        ("zsh", "usr/share/zsh/vendor-completions/_mkmodule"),
        ("fish", "usr/share/fish/vendor_completions.d/mkmodule.fish"),
    ] {
        let script = output(&bin.to_string_lossy(), &["docs", "completions", shell])?;
        tree.write(rel, script, 0o644)?;
    }
    Ok(())
}

/// The packaged `/etc/mkmodule/exports`: the example's comments, its example lines commented
/// out, so that nothing is served until the administrator lists an image.
fn exports_conffile(example: &str) -> String {
    let mut text = String::new();
    for line in example.lines() {
        if line.is_empty() || line.starts_with('#') {
            text.push_str(line);
        } else {
            text.push('#');
            text.push_str(line);
        }
        text.push('\n');
    }
    text
}

/// The `Depends` of the binary: what `dpkg-shlibdeps` finds for its shared libraries.
fn shlib_depends(bin: &Path, scratch: &Path) -> Result<String> {
    // dpkg-shlibdeps reads debian/control from its working directory.
    let dir = scratch.join(format!("{PACKAGE}-shlibdeps"));
    std::fs::create_dir_all(dir.join("debian"))?;
    std::fs::write(
        dir.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let bin = std::fs::canonicalize(bin)?;
    let out = Command::new("dpkg-shlibdeps")
        .current_dir(&dir)
        .args(["-O", "-e"])
        .arg(&bin)
        .output()
        .context("running dpkg-shlibdeps (apt-get install dpkg-dev)")?;
    std::fs::remove_dir_all(&dir)?;
    ensure!(
        out.status.success(),
        "dpkg-shlibdeps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(depends.trim().to_string())
}

/// The installed size in KiB, as dpkg-gencontrol counts it: each file rounded up to 1 KiB, one
/// for each directory.
fn installed_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in sorted_dir(dir)? {
        let meta = std::fs::symlink_metadata(&entry)?;
        total += if meta.is_dir() {
            1 + installed_size(&entry)?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

/// `DEBIAN/control`.
fn control(version: &str, arch: &str, depends: &str, size_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}
Version: {version}
Architecture: {arch}
Maintainer: mkmodule developers <mkmodule@example.org>
Installed-Size: {size_kib}
Depends: {depends}
Recommends: fuse3
Suggests: nbd-client, cryptsetup-bin, initramfs-tools | dracut
Section: admin
Priority: optional
Description: compressed block images of the cloop family: create, read, serve
 mkmodule makes, inspects, extracts and verifies compressed block images in
 the cloop family of formats (Knoppix's cloop, create_compressed_fs, FreeBSD
 geom_uzip, the images qemu's cloop driver reads), with zlib, xz, zstd and
 lzo blocks.
 .
 It serves images over NBD (mkmodule serve, socket-activated by systemd, with
 copy-on-write overlays and dm-verity hash trees), mounts them through FUSE,
 and attaches the root filesystem of a diskless machine from the initramfs
 (mkmodule connect, with hooks for initramfs-tools and dracut).
"
    )
}

/// `DEBIAN/triggers`: rebuild existing initramfs images so they pick up the hook (and the
/// new binary); a no-op where initramfs-tools is not installed.
const TRIGGERS: &str = "activate-noawait update-initramfs\n";

/// The quoted unit list for the snippets.
fn units() -> String {
    UNITS.map(|u| format!("'{u}'")).join(" ")
}

/// `DEBIAN/postinst`: dh_installsystemd's `--no-enable --no-start` snippet: keeps an
/// administrator's enablement across upgrades, enables nothing new, starts nothing.
fn postinst() -> String {
    let mut s = String::from("#!/bin/sh\nset -e\n\n");
    s.push_str(
        "if [ \"$1\" = \"configure\" ] || [ \"$1\" = \"abort-upgrade\" ] || \
         [ \"$1\" = \"abort-deconfigure\" ] || [ \"$1\" = \"abort-remove\" ]; then\n",
    );
    for unit in UNITS {
        let _ = write!(
            s,
            "\tif deb-systemd-helper debian-installed '{unit}'; then
\t\t# Removes only the masks deb-systemd-helper set when the package was removed.
\t\tdeb-systemd-helper unmask '{unit}' >/dev/null || true
\t\tif deb-systemd-helper --quiet was-enabled '{unit}'; then
\t\t\tdeb-systemd-helper enable '{unit}' >/dev/null || true
\t\tfi
\tfi
\tdeb-systemd-helper update-state '{unit}' >/dev/null || true
"
        );
    }
    s.push_str(
        "\tif [ -d /run/systemd/system ]; then
\t\tsystemctl --system daemon-reload >/dev/null || true
\tfi
fi

exit 0
",
    );
    s
}

/// `DEBIAN/prerm`: stops the server when the package is removed (not on upgrade).
fn prerm() -> String {
    format!(
        "#!/bin/sh
set -e

if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
\tdeb-systemd-invoke stop {} >/dev/null || true
fi

exit 0
",
        units()
    )
}

/// `DEBIAN/postrm`: forgets the units' state on purge, as dh_installsystemd does
/// (deb-systemd-helper is in init-system-helpers, an essential package: no test for it).
fn postrm() -> String {
    let units = units();
    format!(
        "#!/bin/sh
set -e

if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
\tsystemctl --system daemon-reload >/dev/null || true
fi
if [ \"$1\" = remove ]; then
\tdeb-systemd-helper mask {units} >/dev/null || true
fi
if [ \"$1\" = purge ]; then
\tdeb-systemd-helper purge {units} >/dev/null || true
\tdeb-systemd-helper unmask {units} >/dev/null || true
fi

exit 0
"
    )
}

/// `usr/share/doc/mkmodule/copyright` in the machine-readable format (DEP-5).
fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mkmodule
Comment: The binary links Rust crates statically; their licences are all compatible with
 GPL-2.0-or-later (MIT, BSD-2-Clause, BSD-3-Clause, ISC, Unicode-3.0, Unlicense,
 Apache-2.0 and combinations); the source's deny.toml lists the allowed set and
 `cargo deny list` names every crate with its licence.

Files: *
Copyright: 2026 mkmodule developers
License: GPL-2+

License: GPL-2+
 This program is free software; you can redistribute it and/or modify it under
 the terms of the GNU General Public License as published by the Free Software
 Foundation; either version 2 of the License, or (at your option) any later
 version.
 .
 This program is distributed in the hope that it will be useful, but WITHOUT ANY
 WARRANTY; without even the implied warranty of MERCHANTABILITY or FITNESS FOR A
 PARTICULAR PURPOSE. See the GNU General Public License for more details.
 .
 On Debian systems, the complete text of the GNU General Public License version 2
 can be found in /usr/share/common-licenses/GPL-2, and version 3 in
 /usr/share/common-licenses/GPL-3.
"
    .into()
}

/// `changelog.Debian`: one entry for this build, dated by the last commit (or now).
fn changelog(version: &str, root: &Path) -> Result<String> {
    let date = Command::new("git")
        .current_dir(root)
        .args(["log", "-1", "--format=%aD"])
        .output()
        .ok()
        .filter(|o| o.status.success() && !o.stdout.is_empty())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let date = match date {
        Some(date) => date,
        None => output("date", &["-R"])?.trim().to_string(),
    };
    Ok(format!(
        "{PACKAGE} ({version}) unstable; urgency=medium

  * Built from the mkmodule workspace with `cargo xtask deb`.

 -- mkmodule developers <mkmodule@example.org>  {date}
"
    ))
}

/// `DEBIAN/md5sums` of every shipped file but the conffiles (dpkg tracks those itself).
fn md5sums(stage: &Path) -> Result<()> {
    let mut files = Vec::new();
    collect_files(stage, stage, &mut files)?;
    files.retain(|f| !f.starts_with("DEBIAN/") && !f.starts_with("etc/"));
    files.sort();
    let out = Command::new("md5sum")
        .current_dir(stage)
        .args(&files)
        .output()
        .context("running md5sum")?;
    ensure!(out.status.success(), "md5sum failed");
    let path = stage.join("DEBIAN/md5sums");
    std::fs::write(&path, out.stdout)?;
    set_mode(&path, 0o644)
}

/// Every regular file under `dir`, relative to `base`.
fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in sorted_dir(dir)? {
        if entry.is_dir() {
            collect_files(base, &entry, out)?;
        } else {
            let rel = entry.strip_prefix(base).unwrap();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// `cargo xtask deb [--profile release|dev] [--binary PATH] [-o DIR]`.
pub fn cli(args: &[String]) -> Result<()> {
    let mut profile = "release".to_string();
    let mut binary = None;
    let mut out_dir = PathBuf::from("target/debian");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--profile" => profile = value()?.clone(),
            "--binary" => binary = Some(PathBuf::from(value()?)),
            "-o" | "--out-dir" => out_dir = PathBuf::from(value()?),
            _ => bail!("usage: cargo xtask deb [--profile release|dev] [--binary PATH] [-o DIR]"),
        }
    }
    let binary = match binary {
        Some(binary) => binary,
        None => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(Command::new(cargo).args(["build", "-p", "mkmodule", "--profile", &profile]))?;
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map_or("target".into(), PathBuf::from);
            let dir = if profile == "dev" { "debug" } else { &profile };
            target.join(dir).join("mkmodule")
        }
    };
    let root = std::env::current_dir()?;
    let deb = build(&Options {
        root,
        binary,
        out_dir,
    })?;
    println!("{}", deb.display());
    Ok(())
}
