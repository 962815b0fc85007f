#!/usr/bin/env bash
# Boots the Debian guest that scripts/guest-distro-images.sh made (its own kernel, one of the
# two initramfs images the real generators built) under qemu (TCG) with its root read over NBD
# from a server on the host's 127.0.0.1 (10.0.2.2 in the guest, qemu's user network):
#   root=/dev/nbd0 mkmodule.server=10.0.2.2:PORT ip=dhcp rd.neednet=1 console=ttyS0
# systemd starts from the root as PID 1; the test unit (scripts/guest-distro-check.sh) writes
# its "=== " lines to the console and powers the guest off.
#
# Usage: guest-distro-boot.sh --images DIR --initrd initramfs-tools|dracut --port PORT
#            [--rw] [--units] [--append WORDS] [--timeout SECS] [--memory MIB] [--console FILE]
#   --rw       mount the root read-write (the server must serve it writable, --cow)
#   --units    also check mkmodule-serve.socket/.service under the guest's systemd (needs --rw)
#   --append   more kernel command line words
# Output (stdout): the guest's "=== " lines (see guest-distro-check.sh), then
#   === host-seconds-to-marker=S.SSS     wall clock from qemu's start to "=== marker"
#   === host-seconds-total=S.SSS
#   === qemu-exit=RC                     0: the guest powered itself off (shutdown did not hang)
# Exit status: 0 when the marker was reached, 1 when not (the console tail goes to stderr),
# 2 on usage errors, 3 when a prerequisite is missing (scripts/install-guest-kernel.sh).
# qemu runs under `timeout` with its own pid file and is stopped by its pid on any exit.
set -euo pipefail

CACHE=${MKMODULE_GUEST_CACHE:-/var/cache/mkmodule}
# shellcheck source=lib/guest-qemu.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/guest-qemu.sh"
QEMU=${MKMODULE_GUEST_QEMU:-}
IMAGES=
INITRD=
PORT=
RW=0
UNITS=0
EXTRA=
TIMEOUT=600
MEMORY=768
CONSOLE=

die() {
    echo "guest-distro-boot: $*" >&2
    exit 2
}
while (($#)); do
    case $1 in
    --images) IMAGES=${2:?}; shift 2 ;;
    --initrd) INITRD=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --rw) RW=1; shift ;;
    --units) UNITS=1; shift ;;
    --append) EXTRA=${2?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --memory) MEMORY=${2:?}; shift 2 ;;
    --console) CONSOLE=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -n $IMAGES && -n $PORT ]] || die "--images and --port are required"
case $INITRD in initramfs-tools | dracut) ;; *) die "--initrd initramfs-tools|dracut" ;; esac
[[ $PORT =~ ^[0-9]+$ ]] || die "bad --port $PORT"
VMLINUZ=$IMAGES/vmlinuz
INITRD_FILE=$IMAGES/initrd-$INITRD.img
[[ -r $VMLINUZ && -r $INITRD_FILE ]] || die "no $VMLINUZ or $INITRD_FILE (scripts/guest-distro-images.sh)"

guest_qemu_locate || {
    echo "guest-distro-boot: qemu-system-x86_64 not found (scripts/install-guest-kernel.sh)" >&2
    exit 3
}

WORK=$(mktemp -d /tmp/mkmodule-distro-boot.XXXXXX)
TPID=
cleanup() {
    guest_qemu_stop "$TPID" "$WORK/qemu.pid"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

APPEND="console=ttyS0 panic=-1 root=/dev/nbd0 rootfstype=ext4 mkmodule.server=10.0.2.2:$PORT"
APPEND+=" ip=dhcp rd.neednet=1 mkmodule.retries=5 systemd.show_status=auto"
if ((RW)); then APPEND+=" rw"; else APPEND+=" ro"; fi
((UNITS)) && APPEND+=" mkmodule.test.units"
[[ -z $EXTRA ]] || APPEND+=" $EXTRA"

stamp() {
    local start=$1 line now
    while IFS= read -r line; do
        now=${EPOCHREALTIME/./}
        printf '%d %s\n' $(((now - start) / 1000)) "${line%$'\r'}"
    done
}
START=${EPOCHREALTIME/./}
timeout --kill-after=5 "$TIMEOUT" "$QEMU" "${QEMU_DATA[@]}" \
    -machine q35 -accel tcg -cpu max -smp 1 -m "$MEMORY" \
    -nodefaults -display none -no-reboot -no-user-config \
    -serial stdio -pidfile "$WORK/qemu.pid" \
    -kernel "$VMLINUZ" -initrd "$INITRD_FILE" -append "$APPEND" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    </dev/null 2>"$WORK/qemu.err" | stamp "$START" >"$WORK/console.log" &
TPID=$!
rc=0
wait "$TPID" || rc=$?
TPID=
END=${EPOCHREALTIME/./}

[[ -z $CONSOLE ]] || cp "$WORK/console.log" "$CONSOLE"
seconds() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
grep -a '^[0-9]* === ' "$WORK/console.log" | cut -d' ' -f2- || true
marker=$(grep -a -m1 '^[0-9]* === marker ' "$WORK/console.log" | cut -d' ' -f1 || true)
if [[ -z $marker ]]; then
    echo "guest-distro-boot: the guest did not reach the marker (qemu status $rc; timeout ${TIMEOUT}s)" >&2
    cat "$WORK/qemu.err" >&2
    echo "--- console tail:" >&2
    tail -n 60 "$WORK/console.log" >&2
    exit 1
fi
echo "=== host-seconds-to-marker=$(seconds "$marker")"
echo "=== host-seconds-total=$(seconds $(((END - START) / 1000)))"
echo "=== qemu-exit=$rc"
