#!/bin/sh
# Runs INSIDE the guest of the distribution boot tests (scripts/guest-distro-images.sh installs
# it as /usr/local/sbin/mkmodule-boot-test, started by mkmodule-boot-test.service once
# multi-user.target is reached). Writes lines starting with "=== " to its output (the serial
# console), then powers the guest off:
#   === pid1 NAME                        /proc/1/comm (systemd)
#   === root SOURCE OPTIONS              how / is mounted
#   === resident PID ARGV                every process whose argv[0] starts with '@'
#   === system STATE                     systemctl is-system-running (starting: this unit runs)
#   === failed UNIT                      each failed unit
# With mkmodule.test.units on the kernel command line (needs a writable root), the server's
# units under this systemd, each as "=== units STEP RESULT":
#   enable (systemctl enable --now mkmodule-serve.socket), list (exports over the socket,
#   which starts the service), active (Type=notify: READY=1 reached), read (the export read
#   through the kernel's NBD client equals the raw image), reload (systemctl reload: a new
#   export appears), stop (systemctl stop: the service exits cleanly), and
#   "=== security LINE" (systemd-analyze security's verdict).
#   === marker uptime=S
set -u
say() { echo "=== $*"; }

# Start on a line of our own, whatever the console printed last.
echo

say "pid1 $(cat /proc/1/comm)"
set -- $(grep ' / ' /proc/mounts | tail -n 1)
say "root $1 $4"
for f in $(grep -l -a '^@' /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f%/cmdline}
    say "resident ${p#/proc/} $(tr '\0' ' ' <"$f")"
done
# This unit is part of the boot transaction, so the state is "starting" until it ends.
say "system $(systemctl is-system-running 2>/dev/null)"
systemctl list-units --failed --plain --no-legend 2>/dev/null | while read -r unit _; do
    say "failed $unit"
done

# units STEP OK|FAIL DETAIL
check() {
    step=$1
    shift
    if "$@" >/tmp/units.out 2>&1; then
        say "units $step ok"
    else
        say "units $step FAIL: $(tr '\n' ' ' </tmp/units.out | cut -c1-300)"
    fi
}
exports_listed() {
    # nbd-client -l prints one export a line: "NAME" or "NAME: DESCRIPTION"
    nbd-client -l 127.0.0.1 10809 >/tmp/list.out 2>&1 || { cat /tmp/list.out; return 1; }
    for name in "$@"; do
        grep -q -e "^$name\$" -e "^$name: " /tmp/list.out || { echo "no $name in: $(cat /tmp/list.out)"; return 1; }
    done
}
read_export() {
    nbd-client 127.0.0.1 10809 /dev/nbd5 -N small -b 4096 || return 1
    n=0
    while [ "$(cat /sys/block/nbd5/size)" = 0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    rc=0
    cmp /dev/nbd5 /srv/mkmodule/small.raw || rc=1
    nbd-client -d /dev/nbd5 >/dev/null 2>&1
    return $rc
}
stopped() {
    systemctl stop mkmodule-serve.socket mkmodule-serve.service || return 1
    state=$(systemctl show -P ActiveState mkmodule-serve.service)
    result=$(systemctl show -P Result mkmodule-serve.service)
    echo "state=$state result=$result"
    [ "$state" = inactive ] && [ "$result" = success ]
}

if grep -qw mkmodule.test.units /proc/cmdline; then
    mkdir -p /srv/mkmodule
    head -c 3145728 /dev/urandom >/srv/mkmodule/small.raw
    mkmodule create /srv/mkmodule/small.raw -o /srv/mkmodule/small.cloop >/dev/null
    chmod 644 /srv/mkmodule/small.cloop
    echo small=/srv/mkmodule/small.cloop >/etc/mkmodule/exports
    check enable systemctl enable --now mkmodule-serve.socket
    check list exports_listed small
    check active systemctl is-active mkmodule-serve.service
    check read read_export
    echo second=/srv/mkmodule/small.cloop >>/etc/mkmodule/exports
    check reload systemctl reload mkmodule-serve.service
    check reloaded exports_listed small second
    check stop stopped
    journalctl -b -u mkmodule-serve.service --no-pager -o cat 2>/dev/null | tail -n 12 |
        while read -r line; do say "journal $line"; done
    say "security $(systemd-analyze security mkmodule-serve.service 2>&1 | tail -n 1)"
fi

say "marker uptime=$(cut -d' ' -f1 /proc/uptime)"
systemctl poweroff --no-block
