"""Reward and preference fine-tuning of a diffusion model with TCSM.

**Reward.** The target is ``p_ref(x) exp(r(x) / beta)``; its clean-space concrete score
is the reference's times ``exp((r(x^{i<-y}) - r(x)) / beta)``. The fine-tuned model is
parameterized as a density ratio against the frozen reference: its logits are the
reference denoiser's plus a learned correction (a network whose output head starts at
zero, so training starts exactly at the reference). The target posterior at each
position is the reference posterior tilted by the reward differences:
``log q(y | x_t) = log p_ref(y | x_t) + (r(x0^{i<-y}) - r(x0)) / beta + const``, and the
TCSM loss (score or distribution form, any divergence) pulls the model onto it. Clean
centres ``x0`` come from data (an offline proposal).

*What the minimizer is.* A factorized model ``p_theta(x0^i | x_t)`` cannot see
``x0^{-i}``, while the target at a centre ``x0`` depends on it (the tilt and, for a
correlated reference, the conditionals). So the loss is not minimized by the target
ratios at every centre (no factorized model matches them all); it is minimized by a
proposal-weighted compromise over the ``x0`` consistent with ``x_t``. For ``kl`` (both
forms) and ``gkl`` (score form) that compromise is the mixture
``E_{x0 ~ proposal(. | x_t)} q(. | x0, x_t)``, which is the tilted marginal
``p_1(x0^i | x_t)`` only when (i) the centres are drawn from ``p_1`` itself and (ii) ``q``
is ``p_1``'s exact conditional posterior ``p_1(x0^i | x0^{-i}, x_t)``. Neither holds by
default: centres come from the reference, and ``tilted_posterior`` tilts the factorized
reference denoiser ``p_ref(x0^i | x_t)`` instead of the reference's clean-space
conditionals (exact only for a product reference and an additive reward). On an
enumerable example (``tests/test_posttrain.py``, correlated reference, coupled reward)
(beta = 1) the converged model misses the tilted marginals by 0.18-0.20 in probability.
Weighting each centre by ``snis_weights`` (config ``finetune.importance_weights =
"self_normalized"``) fixes (i); with the exact clean-space target as well the error is
< 1e-6, but either fix alone still leaves 0.06-0.21: the default target stays biased
for a correlated reference even with the weights. (ii) is config
``finetune.reward_target = "clean_conditionals"`` (absorbing process only):
``tilted_clean_conditionals`` reads the reference's clean-space conditionals off the
frozen reference as a masked-LM teacher (``L`` extra reference forward passes per
batch) and tilts them; exact when the reference denoiser is Bayes-optimal.

**Preference.** From ``(chosen, rejected)`` pairs, a DPO-style loss on the implicit
reward ``beta * sum_i log(p_theta / p_ref)(x^i | x_t)``, i.e. ``beta`` times the
learned log density ratio (the correction, normalized) at the clean tokens, with the
same noise for both sequences of a pair.

Reward differences on the 1-Hamming neighbourhood (``[batch, length, V]``):
``token_reward_deltas`` (a per-token reward, exact), and ``targets.ar_exact`` /
``targets.ar_taylor`` applied to any sequence reward (exact enumeration or first-order
for a differentiable classifier); ``python_reward`` wraps a plain Python function of
decoded text for the exact path.
"""

from __future__ import annotations

import io
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import fs, losses, scores, targets
from tcsm_jax.processes import Process


# ---- reward differences on the neighbourhood --------------------------------------
def token_reward_deltas(weights, x0):
  """``r(x) = sum_i w[x^i]``: ``[b, L, V]`` differences ``w[y] - w[x0^i]`` (exact)."""
  w = jnp.asarray(weights, jnp.float32)
  return w[None, None, :] - w[x0][..., None]


def python_reward(fn: Callable[[str], float], decode: Callable) -> Callable:
  """A jittable ``tokens [n, L] -> [n]`` reward from a plain Python text function."""

  def host(tokens):
    return np.asarray([fn(t) for t in decode(np.asarray(tokens))], np.float32)

  def reward(tokens):
    out = jax.ShapeDtypeStruct(tokens.shape[:1], jnp.float32)
    return jax.pure_callback(host, out, tokens)

  return reward


def sequence_reward_deltas(reward_fn: Callable, x0, vocab_size: int, mode: str = "exact",
                           soft_reward_fn: Optional[Callable] = None):
  """Neighbour reward differences of a sequence reward (``exact`` or ``taylor``)."""
  if mode == "exact":
    return targets.ar_exact(reward_fn, x0, vocab_size)
  if mode == "taylor":
    if soft_reward_fn is None:
      raise ValueError("mode='taylor' needs a differentiable soft_reward_fn(onehot)")
    return targets.ar_taylor(soft_reward_fn, x0, vocab_size)
  raise ValueError(f"unknown reward mode {mode!r}; choose exact or taylor")


