#!/bin/bash
# dracut module: boot a live system (Knoppix/Slax layout) from a CD, USB stick or disk
# partition: the helper attaches the compressed base image and modules with mkmodule's
# user-space reader (FUSE + loop) and mounts their overlayfs union as the root. Install this
# directory as /usr/lib/dracut/modules.d/90mkmodule-live/ and
# /usr/lib/mkmodule/mkmodule-live, then: dracut --add "mkmodule-live" -f
# Kernel command line: mkmodule.live[=LABEL_OR_UUID] (see /usr/lib/mkmodule/mkmodule-live)

# called by dracut
check() {
    require_binaries mkmodule losetup blkid /usr/lib/mkmodule/mkmodule-live || return 1
    # Only when asked for (--add mkmodule-live, or add_dracutmodules+=" mkmodule-live ").
    return 255
}

# called by dracut
depends() {
    echo fs-lib
    return 0
}

# called by dracut
installkernel() {
    instmods loop fuse overlay isofs sr_mod cdrom ata_piix ahci sd_mod usb_storage uas \
        vfat nls_cp437 nls_iso8859_1 ext4
}

# called by dracut
install() {
    inst_multiple mkmodule losetup blkid mount umount cp mkdir
    inst_simple /usr/lib/mkmodule/mkmodule-live /sbin/mkmodule-live
    inst_hook cmdline 90 "$moddir/parse-mkmodule-live.sh"
    inst_hook mount 90 "$moddir/mount-mkmodule-live.sh"
}
