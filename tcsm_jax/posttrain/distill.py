"""Teachers from trained runs: AR -> diffusion distillation and parametric pre-training.

``load_teacher(config)`` restores the run in ``config.teacher.workdir`` and returns a
target function for ``losses.tcsm_loss``: with ``loss.teacher_weight = 1`` training
distils the teacher into the diffusion student; with ``0 < teacher_weight < 1`` the
teacher target is mixed with the data target (parametric pre-training).
``teacher.kind = 'markov'`` is the oracle: the exact law of the synthetic Markov data.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from tcsm_jax import targets


def load_teacher(config: ml_collections.ConfigDict, vocab_size: int) -> Callable:
  """Target function ``x0 -> [b, L, V]`` of the teacher named by ``config.teacher``.

  Raises:
    ValueError: teacher of the wrong kind or vocabulary.
  """
  from tcsm_jax.training import restore
  t = config.teacher
  if t.kind == "markov":
    from tcsm_jax.data import synthetic
    return synthetic.oracle_teacher(synthetic.chain_from_config(config.data))
  if not t.workdir:
    raise ValueError("teacher.workdir is empty: point it at a trained run")
  run = restore.load_run(t.workdir)
  exp = run.experiment
  if exp.dataset.vocab_size != vocab_size:
    raise ValueError(f"teacher vocabulary {exp.dataset.vocab_size} != student "
                     f"vocabulary {vocab_size}")
  if t.kind == "ar":
    if not exp.causal:
      raise ValueError(f"teacher.kind='ar' but {t.workdir} holds a diffusion model")
    if run.config.data.seq_len < config.data.seq_len:
      raise ValueError("the AR teacher's max length is shorter than the student's")
    return targets.ar_teacher(exp.model, run.params, t.mode, t.top_k)
  if t.kind == "mlm":
    if exp.causal or exp.process.mask_id is None:
      raise ValueError("teacher.kind='mlm' needs an absorbing diffusion (masked) model")
    return targets.mlm_teacher(lambda p, x, s: exp.apply_fn(p, x, s), run.params,
                               exp.process.mask_id)
  raise ValueError(f"unknown teacher.kind {t.kind!r}")
