#!/usr/bin/env bash
# Installs the peer tools the test suite drives (Debian/Ubuntu, as root).
# The Rust toolchain is expected to be present already (rustup).
set -euo pipefail
packages=(
    cloop-utils      # create_compressed_fs / extract_compressed_fs: interop oracles
    qemu-utils       # qemu-img / qemu-nbd / qemu-io: cloop driver and NBD client
    xz-utils         # xz: checks our xz blocks are standard streams
    zstd             # zstd: checks our zstd blocks are standard frames, and decodes its frames
    b3sum            # b3sum: the trailer's digest of the input is BLAKE3, as b3sum prints it
    libnbd-bin       # nbdinfo, nbdcopy, nbdsh, nbdfuse: NBD clients
    python3-libnbd   # libnbd for the shared NBD probe scripts
    python3-lzo      # liblzo2, the reference LZO1X codec our LZO blocks are checked against
    nbdkit           # reference NBD server for comparisons
    fio              # NBD load generator
    e2fsprogs        # mkfs.ext4, e2fsck, debugfs for filesystem test images
    systemd          # systemd-socket-activate, systemd-analyze: socket activation tests
    util-linux       # losetup, blkid, setsid, mount: mount and attach tests
    cryptsetup-bin   # veritysetup: the reference for the dm-verity hash tree of create --verity
    man-db           # man: checks that the manual page of `mkmodule docs man` renders
    nginx            # a real HTTP(S) origin for images given as URLs (range requests, ETag)
                     # and of `cargo xtask storm`
    dpkg-dev         # dpkg-shlibdeps: the Depends of the Debian package (cargo xtask deb)
    binutils         # strip: the packaged binary is stripped
    lintian          # Debian's package checker, run on the .deb by the package test
    debootstrap      # the Debian 12 roots of the package test and the distribution boot tests
    xorriso          # the live ISO of `cargo xtask live-iso` (grub-mkrescue writes it) and the
                     # ISO 9660 study of `cargo xtask remaster` (xorriso -as mkisofs)
    grub-common      # grub-mkrescue: the live ISO's boot loader
    grub-pc-bin      # its BIOS (El Torito) boot image
    grub-efi-amd64-bin # its UEFI boot image
    mtools           # the UEFI boot image's FAT file system inside the ISO
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-deps: all of ${packages[*]} present"
bash "$(dirname "${BASH_SOURCE[0]}")/install-guest-kernel.sh"
# qemu-nbd with qemu's curl driver, the peer of `cargo xtask storm` (unpacked, not installed).
bash "$(dirname "${BASH_SOURCE[0]}")/install-qemu-curl.sh" >/dev/null
bash "$(dirname "${BASH_SOURCE[0]}")/install-fuzz.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/install-cargo-deny.sh"
