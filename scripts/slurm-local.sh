#!/usr/bin/env bash
# slurm-local.sh: a real single-node SLURM cluster on this machine, for tests and CI.
#
#   bash scripts/slurm-local.sh install   # apt-get the Debian packages (root; a no-op when present)
#   bash scripts/slurm-local.sh start     # start it (a no-op when it is already running)
#   bash scripts/slurm-local.sh status    # exit 0 when the cluster answers
#   bash scripts/slurm-local.sh stop      # cancel its jobs, stop the daemons this script started
#   eval "$(bash scripts/slurm-local.sh start)"   # start and export SLURM_CONF in this shell
#
# Everything lives in one folder, $XALIGN_SLURM_DIR (default /tmp/xalign-slurm): slurm.conf,
# slurmdbd.conf, a munge key and socket, the MariaDB data, state, spool, logs (log/) and the PIDs
# of the daemons this script started (pids/). The daemons run as root: munged, mariadbd (only
# as slurmdbd's storage), slurmdbd, slurmctld, slurmd, on 127.0.0.1 ports $XALIGN_SLURM_PORT
# (default 6817: slurmctld), +1 slurmd, +2 slurmdbd, +3 mariadbd. One node, named
# $(hostname -s), with $(nproc) CPUs and its memory less 1 GiB; one partition, `debug`.
# /etc/slurm is not touched: the client commands (sinfo, squeue, sbatch, srun, scancel, sacct)
# find the cluster through SLURM_CONF=$XALIGN_SLURM_DIR/slurm.conf, which `start` prints on
# stdout as an export line (its other messages go to stderr) and writes to $XALIGN_SLURM_DIR/env.
# The tests' `slurm_cluster` fixture reads SLURM_CONF, else the default folder's slurm.conf.
#
# Accounting: slurmdbd on MariaDB, so that `sacct` (which submitit polls for job states) reports
# finished, cancelled and timed-out jobs. XALIGN_SLURM_ACCOUNTING=0 starts without it (sacct then
# fails, and submitit never sees a cancelled job as done).
# `stop` kills only the PIDs recorded in pids/, never a process found by name.
set -euo pipefail

DIR=${XALIGN_SLURM_DIR:-/tmp/xalign-slurm}
CONF=$DIR/slurm.conf
PORT=${XALIGN_SLURM_PORT:-6817}
ACCOUNTING=${XALIGN_SLURM_ACCOUNTING:-1}
START_TIMEOUT=${XALIGN_SLURM_START_TIMEOUT:-90}
CLUSTER=xalign
PARTITION=debug
HOST=$(hostname -s)
export SLURM_CONF=$CONF
# daemons in start order; stop goes the other way
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

say() { echo "slurm-local: $*" >&2; }

# exe_of NAME: the daemon's executable, symlinks resolved (Debian: slurmctld -> slurmctld-wlm)
exe_of() {
    case $1 in
        munged | slurmctld | slurmd | slurmdbd | mariadbd) readlink -f "/usr/sbin/$1" ;;
        *) return 1 ;;
    esac
}

# start_time PID: the process's start time (clock ticks since boot, /proc/PID/stat field 22).
start_time() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    read -r -a fields <<<"$stat"
    echo "${fields[19]}"
}

# alive PID: the process exists and is not a zombie (daemons are reparented to PID 1, which may
# reap them late)
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# pid_of NAME: the recorded PID when that process is still the daemon we started (same
# executable, same start time as recorded), else nothing and status 1.
pid_of() {
    local f=$DIR/pids/$1.pid pid started exe
    [[ -s $f ]] || return 1
    read -r pid started <"$f" 2>/dev/null || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [[ $exe == "$(exe_of "$1")" ]] || return 1
    [[ $(start_time "$pid" 2>/dev/null) == "$started" ]] || return 1
    echo "$pid"
}

enabled() { [[ $1 != mariadbd && $1 != slurmdbd ]] || [[ $ACCOUNTING == 1 ]]; }

cluster_answers() { timeout 5 sinfo -h -o %P >/dev/null 2>&1; }

node_state() { timeout 5 sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1; }

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do
        if enabled "$d"; then pid_of "$d" >/dev/null || return 1; fi
    done
}

