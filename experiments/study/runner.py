"""Runs a study's training runs (variants x seeds) once each, resumably.

Layout under ``outdir``::

  prereq/<name>/            a run every variant shares (teacher, judge, reference),
                            trained once (seed 0)
  runs/<variant>/seed_<s>/  one training workdir per variant and seed
      result.json           written last: the run's rows and final metrics; a run with
                            one is finished and is never trained again

A run without ``result.json`` resumes from its last checkpoint. Its training time
(``train_time_sec``: seconds in train steps, compilation, evaluation and checkpointing
excluded) is carried across the restart. A finished run whose saved config differs from
the one asked for (another ``--budget`` or ``--quick``) is refused: a study directory
holds one design.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Callable, Dict, List, Optional

import ml_collections
from absl import logging

from experiments import common
from tcsm_jax import errors, fs
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import trainer

ROW_KEYS = ["study", "variant", "seed", "step", "train_time_sec", "nll_bound",
            "bits_per_token"]


@dataclasses.dataclass
class Run:
  """One training run of a study: ``variant`` trained with ``config`` (its seed set)."""

  variant: str
  seed: int
  config: ml_collections.ConfigDict
  # (run, workdir) -> extra final metrics (floats) for the run's last row.
  finalize: Optional[Callable[["Run", str], Dict[str, float]]] = None


def _config_key(config) -> str:
  return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


def metric_rows(workdir) -> List[dict]:
  """``{step, train_time_sec, nll_bound, bits_per_token}`` at every evaluation of a
  training workdir, with training time accumulated over restarts.

  The trainer counts each process's train time from zero and writes ``compile_sec`` at
  the step it (re)started from; a restart at step ``s`` continues from the cumulative
  time logged at ``s`` (or the last log before it, a slight undercount when the
  checkpoint fell between logs). Later rows for a step replace earlier ones.
  """
  cum = {}            # step -> cumulative train seconds (in file order: latest wins)
  offset = 0.0
  evals = {}
  path = fs.join(workdir, "metrics.jsonl")
  text = fs.read_text(path) if fs.exists(path) else ""   # none: stopped before a log
  for line in text.splitlines():
    if not line.strip():
      continue
    r = json.loads(line)
    step = int(r["step"])
    if "compile_sec" in r:                       # a (re)start at this step
      before = [s for s in cum if s <= step]
      offset = cum[max(before)] if before else 0.0
      cum = {s: t for s, t in cum.items() if s <= step}
    if "train_time_sec" in r:
      cum[step] = offset + float(r["train_time_sec"])
    if "eval/nll_bound" in r:
      evals[step] = float(r["eval/nll_bound"])
  return [dict(step=s, train_time_sec=cum.get(s, float("nan")), nll_bound=v,
               bits_per_token=v / math.log(2.0)) for s, v in sorted(evals.items())]


def config_differences(saved_key: str, config) -> List[str]:
  """Keys whose value differs between a saved run's config and ``config``. Both are
  completed with the schema's defaults, as a resume does (``config.from_dict``), so a
  key added to the schema later counts only if ``config`` moves it off its default."""
  try:
    saved = config_lib.from_dict(json.loads(saved_key))
  except errors.ConfigError as e:          # a key the schema no longer has
    return [str(e)]
  new = config_lib.from_dict(json.loads(_config_key(config)))
  a, b = config_lib.flatten(saved.to_dict()), config_lib.flatten(new.to_dict())
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _load_result(path, config, what: str) -> Optional[dict]:
  if not fs.exists(path):
    return None
  try:
    res = json.loads(fs.read_text(path))
    saved = res["config"]
  except (ValueError, KeyError):
    raise errors.WorkdirError(f"{path} is not a study result (corrupt?); delete it to "
                              "rerun that run") from None
  diff = config_differences(saved, config)
  if diff:
    raise errors.FlagError(
        f"{what} in {fs.path(path).parent} was trained with another config ({', '.join(diff[:4])}"
        f"{' ...' if len(diff) > 4 else ''} differ: another --budget, --quick or code "
        "version); use a new --outdir or delete that run")
  return res


def _stopped_step(message: str) -> float:
  m = re.search(r"stopped at step (\d+)", message)
  return float(m.group(1)) if m else 0.0


def train_once(workdir, config, what: str, finalize=None) -> dict:
  """Trains ``config`` in ``workdir`` unless it holds a finished result; returns the
  result ``{rows, final, config}`` (a run stopped by the trainer's divergence guard is
  finished too, with ``final = {diverged: 1}`` and the guard's message as ``error``)."""
  path = fs.join(workdir, "result.json")
  res = _load_result(path, config, what)
  if res is not None:
    logging.info("%s: finished earlier, skipped", what)
    return res
  logging.info("%s: training in %s", what, workdir)
  fs.makedirs(workdir)
  try:
    trainer.train_and_evaluate(config, str(workdir))
  except trainer.TrainingError as e:
    # Divergence is a result (stability is part of what studies compare): the run is
    # recorded as finished with its curve so far and ``diverged = 1``; no final
    # measurement (there may be no good checkpoint to measure).
    logging.warning("%s diverged: %s", what, e)
    res = {"rows": metric_rows(workdir),
           "final": {"diverged": 1.0, "stopped_step": _stopped_step(str(e))},
           "config": _config_key(config), "error": str(e)}
    common.write_json(path, res)
    return res
  rows = metric_rows(workdir)
  final = dict(finalize(str(workdir))) if finalize else {}
  final["diverged"] = 0.0
  res = {"rows": rows, "final": final, "config": _config_key(config)}
  common.write_json(path, res)
  return res


def prerequisite(outdir, name: str, config) -> dict:
  """A shared run (``prereq/<name>``), trained once; its result plus ``workdir``."""
  wd = fs.join(outdir, "prereq", name)
  res = train_once(wd, config, f"prerequisite {name!r}")
  return dict(res, workdir=str(wd))


def logged(workdir, key: str) -> List[float]:
  """Every logged value of ``key`` (e.g. ``grad_norm``) in a workdir's metrics, in
  step order (later rows for a step replace earlier ones)."""
  path = fs.join(workdir, "metrics.jsonl")
  if not fs.exists(path):
    return []
  return [float(r[key]) for r in common.read_jsonl(path) if key in r]


def run_dir(outdir, run: Run):
  return fs.join(outdir, "runs", run.variant, f"seed_{run.seed}")


def is_finished(outdir, run: Run) -> bool:
  return fs.exists(fs.join(run_dir(outdir, run), "result.json"))


def run_all(outdir, study: str, runs: List[Run]) -> List[dict]:
  """Trains every unfinished run, in order; returns the rows of all of them
  (``ROW_KEYS`` plus the run's final metrics on its last row)."""
  out = []
  for run in runs:
    wd = run_dir(outdir, run)
    fin = (lambda w, run=run: run.finalize(run, w)) if run.finalize else None
    res = train_once(wd, run.config, f"{run.variant} seed {run.seed}", fin)
    rows = [dict(study=study, variant=run.variant, seed=run.seed, **r)
            for r in res["rows"]]
    final = dict(res["final"])
    if final.get("diverged") == 1.0 and "stopped_step" not in final:
      final["stopped_step"] = _stopped_step(res.get("error", ""))
    if not rows:           # stopped before its first evaluation: one row says so
      step = int(final.get("stopped_step", 0))
      rows = [dict(study=study, variant=run.variant, seed=run.seed, step=step,
                   train_time_sec=float("nan"), nll_bound=float("nan"),
                   bits_per_token=float("nan"))]
    rows[-1].update(final)
    out.extend(rows)
  return out
