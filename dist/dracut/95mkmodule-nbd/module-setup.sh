#!/bin/bash
# dracut module: the root filesystem is an export of `mkmodule serve`, read by
# the kernel's NBD client. Install this directory as
# /usr/lib/dracut/modules.d/95mkmodule-nbd/ and /usr/lib/mkmodule/mkmodule-nbdroot,
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
    echo network rootfs-block
    return 0
}

# called by dracut
installkernel() {
    instmods nbd
}

# called by dracut
install() {
    inst_multiple nbd-client
    inst_simple /usr/lib/mkmodule/mkmodule-nbdroot /sbin/mkmodule-nbdroot
    inst_hook cmdline 90 "$moddir/parse-mkmodule-nbd.sh"
    inst_script "$moddir/mkmodule-nbd-netroot.sh" /sbin/mkmodulenbdroot
    dracut_need_initqueue
}
