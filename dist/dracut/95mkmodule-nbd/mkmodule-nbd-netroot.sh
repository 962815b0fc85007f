#!/bin/sh
# dracut netroot handler (/sbin/mkmodulenbdroot NETIF NETROOT NEWROOT), run once
# the network is up: connects the NBD device with /sbin/mkmodule-nbdroot and lets
# udev link it to /dev/root for rootfs-block to mount.

type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin

[ "${2%%:*}" = mkmodulenbd ] || exit 1

dev=$(/sbin/mkmodule-nbdroot device) || exit 1
name=${dev#/dev/}
if /sbin/mkmodule-nbdroot verity; then
    # The root is the device-mapper device dm-verity makes over the NBD device.
    verified=$(/sbin/mkmodule-nbdroot root-device) || exit 1
    printf 'KERNEL=="dm-*", ENV{DM_NAME}=="%s", ENV{ID_FS_TYPE}=="?*", SYMLINK+="root"\n' \
        "${verified#/dev/mapper/}" >/etc/udev/rules.d/99-mkmodule-nbd-root.rules
else
    printf 'KERNEL=="%s", ENV{DEVTYPE}!="partition", ENV{ID_FS_TYPE}=="?*", SYMLINK+="root"\n' "$name" \
        >/etc/udev/rules.d/99-mkmodule-nbd-root.rules
fi
udevadm control --reload

# With mkmodule.roothash= this also connects the hash tree and opens the verified device;
# a missing or wrong root hash stops the boot here.
/sbin/mkmodule-nbdroot connect || die "mkmodule-nbd: the root could not be connected (see above)"

# NBD sends no uevent when it gets connected: ask for one, so udev probes the filesystem.
echo change >"/sys/block/$name/uevent"
udevadm settle
need_shutdown
exit 0
