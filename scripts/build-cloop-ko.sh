#!/usr/bin/env bash
# Builds cloop.ko from Debian's cloop-src for the guest kernel (scripts/install-guest-kernel.sh),
# for comparing the live boot's read path (FUSE + loop) with the kernel driver. cloop-src
# 3.14.1.3 does not build for 6.x kernels as shipped: `struct request` lost `rq_disk` (5.19;
# the driver's data is the queue's `queuedata`, which it sets) and `blk_cleanup_disk` is gone
# (6.0; `put_disk` does its work). Both are changed below, nothing else.
#
# Usage (as root): build-cloop-ko.sh [OUTDIR]   (default /var/cache/mkmodule/cloop-ko)
# Prints the path of cloop.ko. Then, for instance:
#   MKMODULE_LIVE_CLOOP_KO=$(bash scripts/build-cloop-ko.sh) MKMODULE_LIVE_PAYLOAD_MIB=64 \
#     cargo test -p mkmodule --test integration -- boot_live::live_iso --nocapture
set -euo pipefail
OUT=${1:-/var/cache/mkmodule/cloop-ko}
KDIR=${MKMODULE_GUEST_KERNEL_DIR:-/var/cache/mkmodule/guest-kernel}
VMLINUZ=$(compgen -G "$KDIR/boot/vmlinuz-*" | sort | tail -1 || true)
[[ -n $VMLINUZ ]] || { echo "build-cloop-ko: no guest kernel in $KDIR (scripts/install-guest-kernel.sh)" >&2; exit 3; }
KVER=${VMLINUZ##*/vmlinuz-}
packages=(cloop-src "linux-headers-$KVER" make gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
rm -rf "$OUT/src"
mkdir -p "$OUT/src"
tar -xJf /usr/src/cloop.tar.xz -C "$OUT/src"
SRC=$OUT/src/modules/cloop
sed -i \
    -e 's/struct cloop_device \*clo = req->rq_disk->private_data;/struct cloop_device *clo = hctx->queue->queuedata;/' \
    -e 's/^ blk_cleanup_disk(clo->clo_disk);/ put_disk(clo->clo_disk);/' \
    "$SRC/cloop.c"
make -s -C "/usr/src/linux-headers-$KVER" M="$SRC" modules >&2
cp "$SRC/cloop.ko" "$OUT/cloop.ko"
echo "$OUT/cloop.ko"