def snis_weights(rewards, beta: float):
  """Self-normalized importance weights of reference samples for ``p_ref exp(r / beta)``.

  Args:
    rewards: ``[batch]`` rewards ``r(x0_b)`` of clean sequences drawn from the reference
      (or the data it was fitted to).
    beta: the temperature of the target ``p_ref(x) exp(r(x) / beta) / Z``.
  Returns:
    ``[batch]`` float32 weights ``w_b = B * softmax_b(r(x0_b) / beta)`` (a log-sum-exp
    softmax, so float32-safe for large ``r / beta``): non-negative, summing to ``B``,
    unchanged by adding a constant to ``r``, and under ``stop_gradient``. Averaging
    ``w_b * loss_b`` over the batch estimates the loss with centres drawn from the
    tilted distribution. The estimate is consistent (bias ``O(1/B)`` from normalizing by
    the batch's own ``Z``), not unbiased; its variance grows with the spread of
    ``r / beta`` (effective sample size ``B^2 / sum_b w_b^2``).
  """
  logits = jnp.asarray(rewards, jnp.float32) / beta
  w = logits.shape[0] * jax.nn.softmax(logits, axis=0)
  return jax.lax.stop_gradient(w)


def effective_sample_size(weights):
  """``(sum w)^2 / sum w^2`` of non-negative weights ``[batch]``: ``batch`` for uniform
  weights, 1 when one weight carries everything (float32 scalar)."""
  w = jnp.asarray(weights, jnp.float32)
  return jnp.sum(w) ** 2 / jnp.maximum(jnp.sum(w ** 2), 1e-30)


# ---- losses -----------------------------------------------------------------------
def tilted_posterior(ref_logits, reward_deltas, beta: float, process: Process, x_t,
                     sigma):
  """``[b, L, V]`` log-probabilities of the reward-tilted reference posterior."""
  ref_lp = scores.model_log_probs(ref_logits, process, x_t, sigma)
  keep = ref_lp > -jnp.inf
  return jax.nn.log_softmax(jnp.where(keep, ref_lp + reward_deltas / beta, -jnp.inf), -1)


def tilted_clean_conditionals(ref_apply_fn: Callable, ref_params, mask_id: int, x0,
                              reward_deltas, beta: float):
  """Clean-space conditionals of ``p_1 = p_ref exp(r / beta) / Z`` from the reference.

  The frozen absorbing reference is used as a masked-LM teacher
  (``targets.mlm_teacher``): for each position ``i`` it is evaluated on ``x0`` with
  ``x0^i`` masked (one mask out of ``L``), which for a Bayes-optimal absorbing denoiser
  is ``p_ref(x0^i | x0^{-i})`` exactly; the reward differences then tilt it:
  ``log p_1(y | x0^{-i}) = log p_ref(y | x0^{-i}) + (r(x0^{i<-y}) - r(x0)) / beta + c``.
  Passed to ``losses.tcsm_loss(target_log_cond=...)``, the path identity turns it into
  ``p_1(x0^i | x0^{-i}, x_t)``, the target under which the factorized model's
  minimizer is the tilted marginal (with centres from ``p_1``, see ``snis_weights``).

  Cost: ``L`` extra reference forward passes on the full ``[batch, L]`` batch (one per
  masked position, sequentially under ``lax.map``), i.e. ``L`` times the reference
  cost of the default ``tilted_denoiser`` target, with no backward pass through them.

  Args:
    ref_apply_fn: ``(params, x [b, L], sigma [b]) -> logits [b, L, V]``, the frozen
      reference denoiser of an absorbing process.
    ref_params: its parameters (passed in, not closed over by the caller).
    mask_id: the absorbing process's mask token.
    x0: ``[batch, L]`` int clean centres.
    reward_deltas: ``[batch, L, V]`` neighbour reward differences
      ``r(x0^{i<-y}) - r(x0)``.
    beta: the temperature.
  Returns:
    ``[batch, L, V]`` float32 log-probabilities ``log p_1(x0^i = y | x0^{-i})``
    (normalized over ``y``), under ``stop_gradient``.
  """
  ref_cond = targets.mlm_teacher(ref_apply_fn, ref_params, mask_id)(x0)
  tilted = jax.nn.log_softmax(ref_cond + jnp.asarray(reward_deltas, jnp.float32) / beta,
                              -1)
  return jax.lax.stop_gradient(tilted)


