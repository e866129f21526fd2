#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian's slurm-wlm + munge, no accounting database),
# for the `slurm` tests:  cluster.sh up | down | status
# Finished jobs stay visible to squeue for a day (MinJobAge), which Snakemake's executor needs
# when it polls with --slurm-status-command squeue.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/scaledyn-slurm

up() {
    mkdir -p /run/munge /var/log/munge /var/lib/munge "$STATE"/ctld "$STATE"/d /var/log/slurm
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    local node; node=$(slurmd -C | head -n 1 | sed 's/ *$//')
    cat > "$CONF" <<CONF
ClusterName=scaledyn
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then sinfo; return 0; fi
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "slurm did not come up" >&2; tail -n 20 /var/log/slurm/*.log >&2; return 1
}

down() {
    scancel --user=root >/dev/null 2>&1 || true
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    rm -rf "$STATE"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
