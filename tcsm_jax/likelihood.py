"""The ELBO: an upper bound on the negative log-likelihood, by Monte Carlo over time.

For a clean sequence ``x0`` of length ``L`` and a denoiser ``(x_t, sigma_bar) -> logits``:

  ``-log p_theta(x0) <= recon + int_0^1 E_{x_t | x0}[integrand(t)] dt + prior``

* ``integrand``: the continuous-time ELBO integrand of the process, the masked ELBO
  for ``Absorbing`` (MDLM/MD4) and SEDD's denoising score entropy with the score from
  the denoiser otherwise (both in ``losses.py``);
* ``prior = sum_i KL(P_1(x0^i, .) || prior)`` with the process's ``prior_log_probs`` at
  ``sigma_bar(1)`` (``L * eps * log V`` nats for the absorbing log-linear schedule);
* ``recon = E[-log p_theta(x0 | x_{t=0})]``, zero when ``sigma_bar(0) = 0``.

The time integral uses ``num_t`` stratified samples per sequence (one uniform offset,
then an even grid: low-discrepancy, unbiased). Per-sequence bounds give the standard
error of the mean.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import losses, scores
from tcsm_jax.processes import Process
from tcsm_jax.schedules import Schedule


def integrand(logits, x0, x_t, sigma, dsigma, process: Process, real=None):
  """``[batch]`` ELBO integrand at one time per sequence (over ``real`` positions only,
  ``[b, l]`` bool, when given: the padded layout)."""
  if process.mask_id is not None and process.num_states == process.vocab_size + 1:
    x_seen = x_t if real is None else jnp.where(real, x_t, x0)   # pads never masked
    return losses.masked_elbo(logits, x0, x_seen, sigma, dsigma, process.mask_id)
  log_p = scores.model_log_probs(logits, process, x_t, sigma)
  log_score = process.noisy_log_score(log_p, x_t, sigma)
  per_pos = losses.score_entropy(log_score, x0, x_t, sigma, dsigma, process)
  return per_pos.sum(-1) if real is None else jnp.where(real, per_pos, 0.0).sum(-1)


def prior_term(x0, process: Process, sigma_1, real=None) -> jnp.ndarray:
  """``[batch]``: ``sum_i KL(P(x0^i, .) || prior)`` at the final noise level (over
  ``real`` positions only when given)."""
  lt = process.transition_log_probs(x0, sigma_1)               # [b, l, S]
  prior = process.prior_log_probs(sigma_1)
  pos = lt > -jnp.inf
  kl = jnp.where(pos, jnp.exp(jnp.where(pos, lt, 0.0)) * (jnp.where(pos, lt, 0.0) - prior),
                 0.0)
  if real is not None:
    return jnp.where(real, kl.sum(-1), 0.0).sum(-1)
  return kl.sum((-1, -2))


def nll_bound(key, denoise_fn: Callable, x0, process: Process, schedule: Schedule,
              num_t: int = 8, pad_id: Optional[int] = None) -> Dict[str, jnp.ndarray]:
  """Per-sequence NLL upper bound in nats.

  Args:
    key: PRNG key.
    denoise_fn: ``(x_t [b, l], sigma_bar [b]) -> logits [b, l, V]``.
    x0: ``[batch, length]`` clean tokens.
    process, schedule: the forward corruption.
    num_t: stratified time samples per sequence.
    pad_id: padding id of the ``padded`` data layout: pad positions of ``x0`` are left
      out of every term (the bound is then that of the real tokens).
  Returns:
    dict of ``[batch]`` arrays: ``bound`` (= recon + diffusion + prior), ``diffusion``,
    ``prior``, ``recon``; with ``pad_id`` also ``num_tokens`` (real tokens per row).
  """
  b = x0.shape[0]
  real = None if pad_id is None else x0 != pad_id
  k_u, k_x, k_r = jax.random.split(key, 3)
  u = jax.random.uniform(k_u, (b,))

  def one(carry, k):
    t = jnp.mod(u + k / num_t, 1.0)
    t = jnp.clip(t, 1e-6, 1.0)
    sigma, dsigma = schedule(t)
    x_t = process.sample_forward(jax.random.fold_in(k_x, k), x0, sigma)
    val = integrand(denoise_fn(x_t, sigma), x0, x_t, sigma, dsigma, process, real)
    return carry + val, None

  diff, _ = jax.lax.scan(one, jnp.zeros((b,)), jnp.arange(num_t))
  diff = diff / num_t
  prior = prior_term(x0, process, schedule.sigma_bar(1.0), real)
  with jax.ensure_compile_time_eval():
    sigma0 = float(schedule.sigma_bar(0.0))
  if sigma0 > 0:
    s0 = jnp.full((b,), sigma0)
    x_t = process.sample_forward(k_r, x0, s0)
    lp = scores.model_log_probs(denoise_fn(x_t, s0), process, x_t, s0)
    nll = -jnp.take_along_axis(lp, x0[..., None], -1)[..., 0]
    recon = nll.sum(-1) if real is None else jnp.where(real, nll, 0.0).sum(-1)
  else:
    recon = jnp.zeros((b,))
  out = {"bound": recon + diff + prior, "diffusion": diff, "prior": prior,
         "recon": recon}
  if real is not None:
    out["num_tokens"] = real.sum(-1)
  return out


@dataclasses.dataclass
class Report:
  """Aggregate of per-sequence bounds over a dataset."""

  nats_per_token: float
  stderr: float               # standard error of nats_per_token
  bits_per_token: float
  perplexity: float
  num_sequences: int
  seq_len: int
  prior_per_token: float

  def as_dict(self):
    return dataclasses.asdict(self)


def summarize(bounds: np.ndarray, prior: np.ndarray, seq_len: int,
              num_tokens: Optional[np.ndarray] = None) -> Report:
  """Turns per-sequence bounds (nats) into per-token statistics.

  ``num_tokens`` (real tokens per sequence, padded layout): nats per token is then
  ``sum(bounds) / sum(num_tokens)`` (the corpus-level ratio, as MDLM reports padded
  LM1B), with its delta-method standard error; equal to the default when every
  sequence has ``seq_len`` tokens.
  """
  if num_tokens is not None:
    b = np.asarray(bounds, np.float64)
    cnt = np.asarray(num_tokens, np.float64)
    n, total = len(b), float(cnt.sum())
    mean = float(b.sum() / max(total, 1.0))
    resid = (b - mean * cnt) / max(total / n, 1e-12)
    se = float(resid.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return Report(mean, se, mean / math.log(2.0), math.exp(mean), n, seq_len,
                  float(np.sum(prior) / max(total, 1.0)))
  per_tok = np.asarray(bounds, np.float64) / seq_len
  n = len(per_tok)
  mean = float(per_tok.mean())
  se = float(per_tok.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  return Report(mean, se, mean / math.log(2.0), math.exp(mean), n, seq_len,
                float(np.mean(prior) / seq_len))


def evaluate(key, denoise_fn: Callable, batches: Iterable[np.ndarray], process: Process,
             schedule: Schedule, num_t: int = 8, batch_sharding=None,
             params=None, pad_id: Optional[int] = None) -> Report:
  """NLL bound over an iterable of ``[batch, length]`` arrays (jits one batch shape).

  Args:
    denoise_fn: ``(x_t, sigma_bar) -> logits``, or ``(params, x_t, sigma_bar) ->
      logits`` when ``params`` is given. Prefer passing ``params``: they are then an
      argument of the jitted computation instead of constants baked into it (with
      jax 0.10.2 on a host with several CPU devices, closed-over parameters sometimes
      came out as garbage, giving NaN bounds; explicit arguments never did).
    batch_sharding: e.g. ``partition.batch_sharding(mesh)``: splits every batch over
      the devices of a mesh (data parallel; ``params`` should be replicated on it).
      The result does not depend on the sharding.
    pad_id: the dataset's padding id (``TokenDataset.pad_id``, padded layout): pad
      positions are left out and the report is per real token (``summarize``).
  """
  call = (lambda p, xt, s: denoise_fn(xt, s)) if params is None else denoise_fn
  fn = jax.jit(lambda p, k, x: nll_bound(k, lambda xt, s: call(p, xt, s), x, process,
                                         schedule, num_t, pad_id))
  put = jnp.asarray if batch_sharding is None else (
      lambda x: jax.device_put(np.asarray(x), batch_sharding))
  bounds, priors, counts, length = [], [], [], None
  for i, x in enumerate(batches):
    out = fn(params, jax.random.fold_in(key, i), put(x))
    bounds.append(np.asarray(out["bound"]))
    priors.append(np.asarray(out["prior"]))
    if pad_id is not None:
      counts.append(np.asarray(out["num_tokens"]))
    length = x.shape[1]
  if not bounds:
    raise ValueError("no evaluation batches (validation split shorter than one batch?)")
  return summarize(np.concatenate(bounds), np.concatenate(priors), length,
                   np.concatenate(counts) if pad_id is not None else None)
