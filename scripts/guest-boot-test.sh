#!/usr/bin/env bash
# Boot a throw-away Linux guest under qemu (TCG) whose ROOT filesystem is read
# over NBD from a server on the host's 127.0.0.1, and report how long it took
# to reach a marker printed by the root filesystem's own /sbin/init.
#
# Two ways of reading the root:
#   --virtio URI   qemu is the NBD client: -drive file=URI,format=raw,if=virtio;
#                  the initramfs mounts /dev/vda (URI e.g. nbd://127.0.0.1:10809/root)
#   --nbd HOST:PORT[,HOST:PORT...]  the guest kernel's NBD client over qemu's user network: the
#                  initramfs brings up eth0 (virtio-net, 10.0.2.15; the host's 127.0.0.1 is
#                  10.0.2.2) and runs dist/lib/mkmodule-nbdroot, the helper the
#                  initramfs-tools script and dracut module ship, with
#                  root=/dev/nbd0 mkmodule.server=HOST:PORT mkmodule.export=NAME
# Either way the initramfs then switch_roots into the mounted filesystem, whose
# /sbin/init (made by --make-root) prints the marker and powers off.
#
# Usage: guest-boot-test.sh --make-root DIR
#            populate DIR with a root tree: static busybox, /sbin/init, mount
#            points; add your files (a /payload is read before the marker, to
#            stand for a boot that reads that much), then mkfs.ext4 -d DIR (4 KiB blocks)
#        guest-boot-test.sh [OPTIONS] (--virtio URI | --nbd HOST:PORT)
# Options:
#   --export NAME     export name for --nbd (default: the server's default export)
#   --nbd-args LIST   nbd-client arguments, comma-separated (default -b,4096)
#   --rw              mount the root read-write (--virtio: the drive is writable)
#   --mkmodule PATH   (--nbd) put this mkmodule binary (stripped) in the initramfs: the helper
#                     then attaches the root with `mkmodule connect`, which stays resident and
#                     reconnects (servers after the first are its failover list)
#   --busy-check      (with --mkmodule) after attaching, the initramfs runs a second
#                     `mkmodule connect` on the same device and prints its error:
#                     "=== second connect: MESSAGE"
#   --reread          the root's init reads /payload a second time (caches dropped) after the
#                     marker's checks, printing "=== payload2 md5=HEX seconds=S"
#   --verity ROOTHASH (--nbd) verify the root with dm-verity: the initramfs gets veritysetup,
#                     dm-verity and overlayfs, and the command line mkmodule.roothash=ROOTHASH;
#                     the helper connects the hash tree (export NAME.verity) and mounts the
#                     verified root read-only below a tmpfs changes layer
#   --write TOKEN     the root's init writes /guest-wrote.txt ("written by the
#                     guest TOKEN"), syncs and remounts / read-only (needs --rw)
#   --kernel-dir DIR  unpacked Debian kernel package (default: $MKMODULE_GUEST_KERNEL_DIR
#                     or /var/cache/mkmodule/guest-kernel)
#   --qemu PATH       qemu-system-x86_64 (default: $MKMODULE_GUEST_QEMU, else the copy
#                     under /var/cache/mkmodule/guest-qemu, else PATH)
#   --timeout SECS    bound on the guest run (default 120)
#   --memory MIB      guest memory (default 256)
#   --keep            keep the work directory (initramfs, console log)
#   --until REGEX     stop the guest when a console line matches REGEX (bash regex) and
#                     succeed without the marker: for roots with their own init, e.g. a
#                     distribution booting systemd ('Reached target.*Multi-User')
#   --append WORDS    more words for the kernel command line (e.g. systemd.show_status=1)
#   --console FILE    copy the guest's console log (lines stamped with ms from qemu's start) to FILE
#   --check           only check the prerequisites
#
# Output (stdout), lines starting with "=== ":
#   === kernel VERSION
#   === initramfs root=DEVICE mode=ro|rw uptime=S
#   === payload md5=HEX seconds=S                   (md5sum of /payload, if the root has one,
#                                                   and the guest's seconds to read it)
#   === payload read failed: MESSAGE                (when reading /payload failed)
#   === kmsg LINE                                   (kernel messages about verity or I/O errors)
#   === marker root=DEVICE mode=ro|rw uptime=S      (from the root's /sbin/init)
#   === hello TEXT                                  (first line of /hello.txt, if any)
#   === wrote rc=RC remount rc=RC                   (with --write)
#   === until LINE                                  (with --until: the matching line)
#   === host-seconds-to-until=S.SSS                 (with --until)
#   === host-seconds-to-marker=S.SSS                (wall clock from qemu's start)
#   === host-seconds-total=S.SSS
# Exit status: 0 when the marker (with --until: a matching line) was reached, 1 when not
# (the console tail goes to stderr), 2 on usage errors, 3 when a prerequisite is missing.
#
# qemu runs under `timeout` with its own pid file; on any exit of this script
# both are stopped by their process ids. Prerequisites: scripts/install-guest-kernel.sh.
set -euo pipefail

