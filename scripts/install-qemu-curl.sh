#!/usr/bin/env bash
# Unpacks a qemu-nbd that can read a cloop image over HTTP (qemu's cloop driver on its curl
# driver), the peer of `cargo xtask storm`, into $CACHE/qemu-curl (CACHE defaults to
# /var/cache/mkmodule). As root.
#
# qemu's curl driver is a loadable module (block-curl.so, Debian package qemu-block-extra)
# that only loads into the qemu build it came with. The qemu-utils installed on the test
# machines may be newer than the distribution's qemu-block-extra, and installing that package
# would replace them; so the distribution's qemu-utils and qemu-block-extra of one version are
# unpacked side by side instead, and qemu-nbd is run with QEMU_MODULE_DIR pointing at the
# unpacked modules. Prints the qemu-nbd path on its last line.
set -euo pipefail

CACHE=${MKMODULE_GUEST_CACHE:-/var/cache/mkmodule}
DIR=$CACHE/qemu-curl
QEMU_NBD=$DIR/usr/bin/qemu-nbd
MODULE=$DIR/usr/lib/x86_64-linux-gnu/qemu/block-curl.so
debs=(qemu-utils qemu-block-extra)
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive

log() { echo "install-qemu-curl: $*" >&2; }

ok() {
    [[ -x $QEMU_NBD && -f $MODULE && -f $DIR/.stamp ]] &&
        ! ldd "$QEMU_NBD" "$MODULE" 2>/dev/null | grep -q 'not found'
}

if ok; then
    echo "$QEMU_NBD"
    exit 0
fi

mkdir -p "$CACHE"
chmod 755 "$CACHE"
exec 9>"$CACHE/.install-qemu-curl.lock"
flock -w 600 9 || {
    log "another installer holds $CACHE/.install-qemu-curl.lock"
    exit 1
}
if ! ok; then
    # Both packages of the version apt offers for qemu-block-extra.
    version=$(apt-cache policy qemu-block-extra | sed -n 's/^ *Candidate: //p')
    [[ -n $version && $version != "(none)" ]] || {
        log "apt offers no qemu-block-extra (apt-get update?)"
        exit 1
    }
    # Its shared libraries (libcurl, ...) are installed as ordinary packages; qemu's own are not.
    mapfile -t libs < <(apt-cache depends --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "${debs[@]/%/=$version}" 2>/dev/null |
        sed -n 's/^ *Depends: \([a-z0-9][^ <>]*\)$/\1/p' | grep -v -x -E 'qemu-.*' | sort -u)
    missing=()
    for p in "${libs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    log "downloading and unpacking ${debs[*]} ($version) into $DIR"
    tmp=$(mktemp -d "$CACHE/.qemu-curl.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/deb"
    chmod 755 "$tmp" "$tmp/deb"
    if id _apt >/dev/null 2>&1; then chown _apt "$tmp/deb"; fi
    (cd "$tmp/deb" && apt-get "${APT_OPTS[@]}" download -qq "${debs[@]/%/=$version}" >/dev/null)
    for deb in "$tmp"/deb/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    echo "qemu-utils and qemu-block-extra $version" >"$tmp/root/.stamp"
    if ldd "$tmp/root/usr/bin/qemu-nbd" "$tmp/root/usr/lib/x86_64-linux-gnu/qemu/block-curl.so" |
        grep 'not found'; then
        log "missing shared libraries (above)"
        exit 1
    fi
    rm -rf "$DIR"
    mv "$tmp/root" "$DIR"
    rm -rf "$tmp"
    trap - EXIT
fi
ok || {
    log "$QEMU_NBD or $MODULE is not usable"
    exit 1
}
echo "$QEMU_NBD"
