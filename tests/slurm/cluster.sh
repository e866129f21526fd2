#!/usr/bin/env bash
# A SLURM cluster on this machine (Debian's slurm-wlm + munge, no accounting database), for the
# `slurm` and `multinode` tests:
#
#   cluster.sh up [--nodes 2] | down | status
#
# One node: slurmd on this host. Two nodes: each node is a network namespace (scaledyn-n1, -n2)
# joined to this host by a veth pair on a private bridge (sdbr0, 10.213.7.0/24, created here and
# used by nothing else), with its own address, slurmd, spool directory, pid and log file; the
# controller listens on the bridge address, and every node sees the same filesystem (the shared
# results directory of a real cluster). No traffic leaves the machine. Inside a node the interface
# is called sd0, so gloo finds it with GLOO_SOCKET_IFNAME=sd0.
# Finished jobs stay visible to squeue for a day (MinJobAge), which Snakemake's executor needs
# when it polls with --slurm-status-command squeue.
# `down` stops only the daemons it started (by their pid files) and removes only the namespaces,
# bridge and veth interfaces named above.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/scaledyn-slurm
BRIDGE=sdbr0
NET=10.213.7

conf() {  # conf NODE_LINES CTLD_HOST
    cat > "$CONF" <<CONF
ClusterName=scaledyn
SlurmctldHost=$2
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=86400
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=10
$1
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

munge_up() {
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    # munged answers, not merely exists: a killed munged that nobody reaped is still a process
    if ! munge -n </dev/null >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force
        touch "$STATE/munged.ours"
    fi
}

namespaces_up() {  # one namespace per node, on a bridge that carries the controller's address
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in 1 2; do
        local ns=scaledyn-n$i
        ip netns list | grep -qw "$ns" || ip netns add "$ns"
        if ! ip link show sdv$i >/dev/null 2>&1; then
            ip link add sdv$i type veth peer name sd0 netns "$ns"
            ip link set sdv$i master "$BRIDGE" up
        fi
        ip -n "$ns" addr replace "$NET.1$i/24" dev sd0
        ip -n "$ns" link set sd0 up
        ip -n "$ns" link set lo up
    done
}

wait_idle() {  # wait_idle NODE...: every node answers idle within 90 s (each query capped at 5 s)
    local deadline=$(( $(date +%s) + 90 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        local up=0
        for n in "$@"; do
            timeout 5 sinfo -h -n "$n" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && up=$((up + 1))
            timeout 5 scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
        done
        if [ "$up" -eq "$#" ]; then sinfo; return 0; fi
        sleep 1
    done
    echo "slurm did not come up" >&2; tail -n 20 /var/log/slurm/*.log >&2; return 1
}

running() {  # running PID: alive and not a zombie (daemons are reparented to whoever reaps, maybe late)
    ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'
}

started() {  # started PIDFILE: the daemon that wrote it still runs
    [ -s "$1" ] && running "$(cat "$1")"
}

stop() {  # stop PIDFILE...: TERM each daemon, wait for it to exit, KILL what is left after 15 s
    local pids=()
    for f in "$@"; do [ -s "$f" ] && pids+=("$(cat "$f")"); done
    [ "${#pids[@]}" -eq 0 ] && return 0
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 30); do
        local alive=0
        for pid in "${pids[@]}"; do running "$pid" && alive=1; done
        [ "$alive" -eq 0 ] && return 0
        sleep 0.5
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

up() {
    local nodes=1
    [ "${1:-}" = "--nodes" ] && nodes=${2:?--nodes needs a number}
    mkdir -p "$STATE"/ctld "$STATE"/d /var/log/slurm
    if [ ! -s "$STATE/slurmctld.pid" ] && pgrep -x -r R,S,D slurmctld >/dev/null; then
        echo "cluster.sh: a slurmctld not started by this script is running (pid $(pgrep -x -r R,S,D slurmctld)); stop it first" >&2
        exit 1
    fi
    munge_up
    case "$nodes" in
        1)
            local node; node=$(slurmd -C | head -n 1 | sed 's/ *$//')
            conf "$node State=UNKNOWN" "$(hostname -s)"
            started "$STATE/slurmctld.pid" || slurmctld
            mkdir -p "$STATE/d/$(hostname -s)"
            started "$STATE/slurmd-$(hostname -s).pid" || slurmd
            wait_idle "$(hostname -s)"
            ;;
        2)
            namespaces_up
            local cpus mem
            cpus=$(nproc)
            mem=$(( $(slurmd -C | head -n 1 | sed 's/.*RealMemory=\([0-9]*\).*/\1/') / 2 ))
            conf "NodeName=sdnode1 NodeAddr=$NET.11 CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=sdnode2 NodeAddr=$NET.12 CPUs=$cpus RealMemory=$mem State=UNKNOWN" "$(hostname -s)($NET.1)"
            started "$STATE/slurmctld.pid" || slurmctld
            for i in 1 2; do
                mkdir -p "$STATE/d/sdnode$i"
                # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd needs
                started "$STATE/slurmd-sdnode$i.pid" || nsenter --net=/run/netns/scaledyn-n$i slurmd -N sdnode$i
            done
            wait_idle sdnode1 sdnode2
            ;;
        *) echo "cluster.sh: --nodes must be 1 or 2" >&2; exit 2 ;;
    esac
}

down() {
    timeout 10 scancel --user=root >/dev/null 2>&1 || true
    stop "$STATE"/slurmd-*.pid
    stop "$STATE"/slurmctld.pid
    [ -f "$STATE/munged.ours" ] && stop /run/munge/munged.pid
    for i in 1 2; do
        local ns=scaledyn-n$i
        if ip netns list | grep -qw "$ns"; then
            # job steps a killed slurmd left behind would keep the namespace alive
            ip netns pids "$ns" | xargs -r kill -KILL 2>/dev/null || true
            ip netns del "$ns"
        fi
        ip link del sdv$i 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$STATE"
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 up [--nodes 2] | down | status" >&2; exit 2 ;;
esac
