# Shared by the scripts that boot a test guest under qemu (TCG): sourced, not run.

# Sets QEMU (unless already set) to the qemu-system-x86_64 that scripts/install-guest-kernel.sh
# unpacked under $CACHE/guest-qemu, else the one on PATH, and QEMU_DATA to the options that
# point an unpacked qemu at its own firmware; exports QEMU_MODULE_DIR for its modules.
# Returns 1 when there is no qemu-system-x86_64.
guest_qemu_locate() {
    QEMU_DATA=()
    if [[ -z ${QEMU:-} ]]; then
        if [[ -x $CACHE/guest-qemu/usr/bin/qemu-system-x86_64 ]]; then
            QEMU=$CACHE/guest-qemu/usr/bin/qemu-system-x86_64
        else
            QEMU=$(command -v qemu-system-x86_64 || true)
        fi
    fi
    [[ -n $QEMU && -x $QEMU ]] || return 1
    local root dir
    root=$(dirname "$(dirname "$(dirname "$QEMU")")")
    for dir in "$root/usr/share/qemu" "$root/usr/share/seabios"; do
        if [[ -d $dir ]]; then QEMU_DATA+=(-L "$dir"); fi
    done
    if [[ -d $root/usr/lib/x86_64-linux-gnu/qemu ]]; then
        export QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
    fi
}

# Stops a guest by its own ids: the pipeline job PIPELINE_PID (qemu and its console reader,
# may be empty) and the qemu whose pid file is PID_FILE. qemu gets SIGTERM and two seconds to
# exit, then SIGKILL.
guest_qemu_stop() {
    local pipeline_pid=$1 pid_file=$2 qemu_pid=
    [[ -f $pid_file ]] && qemu_pid=$(cat "$pid_file" 2>/dev/null || true)
    if [[ -n $pipeline_pid ]] && kill -0 "$pipeline_pid" 2>/dev/null; then
        kill -TERM "$pipeline_pid" 2>/dev/null || true
    fi
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$qemu_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    if [[ -n $pipeline_pid ]]; then wait "$pipeline_pid" 2>/dev/null || true; fi
}