CACHE=/var/cache/mkmodule
# shellcheck source=lib/guest-qemu.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/guest-qemu.sh"
KDIR=${MKMODULE_GUEST_KERNEL_DIR:-$CACHE/guest-kernel}
QEMU=${MKMODULE_GUEST_QEMU:-}
HERE=$(cd "$(dirname "$0")" && pwd)
HELPER=$HERE/../dist/lib/mkmodule-nbdroot
MODE=
TARGET=
EXPORT=
NBD_ARGS=-b,4096
RW=0
TOKEN=
ROOTHASH=
MKMODULE=
BUSY_CHECK=0
REREAD=0
TIMEOUT=120
MEMORY=256
KEEP=0
CONSOLE=
CHECK=0
MAKE_ROOT=
UNTIL=
EXTRA_APPEND=

die() {
    echo "guest-boot-test: $*" >&2
    exit 2
}
missing() {
    echo "guest-boot-test: $* (install the guest test prerequisites with scripts/install-guest-kernel.sh, as root)" >&2
    exit 3
}

while (($#)); do
    case $1 in
    --make-root) MAKE_ROOT=${2:?}; shift 2 ;;
    --virtio) MODE=virtio; TARGET=${2:?}; shift 2 ;;
    --nbd) MODE=nbd; TARGET=${2:?}; shift 2 ;;
    --export) EXPORT=${2?}; shift 2 ;;
    --nbd-args) NBD_ARGS=${2?}; shift 2 ;;
    --rw) RW=1; shift ;;
    --write) TOKEN=${2:?}; shift 2 ;;
    --verity) ROOTHASH=${2:?}; shift 2 ;;
    --mkmodule) MKMODULE=${2:?}; shift 2 ;;
    --reread) REREAD=1; shift ;;
    --busy-check) BUSY_CHECK=1; shift ;;
    --kernel-dir) KDIR=${2:?}; shift 2 ;;
    --qemu) QEMU=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --memory) MEMORY=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --console) CONSOLE=${2:?}; shift 2 ;;
    --until) UNTIL=${2:?}; shift 2 ;;
    --append) EXTRA_APPEND=${2:?}; shift 2 ;;
    --check) CHECK=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

BUSYBOX=$(command -v busybox || true)
[[ -n $BUSYBOX ]] || missing "busybox not found"
# The root filesystem has no libraries: its busybox must be static (ldd refuses those).
is_static() { [[ -x $1 ]] && ! ldd "$1" >/dev/null 2>&1; }
if ! is_static "$BUSYBOX"; then
    for b in /bin/busybox /usr/bin/busybox; do
        if is_static "$b"; then BUSYBOX=$b; fi
    done
fi

# The root's init: prints the marker, optionally writes a file, powers off. Runs
# with nothing but /bin/busybox, so every applet is called through it.
write_root_init() {
    cat >"$1" <<'EOF'
#!/bin/busybox sh
b=/bin/busybox
$b mount -t proc proc /proc 2>/dev/null
# read_payload TAG: md5 of /payload and the guest's seconds to read it. The root may be
# read-only, so an error is caught from the output, not a file.
read_payload() {
    t0=$($b cut -d' ' -f1 /proc/uptime)
    if sum=$($b md5sum /payload 2>&1); then
        t1=$($b cut -d' ' -f1 /proc/uptime)
        echo "=== $1 md5=${sum%% *} seconds=$($b awk "BEGIN { print $t1 - $t0 }")"
    else
        echo "=== $1 read failed: $(echo "$sum" | $b head -n 1)"
    fi
}
# A root that carries /payload stands for a boot that reads that much: read it first.
if [ -f /payload ]; then read_payload payload; fi
if $b grep -q mkmodule.test.reread /proc/cmdline; then
    $b sync
    echo 3 >/proc/sys/vm/drop_caches
    read_payload payload2
fi
$b dmesg | $b grep -E 'verity|I/O error|nbd[0-9]+:' | $b head -n 12 | while read -r line; do echo "=== kmsg $line"; done
up=$($b cut -d' ' -f1 /proc/uptime)
set -- $($b grep ' / ' /proc/mounts | $b tail -n 1)
dev=$1 opts=$4
mode=${opts%%,*}
echo "=== marker root=$dev mode=$mode uptime=$up"
if [ -f /hello.txt ]; then echo "=== hello $($b head -n 1 /hello.txt)"; fi
for word in $($b cat /proc/cmdline); do
    case $word in mkmodule.test.write=*) token=${word#*=} ;; esac
done
if [ -n "${token:-}" ]; then
    echo "written by the guest $token" >/guest-wrote.txt
    rc=$?
    $b sync
    $b mount -o remount,ro / 2>/dev/null
    rrc=$?
    $b sync
    echo "=== wrote rc=$rc remount rc=$rrc"
fi
echo "=== poweroff"
$b poweroff -f
EOF
    chmod 755 "$1"
}

