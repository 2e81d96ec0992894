#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (loopback only) and wait until `sinfo` shows the
# node idle. Needs root and Debian's `slurm-wlm munge` (installed here when missing and allowed:
# HQRS_SLURM_INSTALL=1). Partition: `debug` (default). Stop it with .ci/slurm-down.sh.
# Config and state live in ${HQRS_SLURM_DIR:-/tmp/hqrs-slurm}; slurm.conf goes to /etc/slurm/slurm.conf
# (where the Debian clients read it) unless one is already there that this script did not write.
set -euo pipefail
DIR=${HQRS_SLURM_DIR:-/tmp/hqrs-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hqrs .ci/slurm-up.sh"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "${HQRS_SLURM_INSTALL:-0}" = 1 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  else
    echo "slurm-up: slurmctld/munged not installed (apt-get install slurm-wlm munge, or HQRS_SLURM_INSTALL=1)" >&2
    exit 1
  fi
fi
[ "$(id -u)" = 0 ] || { echo "slurm-up: needs root (SlurmUser=root)" >&2; exit 1; }

host=$(hostname -s)
cpus=$(getconf _NPROCESSORS_ONLN)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p "$DIR"/{state,spool,log} /etc/munge /run/munge /etc/slurm
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "slurm-up: $CONF exists and was not written by this script; not touching it" >&2
  exit 1
fi
cat > "$CONF" <<CONF
$MARK
ClusterName=hqrs
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MpiDefault=none
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

# munge: a key of our own when none exists
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force

pgrep -x slurmctld >/dev/null || slurmctld -c    # -c: a clean state (no jobs from an earlier cluster)
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 120); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mixed|allocated) echo "slurm-up: node ${host} ${state} (partition debug, ${cpus} CPUs, ${mem_mb} MB)"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm-up: the node did not become idle in 120 s; see $DIR/log/" >&2
sinfo >&2 || true
exit 1