print_logs() {
    local f
    for f in "$DIR"/log/*; do
        [[ -s $f ]] || continue
        echo "----- tail of $f" >&2
        tail -n 25 "$f" >&2
    done
}

STARTING=0
fail() {
    say "FAILED: $*"
    print_logs
    if ((STARTING)); then
        STARTING=0
        say "stopping what this start launched"
        cmd_stop || true
    fi
    say "state folder: $DIR"
    exit 1
}

# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local secs=$1 what=$2 end
    shift 2
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || fail "$what not ready after ${secs}s"
        sleep 0.2
    done
}

# launch NAME COMMAND...: run a daemon in the foreground of its own session, record its PID.
launch() {
    local name=$1 pid
    shift
    setsid "$@" >"$DIR/log/$name.out" 2>&1 </dev/null &
    pid=$!
    echo "$pid $(start_time "$pid")" >"$DIR/pids/$name.pid"
    sleep 0.1
    pid_of "$name" >/dev/null || fail "$name exited at once (or is not $(exe_of "$name"))"
}

need_packages() {
    local d missing=()
    for d in munged slurmctld slurmd; do [[ -x $(exe_of $d) ]] || missing+=("$d"); done
    command -v sinfo >/dev/null || missing+=(sinfo)
    if [[ $ACCOUNTING == 1 ]]; then
        for d in slurmdbd mariadbd; do [[ -x $(exe_of $d) ]] || missing+=("$d"); done
    fi
    ((${#missing[@]} == 0)) || {
        say "missing: ${missing[*]}; install with: bash $0 install (apt-get install ${PACKAGES[*]})"
        exit 1
    }
}

cmd_install() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        say "packages present: ${PACKAGES[*]}"
        return 0
    fi
    say "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

write_configs() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024) - 1024}' /proc/meminfo)
    mkdir -p "$DIR"/{pids,run,log,state,spool,munge,mysql}
    chmod 755 "$DIR" "$DIR/munge"
    {
        echo "# written by scripts/slurm-local.sh start; rewritten at each start"
        echo "ClusterName=$CLUSTER"
        echo "SlurmctldHost=$HOST(127.0.0.1)"
        echo "SlurmctldPort=$PORT"
        echo "SlurmdPort=$((PORT + 1))"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=socket=$DIR/munge/munge.socket"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool"
        echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/run/slurmd.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd.log"
        echo "SlurmctldDebug=info"
        echo "SlurmdDebug=info"
        echo "PlugStackConfig=$DIR/plugstack.conf"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core_Memory"
        echo "DefMemPerCPU=1024"
        echo "MpiDefault=none"
        echo "ReturnToService=2"
        # short timeouts: a fast start, and a cancelled job's processes gone within seconds
        echo "SlurmctldTimeout=10"
        echo "SlurmdTimeout=30"
        echo "MessageTimeout=10"
        echo "InactiveLimit=60"  # an srun/salloc killed with SIGKILL frees its allocation
        echo "KillWait=5"
        echo "MinJobAge=300"
        echo "SchedulerType=sched/backfill"
        if [[ $ACCOUNTING == 1 ]]; then
            echo "AccountingStorageType=accounting_storage/slurmdbd"
            echo "AccountingStorageHost=127.0.0.1"
            echo "AccountingStoragePort=$((PORT + 2))"
            # for slurmdbd connections this names the munge socket (AuthInfo is not used there)
            echo "AccountingStoragePass=$DIR/munge/munge.socket"
        else
            echo "AccountingStorageType=accounting_storage/none"
        fi
        echo "JobCompType=jobcomp/none"
        echo "NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        echo "PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF"
    : >"$DIR/plugstack.conf"
    {
        echo "# written by scripts/slurm-local.sh start"
        echo "AuthType=auth/munge"
        echo "AuthInfo=socket=$DIR/munge/munge.socket"
        echo "DbdHost=$HOST"
        echo "DbdAddr=127.0.0.1"
        echo "DbdPort=$((PORT + 2))"
        echo "SlurmUser=root"
        echo "LogFile=$DIR/log/slurmdbd.log"
        echo "PidFile=$DIR/run/slurmdbd.pid"
        echo "StorageType=accounting_storage/mysql"
        echo "StorageHost=127.0.0.1"
        echo "StoragePort=$((PORT + 3))"
        echo "StorageUser=root"
        echo "StorageLoc=slurm_acct_db"
    } >"$DIR/slurmdbd.conf"
    chmod 600 "$DIR/slurmdbd.conf"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 ||
                dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
        else
            dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
        fi
    fi
    chmod 400 "$DIR/munge/munge.key"
}

munge_ok() { munge -n -S "$DIR/munge/munge.socket" | unmunge -S "$DIR/munge/munge.socket"; }
mariadb_ok() { mariadb-admin --no-defaults --socket="$DIR/mysql/mysqld.sock" -uroot ping; }
dbd_ok() { timeout 5 sacctmgr -n -P list cluster format=cluster; }
# the node answers and takes jobs: idle, or busy with jobs recovered from the state folder
node_up() { [[ $(node_state) =~ ^(idle|mix|mixed|alloc|allocated|comp)$ ]]; }
no_jobs() { [[ -z $(timeout 5 squeue -h -o %i) ]]; }
srun_ok() { timeout 30 srun -N1 -n1 -t 1 -p "$PARTITION" hostname; }

cmd_start() {
    local t0 pid d jobs
    if all_running && cluster_answers; then
        say "already running ($(node_state) node $HOST, state in $DIR)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    need_packages
    for d in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$d"); then
            say "partly running ($d pid $pid): stopping it first"
            cmd_stop
            break
        fi
    done
    t0=$(date +%s.%N)
    STARTING=1
    write_configs
    rm -f "$DIR"/pids/*.pid "$DIR"/log/*
    launch munged /usr/sbin/munged -F -f --socket="$DIR/munge/munge.socket" \
        --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/log/munged.log"
    wait_for 15 munged munge_ok
    if [[ $ACCOUNTING == 1 ]]; then
        if [[ ! -d $DIR/mysql/data/mysql ]]; then
            mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" --user=root \
                --auth-root-authentication-method=normal --skip-test-db \
                >"$DIR/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db"
        fi
        launch mariadbd /usr/sbin/mariadbd --no-defaults --user=root \
            --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
            --port=$((PORT + 3)) --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" \
            --log-error="$DIR/log/mariadb.log" --skip-log-bin --performance-schema=OFF \
            --innodb-buffer-pool-size=128M \
            --innodb-lock-wait-timeout=900 --innodb-flush-log-at-trx-commit=2
        wait_for 30 mariadbd mariadb_ok
        launch slurmdbd /usr/sbin/slurmdbd -D
        wait_for 30 slurmdbd dbd_ok
        if [[ -z $(sacctmgr -n -P list cluster format=cluster "$CLUSTER" 2>/dev/null) ]]; then
            sacctmgr -i add cluster "$CLUSTER" >"$DIR/log/sacctmgr.out" 2>&1 || fail "sacctmgr add cluster"
        fi
    fi
    launch slurmctld /usr/sbin/slurmctld -D -f "$CONF"
    launch slurmd /usr/sbin/slurmd -D -f "$CONF"
    wait_for "$START_TIMEOUT" "node $HOST up (idle)" node_up
    # jobs in the state folder are a previous run's that was killed, not stopped: cancel them
    # (accounting records them CANCELLED) so that each start gives an empty cluster
    jobs=$(squeue -h -o %i 2>/dev/null | wc -l)
    if ((jobs > 0)); then
        say "cancelling $jobs job(s) recovered from $DIR/state (a run killed without stop)"
        scancel --quiet --partition="$PARTITION" || true
        wait_for 30 "recovered jobs gone" no_jobs
    fi
    wait_for 30 "srun -N1 hostname" srun_ok
    STARTING=0
    echo "export SLURM_CONF=$CONF" >"$DIR/env"
    say "cluster up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s" \
        "(node $HOST $(node_state), srun ok, accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off), state in $DIR)"
    echo "export SLURM_CONF=$CONF"
}

# stop_pid NAME: TERM the recorded daemon, KILL it after 20 s, wait until it has gone.
stop_pid() {
    local name=$1 pid i
    pid=$(pid_of "$name") || { rm -f "$DIR/pids/$name.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid" && pid_of "$name" >/dev/null; then
        say "$name (pid $pid) still up after 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$DIR/pids/$name.pid"
    say "stopped $name (pid $pid)"
}

cmd_stop() {
    local i d
    if pid_of slurmctld >/dev/null && cluster_answers; then
        # the cluster's own jobs: cancel them so no slurmstepd outlives slurmd
        if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
            say "cancelling the jobs still queued"
            scancel --quiet --partition="$PARTITION" 2>/dev/null || true
            for ((i = 0; i < 75; i++)); do
                [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_pid "${DAEMONS[i]}"
    done
    rm -f "$DIR/env"
}

cmd_status() {
    local d pid
    for d in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$d"); then say "$d: pid $pid"; elif enabled "$d"; then say "$d: not running"; fi
    done
    if cluster_answers; then
        say "cluster answers: node $HOST $(node_state), partition $PARTITION; export SLURM_CONF=$CONF"
        return 0
    fi
    say "cluster does not answer (SLURM_CONF=$CONF)"
    return 1
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: bash $0 install|start|stop|status   (state in \$XALIGN_SLURM_DIR, default /tmp/xalign-slurm)" >&2
        exit 2
        ;;
esac