if [[ -n $MAKE_ROOT ]]; then
    is_static "$BUSYBOX" || missing "no static busybox (apt-get install busybox-static)"
    mkdir -p "$MAKE_ROOT"/{bin,sbin,proc,sys,dev,tmp,mnt}
    cp -L "$BUSYBOX" "$MAKE_ROOT/bin/busybox"
    write_root_init "$MAKE_ROOT/sbin/init"
    exit 0
fi

[[ -n $MODE ]] || ((CHECK)) || die "give --virtio URI or --nbd HOST:PORT (see --help)"
[[ $TIMEOUT =~ ^[0-9]+$ && $MEMORY =~ ^[0-9]+$ ]] || die "bad --timeout or --memory"
[[ $EXPORT =~ ^[A-Za-z0-9._+-]*$ ]] || die "bad --export $EXPORT"
[[ $NBD_ARGS =~ ^[A-Za-z0-9,=._+-]*$ ]] || die "bad --nbd-args $NBD_ARGS"
[[ $TOKEN =~ ^[A-Za-z0-9._-]*$ ]] || die "bad --write $TOKEN"
[[ $ROOTHASH =~ ^[0-9A-Za-z]*$ ]] || die "bad --verity $ROOTHASH"
[[ $EXTRA_APPEND =~ ^[A-Za-z0-9\ ._=,:/+-]*$ ]] || die "bad --append $EXTRA_APPEND"
[[ -z $ROOTHASH || $MODE == nbd ]] || die "--verity needs --nbd"
[[ -z $MKMODULE || $MODE == nbd ]] || die "--mkmodule needs --nbd"
[[ -z $MKMODULE || -x $MKMODULE ]] || die "--mkmodule $MKMODULE is not an executable"
[[ -z $TOKEN || $RW == 1 ]] || die "--write needs --rw"
case $MODE in
virtio) [[ $TARGET =~ ^nbd(\+unix)?://[][A-Za-z0-9.:/_?=+-]+$ ]] || die "bad --virtio URI $TARGET" ;;
nbd) [[ $TARGET =~ ^[][A-Za-z0-9.:_,-]+$ ]] || die "bad --nbd $TARGET" ;;
esac

# --- prerequisites ---------------------------------------------------------
guest_qemu_locate || missing "qemu-system-x86_64 not found"
VMLINUZ=$(compgen -G "$KDIR/boot/vmlinuz-*" | sort | tail -1 || true)
[[ -n $VMLINUZ ]] || missing "no kernel image $KDIR/boot/vmlinuz-*"
KVER=${VMLINUZ##*/vmlinuz-}
MODROOT=$KDIR/lib/modules/$KVER
[[ -f $MODROOT/modules.dep ]] || missing "no $MODROOT/modules.dep"
NBD_CLIENT=$(command -v nbd-client || { [[ -x /usr/sbin/nbd-client ]] && echo /usr/sbin/nbd-client; } || true)
[[ -n $NBD_CLIENT ]] || missing "nbd-client not found"
[[ -r $HELPER ]] || missing "$HELPER not found"
VERITYSETUP=
if [[ -n $ROOTHASH ]]; then
    VERITYSETUP=$(command -v veritysetup || { [[ -x /usr/sbin/veritysetup ]] && echo /usr/sbin/veritysetup; } || true)
    [[ -n $VERITYSETUP ]] || missing "veritysetup not found (cryptsetup-bin)"
fi
for tool in cpio gzip timeout ldd; do
    command -v "$tool" >/dev/null || missing "$tool not found"
done
if ((CHECK)); then
    echo "qemu: $QEMU ($("$QEMU" --version | head -1))"
    echo "kernel: $VMLINUZ"
    echo "busybox: $BUSYBOX"
    echo "nbd-client: $NBD_CLIENT"
    exit 0
fi

# --- initramfs ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/mkmodule-boot.XXXXXX)
R=$WORK/initramfs
TPID=
cleanup() {
    guest_qemu_stop "$TPID" "$WORK/qemu.pid"
    if ((KEEP)); then
        echo "guest-boot-test: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,run,newroot,tmp,lib/modules}
copy_with_libs() {
    local bin=$1 dest=$2 lib
    cp -L "$bin" "$R$dest"
    while read -r lib; do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done < <(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true)
}
copy_with_libs "$BUSYBOX" /bin/busybox
copy_with_libs "$NBD_CLIENT" /sbin/nbd-client
[[ -z $VERITYSETUP ]] || copy_with_libs "$VERITYSETUP" /sbin/veritysetup
if [[ -n $MKMODULE ]]; then
    copy_with_libs "$MKMODULE" /sbin/mkmodule
    strip "$R/sbin/mkmodule" 2>/dev/null || true
fi
cp "$HELPER" "$R/sbin/mkmodule-nbdroot"
chmod 755 "$R/sbin/mkmodule-nbdroot"

# Kernel modules: the closure over modules.dep, in load order.
declare -A MODPATH=() MODDEPS=() LOADED=()
while IFS=: read -r path deps; do
    name=${path##*/}
    name=${name%%.ko*}
    name=${name//-/_}
    MODPATH[$name]=$path
    MODDEPS[$name]=$deps
done <"$MODROOT/modules.dep"
ORDER=()
add_module() {
    local name=${1//-/_} dep
    [[ -n ${LOADED[$name]:-} ]] && return 0
    LOADED[$name]=1
    if [[ -z ${MODPATH[$name]:-} ]]; then
        grep -q -E "/${name//_/[-_]}\.ko$" "$MODROOT/modules.builtin" 2>/dev/null ||
            echo "guest-boot-test: module $name not in $MODROOT (assuming built in)" >&2
        return 0
    fi
    for dep in ${MODDEPS[$name]}; do
        dep=${dep##*/}
        add_module "${dep%%.ko*}"
    done
    ORDER+=("$name")
}
if [[ $MODE == virtio ]]; then
    wanted=(virtio_pci virtio_blk)
else
    wanted=(virtio_pci virtio_net nbd)
fi
wanted+=(crc32c_generic ext4)
[[ -z $ROOTHASH ]] || wanted+=(dm_verity overlay)
for m in "${wanted[@]}"; do add_module "$m"; done
for m in "${ORDER[@]}"; do
    src=$MODROOT/${MODPATH[$m]}
    case $src in
    *.ko.xz) xz -dc "$src" >"$R/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -q -dc "$src" >"$R/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$R/lib/modules/$m.ko" ;;
    *) cp "$src" "$R/lib/modules/$m.ko" ;;
    esac
done
echo "MODULES='${ORDER[*]}'" >"$R/etc/boot.conf"

cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
. /etc/boot.conf
for m in $MODULES; do
    insmod /lib/modules/$m.ko 2>/tmp/insmod.err || echo "=== insmod $m failed: $(head -1 /tmp/insmod.err)"
done
echo "=== kernel $(uname -r)"
fail() {
    echo "=== initramfs failed: $*"
    dmesg | tail -n 8 | sed 's/^/=== dmesg: /'
    poweroff -f
}
boot= mode=ro fstype=ext4
for word in $(cat /proc/cmdline); do
    case $word in
    mkmodule.test.boot=*) boot=${word#*=} ;;
    rootfstype=*) fstype=${word#*=} ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
    esac
done
case $boot in
virtio)
    dev=/dev/vda
    i=0
    while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    mount -t "$fstype" -o "$mode" $dev /newroot || fail "mount $dev"
    ;;
nbd)
    dev=/dev/nbd0
    ip link set lo up
    ip link set eth0 up || fail "no eth0"
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    # A SYN sent before the link is up is lost and retried only after 1 s, then 2 s more.
    i=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i + 1)); done
    mkmodule-nbdroot mount /newroot || fail "mkmodule-nbdroot mount /newroot"
    dev=$(mkmodule-nbdroot root-device)
    if grep -q mkmodule.test.busy /proc/cmdline; then
        for word in $(cat /proc/cmdline); do
            case $word in mkmodule.server=*) srv=${word#*=} ;; mkmodule.export=*) exp=${word#*=} ;; esac
        done
        echo "=== second connect: $(mkmodule connect "${srv%%,*}" -x "$exp" /dev/nbd0 --foreground 2>&1 | tail -n 1)"
    fi
    ;;
*) fail "no mkmodule.test.boot= on the command line" ;;
esac
echo "=== initramfs root=$dev mode=$mode uptime=$(cut -d' ' -f1 /proc/uptime)"
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
EOF
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"

