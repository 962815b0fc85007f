#!/bin/bash
# dracut module: the root filesystem is an export of `mkmodule serve`, read by
# the kernel's NBD client. The Debian package installs this directory as
# /usr/lib/dracut/modules.d/95mkmodule-nbd/ and /usr/lib/mkmodule/mkmodule-nbdroot;
# by hand, copy both there,
# then: dracut --add "mkmodule-nbd" -f
# Kernel command line: root=/dev/nbd0 ip=dhcp rd.neednet=1
#   mkmodule.server=HOST[:PORT] mkmodule.export=NAME

# called by dracut
check() {
    require_binaries nbd-client /usr/lib/mkmodule/mkmodule-nbdroot || return 1
    # Only when asked for (--add mkmodule-nbd, or add_dracutmodules+=" mkmodule-nbd ").
    return 255
}

# called by dracut
depends() {
    # dm: udev names device-mapper devices (the verified root of mkmodule.roothash=).
    echo network rootfs-block dm
    return 0
}

# called by dracut
installkernel() {
    instmods nbd dm-verity overlay
}

# called by dracut
install() {
    inst_multiple nbd-client
    # `mkmodule connect` reconnects and fails over; nbd-client is the fallback.
    inst_multiple -o mkmodule
    # For a root verified by dm-verity (mkmodule.roothash=); without it such a boot refuses.
    inst_multiple -o veritysetup
    inst_simple /usr/lib/mkmodule/mkmodule-nbdroot /sbin/mkmodule-nbdroot
    inst_hook cmdline 90 "$moddir/parse-mkmodule-nbd.sh"
    inst_script "$moddir/mkmodule-nbd-netroot.sh" /sbin/mkmodulenbdroot
    inst_hook pre-pivot 50 "$moddir/mkmodule-nbd-overlay.sh"
    dracut_need_initqueue
}
