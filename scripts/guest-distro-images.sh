#!/usr/bin/env bash
# Makes what the distribution boot tests (crates/mkmodule/tests/integration/boot_distro.rs)
# boot, from the Debian tree of scripts/make-guest-root.sh, with the REAL generators:
#
#   1. an overlay over the cached tree (the tree itself is never changed), with /proc, /sys
#      and /dev bound into it (always unbound on exit);
#   2. mkmodule installed into it as the package installs it: `dpkg -i` of a .deb (--deb), or
#      the files of dist/ and the binary copied to the package's paths (--mkmodule);
#   3. `update-initramfs -c -k VER` (initramfs-tools, MODULES=netboot) and
#      `dracut --no-hostonly --add "network-legacy mkmodule-nbd"` for the same kernel;
#   4. the test's systemd units: mkmodule-boot-test.target (the default target) pulls in
#      mkmodule-boot-test.service once multi-user.target is reached, which writes lines
#      starting with "=== " to /dev/ttyS0 (init's name, the root mount, the resident
#      `@mkmodule-connect`, and with mkmodule.test.units on the command line the checks of
#      mkmodule-serve.socket/.service under this systemd), then "=== marker" and powers off;
#   5. the tree as ext4 (mkfs.ext4 -d, 4 KiB blocks) compressed with `mkmodule create`.
#
# Usage: guest-distro-images.sh --mkmodule BIN [--deb FILE] [--generators LIST] --out DIR
# LIST: which initramfs images to build, "initramfs-tools dracut" by default.
# BIN makes the image (and is what goes into the tree without --deb).
# DIR gets vmlinuz, initrd-initramfs-tools.img, initrd-dracut.img, root.cloop, and the
# generators' output in initramfs-tools.log and dracut.log. Lines on stdout:
#   === kernel VER
#   === seconds STEP S       (tree, update-initramfs, dracut, mkfs, create)
# Run as root; prerequisites: debootstrap, e2fsprogs (scripts/install-deps.sh).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIST=$HERE/../dist
MKMODULE=
DEB=
OUT=
GENERATORS="initramfs-tools dracut"

die() {
    echo "guest-distro-images: $*" >&2
    exit 2
}
while (($#)); do
    case $1 in
    --mkmodule) MKMODULE=${2:?}; shift 2 ;;
    --deb) DEB=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --generators) GENERATORS=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -n $OUT && -n $MKMODULE ]] || die "usage: guest-distro-images.sh --mkmodule BIN [--deb FILE] --out DIR"
[[ -z $MKMODULE ]] || MKMODULE=$(realpath "$MKMODULE")
[[ -z $DEB ]] || DEB=$(realpath "$DEB")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

