#!/usr/bin/env bash
# Start a fresh single-node SLURM 22.05 cluster on localhost, with accounting.
#
# Usage: launchers/local-slurm/start.sh [STATE_DIR]     (default /tmp/sweep-local-slurm)
#
# Everything lives under STATE_DIR (wiped and recreated on every start):
#   slurm.conf slurmdbd.conf plugstack.conf   configuration (SLURM_CONF points here)
#   spool/ctld spool/d                         slurmctld state / slurmd spool
#   mysql/data mysql/mysqld.sock               MariaDB for slurmdbd
#   log/*.log                                  every daemon's log
#   pids/<name>.pid                            PIDs of the daemons started here
#   env.sh                                     `source` it: exports SLURM_CONF
# Nothing is written to /etc except /etc/munge/munge.key when it is missing;
# /run/munge is created for munged's socket. Nothing is exported globally:
# callers set SLURM_CONF themselves (source STATE_DIR/env.sh). All Slurm
# commands used here (sbatch squeue sacct scancel scontrol sinfo sacctmgr srun)
# and the daemons honour SLURM_CONF; slurmdbd reads slurmdbd.conf from the
# directory of SLURM_CONF. No /etc/slurm/slurm.conf symlink is needed.
#
# Stop with launchers/local-slurm/stop.sh [STATE_DIR].
#
# Tunables (environment): LOCAL_SLURM_CLUSTER (default "sweeplocal"),
# LOCAL_SLURM_ACCOUNT ("sweep"), LOCAL_SLURM_MEM_MARGIN_MB (memory kept back
# from the node's RealMemory, default max(512, 10% of RAM)),
# LOCAL_SLURM_TIMEOUT (seconds to wait for each step, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${1:-/tmp/sweep-local-slurm}"
CLUSTER="${LOCAL_SLURM_CLUSTER:-sweeplocal}"
ACCOUNT="${LOCAL_SLURM_ACCOUNT:-sweep}"
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"
MARKER=".sweep-local-slurm"
CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "start.sh [$(elapsed) s]: $*"; }
die() { echo "start.sh: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
[ "$(id -u)" -eq 0 ] || die "must run as root (it starts munged, mariadbd, slurmdbd, slurmctld and slurmd); try: sudo $0 $*"
for bin in slurmctld slurmd slurmdbd sbatch sinfo sacct sacctmgr scontrol munged mungekey mariadbd mariadb-install-db mariadb setpriv; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] ||
        die "'$bin' not found: packages missing, run launchers/local-slurm/install.sh (as root) first"
done
export PATH="$PATH:/usr/sbin:/sbin"

case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac
case "$STATE_DIR" in /|/etc*|/usr*|/var|/root|/home|/tmp) die "refusing STATE_DIR=$STATE_DIR" ;; esac

# A previous cluster in this STATE_DIR: stop it first (start = restart fresh).
if [ -d "$STATE_DIR/pids" ] && compgen -G "$STATE_DIR/pids/*.pid" >/dev/null; then
    log "stopping the cluster still recorded in $STATE_DIR/pids"
    "$HERE/stop.sh" "$STATE_DIR"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $CTLD_PORT $SLURMD_PORT $DBD_PORT; do
    if port_busy "$p"; then
        die "port $p on 127.0.0.1 is already in use (another slurmctld/slurmd/slurmdbd running?); stop it first (stop.sh STATE_DIR of that cluster)"
    fi
done

# Fresh state: wipe only a directory that we created (marker) or an empty one.
if [ -e "$STATE_DIR" ]; then
    if [ -e "$STATE_DIR/$MARKER" ] || [ -z "$(ls -A "$STATE_DIR")" ]; then
        rm -rf "$STATE_DIR"
    else
        die "$STATE_DIR exists, is not empty and was not made by start.sh; refusing to wipe it"
    fi
fi
mkdir -p "$STATE_DIR"/{pids,log,spool/ctld,spool/d,mysql/data,tmp}
touch "$STATE_DIR/$MARKER"
chmod 755 "$STATE_DIR"
PIDS="$STATE_DIR/pids"
LOGS="$STATE_DIR/log"

