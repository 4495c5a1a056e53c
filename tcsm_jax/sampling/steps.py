"""The reverse-step laws every sampler shares, and the draws that take them.

* ``reverse_transition_log_probs``: the exact reverse transition ``t -> s`` of the
  factorized posterior (analytic / Tweedie step) for every process;
* ``euler_log_probs``: first-order tau-leaping on the reverse rates;
* ``absorbing_unmask_log_prob`` / ``absorbing_step``: the absorbing process's step as
  two exact draws per position: a Bernoulli "unmask now" with its probability in log
  space, then a clean token from the normalized denoiser; an unmasked position is kept,
  or remasked with a given probability (ReMDM; probability 0 is the analytic step);
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
from tcsm_jax.processes import Absorbing, Process, Uniform, log1mexp
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
    log_u, log_keep = absorbing_unmask_log_prob(st, ss)
    data = log_probs + log_u
    at_mask = jnp.concatenate([data, jnp.broadcast_to(log_keep, data.shape[:-1] + (1,))],
                              -1)
    stay = jnp.where(jax.nn.one_hot(x_t, process.num_states, dtype=bool), 0.0, -jnp.inf)
    return jnp.where((x_t == process.mask_id)[..., None], at_mask, stay)
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


def absorbing_unmask_log_prob(sigma_t, sigma_s):
  """``(log u, log(1 - u))``: a masked token's probability of being unmasked in ``t -> s``.

  ``u = (a_s - a_t) / (1 - a_t) = a_s (1 - exp(-(sigma_t - sigma_s))) / (1 - a_t)`` with
  both factors from ``expm1``: no cancellation of ``a_s - a_t`` when ``s -> t`` (many
  steps) or of ``1 - a_t`` when ``t -> 0``. ``log(1 - u)`` is ``log1p(-u)`` while ``u``
  is small, else ``log((1 - a_s) / (1 - a_t))``. Any shapes that broadcast.
  """
  st, ss = jnp.asarray(sigma_t, jnp.float32), jnp.asarray(sigma_s, jnp.float32)
  den = jnp.where(st > 0, -jnp.expm1(-st), 1.0)
  # The product in linear space, then one log: its relative error stays ~1 ulp (a sum
  # of logs would add ulp(sigma_s) ~ 5e-7 absolute at sigma_s ~ 7).
  u = jnp.where(st > ss, jnp.exp(-ss) * -jnp.expm1(jnp.minimum(ss - st, 0.0)) / den, 0.0)
  u = jnp.minimum(u, 1.0)
  log_u = jnp.log(u)
  log_keep = jnp.where(u < 0.5, jnp.log1p(-u), jnp.log(-jnp.expm1(-ss) / den))
  return log_u, log_keep


def remask_unmask_log_prob(sigma_t, sigma_s, log_remask):
  """ReMDM: ``log`` of a masked token's unmasking probability when unmasked tokens are
  remasked with probability ``rho = exp(log_remask)``:
  ``(a_s - (1 - rho) a_t) / (1 - a_t) = u + rho a_t / (1 - a_t)``, which keeps the
  forward marginal ``a_s`` of unmasked tokens (``rho <= (1 - a_s) / a_t``)."""
  st = jnp.asarray(sigma_t, jnp.float32)
  log_u, _ = absorbing_unmask_log_prob(sigma_t, sigma_s)
  log_extra = log_remask - st - jnp.log(-jnp.expm1(-st))
  return jnp.minimum(jnp.logaddexp(log_u, log_extra), 0.0)


def absorbing_step(key, process: Absorbing, log_probs, x_t, log_unmask,
                   log_remask=None, draw: str = "exact"):
  """One reverse step of the absorbing process by two draws per position.

  Args:
    key: PRNG key.
    log_probs: ``[b, l, V]`` normalized denoiser log-probabilities.
    x_t: ``[b, l]`` tokens (mask id ``process.mask_id``).
    log_unmask: log-probability that a masked token is unmasked, broadcasting against
      ``[b, l]`` (``absorbing_unmask_log_prob``, ``remask_unmask_log_prob``).
    log_remask: log-probability that an unmasked token is remasked (``None``: never).
    draw: ``exact`` (Bernoulli and token drawn exactly, ``draws``) or ``gumbel32``
      (one ``jax.random.categorical`` over the ``V + 1`` outcomes, as older versions).
  Returns:
    ``[b, l]`` int32 tokens at time ``s``.
  """
  masked = x_t == process.mask_id
  shape = x_t.shape
  lu = jnp.broadcast_to(_checks.expand_leading(log_unmask, len(shape)), shape)
  lr = (jnp.full(shape, -jnp.inf) if log_remask is None else
        jnp.broadcast_to(_checks.expand_leading(log_remask, len(shape)), shape))
  if draw == "gumbel32":
    at_mask = jnp.concatenate([log_probs + lu[..., None],
                               log1mexp(lu)[..., None]], -1)
    stay = jnp.where(jax.nn.one_hot(x_t, process.num_states, dtype=bool),
                     log1mexp(lr)[..., None], -jnp.inf)
    stay = stay.at[..., process.mask_id].set(lr)
    logq = jnp.where(masked[..., None], at_mask, stay)
    return draws.categorical(key, logq, "gumbel32")
  k_event, k_token = jax.random.split(key)
  fire = draws.bernoulli_log(k_event, jnp.where(masked, lu, lr))
  token = draws.categorical(k_token, log_probs, draw)
  return jnp.where(masked, jnp.where(fire, token, process.mask_id),
                   jnp.where(fire, process.mask_id, x_t)).astype(jnp.int32)

