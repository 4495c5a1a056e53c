"""Multi-host start-up: ``jax.distributed.initialize`` from flags or the environment.

* TPU pods and SLURM jobs are detected by JAX itself (``initialize()`` with no args).
* Explicit GPU clusters/local multi-process runs set ``TCSM_COORDINATOR`` (host:port),
  ``TCSM_NUM_PROCESSES`` and ``TCSM_PROCESS_ID`` (with ``JAX_PLATFORMS=cpu`` the CPU
  devices of the processes talk through gloo: ``launch/local.sh``).
* A single process with none of these does nothing.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def initialize() -> None:
  coord = os.environ.get("TCSM_COORDINATOR")
  if coord:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      # Cross-process collectives between CPU devices (local multi-process runs).
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coord,
        num_processes=int(os.environ["TCSM_NUM_PROCESSES"]),
        process_id=int(os.environ["TCSM_PROCESS_ID"]))
  elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
