"""The GPU ablation script (experiments.benchmarks.ablations) runs on the CPU with a
tiny config, so it cannot rot between GPU sessions."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--sizes=tiny", "--batch=4", "--seq_len=64", "--vocab=64", "--steps=1",
        "--dtype=float32", "--chunk_size=32"]


def _run(tmp_path, rows):
  out = tmp_path / "table.txt"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                       "--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.ablations", *TINY,
                         f"--ablations={rows}", f"--out={out}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out.read_text().splitlines()


def _row(lines, name):
  return [l for l in lines if l.split()[:2] == ["tiny", name]][0]


def test_ablation_rows_run_on_the_cpu(tmp_path):
  lines = _run(tmp_path, "chunked_tiled,attention_cudnn")
  assert lines[0].startswith("device: cpu x1")
  for name in ("chunked_tiled",):
    cols = _row(lines, name).split()
    assert float(cols[4]) > 0 and float(cols[5].replace(",", "")) > 0   # step ms, tok/s
    assert cols[7] == "n/a"                                     # no known CPU peak
  assert "not run: model.attention_impl='cudnn'" in _row(lines, "attention_cudnn")


def test_every_ablation_row_on_the_cpu(tmp_path):
  lines = _run(tmp_path, "all")
  from experiments.benchmarks import ablations  # pylint: disable=g-import-not-at-top
  for name in ablations.ABLATIONS:
    row = _row(lines, name)
    assert "not run" not in row or name == "attention_cudnn", row
  assert _row(lines, "batch_double").split()[2] == "8"
