#!/bin/sh
# dracut cmdline hook: with mkmodule.live on the kernel command line the root is the live
# system's union, which the mount hook (mount-mkmodule-live.sh) mounts.

type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

if /sbin/mkmodule-live wanted; then
    [ -z "$(getarg root=)" ] || warn "mkmodule-live: root=$(getarg root=) ignored: the root is the live union"
    root=mkmodule-live
    rootok=1
fi
