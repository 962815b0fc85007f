//! Verified network boot: a guest kernel (qemu TCG) boots a root made with
//! `mkmodule create --verity` through its own NBD client and dm-verity. The initramfs runs the
//! `dist/lib/mkmodule-nbdroot` helper that the initramfs-tools and dracut scripts ship, with
//! `mkmodule.roothash=` on the command line: it connects the image and its `NAME.verity`
//! export, opens the verified device with `veritysetup`, and mounts it read-only below a tmpfs
//! changes layer. Then the same hash tree over a served raw copy with one byte changed: the
//! guest gets I/O errors from dm-verity and never the changed byte; and a wrong root hash: the
//! boot stops with a message saying so. Read times of the root's payload with and without
//! dm-verity are printed (not asserted).
//!
//! Prerequisites as for `boot`, plus cryptsetup-bin (veritysetup) and e2fsprogs (debugfs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::boot::{
    boot, boot_script, check_prerequisites, payload_block, payload_mib, require, root_image, run,
    run_ok, Boot, Served,
};
use crate::guest_lock;

/// The root hash `create --verity --json` reports for `image`, made from `input`.
fn create_verified(dir: &Path, input: &Path, image: &Path) -> String {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_mkmodule"))
            .arg("create")
            .arg(input)
            .arg("-o")
            .arg(image)
            .args(["--verity", "--json", "-q"])
            .current_dir(dir),
        Duration::from_secs(120),
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let root_hash = report["verity"]["root_hash"].as_str().unwrap().to_string();
    assert_eq!(root_hash.len(), 64, "{report}");
    root_hash
}

/// The byte offset in `ext4` of a byte inside /payload's 100th block.
fn payload_byte_offset(ext4: &Path) -> u64 {
    payload_block(ext4, 100) * 4096 + 1234
}

/// A boot's argument list: the guest kernel's NBD client, export `export`, optionally verified.
fn nbd_boot_args(port: u16, export: &str, root_hash: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--nbd".to_string(),
        format!("10.0.2.2:{port}"),
        "--export".into(),
        export.into(),
    ];
    if let Some(hash) = root_hash {
        args.extend(["--verity".to_string(), hash.to_string()]);
    }
    args
}

/// The guest's seconds to read /payload, from `payload md5=HEX seconds=S`.
fn payload_seconds(b: &Boot) -> f64 {
    b.lines
        .iter()
        .find_map(|l| l.strip_prefix("payload md5=")?.split("seconds=").nth(1))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no payload read time: {b:#?}"))
}

#[test]
fn guest_boots_a_root_verified_by_dm_verity_and_refuses_damaged_data_and_wrong_hashes() {
    check_prerequisites();
    require("veritysetup");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = root_image(d, payload_mib());
    let verified_image = d.join("root.img");
    let root_hash = create_verified(d, &image.ext4, &verified_image);

    // A raw copy of the root with one byte of /payload changed, served with the good tree.
    let tampered = d.join("tampered.ext4");
    let mut bytes = std::fs::read(&image.ext4).unwrap();
    let at = usize::try_from(payload_byte_offset(&image.ext4)).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(&tampered, &bytes).unwrap();
    drop(bytes);
    std::fs::copy(d.join("root.img.verity"), d.join("tampered.ext4.verity")).unwrap();

    let _guest = guest_lock();
    let served = Served::start(
        d,
        &[
            &format!("root={}", verified_image.display()),
            &format!("bad={}", tampered.display()),
        ],
    );

    // Verified: the root is the dm-verity device, below a writable changes layer.
    let verified = boot(&nbd_boot_args(served.port, "root", Some(&root_hash)));
    assert!(
        verified.has("initramfs root=/dev/mapper/mkmodule-root mode=ro"),
        "{verified:#?}"
    );
    assert!(
        verified.has("marker root=mkmodule-root mode=rw"),
        "the root is not the overlay over the verified device: {verified:#?}"
    );
    assert!(
        verified.has(&format!("hello {}", image.hello)),
        "{verified:#?}"
    );
    assert!(
        verified.has(&format!("payload md5={}", image.payload_md5)),
        "{verified:#?}"
    );
    assert!(
        !verified.has("corrupted") && !verified.has("I/O error"),
        "{verified:#?}"
    );

    // The same root without dm-verity, for the read-time figure.
    let plain = boot(&nbd_boot_args(served.port, "root", None));
    assert!(plain.has("marker root=/dev/nbd0 mode=ro"), "{plain:#?}");
    assert!(
        plain.has(&format!("payload md5={}", image.payload_md5)),
        "{plain:#?}"
    );

    // Damaged data under the good tree: dm-verity fails the read, the byte never arrives.
    let damaged = boot(&nbd_boot_args(served.port, "bad", Some(&root_hash)));
    assert!(
        damaged.has("payload read failed:"),
        "the damaged payload was read: {damaged:#?}"
    );
    assert!(
        !damaged.has("payload md5="),
        "the damaged payload was read: {damaged:#?}"
    );
    let damaged_block = format!("data block {} is corrupted", at / 4096);
    assert!(
        damaged
            .lines
            .iter()
            .any(|l| l.starts_with("kmsg ") && l.contains("verity") && l.contains(&damaged_block)),
        "no dm-verity error naming block {} in the guest's kernel log: {damaged:#?}",
        at / 4096
    );
    assert!(
        damaged.has(&format!("hello {}", image.hello)),
        "undamaged files must still read: {damaged:#?}"
    );

    // A wrong root hash: the initramfs refuses to mount the root at all.
    let mut wrong_hash = root_hash.clone().into_bytes();
    wrong_hash[0] = if wrong_hash[0] == b'0' { b'1' } else { b'0' };
    let wrong_hash = String::from_utf8(wrong_hash).unwrap();
    let (status, out, err) = run(
        Command::new("bash").arg(boot_script()).args(nbd_boot_args(
            served.port,
            "root",
            Some(&wrong_hash),
        )),
        Duration::from_secs(200),
    );
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(
        !out.contains("=== marker"),
        "booted with a wrong hash: {out}"
    );
    assert!(
        err.contains(&format!(
            "the root hash {wrong_hash} does not match the hash tree"
        )),
        "no clear refusal on the console: {out}\n{err}"
    );
    assert!(
        out.contains("=== initramfs failed: mkmodule-nbdroot mount /newroot"),
        "{out}\n{err}"
    );

    let log = served.terminate();
    assert!(log.contains("export=\"root.verity\""), "{log}");
    eprintln!(
        "VERITY BOOT FIGURES ({} MiB payload read by the root's init, guest seconds): \
         through dm-verity {:.2} s, without {:.2} s; to the marker {:.2} s vs {:.2} s",
        payload_mib(),
        payload_seconds(&verified),
        payload_seconds(&plain),
        verified.host_seconds,
        plain.host_seconds,
    );
}
