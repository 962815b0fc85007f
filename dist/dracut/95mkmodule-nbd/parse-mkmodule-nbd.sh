#!/bin/sh
# dracut cmdline hook: with mkmodule.server= on the kernel command line, the
# network comes up and calls /sbin/mkmodulenbdroot (netroot=mkmodulenbd), which
# connects the NBD device; the root is mounted from /dev/root, a link udev makes
# once the connected device shows a filesystem.

type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

if getarg mkmodule.server= >/dev/null; then
    case "$(getarg root=)" in
    "" | /dev/nbd* | block:/dev/nbd*) ;;
    *) warn "mkmodule-nbd: root=$(getarg root=) ignored: the root is the NBD device" ;;
    esac
    netroot=mkmodulenbd
    root=block:/dev/root
    rootok=1
    incol2 /proc/devices nbd || modprobe nbd || die "mkmodule-nbd: this kernel has no nbd module"
fi
