#!/usr/bin/env bash
# Stop the local SLURM cluster that start.sh started in STATE_DIR.
#
# Usage: launchers/local-slurm/stop.sh [STATE_DIR]     (default /tmp/sweep-local-slurm)
#
# Only the daemons recorded in STATE_DIR/pids/<name>.pid are stopped, by PID
# (never by process name): SIGTERM, then SIGKILL after a timeout. Jobs still
# in the cluster are cancelled first so that no slurmstepd/job is left behind.
# Idempotent: with no PID files (or dead PIDs) it just cleans up and exits 0.
# The STATE_DIR itself (logs, configs) is kept for post-mortems.
set -euo pipefail

STATE_DIR="${1:-/tmp/sweep-local-slurm}"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac
PIDS="$STATE_DIR/pids"
TERM_TIMEOUT="${LOCAL_SLURM_STOP_TIMEOUT:-15}"
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "stop.sh: $*"; }

if [ ! -d "$PIDS" ] || ! compgen -G "$PIDS/*.pid" >/dev/null; then
    log "nothing to stop in $STATE_DIR"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "stop.sh: ERROR: must run as root (the daemons in $PIDS run as root/munge)" >&2
    exit 1
fi

# is_exe PID NAME: PID runs the program NAME (e.g. /usr/sbin/slurmd, itself a
# link to slurmd-wlm); guards against killing a recycled PID.
is_exe() {
    local exe want
    exe="$(readlink "/proc/$1/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    [ -n "$exe" ] || return 0          # unreadable: trust the PID file
    want="$(command -v "$2" 2>/dev/null || echo "/usr/sbin/$2")"
    [ "$exe" = "$(readlink -f "$want")" ] || [ "$(basename "$exe")" = "$2" ]
}

# pid_of NAME: the live PID recorded in pids/NAME.pid, else empty.
pid_of() {
    local f="$PIDS/$1.pid" pid
    [ -f "$f" ] || return 0
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    if ! is_exe "$pid" "$1"; then
        log "pid $pid in $f is now $(readlink "/proc/$pid/exe"), not $1; leaving it alone" >&2
        return 0
    fi
    echo "$pid"
}

# session_pids SID: processes in session SID (each daemon was started by
# setsid, so its session id is its PID) other than the leader itself.
session_pids() {
    ps -e -o pid=,sid= 2>/dev/null | awk -v s="$1" '$2 == s && $1 != s { print $1 }'
}

# stop_pid NAME PID: SIGTERM, wait, SIGKILL.
stop_pid() {
    local name="$1" pid="$2" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$(( $(date +%s) + TERM_TIMEOUT ))
    while kill -0 "$pid" 2>/dev/null; do
        # A zombie (not yet reaped by its parent) counts as stopped.
        [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" = "Z" ] && break
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "$name (pid $pid) ignored SIGTERM for ${TERM_TIMEOUT}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

# 1. Cancel every job so no slurmstepd or job process survives slurmd.
if [ -n "$(pid_of slurmctld)" ] && [ -f "$STATE_DIR/slurm.conf" ]; then
    export SLURM_CONF="$STATE_DIR/slurm.conf"
    jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(tr "\n" " " <<<"$jobs")"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        deadline=$(( $(date +%s) + 15 ))
        while [ -n "$(timeout 5 squeue -h -o '%A' 2>/dev/null || true)" ] && [ "$(date +%s)" -lt "$deadline" ]; do
            sleep 0.5
        done
    fi
fi

# 2. Steps still alive (slurmctld already gone, or cancel timed out): find
#    them through their sockets in our SlurmdSpoolDir, so only this cluster's
#    steps are touched. Job tasks first (scontrol listpids), then slurmstepd.
if compgen -G "$STATE_DIR/spool/d/*_*.*" >/dev/null; then
    export SLURM_CONF="$STATE_DIR/slurm.conf"
    tasks="$(timeout 5 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ { print $1 }' || true)"
    stepds=""
    if command -v ss >/dev/null; then
        for sock in "$STATE_DIR"/spool/d/*_*.*; do
            [ -S "$sock" ] || continue
            stepds="$stepds $(ss -xlpn 2>/dev/null | awk -v s="$sock" '$5 == s' |
                grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' ')"
        done
    fi
    for pid in $tasks; do log "killing leftover job task pid $pid"; kill -KILL "$pid" 2>/dev/null || true; done
    for pid in $stepds; do
        is_exe "$pid" slurmstepd || continue
        log "stopping leftover slurmstepd pid $pid"
        stop_pid slurmstepd "$pid"
    done
fi

# 3. Daemons, dependants first.
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pid="$(pid_of "$name")"
    if [ -n "$pid" ]; then
        log "stopping $name (pid $pid)"
        stop_pid "$name" "$pid"
        # Leftovers in its session (e.g. a slurmstepd of a killed job).
        for child in $(session_pids "$pid"); do
            log "stopping leftover pid $child of $name's session"
            stop_pid "$name-child" "$child"
        done
    fi
    rm -f "$PIDS/$name.pid"
done
rm -f "$STATE_DIR/mysql/mariadbd.pid"
rm -f "$PIDS"/*.pid
log "stopped (state and logs kept in $STATE_DIR)"
