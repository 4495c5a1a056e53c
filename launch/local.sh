#!/usr/bin/env bash
# N local processes joined by jax.distributed.initialize (CPU devices, gloo) -- the
# same code path as a multi-host pod, on one machine.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS -- --config=... --workdir=DIR [...]
set -euo pipefail
N=${1:?number of processes}; D=${2:?devices per process}; shift 2
[[ "${1:-}" == "--" ]] && shift
PORT=${TCSM_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${D}" \
  TCSM_COORDINATOR="127.0.0.1:${PORT}" TCSM_NUM_PROCESSES="${N}" TCSM_PROCESS_ID="${i}" \
    python -m experiments.train "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
