"""Load a trained run from its workdir: config, experiment and parameters."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import ml_collections

from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import config as config_lib
from tcsm_jax.training import trainer


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  experiment: trainer.Experiment
  params: Any
  step: int
  workdir: str


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: not a training workdir "
                            "(train first with experiments.train)")
  with open(path) as f:
    saved = json.load(f)
  # Keys added to the schema after the run was started take their defaults.
  cfg = config_lib.default_config()
  _merge(cfg, saved, "")
  config_lib.validate(cfg)
  return cfg


def _merge(cfg, saved, path):
  for k, v in saved.items():
    if k not in cfg:
      raise ValueError(f"config.json has unknown key {path + k!r}")
    if isinstance(v, dict):
      _merge(cfg[k], v, path + k + ".")
    else:
      cfg[k] = type(cfg[k])(v) if isinstance(cfg[k], float) and isinstance(v, int) else v


def load_run(workdir: str, config: Optional[ml_collections.ConfigDict] = None,
             use_ema: bool = True, step: Optional[int] = None,
             dataset=None) -> Run:
  """Restores the newest (or ``step``) checkpoint of ``workdir``.

  Raises:
    CheckpointError: if the workdir holds no usable checkpoint.
  """
  config = load_config(workdir) if config is None else config
  ckdir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckdir) or not ckpt_lib.Checkpointer(ckdir).all_steps():
    raise ckpt_lib.CheckpointError(
        f"no checkpoint in {os.path.abspath(workdir)}: train first with "
        f"`python -m experiments.train --config=... --workdir={workdir}`")
  exp = trainer.build(config, dataset, workdir=workdir)
  create, _, _ = trainer.state_factory(exp)
  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  state, meta, got = ckpt_lib.Checkpointer(ckdir).restore(abstract, step)
  params = state.ema_params if use_ema else state.params
  return Run(config, exp, params, got, workdir)
