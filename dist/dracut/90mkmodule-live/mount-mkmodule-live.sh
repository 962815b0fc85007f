#!/bin/sh
# dracut mount hook: mounts the live system's union on $NEWROOT. Everything it mounts stays
# under /run, which dracut keeps in the new root.

type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

if [ "${root:-}" = mkmodule-live ] && ! ismounted "${NEWROOT:-/sysroot}"; then
    /sbin/mkmodule-live mount "${NEWROOT:-/sysroot}" ||
        die "mkmodule-live: the live system could not be mounted (see above)"
fi
