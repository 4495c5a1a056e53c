"""What every study sees: output directory, seeds, compute budget, quick mode."""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np

from experiments.study import runner
from tcsm_jax import errors


@dataclasses.dataclass
class Context:
  outdir: str
  seeds: List[int]
  budget: float = 1.0      # multiplies every full-study step count
  quick: bool = False      # a smoke-sized study (tests): few steps, few variants
  command: str = ""
  judge: str = ""          # --judge: replaces the study's own trained judge (workdir/hf:DIR)
  gen_ppl_convention: str = "auto"
  # What plan() learned for report_() (e.g. the teachers' cost and quality).
  notes: dict = dataclasses.field(default_factory=dict)

  def steps(self, full: int, quick: int = 20) -> int:
    """Training steps: ``full * budget`` (at least 10), or ``quick`` in quick mode."""
    return quick if self.quick else max(10, int(round(full * self.budget)))

  def schedule(self, cfg, num_steps: int, evals: int = 5, quick_evals: int = 2) -> None:
    """Sets ``num_steps`` and evenly spaced evaluations (logged at each, so training
    time is known there); one checkpoint, at the end."""
    n = quick_evals if self.quick else evals
    every = max(1, num_steps // n)
    t = cfg.train
    t.num_steps = num_steps
    t.eval_every = every
    t.log_every = every
    t.checkpoint_every = num_steps
    t.keep_checkpoints = 1
    t.async_checkpoint = False
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(1, num_steps // 10))

  def run_all(self, study: str, runs) -> List[dict]:
    return runner.run_all(self.outdir, study, runs)

  def logged(self, variant: str, key: str) -> np.ndarray:
    """Every logged value of ``key`` (e.g. ``grad_norm``) in the runs of ``variant``,
    over this study's seeds (float64; empty when none was logged)."""
    vals = []
    for seed in self.seeds:
      vals += runner.logged(runner.run_dir(self.outdir, runner.Run(variant, seed, None)),
                            key)
    return np.asarray(vals, np.float64)

  def prerequisite(self, name: str, config):
    return runner.prerequisite(self.outdir, name, config)

  def prerequisites(self, configs: dict, note: str = "prereq") -> dict:
    """Trains each shared run of ``{name: config}`` once; returns ``{name: workdir}``
    and records each one's last eval NLL, training time and steps in
    ``notes[note][name]``."""
    info, dirs = self.notes.setdefault(note, {}), {}
    for name, cfg in configs.items():
      res = self.prerequisite(name, cfg)
      if res["final"].get("diverged") == 1.0 or not res["rows"]:
        raise errors.UserError(
            f"shared run {name!r} diverged ({res.get('error', 'no evaluation')}); every "
            f"variant needs it: delete {res['workdir']} and fix its config first")
      dirs[name] = res["workdir"]
      last = res["rows"][-1]
      info[name] = dict(nll=last["nll_bound"], time=last["train_time_sec"],
                        steps=last["step"])
    return dirs


Variant = Tuple[str, dict]


def with_overrides(cfg, overrides: dict):
  """A copy of ``cfg`` with dotted-key ``overrides`` (python values) applied."""
  cfg = cfg.copy_and_resolve_references()
  for key, val in overrides.items():
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
      node = node[p]
    if parts[-1] not in node:
      raise KeyError(f"unknown config key {key!r}")
    node[parts[-1]] = val
  return cfg
