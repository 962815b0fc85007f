#!/bin/sh
# dracut pre-pivot hook: a root verified by dm-verity (mkmodule.roothash=) is mounted
# read-only on $NEWROOT; put a tmpfs changes layer (overlayfs) over it before the switch.

type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

if getarg mkmodule.server= >/dev/null && /sbin/mkmodule-nbdroot verity; then
    /sbin/mkmodule-nbdroot overlay "${NEWROOT:-/sysroot}" ||
        die "mkmodule-nbd: could not put a changes layer over the verified root (see above)"
fi
