"""Few-call generation as the user runs it: the NFE settings, the flags' one-line errors,
``experiments.distill --self`` end to end (slow) and ``--study=few_steps --quick``
(slow). The exact tests are tests/test_adaptive.py and tests/test_self_distill.py."""

import csv
import json
import math
import os
import re
import subprocess
import sys

import pytest

from experiments import few_calls
from tcsm_jax.training import config as config_lib

from helpers import newest_report, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ABSL_LOG = re.compile(r"^[IWEF]\d{4} ")


def _env():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  env.pop("TCSM_TRACEBACK", None)
  return env


def _start(args):
  return subprocess.Popen([sys.executable, "-m"] + args, cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_settings_make_the_calls_they_name():
  length = 32
  for n in (1, 4, 8, 16, 32, 64):
    o = few_calls.options_at("confidence", n, length)
    assert math.ceil(length / o["unmask_per_call"]) <= n
    assert math.ceil(length / (o["unmask_per_call"] - 1 or 1)) > n or n >= length
    o = few_calls.options_at("analytic", n, length)
    assert (o["steps"], o["t_end"], o["final_denoise"]) == (n, 0.0, False)
    assert few_calls.options_at("remdm", n, length, sigma0_zero=False)["final_denoise"]
  for n in (2, 4, 16, 33):
    o = few_calls.options_at("first_hitting", n, length)
    assert math.ceil(length / o["events_per_call"]) + 1 <= n
  with pytest.raises(ValueError, match="adaptively"):
    few_calls.options_at("entropy_bound", 4, length)
  s = few_calls.sweep(["analytic", "entropy_bound"], [4, 8], length, eb_gammas=[0.1])
  assert [x["sampler"] for x in s] == ["analytic", "analytic", "entropy_bound"]
  assert s[-1]["eb_gamma"] == 0.1 and s[-1]["nfe_target"] is None


# One case per binary in the default run; every case with ``-m slow``.
DEFAULT_CASES = ("teacher_steps", "gamma", "eb_gamma", "config key")


@pytest.mark.parametrize("which", ["default", pytest.param("all", marks=pytest.mark.slow)])
def test_bad_flags_are_one_line_and_status_2(tmp_path, which):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(config_lib.to_json(tiny_config()))
  d = ["experiments.distill", "--self", f"--teacher_workdir={run}",
       f"--workdir={tmp_path / 'sd'}"]
  f = ["experiments.frontier", f"--workdir={run}", f"--judge_workdir={run}",
       f"--outdir={tmp_path / 'fr'}"]
  s = ["experiments.sample", f"--workdir={run}", "--num_samples=1"]
  cases = {
      "rounds": (d + ["--rounds=0"], "--rounds must be >= 1, got 0"),
      "teacher_steps": (d + ["--rounds=2", "--teacher_steps=6"],
                        "--teacher_steps 6 must be a multiple of 2^rounds = 4"),
      "divergence": (d + ["--divergence=bogus"], "--divergence: unknown 'bogus'"),
      "no config": (d[:1] + d[2:], "--config is required (or --self)"),
      "nfe word": (f + ["--nfe=abc"], "--nfe must be numbers"),
      "nfe zero": (f + ["--nfe=0"], "--nfe values must lie in (0,"),
      "gamma": (f + ["--nfe=4", "--eb_gammas=-1"], "--eb_gammas values must lie in"),
      "tau": (f + ["--nfe=4", "--confidence_taus=1.5"],
              "--confidence_taus values must lie in (0, 1]"),
      "eb_gamma": (s + ["--sampler=entropy_bound", "--eb_gamma=-1"],
                   "eb_gamma must be >= 0, got -1.0"),
      "tau flag": (s + ["--sampler=confidence_threshold", "--confidence_tau=0"],
                   "confidence_tau must lie in (0, 1], got 0.0"),
      "per call": (s + ["--sampler=confidence", "--unmask_per_call=0"],
                   "unmask_per_call must be >= 1, got 0"),
      "config key": (s + ["--config=experiments/configs/kjv_tiny.py",
                          "--config.sampling.confidence_tau=2"], "confidence_tau"),
  }
  if which == "default":
    cases = {k: cases[k] for k in DEFAULT_CASES}
  procs = {k: _start(a) for k, (a, _) in cases.items()}
  for name, p in procs.items():
    _, err = p.communicate(timeout=300)
    lines = [l for l in err.splitlines() if l.strip() and not _ABSL_LOG.match(l)]
    assert p.returncode == 2, (name, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-2000:])
    assert cases[name][1] in lines[0], (name, lines[0])


