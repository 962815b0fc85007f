#!/usr/bin/env bash
# Installs what the guest-kernel NBD test (scripts/guest-nbd-test.sh, run by
# crates/nbd/tests/integration/guest_kernel.rs) needs, on Debian, as root:
#
#   * nbd-client, busybox-static, cpio, gzip, xz-utils, e2fsprogs, kmod (apt-get);
#   * the current Debian kernel package (the one linux-image-amd64 depends on),
#     unpacked into $CACHE/guest-kernel (boot/vmlinuz-*, lib/modules/<ver>/...),
#     with any compressed modules (.ko.xz / .ko.zst) decompressed;
#   * qemu-system-x86_64, unpacked from Debian's qemu-system-x86 package (plus
#     qemu-system-common, qemu-system-data, seabios, ipxe-qemu) into
#     $CACHE/guest-qemu, with only its shared libraries installed by apt-get.
#     qemu-system-x86 is NOT installed as a package on purpose: Debian's
#     qemu-system-common conflicts with the newer qemu-utils on this machine
#     and apt would remove qemu-img/qemu-nbd/qemu-io, which other tests use.
#
# Idempotent: when everything is present it returns at once without touching
# apt. CACHE defaults to /var/cache/mkmodule (override: MKMODULE_GUEST_CACHE).
# Prints the kernel directory and qemu binary on its last lines.
set -euo pipefail

CACHE=${MKMODULE_GUEST_CACHE:-/var/cache/mkmodule}
KDIR=$CACHE/guest-kernel
QDIR=$CACHE/guest-qemu
QEMU=$QDIR/usr/bin/qemu-system-x86_64
packages=(nbd-client busybox-static cpio gzip xz-utils e2fsprogs kmod)
qemu_debs=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive

log() { echo "install-guest-kernel: $*" >&2; }

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing_packages() {
    local p
    for p in "$@"; do installed "$p" || echo "$p"; done
}

qemu_ok() {
    [[ -x $QEMU && -f $QDIR/.stamp && -f $QDIR/.libdeps ]] || return 1
    # shellcheck disable=SC2046
    [[ -z $(missing_packages $(cat "$QDIR/.libdeps")) ]] || return 1
    ! ldd "$QEMU" 2>/dev/null | grep -q 'not found'
}

kernel_ok() {
    [[ -f $KDIR/.stamp ]] && compgen -G "$KDIR/boot/vmlinuz-*" >/dev/null &&
        compgen -G "$KDIR/lib/modules/*/modules.dep" >/dev/null
}

report() {
    echo "kernel: $KDIR ($(cat "$KDIR/.stamp"))"
    echo "qemu: $QEMU ($(cat "$QDIR/.stamp"))"
}

# Fast path: nothing to do.
if [[ -z $(missing_packages "${packages[@]}") ]] && kernel_ok && qemu_ok; then
    report
    exit 0
fi

# One installer at a time; whoever waited finds the work done.
mkdir -p "$CACHE"
chmod 755 "$CACHE"
exec 9>"$CACHE/.install.lock"
flock -w 900 9 || {
    log "another installer holds $CACHE/.install.lock"
    exit 1
}
if [[ -z $(missing_packages "${packages[@]}") ]] && kernel_ok && qemu_ok; then
    report
    exit 0
fi

apt-get "${APT_OPTS[@]}" update -qq

mapfile -t missing < <(missing_packages "${packages[@]}")
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Download .deb files into a fresh directory the _apt user can write to
# (otherwise apt downloads unsandboxed and warns).
download() {
    local dir=$1
    shift
    mkdir -p "$dir"
    chmod 755 "$(dirname "$dir")" "$dir"
    if id _apt >/dev/null 2>&1; then chown _apt "$dir"; fi
    (cd "$dir" && apt-get "${APT_OPTS[@]}" download -qq "$@" >/dev/null)
}

if ! kernel_ok; then
    kpkg=$(apt-cache depends linux-image-amd64 |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1)
    [[ -n $kpkg ]] || {
        log "cannot find the kernel package linux-image-amd64 depends on"
        exit 1
    }
    kver=$(apt-cache policy "$kpkg" | sed -n 's/^ *Candidate: //p')
    log "downloading and unpacking $kpkg $kver into $KDIR"
    tmp=$(mktemp -d "$CACHE/.kernel.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    download "$tmp/deb" "$kpkg"
    dpkg-deb -x "$tmp"/deb/*.deb "$tmp/root"
    # Only the kernel image and its modules are needed.
    mkdir -p "$tmp/keep/lib"
    mv "$tmp/root/boot" "$tmp/keep/boot"
    if [[ -d $tmp/root/usr/lib/modules ]]; then
        mv "$tmp/root/usr/lib/modules" "$tmp/keep/lib/modules"
    else
        mv "$tmp/root/lib/modules" "$tmp/keep/lib/modules"
    fi
    find "$tmp/keep/lib/modules" -name '*.ko.xz' -exec xz -d {} +
    if find "$tmp/keep/lib/modules" -name '*.ko.zst' | grep -q .; then
        installed zstd || apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends zstd >/dev/null
        find "$tmp/keep/lib/modules" -name '*.ko.zst' -exec zstd -q -d --rm {} +
    fi
    # modules.dep is made at install time, not shipped: make it (for the plain .ko files).
    for mods in "$tmp"/keep/lib/modules/*/; do
        depmod -b "$tmp/keep" "$(basename "$mods")"
    done
    echo "$kpkg $kver" >"$tmp/keep/.stamp"
    rm -rf "$KDIR"
    mv "$tmp/keep" "$KDIR"
    rm -rf "$tmp"
    trap - EXIT
fi

if ! qemu_ok; then
    # Shared libraries qemu-system-x86 and qemu-system-common depend on (not qemu's own packages).
    mapfile -t libdeps < <(apt-cache depends --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "${qemu_debs[@]:0:2}" |
        sed -n 's/^ *|\{0,1\}Depends: \([a-z0-9][^ <>]*\)$/\1/p' |
        grep -v -x -E 'qemu-.*|seabios|ipxe-qemu' | sort -u)
    mapfile -t missing < <(missing_packages "${libdeps[@]}")
    if ((${#missing[@]})); then
        log "apt-get install (qemu's libraries) ${missing[*]}"
        apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    qver=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
    log "downloading and unpacking ${qemu_debs[*]} ($qver) into $QDIR"
    tmp=$(mktemp -d "$CACHE/.qemu.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    download "$tmp/deb" "${qemu_debs[@]}"
    for deb in "$tmp"/deb/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    # Point absolute links (firmware in /usr/share/seabios, /usr/lib/ipxe, ...) into $QDIR.
    while IFS= read -r link; do
        target=$(readlink "$link")
        if [[ $target == /* ]]; then ln -sfn "$QDIR$target" "$link"; fi
    done < <(find "$tmp/root" -type l)
    printf '%s\n' "${libdeps[@]}" >"$tmp/root/.libdeps"
    echo "qemu-system-x86 $qver" >"$tmp/root/.stamp"
    if ldd "$tmp/root/usr/bin/qemu-system-x86_64" | grep 'not found'; then
        log "qemu-system-x86_64 is missing shared libraries (above)"
        exit 1
    fi
    rm -rf "$QDIR"
    mv "$tmp/root" "$QDIR"
    rm -rf "$tmp"
    trap - EXIT
fi

"$QEMU" --version | head -1 >&2
report