# If anything below fails, stop what was already started, keep the logs.
ok=0
on_exit() {
    if [ "$ok" -ne 1 ]; then
        echo "start.sh: FAILED after $(elapsed) s; logs in $LOGS; stopping what was started" >&2
        "$HERE/stop.sh" "$STATE_DIR" >&2 || true
    fi
}
trap on_exit EXIT

# wait_for DESCRIPTION LOGFILE COMMAND...: poll COMMAND until it succeeds.
wait_for() {
    local what="$1" logf="$2"; shift 2
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "start.sh: timed out after ${TIMEOUT}s waiting for: $what" >&2
            [ -n "$logf" ] && [ -f "$logf" ] && { echo "--- tail of $logf:" >&2; tail -n 30 "$logf" >&2; }
            return 1
        fi
        sleep 0.2
    done
}

# spawn NAME LOGFILE COMMAND...: start a foreground daemon in its own session,
# stdio to its log (so a caller capturing our output does not hang), PID file.
spawn() {
    local name="$1" logf="$2"; shift 2
    setsid "$@" </dev/null >>"$logf" 2>&1 &
    echo $! >"$PIDS/$name.pid"
}
alive() { kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# ---------------------------------------------------------------- munge
# munged uses its default socket /run/munge/munge.socket.2 (Slurm's auth_munge
# looks there) and key /etc/munge/munge.key.
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # Not ours: leave it alone (stop.sh will not touch it either).
    log "munged already running (not started by this script); reusing it"
else
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    spawn munged "$LOGS/munged.log" \
        setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --force
    # (munged runs as user munge and keeps its own log in /var/log/munge.)
    wait_for "munged (munge -n | unmunge)" "$LOGS/munged.log" \
        bash -c 'munge -n | unmunge'
    log "munged up (pid $(cat "$PIDS/munged.pid"))"
fi

# ---------------------------------------------------------------- mariadb
# Own datadir and socket under STATE_DIR, no TCP (skip-networking), run as root
# so that it can write under any STATE_DIR. slurmdbd connects via the socket
# (MYSQL_UNIX_PORT, honoured by libmariadb) as MariaDB root, authenticated by
# unix_socket (slurmdbd runs as OS root), so there is no password anywhere.
MYSOCK="$STATE_DIR/mysql/mysqld.sock"
MYARGS=(--no-defaults --datadir="$STATE_DIR/mysql/data" --user=root
        --innodb-buffer-pool-size=128M --innodb-log-file-size=48M
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0
        --innodb-lock-wait-timeout=900 --max-allowed-packet=16M)
[ "${#MYSOCK}" -lt 100 ] || die "STATE_DIR too long for a unix socket path ($MYSOCK)"
mariadb-install-db "${MYARGS[@]}" --skip-test-db --auth-root-authentication-method=socket \
    >"$LOGS/mariadb-install.log" 2>&1 || {
    tail -n 30 "$LOGS/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
log "mariadb datadir initialised"
spawn mariadbd "$LOGS/mariadbd.stdout.log" \
    mariadbd "${MYARGS[@]}" --socket="$MYSOCK" --skip-networking \
    --pid-file="$STATE_DIR/mysql/mariadbd.pid" --log-error="$LOGS/mariadbd.log" \
    --tmpdir="$STATE_DIR/tmp"
wait_for "mariadbd socket $MYSOCK" "$LOGS/mariadbd.log" \
    mariadb --no-defaults --socket="$MYSOCK" -uroot -e 'SELECT 1'
log "mariadbd up (pid $(cat "$PIDS/mariadbd.pid"))"

# ---------------------------------------------------------------- configs
HOST="$(hostname)"
HOST_S="$(hostname -s)"
NCPU="$(nproc)"
# Topology as slurmd detects it, so the node is not drained for a mismatch.
hw="$(slurmd -C 2>/dev/null | head -n1 || true)"
hwval() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
BOARDS="$(hwval Boards)"; SOCKETS="$(hwval SocketsPerBoard)"
CORES="$(hwval CoresPerSocket)"; THREADS="$(hwval ThreadsPerCore)"
HWCPUS="$(hwval CPUs)"; HWMEM="$(hwval RealMemory)"
TOPO="CPUs=$NCPU"
if [ -n "$HWCPUS" ] && [ "$HWCPUS" = "$NCPU" ] && [ -n "$SOCKETS" ] && [ -n "$CORES" ] && [ -n "$THREADS" ]; then
    TOPO="CPUs=$NCPU Boards=${BOARDS:-1} SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS"
fi
MEM_TOTAL="$(free -m | awk '/^Mem:/ { print $2 }')"
[ -n "$HWMEM" ] && [ "$HWMEM" -lt "$MEM_TOTAL" ] && MEM_TOTAL="$HWMEM"
MARGIN="${LOCAL_SLURM_MEM_MARGIN_MB:-$(( MEM_TOTAL / 10 > 512 ? MEM_TOTAL / 10 : 512 ))}"
REALMEM=$(( MEM_TOTAL - MARGIN ))
[ "$REALMEM" -ge 512 ] || REALMEM=$(( MEM_TOTAL / 2 ))

cat >"$STATE_DIR/slurm.conf" <<EOF
# Generated by launchers/local-slurm/start.sh -- single node, localhost.
ClusterName=$CLUSTER
SlurmctldHost=$HOST_S(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs cannot restart before the job credential expires (default 120 s).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE_DIR/plugstack.conf
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Memory is a consumable resource: --mem above RealMemory is rejected at submit.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
PreemptType=preempt/none
PreemptMode=OFF
JobRequeue=1
ReturnToService=2
MinJobAge=10
KillWait=5
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
# Accounting: without slurmdbd, sacct fails and submitit's job.result() hangs
# forever on a cancelled job.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# slurmd is started as 'slurmd -N localhost'; the machine is really called $HOST.
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=$HOST $TOPO RealMemory=$REALMEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
: >"$STATE_DIR/plugstack.conf"

cat >"$STATE_DIR/slurmdbd.conf" <<EOF
# Generated by launchers/local-slurm/start.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST_S
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$PIDS/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE_DIR/slurmdbd.conf"   # slurmdbd insists on 0600, owned by SlurmUser

cat >"$STATE_DIR/env.sh" <<EOF
# source this file to talk to the local SLURM cluster in $STATE_DIR
export SLURM_CONF=$STATE_DIR/slurm.conf
EOF
export SLURM_CONF="$STATE_DIR/slurm.conf"

# ---------------------------------------------------------------- slurmdbd
spawn slurmdbd "$LOGS/slurmdbd.stdout.log" env MYSQL_UNIX_PORT="$MYSOCK" slurmdbd -D
wait_for "slurmdbd on port $DBD_PORT" "$LOGS/slurmdbd.log" \
    sacctmgr -n -P list cluster
log "slurmdbd up (pid $(cat "$PIDS/slurmdbd.pid"))"

# Register the cluster before slurmctld starts, plus an account for root.
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="sweep local" organization=sweep >/dev/null
sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
log "accounting: cluster $CLUSTER, account $ACCOUNT"

# ---------------------------------------------------------------- slurmctld, slurmd
spawn slurmctld "$LOGS/slurmctld.stdout.log" slurmctld -D -i
wait_for "slurmctld on port $CTLD_PORT" "$LOGS/slurmctld.log" scontrol ping
log "slurmctld up (pid $(cat "$PIDS/slurmctld.pid"))"
spawn slurmd "$LOGS/slurmd.stdout.log" slurmd -D -N localhost
node_idle() { sinfo -h -N -n localhost -o '%T' | grep -qx 'idle'; }
wait_for "node localhost idle in sinfo" "$LOGS/slurmd.log" node_idle
log "slurmd up (pid $(cat "$PIDS/slurmd.pid")), node idle"

# ---------------------------------------------------------------- smoke test
jid="$(sbatch --parsable -J local-slurm-smoke -o /dev/null -e /dev/null --wrap true)"
jid="${jid%%;*}"
sacct_done() { sacct -n -X -P -j "$jid" -o State | grep -qx 'COMPLETED'; }
wait_for "smoke job $jid COMPLETED in sacct" "$LOGS/slurmctld.log" sacct_done
log "smoke job $jid completed (sbatch + sacct work)"

for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if [ -f "$PIDS/$d.pid" ] && ! alive "$d"; then die "$d died; see $LOGS"; fi
done
ok=1
log "cluster ready in $(elapsed) s; use: source $STATE_DIR/env.sh   (SLURM_CONF=$SLURM_CONF)"