@pytest.mark.slow
def test_self_distillation_binary_rounds_resume_and_sample(tmp_path):
  tiny = ["--config=experiments/configs/kjv_tiny.py", "--config.data.seq_len=32",
          "--config.model.num_layers=1", "--config.model.width=32",
          "--config.model.num_heads=2", "--config.model.cond_width=32",
          "--config.train.batch_size=8", "--config.train.num_steps=3",
          "--config.train.eval_every=1000", "--config.train.checkpoint_every=1000",
          "--config.train.eval_batches=1", "--config.eval.batch_size=8",
          "--config.optim.warmup_steps=1"]
  t0, sd = tmp_path / "t0", tmp_path / "sd"
  p = _start(["experiments.train", f"--workdir={t0}"] + tiny)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  cmd = ["experiments.distill", "--self", f"--teacher_workdir={t0}", f"--workdir={sd}",
         "--rounds=2", "--teacher_steps=8", "--round_train_steps=2"]
  p = _start(cmd)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "round 2:" in out and "8 -> 2 steps" in out
  rounds = json.loads((sd / "rounds.json").read_text())["rounds"]
  assert [(r["teacher_steps"], r["steps"]) for r in rounds] == [(8, 4), (4, 2)]
  assert rounds[1]["teacher"] == str(sd / "round_1")
  cfg = json.loads((sd / "round_2" / "config.json").read_text())
  assert cfg["finetune"]["kind"] == "self_distill"
  assert (cfg["finetune"]["distill_steps"], cfg["sampling"]["steps"]) == (2, 2)
  assert cfg["finetune"]["ref_workdir"] == str(sd / "round_1")
  # A rerun resumes: nothing left to train.
  p = _start(cmd)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0 and err.count("nothing to train") == 2, err[-3000:]
  # A round's workdir is an ordinary one: it samples, here with an adaptive sampler.
  p = _start(["experiments.sample", f"--workdir={sd / 'round_2'}", "--num_samples=2",
              "--sampler=confidence", "--unmask_per_call=8"])
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  rep = newest_report(sd / "round_2" / "samples", "confidence_2steps_")
  assert rep["nfe_per_batch"] == 4 and rep["unmask_per_call"] == 8


@pytest.mark.slow
def test_few_steps_study_quick(tmp_path):
  cmd = [sys.executable, "-m", "experiments.study", "--study=few_steps",
         f"--outdir={tmp_path}", "--quick", "--seeds=2"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = lambda: subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=1500)
  out = run()
  assert out.returncode == 0, out.stderr[-3000:]
  assert "training in" in out.stderr
  text = (tmp_path / "REPORT.md").read_text()
  assert "At 4 calls against the 8-step teacher" in text and "## Verdicts" in text
  assert "Target at 4 calls" in text
  for label in ("analytic@4", "confidence@4", "first_hitting@4", "round_2",
                "entropy_bound", "confidence_threshold", "teacher@8 (reference)"):
    assert label in text, label
  assert (tmp_path / "quality_vs_calls.png").exists()
  with open(tmp_path / "runs.csv") as f:
    rows = list(csv.DictReader(f))
  finals = [r for r in rows if r.get("gen_ppl_n4")]
  assert {(r["variant"], r["seed"]) for r in finals} == {
      (f"round_{i}", s) for i in (1, 2) for s in ("0", "1")}
  assert all(float(r["calls_n4"]) == 4 for r in finals)
  assert all(1 < float(r["gen_ppl_n4"]) < 100 for r in finals)
  cache = json.loads((tmp_path / "teacher_samplers.json").read_text())
  assert cache["analytic@4|0|8"]["calls"] == 4
  assert cache["confidence@2|1|8"]["calls"] == 2
  before = (tmp_path / "runs.csv").read_text()
  again = run()
  assert again.returncode == 0 and "training in" not in again.stderr
  assert (tmp_path / "runs.csv").read_text() == before