# --- boot ----------------------------------------------------------------------
APPEND="console=ttyS0 panic=-1 loglevel=3 mkmodule.test.boot=$MODE rootfstype=ext4"
if ((RW)); then APPEND+=" rw"; else APPEND+=" ro"; fi
[[ -n $TOKEN ]] && APPEND+=" mkmodule.test.write=$TOKEN"
((REREAD)) && APPEND+=" mkmodule.test.reread"
((BUSY_CHECK)) && APPEND+=" mkmodule.test.busy"
[[ -n $EXTRA_APPEND ]] && APPEND+=" $EXTRA_APPEND"
DEVICES=()
if [[ $MODE == virtio ]]; then
    drive="file=$TARGET,format=raw,if=virtio"
    ((RW)) || drive+=",readonly=on"
    DEVICES+=(-drive "$drive")
    APPEND+=" root=/dev/vda"
else
    APPEND+=" root=/dev/nbd0 mkmodule.server=$TARGET mkmodule.nbdargs=$NBD_ARGS mkmodule.retries=3"
    [[ -n $EXPORT ]] && APPEND+=" mkmodule.export=$EXPORT"
    [[ -n $ROOTHASH ]] && APPEND+=" mkmodule.roothash=$ROOTHASH"
    DEVICES+=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)
