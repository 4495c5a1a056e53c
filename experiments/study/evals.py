"""Final measurements of a finished study run: NLL with its standard error, the gap to
a Markov chain's exact NLL on the very tokens evaluated, and sample quality."""

from __future__ import annotations

import math
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from tcsm_jax import likelihood, quality, sampling
from tcsm_jax.data import pipeline


def validation_batches(config, dataset, num_batches: int) -> list:
  """The validation batches the trainer's evaluation reads (one process): the first
  ``num_batches`` x ``train.batch_size`` sequences of ``data.seq_len`` tokens."""
  return list(pipeline.eval_batches(dataset.validation, config.data.seq_len,
                                    config.train.batch_size, num_batches))


def per_sequence_nll(run, batches: Sequence[np.ndarray], num_t: int,
                     seed: int = 0) -> np.ndarray:
  """``[num_sequences]`` NLL in nats per sequence: exact for a causal model, the ELBO
  bound (``num_t`` stratified time samples) for a diffusion model."""
  exp = run.experiment
  if exp.causal:
    from tcsm_jax.models.transformer import ar_log_likelihood
    fn = jax.jit(lambda p, x: -ar_log_likelihood(exp.model, p, x))
    return np.concatenate([np.asarray(fn(run.params, jnp.asarray(b))) for b in batches])
  fn = jax.jit(lambda p, k, x: likelihood.nll_bound(
      k, lambda xt, s: exp.apply_fn(p, xt, s), x, exp.process, exp.schedule,
      num_t)["bound"])
  key = jax.random.PRNGKey(seed + 12345)
  return np.concatenate([np.asarray(fn(run.params, jax.random.fold_in(key, i),
                                       jnp.asarray(b)))
                         for i, b in enumerate(batches)])


def _mean_se(x: np.ndarray):
  x = np.asarray(x, np.float64)
  return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else (
      float("nan"))


def final_nll(run, num_batches: int, num_t: int, markov_chain=None
              ) -> Dict[str, float]:
  """``final_nll`` (nats/token) and ``final_nll_se`` of a loaded run
  (``common.load_run``) on the trainer's validation batches; with ``markov_chain`` also
  ``exact_nll`` of those very tokens under the chain, ``gap`` = final - exact and
  ``gap_se`` (paired over sequences)."""
  cfg = run.config
  batches = validation_batches(cfg, run.experiment.dataset, num_batches)
  length = cfg.data.seq_len
  nll = per_sequence_nll(run, batches, num_t, cfg.seed) / length
  out = {}
  out["final_nll"], out["final_nll_se"] = _mean_se(nll)
  if markov_chain is not None:
    exact = -markov_chain.log_prob(np.concatenate(batches)) / length
    out["exact_nll"], out["exact_nll_se"] = _mean_se(exact)
    out["gap"], out["gap_se"] = _mean_se(nll - exact)
  return out


def study_judge(ctx, judge_dir: str, dataset):
  """The judge of a study's sample quality: ``--judge`` (a workdir or ``hf:DIR``, bound
  to the study's data and ``--gen_ppl_convention``) when given, else the study's own
  trained causal judge ``judge_dir`` as ``(model, params)``."""
  if ctx.judge:
    return common.load_judge(ctx.judge, dataset, ctx.gen_ppl_convention)
  jr = common.load_run(judge_dir, flag="judge")
  return (jr.experiment.model, jr.params)


def sample_quality(run, judge, steps: Sequence[int], num_samples: int,
                   seed: int = 0) -> Dict[str, float]:
  """Generative perplexity under ``judge`` (``(model, params)`` or a bound
  ``gen_ppl.Judge``, ``study_judge``) and unigram entropy of
  ``num_samples`` samples of a loaded run for each number of sampling ``steps``
  (``gen_ppl_s<n>``, ``entropy_s<n>``): the analytic sampler with exact draws from the
  mask state (``sampling.sample``'s defaults)."""
  exp = run.experiment
  out = {}
  for n in steps:
    x, _ = sampling.jit_sampler(exp.apply_fn, exp.process, exp.schedule,
                                (num_samples, run.config.data.seq_len), steps=int(n))(
                                    run.params, jax.random.PRNGKey(seed + 777))
    q = quality.report(np.asarray(x), judge)
    out[f"gen_ppl_s{n}"] = float(q["gen_perplexity"])
    out[f"entropy_s{n}"] = float(q["unigram_entropy"])
  return out
