#!/usr/bin/env bash
# Boot a throw-away Linux guest under qemu (TCG) whose initramfs runs the
# *kernel's* NBD client (nbd.ko + nbd-client) against NBD servers listening on
# the host's 127.0.0.1. In qemu's user-mode network the guest reaches the host
# loopback as 10.0.2.2; nothing leaves the machine. Prerequisites come from
# scripts/install-guest-kernel.sh.
#
# Usage: guest-nbd-test.sh [OPTIONS] SPEC...
#   SPEC  LABEL:PORT:EXPORT[:NBD-CLIENT-ARGS]   arguments comma-separated, e.g.
#         single:10809:disk:-b,4096,-t,30   multi:10809:disk:-b,4096,-C,2
#         (an empty EXPORT selects the server's default export)
# Options:
#   --kernel-dir DIR  unpacked Debian kernel package: DIR/boot/vmlinuz-*,
#                     DIR/lib/modules/<ver>/{modules.dep,kernel/...}
#                     (default: $MKMODULE_GUEST_KERNEL_DIR or /var/cache/mkmodule/guest-kernel)
#   --qemu PATH       qemu-system-x86_64 (default: $MKMODULE_GUEST_QEMU, else the
#                     copy under /var/cache/mkmodule/guest-qemu, else PATH)
#   --fstype TYPE     mount each device read-only as TYPE (default ext4; "none": no mount)
#   --file PATH       after mounting, report md5/size/text of PATH (repeatable)
#   --modules LIST    extra guest kernel modules to load, comma-separated
#   --timeout SECS    bound on the guest run (default 180)
#   --memory MIB      guest memory (default 384)
#   --keep            keep the work directory (initramfs, console log)
#   --check           only check the prerequisites and print what would be used
#
# For each SPEC, in order, the guest connects /dev/nbdN (N = 0, 1, ...) and
# prints lines starting with "=== [LABEL] ":
#   connect 10.0.2.2:PORT export=EXPORT args=...
#   nbd-client rc=RC                (and on failure: nbd-client:/dmesg: lines)
#   size=BYTES ro=0|1 lbs=N max_sectors_kb=N
#   md5=HEX seconds=S               (md5sum of the whole device)
#   mount rc=RC [ls=NAMES...]
#   file PATH md5=HEX size=BYTES text=FIRST-LINE    (or: file PATH missing)
#   write rc=RC MESSAGE             (one 4 KiB write at offset 0, O_DIRECT)
#   disconnect rc=RC
# plus "=== kernel VERSION" first and "=== done" last. Only "=== " lines go to
# stdout; diagnostics go to stderr.
# Exit status: 0 when the guest reached "=== done", 1 when it did not (crash,
# timeout: the console tail goes to stderr), 2 on usage errors, 3 when a
# prerequisite is missing.
#
# qemu runs under `timeout` with its own pid file; on any exit of this script
# both are stopped by their process ids.
set -euo pipefail

CACHE=/var/cache/mkmodule
# shellcheck source=lib/guest-qemu.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/guest-qemu.sh"
KDIR=${MKMODULE_GUEST_KERNEL_DIR:-$CACHE/guest-kernel}
QEMU=${MKMODULE_GUEST_QEMU:-}
FSTYPE=ext4
FILES=()
EXTRA_MODULES=
TIMEOUT=180
MEMORY=384
KEEP=0
CHECK=0
SPECS=()

die() {
    echo "guest-nbd-test: $*" >&2
    exit 2
}
missing() {
    echo "guest-nbd-test: $* (install the guest test prerequisites with scripts/install-guest-kernel.sh, as root)" >&2
    exit 3
}

while (($#)); do
    case $1 in
    --kernel-dir) KDIR=${2:?}; shift 2 ;;
    --qemu) QEMU=${2:?}; shift 2 ;;
    --fstype) FSTYPE=${2:?}; shift 2 ;;
    --file) FILES+=("${2:?}"); shift 2 ;;
    --modules) EXTRA_MODULES=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --memory) MEMORY=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --check) CHECK=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    --) shift; SPECS+=("$@"); break ;;
    -*) die "unknown option $1" ;;
    *) SPECS+=("$1"); shift ;;
    esac
done