t=$SECONDS
read -r ROOT KVER < <(bash "$HERE/make-guest-root.sh" | tail -n 1)
echo "=== kernel $KVER"
echo "=== seconds tree $((SECONDS - t))"

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
TREE=$WORK/tree
mkdir -p "$WORK"/{upper,ovwork} "$TREE"
cleanup() {
    local m
    for m in dev/pts dev proc sys; do
        mountpoint -q "$TREE/$m" 2>/dev/null && umount -l "$TREE/$m"
    done
    mountpoint -q "$TREE" 2>/dev/null && umount -l "$TREE"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
mount -t overlay -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/ovwork" mkmodule-guest "$TREE"
mount --bind /proc "$TREE/proc"
mount --bind /sys "$TREE/sys"
mount --bind /dev "$TREE/dev"
mount --bind /dev/pts "$TREE/dev/pts"
in_tree() { chroot "$TREE" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# mkmodule's files where its package puts them.
install_dist() {
    install -D -m 755 "$MKMODULE" "$TREE/usr/bin/mkmodule"
    # As the package ships it: without debug information (a test build carries a lot).
    strip "$TREE/usr/bin/mkmodule"
    install -D -m 755 "$DIST/lib/mkmodule-nbdroot" "$TREE/usr/lib/mkmodule/mkmodule-nbdroot"
    install -D -m 644 "$DIST/systemd/mkmodule-serve.socket" "$TREE/usr/lib/systemd/system/mkmodule-serve.socket"
    install -D -m 644 "$DIST/systemd/mkmodule-serve.service" "$TREE/usr/lib/systemd/system/mkmodule-serve.service"
    install -D -m 644 "$DIST/systemd/exports.example" "$TREE/etc/mkmodule/exports"
    local it=$TREE/usr/share/initramfs-tools
    install -D -m 755 "$DIST/initramfs-tools/hooks/mkmodule-nbd" "$it/hooks/mkmodule-nbd"
    install -D -m 755 "$DIST/initramfs-tools/scripts/local-top/mkmodule-nbd" "$it/scripts/local-top/mkmodule-nbd"
    install -D -m 755 "$DIST/initramfs-tools/scripts/init-bottom/mkmodule-nbd" "$it/scripts/init-bottom/mkmodule-nbd"
    local f
    for f in "$DIST"/dracut/95mkmodule-nbd/*; do
        install -D -m 755 "$f" "$TREE/usr/lib/dracut/modules.d/95mkmodule-nbd/$(basename "$f")"
    done
}
if [[ -n $DEB ]]; then
    cp "$DEB" "$TREE/tmp/mkmodule.deb"
    in_tree dpkg -i /tmp/mkmodule.deb >"$OUT/dpkg.log" 2>&1 || {
        cat "$OUT/dpkg.log" >&2
        die "dpkg -i $DEB failed in the guest tree"
    }
    rm -f "$TREE/tmp/mkmodule.deb"
else
    install_dist
fi

wants() { case " $GENERATORS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
cp "$TREE/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
if wants initramfs-tools; then
    # A netboot initramfs (base and network modules, no disk drivers).
    echo MODULES=netboot >"$TREE/etc/initramfs-tools/conf.d/mkmodule-test"
    t=$SECONDS
    in_tree update-initramfs -c -k "$KVER" >"$OUT/initramfs-tools.log" 2>&1 || {
        cat "$OUT/initramfs-tools.log" >&2
        die "update-initramfs failed"
    }
    echo "=== seconds update-initramfs $((SECONDS - t))"
    mv "$TREE/boot/initrd.img-$KVER" "$OUT/initrd-initramfs-tools.img"
fi
if wants dracut; then
    t=$SECONDS
    # network-legacy (dhclient): without it dracut picks systemd-networkd, which needs dbus.
    in_tree dracut --no-hostonly --add "network-legacy mkmodule-nbd" --force /tmp/initrd-dracut.img \
        "$KVER" >"$OUT/dracut.log" 2>&1 || {
        cat "$OUT/dracut.log" >&2
        die "dracut failed"
    }
    echo "=== seconds dracut $((SECONDS - t))"
    mv "$TREE/tmp/initrd-dracut.img" "$OUT/initrd-dracut.img"
fi

# The test's units and script.
install -D -m 755 "$HERE/guest-distro-check.sh" "$TREE/usr/local/sbin/mkmodule-boot-test"
cat >"$TREE/etc/systemd/system/mkmodule-boot-test.service" <<'EOF'
[Unit]
Description=mkmodule boot test: report on the serial console, then power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/mkmodule-boot-test
StandardOutput=file:/dev/ttyS0
StandardError=file:/dev/ttyS0
EOF
cat >"$TREE/etc/systemd/system/mkmodule-boot-test.target" <<'EOF'
[Unit]
Description=mkmodule boot test
Requires=multi-user.target
After=multi-user.target
Wants=mkmodule-boot-test.service
AllowIsolate=yes
EOF
ln -sf mkmodule-boot-test.target "$TREE/etc/systemd/system/default.target"
# No login prompt on the console: its "login: " (no newline) would run into the test's lines.
ln -sf /dev/null "$TREE/etc/systemd/system/serial-getty@ttyS0.service"
# No line for /: the root stays as the initramfs mounted it (ro or rw, from the command line).
echo 'tmpfs /tmp tmpfs defaults 0 0' >"$TREE/etc/fstab"
for m in dev/pts dev proc sys; do umount "$TREE/$m"; done

t=$SECONDS
rm -f "$OUT/root.ext4"
truncate -s 1G "$OUT/root.ext4"
mkfs.ext4 -q -b 4096 -L guest-root -d "$TREE" "$OUT/root.ext4"
echo "=== seconds mkfs $((SECONDS - t))"
umount "$TREE"
t=$SECONDS
"$MKMODULE" create "$OUT/root.ext4" -o "$OUT/root.cloop" >/dev/null
rm -f "$OUT/root.ext4"
echo "=== seconds create $((SECONDS - t))"
