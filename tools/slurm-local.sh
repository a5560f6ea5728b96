#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from the distribution's packages: installs slurm-wlm and
# munge when missing, writes /etc/slurm/slurm.conf for this host (its cores and memory; plugins that need
# no cgroups, since CI may run in a container: process tracking through /proc, memory limits enforced by
# the accounting poller), starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node
# idle. Needs root. Safe to run again: it restarts the daemons with a fresh configuration.
#
#   tools/slurm-local.sh          # then: sbatch --wrap hostname; squeue; scontrol show job N
set -euo pipefail
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))

# munge: a key, then the daemon (as root it must be told that this is intended)
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chmod 0400 /etc/munge/munge.key
pkill -x munged 2>/dev/null || true
munged --force

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=zerolm
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=pmix
DefMemPerCPU=$(( mem_mb / cpus ))
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
rm -f /etc/slurm/cgroup.conf

pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
sleep 1
slurmctld
slurmd
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "slurm: node $host idle ($cpus CPUs, $mem_mb MB)"
    exit 0
  fi
  sleep 1
done
echo "slurm: node $host did not become idle (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
