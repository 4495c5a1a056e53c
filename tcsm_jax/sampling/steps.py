"""The reverse-step laws every sampler shares, and the draws that take them.

* ``reverse_transition_log_probs``: the exact reverse transition ``t -> s`` of the
  factorized posterior (analytic / Tweedie step) for every process;
* ``euler_log_probs``: first-order tau-leaping on the reverse rates;
* ``absorbing_step_log_probs``: the absorbing process's step law, written once
  (``absorbing_unmask_log_prob`` gives its unmasking probability and complement, with
  or without ReMDM remasking; ``log1m`` is the one ``log(1 - p)``), and
  ``absorbing_step``, which draws it: two exact draws per position (a Bernoulli "unmask
  now" or "remask now" with its probability in log space, then a clean token from the
  normalized denoiser), or one float32 Gumbel-max draw over the law (``gumbel32``);
* ``model_log_probs_fn``: the denoiser's log-probabilities as every sampler sees them:
  temperature, an optional additive log-tilt (guidance), nucleus filtering, support.

Shapes: tokens ``[batch, length]``, log-probabilities ``[batch, length, V]`` over clean
tokens, ``[batch, length, S]`` over states; noise levels ``[batch]``.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from tcsm_jax import _checks, scores
from tcsm_jax.processes import Absorbing, Process, Uniform
from tcsm_jax.sampling import draws


def top_p_filter(logits, top_p: float):
  """Keeps the smallest set of tokens whose probability reaches ``top_p`` (>= 1 token)."""
  if top_p >= 1.0:
    return logits
  probs = jax.nn.softmax(logits, -1)
  order = jnp.argsort(-probs, -1)
  sorted_p = jnp.take_along_axis(probs, order, -1)
  before = jnp.cumsum(sorted_p, -1) - sorted_p           # mass strictly above each token
  keep_sorted = before < top_p
  keep = jnp.zeros_like(keep_sorted).at[
      tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(keep_sorted)
  return jnp.where(keep, logits, -jnp.inf)


def _log_normalize(x):
  return x - jax.nn.logsumexp(x, -1, keepdims=True)


def model_log_probs_fn(denoise_fn: Callable, process: Process, temperature: float = 1.0,
                       top_p: float = 1.0, log_tilt_fn: Optional[Callable] = None):
  """``(x_t [b, l], sigma [b]) -> [b, l, V]`` log-probabilities a sampler draws from.

  ``logits / temperature``, restricted to the posterior support, plus
  ``log_tilt_fn(x_t, sigma, log_probs) [b, l, V]`` when given (guidance: the tilted law
  ``p(y | x_t) ~ p_theta(y | x_t) exp(tilt)``), then nucleus ``top_p``, normalized.
  """
  def fn(x, sigma):
    logits = denoise_fn(x, sigma).astype(jnp.float32) / temperature
    lp = scores.model_log_probs(logits, process, x, sigma)
    if log_tilt_fn is not None:
      tilt = jnp.asarray(log_tilt_fn(x, sigma, lp), jnp.float32)
      lp = jax.nn.log_softmax(jnp.where(lp > -jnp.inf, lp + tilt, -jnp.inf), -1)
    if top_p < 1.0:
      lp = _log_normalize(top_p_filter(lp, top_p))
    return lp
  return fn


def reverse_transition_log_probs(process: Process, log_probs, x_t, sigma_t, sigma_s):
  """``[..., S]``: ``log p(x_s = . | x_t)`` under the factorized posterior, ``s < t``.

  Args:
    log_probs: ``[..., V]`` denoiser log-probabilities (support-masked).
    x_t: ``[...]``; sigma_t > sigma_s >= 0: noise levels aligned with leading axes.
  """
  x_t = jnp.asarray(x_t)
  st = _checks.expand_leading(sigma_t, log_probs.ndim)
  ss = _checks.expand_leading(sigma_s, log_probs.ndim)
  a_t, a_s = jnp.exp(-st), jnp.exp(-ss)
  if isinstance(process, Absorbing):
    log_u, log_keep = absorbing_unmask_log_prob(st[..., 0], ss[..., 0])
    return absorbing_step_log_probs(process, log_probs, x_t, log_u, log_keep)
  if isinstance(process, Uniform):
    v = process.vocab_size
    p = jnp.exp(log_probs)
    onehot = jax.nn.one_hot(x_t, v)
    # 1 - alpha from expm1 (relative accuracy at small sigma and at small steps).
    b_t, b_s = -jnp.expm1(-st) / v, -jnp.expm1(-ss) / v
    a_ts = jnp.exp(ss - st)
    b_ts = -jnp.expm1(ss - st) / v
    k_t_x = b_t + a_t * onehot                                  # P_t(a, x_t) over a
    c = jnp.sum(p / k_t_x, -1, keepdims=True)
    k_ts = b_ts + a_ts * onehot                                 # P_{s->t}(z, x_t) over z
    probs = k_ts * (b_s * c + a_s * p / k_t_x)
    return _log_normalize(jnp.log(jnp.maximum(probs, 0.0)))
  # Dense: explicit kernels (small state spaces only).
  v = process.vocab_size
  k_t = process.transition_matrix(jnp.broadcast_to(st[..., 0], x_t.shape))[..., :v, :]
  k_s = process.transition_matrix(jnp.broadcast_to(ss[..., 0], x_t.shape))[..., :v, :]
  k_ts = process.transition_matrix(jnp.broadcast_to((st - ss)[..., 0], x_t.shape))
  col_t = jnp.take_along_axis(k_t, x_t[..., None, None], -1)[..., 0]      # [..., V]
  col_ts = jnp.take_along_axis(k_ts, x_t[..., None, None], -1)[..., 0]    # [..., S]
  w = jnp.where(col_t > 0, jnp.exp(log_probs) / jnp.where(col_t > 0, col_t, 1.0), 0.0)
  probs = jnp.einsum("...a,...az->...z", w, k_s,
                     precision=jax.lax.Precision.HIGHEST) * col_ts
  return _log_normalize(jnp.log(jnp.maximum(probs, 0.0)))


def euler_log_probs(process, log_probs, x_t, sigma_t, dsigma_t, dt):
  """``[..., S]``: one tau-leaping step ``[1 + dt R(x, x), dt R(x, y)]`` (clipped at 0)."""
  log_score = process.noisy_log_score(log_probs, x_t, sigma_t)
  rates = process.reverse_rates(x_t, log_score, dsigma_t)
  onehot = jax.nn.one_hot(x_t, process.num_states)
  probs = jnp.maximum(onehot + _checks.expand_leading(dt, rates.ndim) * rates, 0.0)
  return jnp.log(probs / probs.sum(-1, keepdims=True))


def log1m(p, one_minus_p=None):
  """``log(1 - p)`` for ``p`` in ``[0, 1]``: the one formula every step law uses.

  ``log1p(-p)`` below ``1/2``; above, ``log`` of the complement: ``1 - p`` (exact in
  float32 there), or ``one_minus_p`` when the caller has it with its own relative
  precision (``1 - p`` from a rounded ``p`` near 1 has only absolute precision).
  """
  p = jnp.asarray(p, jnp.float32)
  c = 1.0 - p if one_minus_p is None else one_minus_p
  return jnp.where(p < 0.5, jnp.log1p(-p), jnp.log(c))


def absorbing_unmask_log_prob(sigma_t, sigma_s, log_remask=None):
  """``(log u, log(1 - u))``: a masked token's probability of being unmasked in ``t -> s``.

  Analytic step (``log_remask=None``): ``u = (a_s - a_t) / (1 - a_t) = a_s (1 -
  exp(-(sigma_t - sigma_s))) / (1 - a_t)`` with both factors from ``expm1``: no
  cancellation of ``a_s - a_t`` when ``s -> t`` (many steps) or of ``1 - a_t`` when
  ``t -> 0``; ``1 - u = (1 - a_s) / (1 - a_t)``.

  ReMDM (unmasked tokens remasked with probability ``rho = exp(log_remask)``):
  ``u = (a_s - (1 - rho) a_t) / (1 - a_t) = u_0 + rho a_t / (1 - a_t)``, which keeps the
  forward marginal ``a_s`` of unmasked tokens (``rho <= (1 - a_s) / a_t``);
  ``1 - u = (1 - a_s - rho a_t) / (1 - a_t)``.

  ``log(1 - u)`` is ``log1m(u, 1 - u)`` with that complement. Any shapes that broadcast.
  """
  st, ss = jnp.asarray(sigma_t, jnp.float32), jnp.asarray(sigma_s, jnp.float32)
  den = jnp.where(st > 0, -jnp.expm1(-st), 1.0)
  # The product in linear space, then one log: its relative error stays ~1 ulp (a sum
  # of logs would add ulp(sigma_s) ~ 5e-7 absolute at sigma_s ~ 7).
  u = jnp.where(st > ss, jnp.exp(-ss) * -jnp.expm1(jnp.minimum(ss - st, 0.0)) / den, 0.0)
  u = jnp.minimum(u, 1.0)
  log_u = jnp.log(u)
  keep = -jnp.expm1(-ss)                                     # 1 - a_s
  if log_remask is not None:
    log_extra = log_remask - st - jnp.log(-jnp.expm1(-st))   # rho a_t / (1 - a_t)
    log_u = jnp.minimum(jnp.logaddexp(log_u, log_extra), 0.0)
    u = jnp.exp(log_u)
    keep = jnp.maximum(keep - jnp.exp(log_remask - st), 0.0)
  return log_u, log1m(u, keep / den)


def absorbing_step_log_probs(process: Absorbing, log_probs, x_t, log_unmask, log_keep,
                             log_remask=None):
  """``[..., S]``: the absorbing process's reverse-step law, the one every sampler uses.

  A masked position unmasks with ``u = exp(log_unmask)`` to a token from ``log_probs``
  or stays masked (``log_keep = log(1 - u)``); an unmasked one is remasked with
  ``rho = exp(log_remask)`` or kept (``log1m(rho)``; ``None``: kept). ``log_unmask``,
  ``log_keep``, ``log_remask`` broadcast against ``x_t [...]``; ``log_probs [..., V]``.
  """
  x_t = jnp.asarray(x_t)
  shape = x_t.shape
  lu = jnp.broadcast_to(_checks.expand_leading(log_unmask, len(shape)), shape)
  lk = jnp.broadcast_to(_checks.expand_leading(log_keep, len(shape)), shape)
  at_mask = jnp.concatenate([log_probs + lu[..., None], lk[..., None]], -1)
  onehot = jax.nn.one_hot(x_t, process.num_states, dtype=bool)
  if log_remask is None:
    stay = jnp.where(onehot, 0.0, -jnp.inf)
  else:
    lr = jnp.broadcast_to(_checks.expand_leading(log_remask, len(shape)), shape)
    stay = jnp.where(onehot, log1m(jnp.exp(lr))[..., None], -jnp.inf)
    stay = stay.at[..., process.mask_id].set(lr)
  return jnp.where((x_t == process.mask_id)[..., None], at_mask, stay)


def absorbing_step(key, process: Absorbing, log_probs, x_t, sigma_t, sigma_s,
                   log_remask=None, draw: str = "exact"):
  """One reverse step ``t -> s`` of the absorbing process (``absorbing_step_log_probs``).

  Args:
    key: PRNG key.
    log_probs: ``[b, l, V]`` normalized denoiser log-probabilities.
    x_t: ``[b, l]`` tokens (mask id ``process.mask_id``).
    sigma_t, sigma_s: noise levels ``sigma_t >= sigma_s``, broadcasting against
      ``[b, l]``.
    log_remask: log-probability that an unmasked token is remasked (``None``: never).
    draw: ``exact``: two exact draws per position, a Bernoulli (unmask a masked token,
      remask an unmasked one) and a token from ``log_probs`` (the same law, factorized;
      ``draws``); ``gumbel32``: one ``jax.random.categorical`` over the law's ``V + 1``
      outcomes, as older versions.
  Returns:
    ``[b, l]`` int32 tokens at time ``s``.
  """
  log_unmask, log_keep = absorbing_unmask_log_prob(sigma_t, sigma_s, log_remask)
  if draw == "gumbel32":
    return draws.categorical(key, absorbing_step_log_probs(
        process, log_probs, x_t, log_unmask, log_keep, log_remask), "gumbel32")
  masked = x_t == process.mask_id
  shape = x_t.shape
  lu = jnp.broadcast_to(_checks.expand_leading(log_unmask, len(shape)), shape)
  lr = (jnp.full(shape, -jnp.inf) if log_remask is None else
        jnp.broadcast_to(_checks.expand_leading(log_remask, len(shape)), shape))
  k_event, k_token = jax.random.split(key)
  fire = draws.bernoulli_log(k_event, jnp.where(masked, lu, lr))
  token = draws.categorical(k_token, log_probs, draw)
  return jnp.where(masked, jnp.where(fire, token, process.mask_id),
                   jnp.where(fire, process.mask_id, x_t)).astype(jnp.int32)
