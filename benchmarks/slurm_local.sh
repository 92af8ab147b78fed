#!/usr/bin/env bash
# A real single-node SLURM on this machine (Debian's slurm-wlm + munge), running the 2-entry digits suite through
# sbatch (`sscb suite … --launcher slurm --wait`), then the same suite in-process; prints the timings and whether
# the rows agree. Everything (configuration, munge key and socket, spool, state, logs, results, feature cache)
# lives in one temporary folder; the daemons it starts are stopped on exit, whatever happens.
#
#   apt-get install -y slurm-wlm munge        # once, as root (slurmd runs jobs as the submitting user)
#   bash benchmarks/slurm_local.sh            # from the repository root
#
# Container-friendly configuration: slurmctld and slurmd on this host, no cgroups (proctrack/linuxproc,
# task/none), no accounting daemon (sacct has nothing: sscb falls back to squeue for job states), private
# ports 16817/16818 so that no other SLURM on the host is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

for tool in slurmctld slurmd sbatch munged mungekey; do
  command -v "$tool" >/dev/null || { echo "slurm_local.sh: $tool not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done
D="$(mktemp -d /tmp/sscb-slurm.XXXXXX)"
pids=()
cleanup() {
  rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ "$rc" = 0 ]; then rm -rf "$D"; else echo "slurm_local.sh: failed; daemon logs and results kept in $D" >&2; fi
}
trap cleanup EXIT

mkdir -p "$D/spool" "$D/state" "$D/munge"
chmod 700 "$D/munge"
mungekey --create --keyfile "$D/munge/munge.key" 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of="$D/munge/munge.key" 2>/dev/null
chmod 400 "$D/munge/munge.key"
munged --key-file "$D/munge/munge.key" --socket "$D/munge/munge.socket" --pid-file "$D/munge/munged.pid" \
  --log-file "$D/munge/munged.log" --seed-file "$D/munge/munge.seed" --force
sleep 0.5
pids+=("$(cat "$D/munge/munged.pid")")

host="$(hostname -s)"
cpus="$(getconf _NPROCESSORS_ONLN)"  # not nproc: it honours the OMP_NUM_THREADS=1 set above
mem_mb="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))"
cat > "$D/slurm.conf" <<EOF
ClusterName=sscblocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket
SlurmUser=$(id -un)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$D/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  [ -f "$D/slurmctld.pid" ] && [ -f "$D/slurmd.pid" ] && break
  sleep 0.5
done
pids+=("$(cat "$D/slurmctld.pid")" "$(cat "$D/slurmd.pid")")
for _ in $(seq 1 60); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 1
done
echo "# SLURM $(slurmctld -V | awk '{print $2}') on $host: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"

cat > "$D/two.yaml" <<'EOF'
name: two
description: two digits entries (k = 10 and k = 15), pixels, one seed
backbones: [pixels]
protocol: {methods: [kmeans], overcluster: [1.0], seeds: 1, pca_dim: 32}
datasets:
  - {id: digits, dataset: digits, split: all}
  - {id: digits-k15, dataset: digits, split: all, protocol: {overcluster: [1.5]}}
EOF

t0=$(date +%s.%N)
python3 -m ssl_cluster_bench -q suite "$D/two.yaml" --launcher slurm --wait --partition local --cpus-per-task 1 \
  --mem-gb 2 --timeout-min 10 --results "$D/slurm/leaderboard.csv" --cache-dir "$D/cache-slurm" > "$D/slurm.out"
t1=$(date +%s.%N)
python3 -m ssl_cluster_bench -q suite "$D/two.yaml" --launcher local --wait --results "$D/local/leaderboard.csv" \
  --cache-dir "$D/cache-local" > "$D/local.out"
t2=$(date +%s.%N)
python3 -m ssl_cluster_bench -q suite "$D/two.yaml" --results "$D/inproc/leaderboard.csv" --cache-dir "$D/cache-inproc" \
  > "$D/inproc.out"
t3=$(date +%s.%N)
cat "$D/slurm.out"

python3 - "$D" "$t0" "$t1" "$t2" "$t3" <<'EOF'
import sys
from pathlib import Path

from ssl_cluster_bench.leaderboard import CONFIG_COLUMNS, METRICS, read_leaderboard

d = Path(sys.argv[1])
t0, t1, t2, t3 = map(float, sys.argv[2:])
cols = CONFIG_COLUMNS + ["seed", "n_samples"] + METRICS + ["cache_key"]
rows = {k: read_leaderboard(d / k / "leaderboard.csv")[cols].sort_values(["dataset", "n_clusters"]).reset_index(drop=True)
        for k in ("slurm", "local", "inproc")}
same = all(rows[k].equals(rows["inproc"]) for k in ("slurm", "local"))
reports = {k: (d / k / "report.md").read_text() for k in rows}
print("| run | wall s | rows | rows equal to in-process | report equal |\n|---|---:|---:|---|---|")
for k, s in (("slurm (sbatch job array, --wait)", t1 - t0), ("local launcher (--wait)", t2 - t1),
             ("in-process", t3 - t2)):
    key = k.split()[0].replace("in-process", "inproc").replace("local", "local")
    print(f"| {k} | {s:.1f} | {len(rows[key])} | {rows[key].equals(rows['inproc'])} | "
          f"{reports[key] == reports['inproc']} |")
sys.exit(0 if same else 1)
EOF
