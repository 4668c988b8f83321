#!/usr/bin/env bash
# A throwaway single-node Slurm (Debian's slurm-wlm + munge, run as root) for trying hydra/launcher=vit_slurm for real:
#   sudo .ci/slurm_single_node.sh start [DIR]    # then: export SLURM_CONF=DIR/slurm.conf; sinfo
#   sudo .ci/slurm_single_node.sh stop [DIR]
# Not part of CI (.ci/run): the tests exercise the requeue path with submitit's local executor instead.
set -euo pipefail
action=${1:?start or stop}; dir=${2:-/tmp/vit_lab_slurm}
if [ "$action" = stop ]; then
  for pid in slurmd slurmctld; do [ -f "$dir/$pid.pid" ] && kill "$(cat "$dir/$pid.pid")" || true; done
  [ -f "$dir/munged.pid" ] && kill "$(cat "$dir/munged.pid")" || true
  exit 0
fi
command -v slurmctld >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; }
mkdir -p "$dir"/{state,spool,log}
host=$(hostname -s)
cat > "$dir/slurm.conf" <<CONF
ClusterName=vitlab
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
[ -s /etc/munge/munge.key ] || mungekey --create
mkdir -p /run/munge && chown munge: /run/munge || true
munged --force --pid-file="$dir/munged.pid"
slurmctld
slurmd
for _ in $(seq 1 30); do sinfo -h -o %t | grep -q idle && { sinfo; exit 0; }; sleep 1; done
echo "slurm did not come up; see $dir/log" >&2; exit 1
