"""launch/tpu_pod.sh with a stand-in ``gcloud`` that records its calls: the multi-slice
commands address every slice's node (NAME-0 .. NAME-(N-1)), all workers, together."""

import os
import pathlib
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(tmp_path, *args):
  log = tmp_path / "calls.txt"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir(exist_ok=True)
  fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
  proc = subprocess.run(["bash", str(REPO / "launch/tpu_pod.sh"), *args], env=env,
                        cwd=tmp_path, capture_output=True, text=True, timeout=60)
  calls = log.read_text().splitlines() if log.exists() else []
  return proc, calls


def test_multi_slice_create_run_delete(tmp_path):
  proc, calls = _run(tmp_path, "create-multi", "qr", "us-east5-a", "v5p-128", "2")
  assert proc.returncode == 0, proc.stderr
  assert calls == ["compute tpus queued-resources create qr --zone=us-east5-a "
                   "--accelerator-type=v5p-128 --runtime-version=tpu-ubuntu2204-base "
                   "--node-count=2 --node-prefix=qr"]
  proc, calls = _run(tmp_path, "run-multi", "qr", "us-east5-a", "2",
                     "--config=experiments/configs/owt.py", "--config.mesh.fsdp=64")
  assert proc.returncode == 0, proc.stderr
  runs = sorted(c for c in calls if "experiments.train" in c)
  assert len(runs) == 2
  for i, c in enumerate(runs):
    assert c.startswith(f"compute tpus tpu-vm ssh qr-{i} --zone=us-east5-a --worker=all")
    assert c.endswith("python -m experiments.train --config=experiments/configs/owt.py"
                      " --config.mesh.fsdp=64")
  proc, calls = _run(tmp_path, "delete-multi", "qr", "us-east5-a")
  assert proc.returncode == 0 and "queued-resources delete qr" in calls[-1]


def test_unknown_command_exits_2(tmp_path):
  proc, _ = _run(tmp_path, "launch-rockets", "qr", "zone")
  assert proc.returncode == 2
  assert "unknown command" in proc.stderr