def reward_loss(corr_logits, ref_logits, x0, x_t, sigma, process: Process, reward_deltas,
                beta: float, form: str = "score", divergence: str = "gkl",
                target_log_cond=None):
  """Per-position TCSM loss ``[b, L]`` of the density-ratio model against the target.

  By default (``target_log_cond=None``, config ``finetune.reward_target =
  "tilted_denoiser"``) the target posterior is ``tilted_posterior`` of the reference
  denoiser ``ref_logits`` ``[b, L, V]``. With ``target_log_cond`` ``[b, L, V]`` (clean-
  space target log-conditionals, e.g. ``tilted_clean_conditionals``; config
  ``"clean_conditionals"``) the target is that pushed through the path identity, and
  ``reward_deltas`` / ``beta`` are not used again (they are already in it).
  """
  ref_logits = jax.lax.stop_gradient(ref_logits.astype(jnp.float32))
  if target_log_cond is not None:
    return losses.tcsm_loss(ref_logits + corr_logits, x0, x_t, sigma, process, form=form,
                            divergence=divergence,
                            target_log_cond=jax.lax.stop_gradient(target_log_cond))
  target = jax.lax.stop_gradient(tilted_posterior(ref_logits, reward_deltas, beta,
                                                  process, x_t, sigma))
  return losses.tcsm_loss(ref_logits + corr_logits, x0, x_t, sigma, process, form=form,
                          divergence=divergence, target_log_posterior=target)


def implicit_log_ratio(corr_logits, ref_logits, x0, x_t, sigma, process: Process):
  """``[b]``: ``sum_i log p_theta(x0^i | x_t) - log p_ref(x0^i | x_t)``."""
  ref_logits = jax.lax.stop_gradient(ref_logits.astype(jnp.float32))
  lp = scores.model_log_probs(ref_logits + corr_logits, process, x_t, sigma)
  lr = scores.model_log_probs(ref_logits, process, x_t, sigma)
  take = lambda a: jnp.take_along_axis(a, x0[..., None], -1)[..., 0]
  return jnp.sum(take(lp) - take(lr), -1)


def bounded_log_ratio(g, bound: float):
  """``bound * tanh(g / bound)`` (identity for ``bound = 0``): the explicit log-ratio
  head's trust region, ``|g| < bound``, with slope 1 at 0 (``finetune.ratio_bound``)."""
  if bound <= 0:
    return g
  return bound * jnp.tanh(g / bound)


def log_ratio_variance(corr_logits, ref_logits, process: Process, x_t, sigma):
  """``[b, L]``: ``Var_{y ~ p_ref(. | x_t)}[log r_theta(y | x_t)]`` at every position.

  ``log r_theta = log p_theta - log p_ref`` with ``p_theta = softmax(ref + corr)`` and
  ``p_ref = softmax(ref)`` over the posterior support (``scores.model_log_probs``), so the
  value is the reference-weighted variance of ``corr`` over the support: 0 exactly where
  the fine-tuned model equals the reference (a determined position included), invariant
  to adding a constant to ``corr``. Gradients flow into ``corr`` only.
  """
  ref_logits = jax.lax.stop_gradient(ref_logits.astype(jnp.float32))
  lr = scores.model_log_probs(ref_logits, process, x_t, sigma)
  keep = lr > -jnp.inf
  p_ref = jnp.where(keep, jnp.exp(jnp.where(keep, lr, 0.0)), 0.0)
  c = jnp.where(keep, corr_logits.astype(jnp.float32), 0.0)
  mean = jnp.sum(p_ref * c, -1, keepdims=True)
  return jnp.sum(p_ref * jnp.square(c - mean), -1)


def dpo_loss(ratio_chosen, ratio_rejected, beta: float):
  """``[b]``: ``-log sigmoid(beta (ratio_chosen - ratio_rejected))``."""
  return -jax.nn.log_sigmoid(beta * (ratio_chosen - ratio_rejected))


# ---- preference data --------------------------------------------------------------
def make_preference_pairs(samples: np.ndarray, rewards: np.ndarray, seed: int = 0):
  """Pairs consecutive samples (after shuffling) into ``(chosen, rejected)``.

  Returns ``[n_pairs, 2, L]`` with the higher-reward sequence first; ties dropped.
  """
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(samples))
  a, b = order[0::2], order[1::2]
  n = min(len(a), len(b))
  a, b = a[:n], b[:n]
  keep = rewards[a] != rewards[b]
  a, b = a[keep], b[keep]
  first = rewards[a] > rewards[b]
  chosen = np.where(first[:, None], samples[a], samples[b])
  rejected = np.where(first[:, None], samples[b], samples[a])
  return np.stack([chosen, rejected], 1)


def save_pairs(path, pairs: np.ndarray, meta: dict) -> None:
  """Writes ``pairs`` and ``meta`` to ``path`` (local or bucket) atomically."""
  buf = io.BytesIO()
  np.savez_compressed(buf, pairs=pairs, **{k: np.asarray(v) for k, v in meta.items()})
  fs.write_bytes_atomic(path, buf.getvalue())
