"""Teachers from trained runs: AR -> diffusion distillation and parametric pre-training.

Registers the loaders of ``config.teacher.kind`` in ``training.experiment.TEACHERS``;
each takes ``(config, dataset)`` (the student's data) and returns ``(target_fn(frozen,
x0) -> [b, L, V], frozen, pins)``, the teacher's clean-space log-conditionals, its
parameters, which the trainer passes to the jitted step as an argument, and its pin
(``training.pins``: a teacher trained on other data is refused; a resume after the
teacher was retrained in place is refused unless ``train.allow_reference_change``). With ``loss.teacher_weight = 1`` training distils the teacher into
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
from tcsm_jax.models import gpt2
from tcsm_jax.training import experiment as experiment_lib
from tcsm_jax.training import pins, restore


def _trained_teacher(config: ml_collections.ConfigDict, dataset):
  t = config.teacher
  pins.require_same_data("teacher", t.workdir, restore.trained_on(t.workdir), dataset)
  run = restore.load_run(t.workdir, dataset=dataset)
  return run, run.experiment


def _student_tokenizer_sha(dataset):
  tok = getattr(dataset, "tokenizer", None)
  return getattr(tok, "sha256", None) or (getattr(dataset, "info", None) or {}).get(
      "tokenizer_sha256")


def hf_teacher(config: ml_collections.ConfigDict, dataset):
  """``(model, params, pin)`` of ``teacher.workdir = 'hf:DIR'``: a Hugging Face GPT-2
  through ``gpt2.causal_lm`` (BOS = ``<|endoftext|>``). The student's vocabulary must be
  GPT-2's: the same size and, where both are known, the same tokenizer file."""
  t = config.teacher
  pt = gpt2.load(t.workdir, dtype=config.model.dtype, classifier=False,
                 need_tokenizer=False, what="teacher")
  v, want = dataset.vocab_size, pt.config.vocab_size
  sha, tsha = _student_tokenizer_sha(dataset), getattr(pt.tokenizer, "sha256", None)
  fix = ("; a GPT-2 teacher needs data tokenized with its tokenizer.json "
         f"(experiments.prepare_data --tokenizer=hf:{pt.directory}/tokenizer.json)")
  if v != want:
    raise errors.ConfigError(f"the teacher {t.workdir} predicts {want} tokens (its "
                             f"vocab_size), the student's data has a vocabulary of {v}"
                             + fix)
  if gpt2.same_tokenizer(pt.tokenizer, getattr(dataset, "tokenizer", None), sha) is False:
    raise errors.ConfigError(f"the teacher {t.workdir} has tokenizer sha256 "
                             f"{str(tsha)[:12]}..., the student's data {str(sha)[:12]}... "
                             f"(same size {v}, other tokens)" + fix)
  if config.data.seq_len > pt.config.n_positions:
    raise errors.ConfigError(f"the teacher {t.workdir}'s window n_positions "
                             f"{pt.config.n_positions} is shorter than the student's "
                             f"data.seq_len {config.data.seq_len}")
  pin = {"dir": t.workdir, "directory": pt.directory, "step": None,
         "fingerprint": gpt2.fingerprint(pt.directory), "vocab_size": want,
         "tokenizer_sha256": tsha}
  return gpt2.causal_lm(pt), pt.params, pin


def load_ar(config: ml_collections.ConfigDict, dataset) -> Tuple[Callable, Any, Any]:
  """An autoregressive teacher (exact / Top-K / dense Top-K + tail / Taylor ratios):
  a project causal run (``teacher.workdir``) or a Hugging Face GPT-2
  (``teacher.workdir = 'hf:DIR'``)."""
  vocab_size = dataset.vocab_size
  t = config.teacher
  if t.workdir.startswith("hf:"):
    model, params, pin = hf_teacher(config, dataset)
    pin = {"teacher": pin}
  else:
    run, exp = _trained_teacher(config, dataset)
    if not exp.causal:
      raise errors.ConfigError(f"teacher.kind='ar' but {t.workdir} holds a diffusion "
                               "model")
    if run.config.data.seq_len < config.data.seq_len:
      raise errors.ConfigError(
          f"the AR teacher's max length {run.config.data.seq_len} is shorter than the "
          f"student's data.seq_len {config.data.seq_len}")
    model, params, pin = exp.model, run.params, {"teacher": run.pin()}
  if t.mode in ("top_k", "top_k_tail") and t.top_k > vocab_size:
    raise errors.ConfigError(f"teacher.top_k {t.top_k} exceeds the vocabulary {vocab_size}")
  mode, k, m = t.mode, t.top_k, t.tail_samples
  if config.loss.hamming == 2:                     # exact pair ratios (config rule)
    return ((lambda frozen, x0, pairs: targets.pair_exact(
        targets.ar_log_prob_fn(model, frozen), x0, vocab_size, pairs)), params, pin)
  return ((lambda frozen, x0, key=None: targets.ar_teacher(model, frozen, mode, k, m)(
      x0, key)), params, pin)


def load_mlm(config: ml_collections.ConfigDict, dataset) -> Tuple[Callable, Any, Any]:
  """A masked-LM / absorbing-diffusion teacher's leave-one-out conditionals."""
  run, exp = _trained_teacher(config, dataset)
  if exp.causal or exp.process.mask_id is None:
    raise errors.ConfigError("teacher.kind='mlm' needs an absorbing diffusion (masked) "
                             f"model; {config.teacher.workdir} holds another")
  apply, mask_id = exp.apply_fn, exp.process.mask_id
  return ((lambda frozen, x0: targets.mlm_teacher(apply, frozen, mask_id)(x0)),
          run.params, {"teacher": run.pin()})


def load_markov(config: ml_collections.ConfigDict, dataset):
  """The oracle: the synthetic Markov chain's exact neighbour ratios (no parameters)."""
  del dataset
  chain = synthetic.chain_from_config(config.data)
  if config.loss.hamming == 2:                     # the exact pair ratios
    lp = synthetic.jax_log_prob_fn(chain)
    return ((lambda frozen, x0, pairs: targets.pair_exact(lp, x0, chain.vocab, pairs)),
            None, {})
  fn = synthetic.oracle_teacher(chain)
  return (lambda frozen, x0: fn(x0)), None, {}


def load_teacher(config: ml_collections.ConfigDict, dataset) -> Callable:
  """Target function ``x0 -> [b, L, V]`` of ``config.teacher`` (parameters closed
  over: for notebooks and benchmarks; training passes them as arguments)."""
  fn, frozen, _ = experiment_lib.load_teacher(config, dataset)
  return lambda x0, key=None: targets.call_target(functools.partial(fn, frozen), x0, key)


experiment_lib.register_teacher("ar", load_ar)
experiment_lib.register_teacher("mlm", load_mlm)
experiment_lib.register_teacher("markov", load_markov)
