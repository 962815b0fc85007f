#!/usr/bin/env bash
# Makes, once per machine, the fresh Debian 12 root the package test installs
# mkmodule_*.deb into: `debootstrap --variant=minbase` plus man-db (for `man -w`).
# Usage: scripts/make-deb-test-root.sh [DIR]    (default /var/cache/mkmodule/bookworm-minbase)
# Prints DIR. The tree is never modified by the test (it works on a copy).
set -euo pipefail
DIR=${1:-/var/cache/mkmodule/bookworm-minbase}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9
if [[ ! -e $DIR/.complete ]]; then
    command -v debootstrap >/dev/null || { echo "apt-get install debootstrap" >&2; exit 1; }
    rm -rf "$DIR.tmp" "$DIR"
    debootstrap --variant=minbase --include=man-db bookworm "$DIR.tmp" "$MIRROR" >&2
    # The downloaded .debs are not needed in the copies.
    rm -f "$DIR.tmp"/var/cache/apt/archives/*.deb
    touch "$DIR.tmp/.complete"
    mv "$DIR.tmp" "$DIR"
fi
echo "$DIR"
