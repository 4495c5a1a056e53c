#!/usr/bin/env bash
# The GPU measurements quoted in the issue notes, in one run (about 6-8 minutes on one
# H100/H200): train-step throughput/MFU/memory (bf16, 32 x 1024 tokens), attention
# implementations, sampler speed, the GPU-only model tests, and the default job.
#   bash experiments/benchmarks/gpu_suite.sh OUTDIR
set -uo pipefail
OUT=${1:-/tmp/gpu_suite}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
B="python3 -m experiments.benchmarks.train_step --dtype=bfloat16 --batch=32 --seq_len=1024 --steps=20"
timeout 150 $B --sizes=small,gpt2_small --losses=tcsm_score,masked_elbo 2>&1 | grep -v "^W\|^I0" | tee "$OUT/train_step.txt"
for impl in xla cudnn; do
  timeout 60 $B --sizes=gpt2_small --losses=masked_elbo --attention_impl=$impl 2>&1 | grep -v "^W\|^I0" | tee "$OUT/train_step_$impl.txt"
done
timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_models.py 2>&1 | tail -5 | tee "$OUT/test_models.txt"
timeout 100 python3 -m experiments.train --config=experiments/configs/kjv_tiny.py --workdir=/tmp/kjv_gpu 2>&1 | grep -v "^W\|^I0" | tail -25 | tee "$OUT/kjv_tiny.txt"
timeout 90 python3 -m experiments.benchmarks.sampling_speed --settings=4x256:128:16:256,12x768:1024:64:128 2>&1 | grep -v "^W\|^I0" | tail -20 | tee "$OUT/sampling_speed.txt"
