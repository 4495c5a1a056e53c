#!/usr/bin/env bash
# Full teacher / distill / reward studies in parallel workers on one GPU machine
# (16 cores): shared runs first, then NSHARD (3) shards per study, then each study's
# report.
#   bash experiments/benchmarks/gpu_studies.sh OUTDIR [STUDY_FLAGS...]
# Results (everything but checkpoints) are packed into OUTDIR/<study>.tgz. A phase
# that runs out of time (T1, T2) leaves a partial study; its report says which runs.
set -u
OUT=${1:-/tmp/gpu_studies}; shift || true
mkdir -p "$OUT"; W=/tmp/studies_work; mkdir -p $W
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false
STUDIES=${STUDIES:-"teacher distill reward"}
S="python3 -m experiments.study $*"
t0=$(date +%s)
T1=${T1:-150}; T2=${T2:-300}      # seconds for the shared runs and for the shards
for s in $STUDIES; do timeout $T1 $S --study=$s --outdir=$W/$s --prereq_only > $W/$s.prereq.log 2>&1 & done
wait; echo "shared runs: $(( $(date +%s) - t0 )) s"
N=${NSHARD:-3}
for s in $STUDIES; do for i in $(seq 0 $((N - 1))); do
  timeout $T2 $S --study=$s --outdir=$W/$s --shard=$i/$N > $W/$s.shard$i.log 2>&1 &
done; done
wait; echo "shards: $(( $(date +%s) - t0 )) s"
for s in $STUDIES; do timeout 90 $S --study=$s --outdir=$W/$s --report_only > $W/$s.report.log 2>&1 & done
wait; echo "reports: $(( $(date +%s) - t0 )) s"
for s in $STUDIES; do
  cp $W/$s.*.log $W/$s/ 2>/dev/null
  (cd $W && tar czf "$OUT/$s.tgz" --exclude='checkpoints' --exclude='jax_cache' \
     --exclude='tensorboard' $s)
  grep -h "^error\|Traceback" $W/$s.*.log | head -3
  ls -la "$OUT/$s.tgz"
done
