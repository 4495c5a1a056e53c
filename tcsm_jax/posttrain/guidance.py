"""Reward guidance at sampling time, without fine-tuning.

Each step's clean-token law is tilted by the reward's neighbour differences,
``p(y | x_t) ~ p_theta(y | x_t) exp(gamma (r(xhat^{i<-y}) - r(xhat)))``, with ``xhat``
the denoiser's point estimate of ``x0`` (``x_t`` where unmasked, the most likely token
where masked). The differences are those reward fine-tuning uses (``reward.py`` and
``finetune.make_reward``): exact for a per-token reward (then ``xhat`` drops out: the
tilt is ``gamma w[y]``), exact by enumeration or first-order (one gradient) for a
differentiable classifier.

What it samples. For a product ``p_theta`` and a per-token reward every step's tilt is
the tilt of the exact posterior of ``p exp(gamma r)``, so the sampler draws exactly
from ``p exp(gamma r) / Z``; otherwise it is an approximation (the tilt of a factorized
denoiser is not the tilted model's denoiser), measured on an enumerable space in
``tests/test_guidance.py``. Reward fine-tuning at ``beta = 1 / gamma`` targets the same
``p_ref exp(r / beta)``; ``experiments/results/guidance`` compares the two.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp


def point_estimate(x_t, log_probs, mask_id: int):
  """``[b, l]`` int32: ``x_t`` where unmasked, ``argmax log_probs`` where masked."""
  return jnp.where(x_t == mask_id, jnp.argmax(log_probs, -1), x_t).astype(jnp.int32)


def reward_tilt(deltas_fn: Callable, gamma: float, mask_id: int) -> Callable:
  """``log_tilt_fn(x_t, sigma, log_probs) -> gamma * deltas_fn(xhat) [b, l, V]`` for
  ``sampling.sample(..., log_tilt_fn=...)``; ``deltas_fn(x0 [b, l]) -> [b, l, V]``."""
  if gamma < 0:
    raise ValueError(f"guidance gamma must be >= 0, got {gamma}")

  def fn(x_t, sigma, log_probs):
    del sigma
    return gamma * deltas_fn(point_estimate(x_t, log_probs, mask_id))

  return fn
