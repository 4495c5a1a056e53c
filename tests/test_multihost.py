"""Several local processes joined by jax.distributed.initialize (CPU devices, gloo)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tcsm_jax.training import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config=experiments/configs/kjv_tiny.py", "--config.data.seq_len=32",
         "--config.model.num_layers=1", "--config.model.width=32",
         "--config.model.num_heads=2", "--config.train.batch_size=16",
         "--config.train.log_every=1", "--config.train.eval_every=1000",
         "--config.train.checkpoint_every=1000", "--config.optim.lr_schedule=constant"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("TCSM_COORDINATOR", None)
  env.update(extra)
  return env


def _train_multi(workdir, steps, n=2):
  """Runs launch/local.sh: n processes with 2 CPU devices each."""
  r = subprocess.run(["bash", "launch/local.sh", str(n), "2", "--",
                      f"--workdir={workdir}"] + SMALL +
                     [f"--config.train.num_steps={steps}"], cwd=REPO,
                     env=_env(2, TCSM_PORT=str(_free_port())), capture_output=True,
                     text=True, timeout=400)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stderr


def _train_single(workdir, steps, devices=4):
  r = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}"]
                     + SMALL + [f"--config.train.num_steps={steps}"], cwd=REPO,
                     env=_env(devices), capture_output=True, text=True, timeout=400)
  assert r.returncode == 0, r.stderr[-3000:]


def _losses(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_processes_match_one_and_their_checkpoint_restores_in_one(tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  log = _train_multi(multi, 4)
  assert "process 0/2" in log and "process 1/2" in log
  _train_single(single, 6)
  a, b = _losses(multi), _losses(single)
  assert sorted(a) == [1, 2, 3, 4]            # only process 0 writes metrics
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=2e-5)
  # Written by 2 processes x 2 devices: evaluates and samples in 1 process, 1 device.
  for cmd in (["experiments.evaluate", "--num_batches=1", "--num_t=2"],
              ["experiments.sample", "--num_samples=2", "--steps=4", "--batch_size=2"]):
    r = subprocess.run([sys.executable, "-m", cmd[0], f"--workdir={multi}"] + cmd[1:],
                       cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stderr[-2000:])
  # The checkpoint written by 2 processes restores in 1 and training continues.
  _train_single(multi, 6)
  a = _losses(multi)
  assert sorted(a) == list(range(1, 7))
  np.testing.assert_allclose([a[5], a[6]], [b[5], b[6]], rtol=2e-5)


def _pid_of_process(workdir, process_id):
  """The pid of the training process with TCSM_PROCESS_ID = ``process_id``."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().decode(errors="replace")
      with open(f"/proc/{pid}/environ", "rb") as f:
        env = f.read().decode(errors="replace").split("\0")
    except OSError:
      continue
    if "experiments.train" in cmd and f"--workdir={workdir}" in cmd and \
        f"TCSM_PROCESS_ID={process_id}" in env:
      return int(pid)
  return None


def test_sigterm_to_one_process_stops_all_at_the_same_checkpointed_step(tmp_path):
  """A pod's hosts see SIGTERM at different steps; they must save one step together."""
  workdir = str(tmp_path / "run")
  cmd = (["bash", "launch/local.sh", "2", "1", "--", f"--workdir={workdir}"] + SMALL +
         ["--config.train.num_steps=100000", "--config.train.preemption_sync_every=5"])
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(1, TCSM_PORT=str(_free_port())),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  try:
    deadline = time.time() + 200
    while time.time() < deadline:
      path = os.path.join(workdir, "metrics.jsonl")
      if os.path.exists(path) and len(_losses(workdir)) >= 3:
        break
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      time.sleep(0.5)
    pid = _pid_of_process(workdir, 1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)                   # process 1 only
    out, _ = proc.communicate(timeout=200)
  finally:
    if proc.poll() is None:                        # never leave training processes
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  assert proc.returncode == 143, out[-3000:]
  stops = re.findall(r"stopping at step (\d+) after", out)
  assert len(stops) == 2 and stops[0] == stops[1], out[-3000:]
  step = int(stops[0])
  assert step % 5 == 0
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  assert max(_losses(workdir)) == step
