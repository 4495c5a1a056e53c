"""experiments.study: statistics on known inputs, the runner's bookkeeping (restarts,
skipping finished runs, refusing a changed design), and each study's --quick run."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as sp_stats

from experiments.configs import kjv_tiny
from experiments.study import report, runner, stats
from experiments.study.context import Context
from tcsm_jax import errors


# ------------------------------------------------------------------ statistics


def test_mean_std_known_values():
  m, s, n = stats.mean_std([1.0, 2.0, 4.0, float("nan"), None])
  assert (m, n) == (pytest.approx(7 / 3), 3)
  assert s == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 +
                                       (4 - 7 / 3) ** 2) / 2))
  m, s, n = stats.mean_std([5.0])
  assert m == 5.0 and math.isnan(s) and n == 1
  assert stats.mean_std([])[2] == 0


def test_steps_to_threshold_interpolates():
  # 3 -> 2 -> 1 at steps 0, 100, 200: 1.5 is crossed half way between 100 and 200.
  assert stats.steps_to_threshold([0, 100, 200], [3, 2, 1], 1.5) == pytest.approx(150)
  assert stats.steps_to_threshold([200, 0, 100], [1, 3, 2], 2.75) == pytest.approx(25)
  assert stats.steps_to_threshold([0, 100], [1.0, 0.5], 2.0) == 0      # already below
  assert stats.steps_to_threshold([100, 200], [2.0, 2.0], 2.0) == 100  # reached exactly
  assert math.isnan(stats.steps_to_threshold([0, 100], [3, 2], 1.0))   # never
  # The first crossing counts, not a later one after a rebound.
  assert stats.steps_to_threshold([0, 10, 20, 30], [3, 1, 3, 0], 2) == pytest.approx(5)
  with pytest.raises(ValueError, match="equal 1-D"):
    stats.steps_to_threshold([0, 1], [1.0], 0.5)


def test_paired_effect_matches_the_t_interval():
  a = {0: 1.0, 1: 2.0, 2: 3.0}
  b = {0: 2.0, 1: 2.5, 2: 4.0, 7: 100.0}        # seed 7 has no partner: left out
  e = stats.effect(a, b)
  d = np.array([1.0, 0.5, 1.0])
  se = d.std(ddof=1) / math.sqrt(3)
  q = sp_stats.t.ppf(0.975, 2)
  assert e.paired and e.n == 3
  assert (e.mean, e.stderr) == (pytest.approx(d.mean()), pytest.approx(se))
  assert (e.low, e.high) == (pytest.approx(d.mean() - q * se),
                             pytest.approx(d.mean() + q * se))
  # A Bonferroni level widens it.
  assert stats.effect(a, b, level=0.99).low < e.low


def test_unpaired_effect_is_welch():
  a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {5: 3.0, 6: 5.0}
  e = stats.effect(a, b)
  ref = sp_stats.ttest_ind([3.0, 5.0], [1.0, 2.0, 3.0], equal_var=False)
  ci = ref.confidence_interval(0.95)
  assert not e.paired
  assert e.mean == pytest.approx(2.0)
  assert (e.low, e.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
  one = stats.effect({0: 1.0}, {1: 2.0})
  assert one.mean == 1.0 and math.isnan(one.low)


def test_fewer_failures_is_fishers_exact_test():
  assert stats.fewer_failures(6, 6, 0, 6)[0] == "holds"
  np.testing.assert_allclose(stats.fewer_failures(6, 6, 0, 6)[1], 2 / 924, rtol=1e-9)
  assert stats.fewer_failures(0, 6, 6, 6)[0] == "does not hold at this scale"
  v, p = stats.fewer_failures(3, 3, 0, 3)          # 0/3 vs 3/3: p = 0.1
  assert v == "inconclusive" and abs(p - 0.1) < 1e-9
  assert stats.fewer_failures(1, 3, 0, 0)[0] == "inconclusive"


def test_verdict_rules():
  mk = lambda lo, hi: stats.Effect((lo + hi) / 2, 0.1, lo, hi, 3, True)
  assert stats.verdict(mk(-0.3, -0.1)) == "holds"                    # b lower
  assert stats.verdict(mk(0.1, 0.3)) == "does not hold at this scale"
  assert stats.verdict(mk(-0.1, 0.1)) == "inconclusive"
  assert stats.verdict(mk(0.1, 0.3), better="higher") == "holds"
  # 'matches or beats' within a margin of 0.05: a tiny loss still matches.
  assert stats.verdict(mk(-0.01, 0.04), margin=0.05, claim="matches or beats") == "holds"
  assert stats.verdict(mk(0.06, 0.2), margin=0.05,
                       claim="matches or beats") == "does not hold at this scale"
  assert stats.verdict(stats.Effect(0.0, math.nan, math.nan, math.nan, 1, False)) == (
      "inconclusive")
  with pytest.raises(ValueError):
    stats.verdict(mk(0, 1), better="up")


# --------------------------------------------------------------- bookkeeping


def _write_metrics(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_metric_rows_carry_time_across_restarts(tmp_path):
  _write_metrics(tmp_path / "metrics.jsonl", [
      {"step": 0, "compile_sec": 3.0},
      {"step": 100, "train_time_sec": 10.0, "loss": 1.0},
      {"step": 100, "eval/nll_bound": 2.0},
      {"step": 200, "train_time_sec": 20.0},
      {"step": 200, "eval/nll_bound": 1.5},
      {"step": 300, "train_time_sec": 30.0},            # lost: killed before a checkpoint
      {"step": 200, "compile_sec": 2.5},                # resumed from step 200
      {"step": 300, "train_time_sec": 9.0},
      {"step": 300, "eval/nll_bound": 1.2},
  ])
  rows = runner.metric_rows(tmp_path)
  assert [r["step"] for r in rows] == [100, 200, 300]
  assert [r["train_time_sec"] for r in rows] == [10.0, 20.0, 29.0]
  assert rows[-1]["bits_per_token"] == pytest.approx(1.2 / math.log(2))


def test_metric_rows_restart_from_scratch(tmp_path):
  _write_metrics(tmp_path / "metrics.jsonl", [
      {"step": 0, "compile_sec": 3.0},
      {"step": 100, "train_time_sec": 10.0}, {"step": 100, "eval/nll_bound": 2.0},
      {"step": 0, "compile_sec": 3.0},                  # no checkpoint: from step 0
      {"step": 100, "train_time_sec": 12.0}, {"step": 100, "eval/nll_bound": 1.9},
  ])
  rows = runner.metric_rows(tmp_path)
  assert [(r["train_time_sec"], r["nll_bound"]) for r in rows] == [(12.0, 1.9)]


def _fake_trainer(calls):
  def train(config, workdir):
    calls.append(workdir)
    n = config.train.num_steps
    rows = [{"step": 0, "compile_sec": 1.0}]
    for s in range(n // 2, n + 1, n // 2):
      rows += [{"step": s, "train_time_sec": s / 100},
               {"step": s, "eval/nll_bound": 3.0 - s / n + config.seed / 10}]
    from tcsm_jax import fs
    fs.write_text_atomic(fs.join(workdir, "metrics.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in rows))
    return {}
  return train


def test_runner_skips_finished_runs_and_refuses_a_changed_design(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(runner.trainer, "train_and_evaluate", _fake_trainer(calls))
  cfg = kjv_tiny.get_config()
  cfg.train.num_steps = 10
  runs = [runner.Run("v", s, cfg.copy_and_resolve_references(),
                     lambda run, wd: {"final_nll": 1.0 + run.seed})
          for s in (0, 1)]
  for r in runs:
    r.config.seed = r.seed
  rows = runner.run_all(tmp_path, "demo", runs)
  assert len(calls) == 2 and len(rows) == 4
  assert rows[1]["final_nll"] == 1.0 and rows[3]["final_nll"] == 2.0
  assert rows[3]["diverged"] == 0.0
  assert "final_nll" not in rows[0]                  # final metrics on the last row only
  assert rows[3]["nll_bound"] == pytest.approx(2.1)  # seed 1's curve
  again = runner.run_all(tmp_path, "demo", runs)
  assert len(calls) == 2 and again == rows           # finished: skipped, same rows
  changed = runner.Run("v", 0, cfg.copy_and_resolve_references())
  changed.config.train.num_steps = 20
  with pytest.raises(errors.FlagError, match="another config.*train.num_steps"):
    runner.run_all(tmp_path, "demo", [changed])
  # A key added to the schema after a run was saved: harmless at its default.
  res_path = tmp_path / "runs" / "v" / "seed_0" / "result.json"
  res = json.loads(res_path.read_text())
  saved = json.loads(res["config"])
  del saved["teacher"]["top_k"]
  res["config"] = json.dumps(saved, sort_keys=True)
  res_path.write_text(json.dumps(res))
  assert runner.run_all(tmp_path, "demo", runs) == rows and len(calls) == 2
  moved = runner.Run("v", 0, runs[0].config.copy_and_resolve_references())
  moved.config.teacher.top_k = 3
  with pytest.raises(errors.FlagError, match="teacher.top_k"):
    runner.run_all(tmp_path, "demo", [moved])
  (tmp_path / "runs" / "v" / "seed_1" / "result.json").write_text("{not json")
  with pytest.raises(errors.WorkdirError, match="not a study result"):
    runner.run_all(tmp_path, "demo", runs)


def test_a_diverged_run_is_a_recorded_result(tmp_path, monkeypatch):
  calls = []
  fake = _fake_trainer(calls)

  def diverge(config, workdir):
    fake(config, workdir)
    raise runner.trainer.TrainingError("stopped at step 10: 3 evals worse")

  monkeypatch.setattr(runner.trainer, "train_and_evaluate", diverge)
  cfg = kjv_tiny.get_config()
  cfg.train.num_steps = 10
  finals = []
  run = runner.Run("v", 0, cfg, lambda r, wd: finals.append(1) or {"x": 1.0})
  rows = runner.run_all(tmp_path, "demo", [run])
  assert rows[-1]["diverged"] == 1.0 and "x" not in rows[-1] and not finals
  assert rows[-1]["stopped_step"] == 10.0
  assert len(rows) == 2 and len(calls) == 1
  assert runner.run_all(tmp_path, "demo", [run]) == rows and len(calls) == 1
  res = json.loads((tmp_path / "runs" / "v" / "seed_0" / "result.json").read_text())
  assert "3 evals worse" in res["error"]


def test_a_run_stopped_before_its_first_eval_still_has_a_row(tmp_path, monkeypatch):
  def diverge(config, workdir):
    from tcsm_jax import fs
    fs.write_text_atomic(fs.join(workdir, "metrics.jsonl"), '{"step": 0, "compile_sec": 1}\n')
    raise runner.trainer.TrainingError("stopped at step 184: 100 consecutive steps were "
                                       "skipped")

  monkeypatch.setattr(runner.trainer, "train_and_evaluate", diverge)
  cfg = kjv_tiny.get_config()
  rows = runner.run_all(tmp_path, "demo", [runner.Run("v", 3, cfg)])
  assert len(rows) == 1 and rows[0]["seed"] == 3 and rows[0]["step"] == 184
  assert rows[0]["diverged"] == 1.0 and math.isnan(rows[0]["nll_bound"])
  assert report.summarize(rows)[0]["n_seeds"] == 1


def test_summary_is_the_mean_of_runs_and_report_files(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for v in ("a", "b"):
    for seed in range(3):
      for step in (10, 20):
        rows.append(dict(study="s", variant=v, seed=seed, step=step,
                         train_time_sec=step * (1 + seed / 10),
                         nll_bound=float(rng.normal(2.0, 0.1)), bits_per_token=1.0))
      rows[-1]["final_nll"] = float(rng.normal(2.0, 0.1))
  summary = report.summarize(rows)
  assert [(r["variant"], r["step"]) for r in summary] == [
      ("a", 10), ("a", 20), ("b", 10), ("b", 20)]
  for r in summary:
    vals = [x["nll_bound"] for x in rows if (x["variant"], x["step"]) ==
            (r["variant"], r["step"])]
    assert r["n_seeds"] == 3
    assert r["nll_bound_mean"] == pytest.approx(np.mean(vals))
    assert r["nll_bound_std"] == pytest.approx(np.std(vals, ddof=1))
  assert "final_nll_mean" in summary[1] and "final_nll_mean" not in summary[0]
  report.write_runs(tmp_path, rows)
  report.write_summary(tmp_path, summary)
  report.plot_curves(tmp_path, "curves", summary, ["a", "b"], "t")
  report.write_report(tmp_path, "T", "claim", "setup", "cmd",
                      [report.final_table(rows, ["a", "b"], ["final_nll"])], ["v"])
  with open(tmp_path / "runs.csv") as f:
    got = list(csv.DictReader(f))
  assert len(got) == len(rows) and got[1]["final_nll"] and not got[0]["final_nll"]
  assert (tmp_path / "curves.png").stat().st_size > 1000
  text = (tmp_path / "REPORT.md").read_text()
  assert "| a | " in text and "+- " in text and "## Verdicts" in text


def test_context_steps_and_schedule():
  ctx = Context("/tmp/x", [0], budget=0.5)
  assert ctx.steps(1000) == 500 and ctx.steps(4) == 10
  assert Context("/tmp/x", [0], quick=True).steps(1000) == 20
  cfg = kjv_tiny.get_config()
  ctx.schedule(cfg, 500)
  t = cfg.train
  assert (t.num_steps, t.eval_every, t.log_every, t.checkpoint_every) == (500, 100, 100,
                                                                          500)


# ------------------------------------------------------------ quick studies


@pytest.mark.slow
@pytest.mark.parametrize("name", ["objectives", "teacher", "distill", "reward",
                                  "reward_bias", "hamming", "ratio", "guidance"])
def test_quick_study_writes_sane_outputs(name, tmp_path):
  # The user's command, in its own process (one CPU device, the compile cache on).
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "experiments.study", f"--study={name}",
         f"--outdir={tmp_path}", "--quick", "--seeds=2"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = lambda: subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                               timeout=900)
  out = run()
  assert out.returncode == 0, out.stderr[-3000:]
  assert "training in" in out.stderr          # (so its absence below means something)
  path = tmp_path / "REPORT.md"
  for f in ("runs.csv", "summary.csv", "REPORT.md"):
    assert (tmp_path / f).exists(), f
  assert list(tmp_path.glob("*.png"))
  with open(tmp_path / "runs.csv") as f:
    rows = list(csv.DictReader(f))
  with open(tmp_path / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  assert rows and all(math.isfinite(float(r["nll_bound"])) for r in rows)
  assert all(float(r["train_time_sec"]) >= 0 for r in rows)
  # Seeds differ, and the summary is the mean of the runs.
  for v in {r["variant"] for r in rows}:
    finals = {r["seed"]: float(r["nll_bound"]) for r in rows if r["variant"] == v}
    assert set(finals) == {"0", "1"} and len(set(finals.values())) == 2, v
  for s in summary:
    vals = [float(r["nll_bound"]) for r in rows
            if (r["variant"], r["step"]) == (s["variant"], s["step"])]
    assert float(s["nll_bound_mean"]) == pytest.approx(np.mean(vals), rel=1e-9)
  text = open(path).read()
  assert "## Verdicts" in text and f"--study={name}" in text
  assert any(w in text for w in ("holds", "inconclusive", "does not hold"))
  # Re-running trains nothing and writes the same runs.
  before = (tmp_path / "runs.csv").read_text()
  again = run()
  assert again.returncode == 0 and "training in" not in again.stderr
  assert (tmp_path / "runs.csv").read_text() == before


def test_a_study_directory_holds_one_design(tmp_path):
  from experiments.study.__main__ import check_design, parse_shard
  check_design(tmp_path, dict(study="teacher", budget=1.0, quick=False))
  check_design(tmp_path, dict(study="teacher", budget=1.0, quick=False))   # same: fine
  with pytest.raises(errors.FlagError, match="quick False -> True"):
    check_design(tmp_path, dict(study="teacher", budget=1.0, quick=True))
  with pytest.raises(errors.FlagError, match="study 'teacher' -> 'reward'"):
    check_design(tmp_path, dict(study="reward", budget=1.0, quick=False))
  (tmp_path / "study.json").write_text("{broken")
  with pytest.raises(errors.WorkdirError, match="not a study record"):
    check_design(tmp_path, dict(study="teacher", budget=1.0, quick=False))
  assert parse_shard("1/3") == (1, 3)
  for bad in ("3/3", "a", "1/0", "-1/2"):
    with pytest.raises(errors.FlagError, match="--shard"):
      parse_shard(bad)


def test_a_diverged_shared_run_stops_the_study_with_one_line(tmp_path, monkeypatch):
  def diverge(config, workdir):
    raise runner.trainer.TrainingError("stopped at step 5: non-finite")

  monkeypatch.setattr(runner.trainer, "train_and_evaluate", diverge)
  ctx = Context(str(tmp_path), [0])
  with pytest.raises(errors.UserError, match="shared run 'teacher' diverged"):
    ctx.prerequisites({"teacher": kjv_tiny.get_config()})
