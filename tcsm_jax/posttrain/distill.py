"""Teachers from trained runs: AR -> diffusion distillation and parametric pre-training.

Registers the loaders of ``config.teacher.kind`` in ``training.experiment.TEACHERS``;
each returns ``(target_fn(frozen, x0) -> [b, L, V], frozen)``, the teacher's
clean-space log-conditionals and its parameters, which the trainer passes to the jitted
step as an argument. With ``loss.teacher_weight = 1`` training distils the teacher into
the diffusion student; with ``0 < teacher_weight < 1`` the teacher target is mixed with
the data target (parametric pre-training). ``teacher.kind = 'markov'`` is the oracle:
the exact law of the synthetic Markov data (no parameters). With ``loss.hamming = 2``
the markov and exact-AR teachers return pair log-ratios ``target_fn(frozen, x0,
pairs) -> [b, P, V, V]`` (``targets.pair_exact``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Tuple

import ml_collections

from tcsm_jax import errors, targets
from tcsm_jax.data import synthetic
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import restore


def _trained_teacher(config: ml_collections.ConfigDict, vocab_size: int):
  t = config.teacher
  run = restore.load_run(t.workdir)
  exp = run.experiment
  if exp.dataset.vocab_size != vocab_size:
    raise errors.ConfigError(f"teacher {t.workdir} has vocabulary {exp.dataset.vocab_size}"
                             f", the student {vocab_size}")
  return run, exp


def load_ar(config: ml_collections.ConfigDict, vocab_size: int) -> Tuple[Callable, Any]:
  """An autoregressive teacher (exact / Top-K / dense Top-K + tail / Taylor ratios)."""
  run, exp = _trained_teacher(config, vocab_size)
  t = config.teacher
  if not exp.causal:
    raise errors.ConfigError(f"teacher.kind='ar' but {t.workdir} holds a diffusion model")
  if run.config.data.seq_len < config.data.seq_len:
    raise errors.ConfigError(
        f"the AR teacher's max length {run.config.data.seq_len} is shorter than the "
        f"student's data.seq_len {config.data.seq_len}")
  if t.mode in ("top_k", "top_k_tail") and t.top_k > vocab_size:
    raise errors.ConfigError(f"teacher.top_k {t.top_k} exceeds the vocabulary {vocab_size}")
  model, mode, k, m = exp.model, t.mode, t.top_k, t.tail_samples
  if config.loss.hamming == 2:                     # exact pair ratios (config rule)
    return ((lambda frozen, x0, pairs: targets.pair_exact(
        targets.ar_log_prob_fn(model, frozen), x0, vocab_size, pairs)), run.params)
  return ((lambda frozen, x0, key=None: targets.ar_teacher(model, frozen, mode, k, m)(
      x0, key)), run.params)


def load_mlm(config: ml_collections.ConfigDict, vocab_size: int) -> Tuple[Callable, Any]:
  """A masked-LM / absorbing-diffusion teacher's leave-one-out conditionals."""
  run, exp = _trained_teacher(config, vocab_size)
  if exp.causal or exp.process.mask_id is None:
    raise errors.ConfigError("teacher.kind='mlm' needs an absorbing diffusion (masked) "
                             f"model; {config.teacher.workdir} holds another")
  apply, mask_id = exp.apply_fn, exp.process.mask_id
  return ((lambda frozen, x0: targets.mlm_teacher(apply, frozen, mask_id)(x0)),
          run.params)


def load_markov(config: ml_collections.ConfigDict, vocab_size: int):
  """The oracle: the synthetic Markov chain's exact neighbour ratios (no parameters)."""
  del vocab_size
  chain = synthetic.chain_from_config(config.data)
  if config.loss.hamming == 2:                     # the exact pair ratios
    lp = synthetic.jax_log_prob_fn(chain)
    return (lambda frozen, x0, pairs: targets.pair_exact(lp, x0, chain.vocab, pairs)), None
  fn = synthetic.oracle_teacher(chain)
  return (lambda frozen, x0: fn(x0)), None


def load_teacher(config: ml_collections.ConfigDict, vocab_size: int) -> Callable:
  """Target function ``x0 -> [b, L, V]`` of ``config.teacher`` (parameters closed
  over: for notebooks and benchmarks; training passes them as arguments)."""
  fn, frozen = experiment_lib.load_teacher(config, vocab_size)
  return lambda x0, key=None: targets.call_target(functools.partial(fn, frozen), x0, key)


experiment_lib.register_teacher("ar", load_ar)
experiment_lib.register_teacher("mlm", load_mlm)
experiment_lib.register_teacher("markov", load_markov)