fi

# Console lines are stamped with milliseconds since qemu's start, as they arrive. With
# --until, the first matching line is kept in until.hit and qemu is stopped by its pid.
stamp() {
    local start=$1 line now qpid
    while IFS= read -r line; do
        now=${EPOCHREALTIME/./}
        line=${line%$'\r'}
        printf '%d %s\n' $(((now - start) / 1000)) "$line"
        if [[ -n $UNTIL && ! -f $WORK/until.hit && $line =~ $UNTIL ]]; then
            printf '%d %s\n' $(((now - start) / 1000)) "$line" >"$WORK/until.hit"
            qpid=$(cat "$WORK/qemu.pid" 2>/dev/null || true)
            [[ -z $qpid ]] || kill -TERM "$qpid" 2>/dev/null || true
        fi
    done
}
START=${EPOCHREALTIME/./}
timeout --kill-after=5 "$TIMEOUT" "$QEMU" "${QEMU_DATA[@]}" \
    -machine q35 -accel tcg -cpu max -smp 1 -m "$MEMORY" \
    -nodefaults -display none -no-reboot -no-user-config \
    -serial stdio -pidfile "$WORK/qemu.pid" \
    -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" -append "$APPEND" \
    "${DEVICES[@]}" </dev/null 2>"$WORK/qemu.err" | stamp "$START" >"$WORK/console.log" &
TPID=$!
rc=0
wait "$TPID" || rc=$?
TPID=
END=${EPOCHREALTIME/./}

[[ -z $CONSOLE ]] || cp "$WORK/console.log" "$CONSOLE"
seconds() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
grep -a '^[0-9]* === ' "$WORK/console.log" | cut -d' ' -f2- || true
if [[ -n $UNTIL ]]; then
    if [[ ! -f $WORK/until.hit ]]; then
        echo "guest-boot-test: no console line matched --until within ${TIMEOUT}s (qemu status $rc)" >&2
        cat "$WORK/qemu.err" >&2
        echo "--- console tail:" >&2
        tail -n 40 "$WORK/console.log" >&2
        exit 1
    fi
    hit=$(cat "$WORK/until.hit")
    echo "=== until ${hit#* }"
    echo "=== host-seconds-to-until=$(seconds "${hit%% *}")"
    echo "=== host-seconds-total=$(seconds $(((END - START) / 1000)))"
    exit 0
fi
marker=$(grep -a -m1 '^[0-9]* === marker ' "$WORK/console.log" | cut -d' ' -f1 || true)
if [[ -z $marker ]]; then
    echo "guest-boot-test: the guest did not reach the marker (qemu status $rc; timeout ${TIMEOUT}s)" >&2
    cat "$WORK/qemu.err" >&2
    echo "--- console tail:" >&2
    tail -n 40 "$WORK/console.log" >&2
    exit 1
fi
echo "=== host-seconds-to-marker=$(seconds "$marker")"
echo "=== host-seconds-total=$(seconds $(((END - START) / 1000)))"
