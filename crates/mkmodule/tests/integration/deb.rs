//! The Debian package of `cargo xtask deb`, built here from this test build's binary (stripped,
//! so CI pays for no release build): lintian finds no error or warning, and on a fresh Debian 12
//! root (debootstrap minbase with man-db, made once per machine by
//! `scripts/make-deb-test-root.sh`) `apt-get install ./mkmodule_*.deb` gives a working
//! `mkmodule`, its manual pages and completions; remove keeps the conffile, purge leaves nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mkmodule_testkit::fixtures::repo_root;
use mkmodule_testkit::tools::{check_status, require_tool, run_in, run_with_limit};

use crate::common_create::tempdir;

/// Runs `program args...` (10 minutes at most: debootstrap downloads), failing the test when it
/// fails; returns its standard output.
fn run(program: &str, args: &[&str]) -> String {
    let out = run_with_limit(program, args, Duration::from_secs(600));
    check_status(program, args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command line in the chroot `root`; returns its standard output.
fn in_root(root: &Path, script: &str) -> String {
    let root = root.to_str().unwrap();
    let args = [
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND=noninteractive",
        "LC_ALL=C.UTF-8",
        "chroot",
        root,
        "sh",
        "-ec",
        script,
    ];
    run("env", &args)
}

/// Every path under `root`, relative to it, but those Debian lets a purge leave behind: dpkg's
/// and apt's own records, caches (man-db's index) and logs.
fn tree(root: &Path) -> BTreeSet<String> {
    let kept = [
        "/var/lib/dpkg/",
        "/var/lib/apt/",
        "/var/cache/",
        "/var/log/",
        "/tmp/",
    ];
    let mut paths = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let rel = format!("/{}", entry.path().strip_prefix(root).unwrap().display());
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
                paths.insert(format!("{rel}/"));
            } else {
                paths.insert(rel);
            }
        }
    }
    paths.retain(|p| !kept.iter().any(|k| p.starts_with(k)));
    paths
}

#[test]
fn deb_passes_lintian_installs_on_debian_12_works_and_purges_clean() {
    for tool in [
        "dpkg-deb",
        "dpkg-shlibdeps",
        "strip",
        "lintian",
        "debootstrap",
        "chroot",
    ] {
        require_tool(tool);
    }
    let dir = tempdir();
    let deb = xtask::deb::build(&xtask::deb::Options {
        root: repo_root(),
        binary: PathBuf::from(env!("CARGO_BIN_EXE_mkmodule")),
        out_dir: dir.path().join("out"),
    })
    .expect("cargo xtask deb");

    // lintian: errors and warnings both fail; the overrides shipped in the package say why.
    let deb_arg = deb.to_str().unwrap();
    let args = ["--fail-on", "error,warning", "--display-info", deb_arg];
    let out = run_in(None, "lintian", &args, Duration::from_secs(600));
    check_status("lintian", &args, &out);
    eprintln!("lintian: {}", String::from_utf8_lossy(&out.stdout));

    // A copy of the cached fresh root, so that every run starts from the same tree.
    let cached = run(
        "bash",
        &[repo_root()
            .join("scripts/make-deb-test-root.sh")
            .to_str()
            .unwrap()],
    );
    let root = dir.path().join("root");
    run("cp", &["-a", cached.trim(), root.to_str().unwrap()]);
    std::fs::copy(&deb, root.join("tmp/mkmodule.deb")).unwrap();
    let before = tree(&root);

    // Without Recommends (fuse3), so that the test needs no mirror and purge can be checked
    // against the tree as it was.
    in_root(
        &root,
        "apt-get install -y --no-install-recommends /tmp/mkmodule.deb",
    );
    let version = in_root(&root, "mkmodule --version");
    assert_eq!(
        version.trim(),
        format!("mkmodule {}", env!("CARGO_PKG_VERSION"))
    );
    in_root(
        &root,
        "head -c 3000000 /usr/bin/mkmodule >/tmp/in; mkmodule create /tmp/in -o /tmp/img; \
         mkmodule verify /tmp/img; mkmodule extract /tmp/img -o /tmp/out; cmp /tmp/in /tmp/out",
    );
    let pages = in_root(&root, "man -w mkmodule; man -w mkmodule-serve");
    assert_eq!(
        pages,
        "/usr/share/man/man1/mkmodule.1.gz\n/usr/share/man/man1/mkmodule-serve.1.gz\n"
    );
    let files = in_root(&root, "dpkg -L mkmodule");
    for path in [
        "/usr/bin/mkmodule",
        "/usr/share/bash-completion/completions/mkmodule",
        "/usr/share/zsh/vendor-completions/_mkmodule",
        "/usr/share/fish/vendor_completions.d/mkmodule.fish",
        "/usr/lib/systemd/system/mkmodule-serve.socket",
        "/usr/lib/systemd/system/mkmodule-serve.service",
        "/etc/mkmodule/exports",
        "/usr/lib/mkmodule/mkmodule-nbdroot",
        "/usr/share/initramfs-tools/hooks/mkmodule-nbd",
        "/usr/share/initramfs-tools/scripts/local-top/mkmodule-nbd",
        "/usr/share/initramfs-tools/scripts/init-bottom/mkmodule-nbd",
        "/usr/lib/dracut/modules.d/95mkmodule-nbd/module-setup.sh",
        "/usr/share/doc/mkmodule/copyright",
        "/usr/share/doc/mkmodule/changelog.Debian.gz",
        "/usr/share/doc/mkmodule/README.boot.md",
        "/usr/share/lintian/overrides/mkmodule",
    ] {
        assert!(
            files.lines().any(|l| l == path),
            "{path} not in dpkg -L:\n{files}"
        );
        assert!(root.join(&path[1..]).exists(), "{path} not installed");
    }
    // The units' documentation is installed where they say.
    for unit in ["mkmodule-serve.socket", "mkmodule-serve.service"] {
        let text = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(unit)).unwrap();
        for doc in text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation=file:"))
        {
            assert!(
                root.join(&doc[1..]).is_file(),
                "{unit}: {doc} is not installed"
            );
        }
    }
    // The completion script is one the shell accepts.
    in_root(
        &root,
        "bash -c '. /usr/share/bash-completion/completions/mkmodule; complete -p mkmodule'",
    );
    let conffiles = in_root(&root, "dpkg-query -W -f='${Conffiles}' mkmodule");
    assert!(conffiles.contains("/etc/mkmodule/exports"), "{conffiles}");

    // Remove keeps the administrator's configuration; purge takes it too and leaves no file.
    in_root(&root, "apt-get remove -y mkmodule");
    assert!(root.join("etc/mkmodule/exports").exists());
    assert!(!root.join("usr/bin/mkmodule").exists());
    in_root(&root, "dpkg --purge mkmodule");
    std::fs::remove_file(root.join("tmp/mkmodule.deb")).unwrap();
    let after = tree(&root);
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "left behind {added:#?}, lost {removed:#?}"
    );
}
