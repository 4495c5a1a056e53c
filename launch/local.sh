#!/usr/bin/env bash
# N local processes joined by jax.distributed.initialize (CPU devices, gloo) -- the
# same code path as a multi-host pod, on one machine.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS -- --config=... --workdir=DIR [...]
#
# Exit status: the processes' (0 finished, 2 user error, 130 Ctrl-C, 143 SIGTERM after
# a checkpoint: re-run the same command to resume; no requeue here).
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
# SIGTERM/SIGINT to the launcher reach every process (each checkpoints and stops).
preempted=0
trap 'preempted=1; kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
# If one process fails, the others would wait forever in a collective: stop them, and
# KILL after a grace period those stuck on their dead peer.
killer=0
killer_pid=""
first_rc=0      # the launcher's status: the first failure's, not the ones it caused
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while alive; do
  rc=0; wait -n || rc=$?
  (( rc != 0 && first_rc == 0 && !preempted )) && first_rc=$rc
  if (( rc != 0 && !preempted && !killer )); then
    killer=1
    if (( rc == 143 )); then
      echo "launch/local.sh: a process was preempted (status 143, after its checkpoint);" \
           "stopping the others" >&2
    else
      echo "launch/local.sh: a process exited with status $rc; stopping the others" >&2
    fi
    kill -TERM "${pids[@]}" 2>/dev/null || true
    # The grace killer must not hold the launcher's stdout/stderr open (a caller
    # reading them would wait for it) and must not outlive the launcher (it would
    # SIGKILL pids the system may have reused).
    (sleep "${TCSM_KILL_GRACE:-20}"; kill -KILL "${pids[@]}" 2>/dev/null || true) \
      </dev/null >/dev/null 2>&1 &
    killer_pid=$!
  fi
done
status=$first_rc
for p in "${pids[@]}"; do rc=0; wait "$p" || rc=$?; (( status == 0 )) && status=$rc; done
if [[ -n "$killer_pid" ]]; then
  pkill -KILL -P "$killer_pid" 2>/dev/null || true   # its sleep
  kill -KILL "$killer_pid" 2>/dev/null || true
  wait "$killer_pid" 2>/dev/null || true
fi
exit $status
