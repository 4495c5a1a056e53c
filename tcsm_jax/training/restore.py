"""Load a trained run from its workdir, on any mesh: config, experiment and parameters.

A checkpoint written on any topology (hosts x devices, FSDP or not) restores here:
the restore target carries the shardings of the *current* mesh (by default every
device, parameters replicated), never the saved layout, and orbax reshards.

A run built on borrowed models (a fine-tuning reference, a teacher: ``pins.py``) loads
only if they are still the ones its checkpoint recorded, unless its config has
``train.allow_reference_change``; ``Run.pin()`` is the record a run borrowing this one
keeps (step, parameter fingerprint, what it was trained on).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from tcsm_jax import fs
from tcsm_jax.data import prepared
from tcsm_jax.training import checkpoint as ckpt_lib
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import partition, pins
from tcsm_jax.training import workdir as workdir_lib

load_config = workdir_lib.load_config


@dataclasses.dataclass
class Run:
  """A restored run. ``params`` are what ``experiment.apply_fn`` takes."""

  config: ml_collections.ConfigDict
  experiment: experiment_lib.Experiment
  params: Any
  step: int
  workdir: str
  fingerprint: str = ""                       # digest of the restored parameters
  trained_on: Optional[Dict[str, Any]] = None   # pins.identity of its training data
  use_ema: bool = True

  def pin(self) -> Dict[str, Any]:
    """What a run that borrows this one records (``pins.py``)."""
    return {"workdir": os.fspath(self.workdir), "step": int(self.step),
            "params": "ema" if self.use_ema else "raw", "fingerprint": self.fingerprint,
            **(self.trained_on or {})}


def trained_on(workdir: str) -> Optional[Dict[str, Any]]:
  """The data identity recorded in ``workdir``'s newest checkpoint (no arrays read);
  None if there is none (no checkpoint, or one written before it was recorded)."""
  ckpt = ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  return None if step is None else pins.identity_from_meta(ckpt.meta(step))


def abstract_state(exp: experiment_lib.Experiment, mesh: Mesh, seed: int = 0):
  """Restore target of ``exp``'s train state with the shardings of ``mesh``."""
  create, _, _ = experiment_lib.state_factory(exp)
  shapes = jax.eval_shape(create, jax.random.PRNGKey(seed))
  shardings = partition.state_shardings(shapes, mesh, exp.config.mesh.fsdp_min_bytes)
  return ckpt_lib.abstract_like(shapes, shardings), shardings


def _tokenizer_only_if_data_missing(config, workdir: str):
  """A prepared-data run on a machine without its shards: the workdir's tokenizer copy
  (vocabulary, decode, encode; empty splits) is enough to sample."""
  if config.data.name != "prepared":
    return None
  if fs.exists(fs.join(config.data.path, prepared.MANIFEST)):
    if prepared.read_manifest(config.data.path).get("splits"):
      return None
    # A tokenizer without data (a converted checkpoint's: training/imports.py).
    return prepared.tokenizer_only(os.fspath(config.data.path))
  copy = fs.join(workdir, "tokenizer")
  if not fs.exists(fs.join(copy, prepared.MANIFEST)):
    return None
  logging.warning("data.path %s is not here: using the workdir's tokenizer copy %s "
                  "(sampling works; evaluation needs the data or --data)",
                  config.data.path, copy)
  return prepared.tokenizer_only(os.fspath(copy))


def load_run(workdir: str, config: Optional[ml_collections.ConfigDict] = None,
             use_ema: bool = True, step: Optional[int] = None,
             dataset=None, mesh: Optional[Mesh] = None) -> Run:
  """Restores the newest (or ``step``) checkpoint of ``workdir`` onto ``mesh``.

  Args:
    workdir: a training workdir (local or bucket).
    config: default: the workdir's ``config.json``.
    use_ema: the EMA parameters (default) or the raw ones.
    step: a specific step; default the newest that loads and passes its checks.
    dataset: a prebuilt dataset (default: loaded from the config).
    mesh: where the parameters go; default every device, replicated.
  Raises:
    CheckpointError: if the workdir holds no usable checkpoint.
    WorkdirError / ConfigError: no workdir, no or a bad config.json, or a borrowed
      model changed since the checkpoint (``pins.check_unchanged``).
  """
  config = load_config(workdir) if config is None else config
  ckdir = fs.join(workdir, "checkpoints")
  if not fs.isdir(ckdir) or not ckpt_lib.Checkpointer(ckdir).all_steps():
    raise ckpt_lib.CheckpointError(
        f"no checkpoint in {workdir}: train first with "
        f"`python -m experiments.train --config=... --workdir={workdir}`")
  if dataset is None:
    dataset = _tokenizer_only_if_data_missing(config, workdir)
  exp = experiment_lib.build(config, dataset, workdir=workdir)
  mesh = partition.make_mesh(1) if mesh is None else mesh
  target, _ = abstract_state(exp, mesh, config.seed)
  ckpt = ckpt_lib.Checkpointer(ckdir)
  state, meta, got = ckpt.restore(target, step)
  pins.check_unchanged(meta.get("pins"), exp.pins, config.train.allow_reference_change,
                       workdir, doing="load it")
  params = state.ema_params if use_ema else state.params
  frozen = None
  if exp.frozen is not None:
    frozen = jax.device_put(exp.frozen, partition.state_shardings(
        exp.frozen, mesh, config.mesh.fsdp_min_bytes))
  fp = pins.digest(ckpt.restored_fingerprints, ".ema_params" if use_ema else ".params")
  return Run(config, exp, exp.full_params(params, frozen), got, workdir, fp,
             pins.identity_from_meta(meta) or pins.identity(exp.dataset), use_ema)