# Everything that reaches the guest's shell is restricted to harmless characters.
[[ $FSTYPE =~ ^[a-z0-9_]+$ ]] || die "bad --fstype $FSTYPE"
[[ $EXTRA_MODULES =~ ^[A-Za-z0-9_,-]*$ ]] || die "bad --modules $EXTRA_MODULES"
[[ $TIMEOUT =~ ^[0-9]+$ && $MEMORY =~ ^[0-9]+$ ]] || die "bad --timeout or --memory"
for f in "${FILES[@]}"; do
    [[ $f =~ ^[A-Za-z0-9._/+-]+$ && $f != *..* ]] || die "bad --file $f"
done
for s in "${SPECS[@]}"; do
    [[ $s =~ ^[A-Za-z0-9._-]+:[0-9]+:[A-Za-z0-9._+-]*(:[A-Za-z0-9._=/,+-]*)?$ ]] ||
        die "bad test spec '$s' (want LABEL:PORT:EXPORT[:ARG,ARG...])"
done
((CHECK || ${#SPECS[@]})) || die "no test spec given (see --help)"

# --- prerequisites ---------------------------------------------------------
guest_qemu_locate || missing "qemu-system-x86_64 not found"

VMLINUZ=$(compgen -G "$KDIR/boot/vmlinuz-*" | sort | tail -1 || true)
[[ -n $VMLINUZ ]] || missing "no kernel image $KDIR/boot/vmlinuz-*"
KVER=${VMLINUZ##*/vmlinuz-}
MODROOT=$KDIR/lib/modules/$KVER
[[ -f $MODROOT/modules.dep ]] || missing "no $MODROOT/modules.dep"
BUSYBOX=$(command -v busybox || true)
[[ -n $BUSYBOX ]] || missing "busybox not found"
NBD_CLIENT=$(command -v nbd-client || { [[ -x /usr/sbin/nbd-client ]] && echo /usr/sbin/nbd-client; } || true)
[[ -n $NBD_CLIENT ]] || missing "nbd-client not found"
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

# --- initramfs -----------------------------------------------------------------
WORK=$(mktemp -d /tmp/mkmodule-guest.XXXXXX)
R=$WORK/root
TPID=
cleanup() {
    guest_qemu_stop "$TPID" "$WORK/qemu.pid"
    if ((KEEP)); then
        echo "guest-nbd-test: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,mnt,tmp,lib/modules}

# Copy a binary and the shared libraries it needs (if any).
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
        # Built into the kernel (or absent: the guest reports what fails).
        grep -q -E "/${name//_/[-_]}\.ko$" "$MODROOT/modules.builtin" 2>/dev/null ||
            echo "guest-nbd-test: module $name not in $MODROOT (assuming built in)" >&2
        return 0
    fi
    for dep in ${MODDEPS[$name]}; do
        dep=${dep##*/}
        add_module "${dep%%.ko*}"
    done
    ORDER+=("$name")
}
wanted=(e1000 nbd)
if [[ $FSTYPE == ext4 ]]; then wanted+=(crc32c_generic ext4); fi
if [[ $FSTYPE != none && $FSTYPE != ext4 && -n ${MODPATH[$FSTYPE]:-} ]]; then wanted+=("$FSTYPE"); fi
IFS=, read -r -a extra <<<"$EXTRA_MODULES"
for m in "${wanted[@]}" "${extra[@]}"; do
    [[ -n $m ]] && add_module "$m"
done
for m in "${ORDER[@]}"; do
    src=$MODROOT/${MODPATH[$m]}
    case $src in
    *.ko.xz) xz -dc "$src" >"$R/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -q -dc "$src" >"$R/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$R/lib/modules/$m.ko" ;;
    *) cp "$src" "$R/lib/modules/$m.ko" ;;
    esac
done

{
    echo "MODULES='${ORDER[*]}'"
    echo "FSTYPE='$FSTYPE'"
    echo "FILES='${FILES[*]}'"
    i=0
    for s in "${SPECS[@]}"; do
        IFS=: read -r label port name args <<<"$s"
        echo "LABEL_$i='$label' PORT_$i='$port' NAME_$i='$name' ARGS_$i='${args//,/ }'"
        i=$((i + 1))
    done
    echo "NSPECS=$i"
} >"$R/etc/nbdtest.conf"

cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
. /etc/nbdtest.conf
for m in $MODULES; do
    insmod /lib/modules/$m.ko 2>/tmp/insmod.err || echo "=== insmod $m failed: $(head -1 /tmp/insmod.err)"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "=== kernel $(uname -r)"
now() { cut -d' ' -f1 /proc/uptime; }

t() {
    label=$1 port=$2 name=$3 dev=/dev/nbd$4
    shift 4
    p="=== [$label]"
    echo "$p connect 10.0.2.2:$port export=$name args=$*"
    if [ -n "$name" ]; then set -- -N "$name" "$@"; fi
    nbd-client 10.0.2.2 "$port" "$dev" "$@" >/tmp/nbdc.log 2>&1
    rc=$?
    echo "$p nbd-client rc=$rc"
    if [ $rc -ne 0 ]; then
        grep . /tmp/nbdc.log | head -5 | sed "s/^/$p nbd-client: /"
        dmesg | tail -5 | sed "s/^/$p dmesg: /"
        return
    fi
    sys=/sys/block/${dev#/dev/}
    sectors=$(cat $sys/size)
    echo "$p size=$((sectors * 512)) ro=$(cat $sys/ro) lbs=$(cat $sys/queue/logical_block_size) max_sectors_kb=$(cat $sys/queue/max_sectors_kb)"
    t0=$(now)
    sum=$(md5sum "$dev" | cut -d' ' -f1)
    echo "$p md5=$sum seconds=$(awk "BEGIN{print $(now) - $t0}")"
    if [ "$FSTYPE" != none ]; then
        if mount -t "$FSTYPE" -o ro "$dev" /mnt 2>/tmp/mount.err; then
            echo "$p mount rc=0 ls=$(ls -A /mnt | tr '\n' ' ')"
            for f in $FILES; do
                if [ -f "/mnt/$f" ]; then
                    echo "$p file $f md5=$(md5sum "/mnt/$f" | cut -d' ' -f1) size=$(wc -c <"/mnt/$f") text=$(head -n 1 "/mnt/$f" | head -c 200 | tr -cd ' -~')"
                else
                    echo "$p file $f missing"
                fi
            done
            umount /mnt || echo "$p umount failed"
        else
            echo "$p mount rc=1 $(head -1 /tmp/mount.err) $(dmesg | grep -i "$FSTYPE" | tail -1)"
        fi
    fi
    dd if=/dev/zero of="$dev" bs=4096 count=1 oflag=direct conv=fsync >/tmp/dd.log 2>&1
    rc=$?
    echo "$p write rc=$rc $(grep -v records /tmp/dd.log | head -1)"
    nbd-client -d "$dev" >/dev/null 2>&1
    echo "$p disconnect rc=$?"
}

i=0
while [ $i -lt "$NSPECS" ]; do
    eval "label=\$LABEL_$i port=\$PORT_$i name=\$NAME_$i args=\$ARGS_$i"
    # shellcheck disable=SC2086 # the arguments are split on purpose
    t "$label" "$port" "$name" $i $args
    i=$((i + 1))
done
echo "=== done"
poweroff -f
EOF
chmod +x "$R/init"

(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"

# --- boot --------------------------------------------------------------------------
touch "$WORK/console.log"
timeout --kill-after=5 "$TIMEOUT" "$QEMU" "${QEMU_DATA[@]}" \
    -machine q35 -accel tcg -cpu max -smp 1 -m "$MEMORY" \
    -nodefaults -display none -no-reboot -no-user-config \
    -serial "file:$WORK/console.log" -pidfile "$WORK/qemu.pid" \
    -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 panic=-1 loglevel=4" \
    -netdev user,id=n0 -device e1000,netdev=n0,romfile= \
    </dev/null >"$WORK/qemu.out" 2>&1 &
TPID=$!
rc=0
wait "$TPID" || rc=$?
TPID=

grep -a '^=== ' "$WORK/console.log" | tr -d '\r' || true
if ! grep -a -q '^=== done' "$WORK/console.log"; then
    if ((rc == 124 || rc == 137)); then
        echo "guest-nbd-test: the guest did not finish within $TIMEOUT s" >&2
    else
        echo "guest-nbd-test: qemu exited with status $rc before the tests finished" >&2
    fi
    cat "$WORK/qemu.out" >&2
    echo "--- console tail:" >&2
    tail -n 30 "$WORK/console.log" | tr -d '\r' >&2
    exit 1
fi
