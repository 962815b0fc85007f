#!/usr/bin/env bash
# Builds the benchmark corpus used by `cargo xtask compare`, `bench-create` and `bench-serve`:
#   $CORPUS/rootfs/       a Debian root filesystem tree (debootstrap, with a desktop-less
#                         set of everyday packages: about 800 MB)
#   $CORPUS/rootfs.ext4   an ext4 image made from that tree (mkfs.ext4 -d), a little larger
# CORPUS defaults to ../corpus (beside the checkout). Needs root, debootstrap and e2fsprogs;
# installs debootstrap when it is missing. Takes a few minutes, mostly downloading.
set -euo pipefail
corpus=${CORPUS:-../corpus}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
packages=systemd-sysv,python3,perl,vim,git,gcc,g++,make,man-db,manpages,manpages-dev,locales,iproute2,openssh-server,curl,less,strace,rsync,xz-utils,bzip2,file

if ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap
fi
mkdir -p "$corpus"
if [ ! -d "$corpus/rootfs/usr" ]; then
    rm -rf "$corpus/rootfs.partial"
    debootstrap --variant=minbase --include="$packages" "$suite" "$corpus/rootfs.partial" "$mirror"
    rm -rf "$corpus/rootfs.partial/var/cache/apt/archives/"*.deb
    mv "$corpus/rootfs.partial" "$corpus/rootfs"
fi
# The image: the tree's size plus a fifth for ext4's own metadata, rounded to whole MiB.
used_kib=$(du -sk "$corpus/rootfs" | cut -f1)
size_mib=$(( (used_kib * 6 / 5) / 1024 + 64 ))
rm -f "$corpus/rootfs.ext4.partial"
mkfs.ext4 -q -F -b 4096 -d "$corpus/rootfs" "$corpus/rootfs.ext4.partial" "${size_mib}M"
mv "$corpus/rootfs.ext4.partial" "$corpus/rootfs.ext4"
echo "make-corpus: $corpus/rootfs.ext4 ($(stat -c %s "$corpus/rootfs.ext4") bytes) and $corpus/rootfs/"
