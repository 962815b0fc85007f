#!/usr/bin/env bash
# Builds the Debian guest tree the distribution boot tests
# (crates/mkmodule/tests/integration/boot_distro.rs) boot from: `debootstrap --variant=minbase
# bookworm` with the kernel, systemd as init, udev, kmod, nbd-client, initramfs-tools and
# dracut-core + dracut-network (dracut's tools without the `dracut` package, which conflicts with
# initramfs-tools: both real generators live in one tree and build two initramfs images for the
# same kernel), with procps and isc-dhcp-client for dracut's network-legacy module. No docs, man
# pages or locales (dpkg path-exclude).
#
# Output: $CACHE/guest-root (CACHE defaults to /var/cache/mkmodule, override with
# MKMODULE_GUEST_CACHE), with .stamp holding the hash of this script: a change of the script
# rebuilds the tree, otherwise it returns at once. Downloaded .deb files are kept in
# $CACHE/guest-root-debs for the next build. The tree is never changed after it is built: the
# tests put mkmodule's files in an overlay above it (scripts/guest-root-chroot.sh).
# Prints the tree's path and kernel version on its last line. Run as root.
set -euo pipefail

CACHE=${MKMODULE_GUEST_CACHE:-/var/cache/mkmodule}
ROOT=$CACHE/guest-root
DEBS=$CACHE/guest-root-debs
SUITE=bookworm
MIRROR=${MKMODULE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=linux-image-amd64,systemd-sysv,udev,kmod,nbd-client,initramfs-tools,zstd,dracut-core,dracut-network,isc-dhcp-client,iproute2,procps
export DEBIAN_FRONTEND=noninteractive

log() { echo "make-guest-root: $*" >&2; }

stamp=$(sha256sum "$0" | cut -d' ' -f1)
report() {
    local kver
    kver=$(basename "$(ls -d "$ROOT"/lib/modules/*/ | head -1)")
    echo "$ROOT $kver"
}
[[ $(cat "$ROOT/.stamp" 2>/dev/null) == "$stamp" ]] && {
    report
    exit 0
}

[[ $(id -u) == 0 ]] || {
    log "run as root (debootstrap, chroot)"
    exit 3
}
command -v debootstrap >/dev/null || {
    log "debootstrap is missing (apt-get install debootstrap)"
    exit 3
}

mkdir -p "$CACHE" "$DEBS"
exec 9>"$CACHE/.guest-root.lock"
flock -w 1800 9 || {
    log "another build holds $CACHE/.guest-root.lock"
    exit 1
}
if [[ $(cat "$ROOT/.stamp" 2>/dev/null) == "$stamp" ]]; then
    report
    exit 0
fi

start=$SECONDS
tmp=$CACHE/.guest-root.new
umount_all() {
    local m
    for m in dev/pts dev proc sys; do
        mountpoint -q "$tmp/$m" 2>/dev/null && umount -l "$tmp/$m"
    done
    return 0
}
trap 'umount_all; rm -rf "$tmp"' EXIT
umount_all
rm -rf "$tmp"
mkdir -p "$tmp/etc/dpkg/dpkg.cfg.d"
# dpkg reads this in debootstrap's second stage: packages installed there leave these out.
cat >"$tmp/etc/dpkg/dpkg.cfg.d/01-mkmodule-small" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/zsh/*
path-exclude=/usr/share/bash-completion/*
EOF
log "debootstrap $SUITE (debs cached in $DEBS)"
debootstrap --variant=minbase --cache-dir="$DEBS" --include="$PACKAGES" \
    "$SUITE" "$tmp" "$MIRROR" >"$CACHE/.guest-root.log" 2>&1 || {
    tail -n 30 "$CACHE/.guest-root.log" >&2
    log "debootstrap failed (log: $CACHE/.guest-root.log)"
    exit 1
}
# What the first stage unpacked before dpkg knew about the excludes.
rm -rf "$tmp"/usr/share/{man,info,lintian}/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/lib/apt/lists/*_Packages
find "$tmp/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
find "$tmp/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# Drivers no guest of these tests loads (graphics, sound, media, wireless, InfiniBand,
# staging): a third of the modules' size, left out of the tree, the image and the initramfs.
for kdir in "$tmp"/usr/lib/modules/*/; do
    for d in drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
        drivers/isdn drivers/bluetooth sound net/bluetooth net/mac80211 net/wireless; do
        rm -rf "$kdir/kernel/$d"
    done
    chroot "$tmp" depmod "$(basename "$kdir")"
done
rm -f "$tmp"/var/cache/apt/archives/*.deb
# The initramfs the kernel's installation made is not what the tests boot: they build theirs.
rm -f "$tmp"/boot/initrd.img-*
# A root that boots read-only: no password for the console, an empty machine-id (systemd
# makes a transient one), no network configuration beyond what the initramfs set up.
chroot "$tmp" passwd -d root >/dev/null
: >"$tmp/etc/machine-id"
echo mkmodule-guest >"$tmp/etc/hostname"
echo "$stamp" >"$tmp/.stamp"
umount_all
rm -rf "$ROOT"
mv "$tmp" "$ROOT"
trap - EXIT
log "built $ROOT in $((SECONDS - start)) s ($(du -sm "$ROOT" | cut -f1) MiB)"
report
