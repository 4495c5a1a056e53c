"""Reverse-CTMC samplers: Euler (tau-leaping), analytic (Tweedie), masked ancestral.

All samplers run the reverse chain from ``t = 1`` (a draw from the process's prior) to
``t_end`` on ``steps`` equal time steps, in parallel over positions, with a factorized
denoiser ``(x_t [b, l], sigma_bar [b]) -> logits [b, l, V]``; then a final denoising step
draws ``x0 ~ p_theta(x0 | x_{t_end})``.

* ``euler``: per position a categorical over ``[1 + dt R(x, x), dt R(x, y)]`` with the
  reverse rates ``R`` built from the model's noisy-space concrete score
  (``Process.noisy_log_score`` + ``Process.reverse_rates``): first-order tau-leaping.
* ``analytic``: the exact reverse transition of the factorized posterior,
  ``p(x_s | x_t) = sum_a p_theta(a | x_t) P_s(a, x_s) P_{s->t}(x_s, x_t) / P_t(a, x_t)``
  (Tweedie tau-leaping; for the absorbing process it is MDLM/MD4's ancestral step).
* ``ancestral``: the analytic step plus the unchanged-sequence cache (MDLM, RADD), per
  sequence: a sequence that the last step left unchanged keeps its logits, and the
  network runs only on the sequences that changed, gathered into the smallest of a few
  compiled batch sizes (``ancestral_cache_buckets``; none at all when nothing changed).
  When the schedule, length and step count make almost every sequence change at every
  step the cache steps aside and the sampler is the analytic one. Exact for a denoiser
  that does not depend on ``sigma_bar`` at masked positions (true for the Bayes
  denoiser of the absorbing process); an approximation otherwise.

Options: ``temperature`` and nucleus ``top_p`` on the denoiser's logits; prompting and
infilling by clamping any positions (``clamp_mask``, ``clamp_tokens``): clamped
positions hold their tokens at every step, so the network conditions on them.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import _checks, scores
from tcsm_jax.processes import Absorbing, Process, Uniform
from tcsm_jax.schedules import Schedule

SAMPLERS = ("euler", "analytic", "ancestral")


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
    # Masked: data z w.p. p(z) u, mask w.p. 1 - u, with the unmasking probability
    # u = (a_s - a_t) / (1 - a_t) = a_s (1 - exp(-(sigma_t - sigma_s))) / (1 - a_t),
    # both factors from expm1: no cancellation of a_s - a_t when s -> t (many steps)
    # or of 1 - a_t when t -> 0.
    den = jnp.where(st > 0, -jnp.expm1(-st), 1.0)
    u = jnp.where(st > ss, jnp.exp(-ss) * -jnp.expm1(ss - st) / den, 0.0)
    u = jnp.minimum(u, 1.0)
    data = log_probs + jnp.log(u)
    # log(1 - u): log1p while u is small, else the ratio (1 - a_s) / (1 - a_t).
    mask = jnp.where(u < 0.5, jnp.log1p(-u), jnp.log(-jnp.expm1(-ss) / den))
    at_mask = jnp.concatenate([data, jnp.broadcast_to(mask, data.shape[:-1] + (1,))], -1)
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
  probs = jnp.einsum("...a,...az->...z", w, k_s) * col_ts
  return _log_normalize(jnp.log(jnp.maximum(probs, 0.0)))


def _euler_log_probs(process, log_probs, x_t, sigma_t, dsigma_t, dt):
  log_score = process.noisy_log_score(log_probs, x_t, sigma_t)
  rates = process.reverse_rates(x_t, log_score, dsigma_t)
  onehot = jax.nn.one_hot(x_t, process.num_states)
  probs = jnp.maximum(onehot + _checks.expand_leading(dt, rates.ndim) * rates, 0.0)
  return jnp.log(probs / probs.sum(-1, keepdims=True))


def ancestral_cache_buckets(schedule: Schedule, shape, steps: int, t_end: float = 1e-5,
                            free_positions=None, min_share: float = 0.05) -> tuple:
  """Batch sizes the cached ancestral sampler compiles the network for.

  The cache is per sequence: a sequence that did not change in the last step keeps its
  logits, and the network runs only on the sequences that changed, gathered into the
  smallest of these sizes that holds them (``0``: no network call). In the reverse chain
  of the absorbing process a sequence with ``n`` free positions changes in the step
  ``t -> s`` with probability ``1 - (1 - (alpha_s - alpha_t))^n``, so the number of
  changed sequences per step is binomial; a size below the batch is kept only when it
  would serve at least ``min_share`` of the steps (and one step). When none is kept the
  result is ``(batch,)``: the cache cannot pay (e.g. 256 tokens in 64 steps, where
  almost every sequence changes every step) and the sampler runs the network on the
  whole batch at every step, with no cache bookkeeping.

  Args:
    schedule, steps, t_end: those of ``sample``.
    shape: ``(batch, length)``.
    free_positions: positions per sequence that are not clamped (default ``length``).
  Returns:
    Increasing batch sizes ending with ``batch``.
  """
  from scipy import stats
  b, length = shape
  n_free = float(length if free_positions is None else np.mean(free_positions))
  ts = np.linspace(1.0, t_end, steps + 1)
  with jax.ensure_compile_time_eval():
    sig = np.asarray(schedule.sigma_bar(jnp.asarray(ts, jnp.float32)), np.float64)
  alpha = np.exp(-sig)
  p_row = 1.0 - (1.0 - np.clip(alpha[1:] - alpha[:-1], 0.0, 1.0)) ** n_free   # [steps]
  cands, m = [b], b
  while m > 1:
    m = -(-m // 2)
    cands.append(m)
  cands = sorted(set(cands) | {0})
  cdf = stats.binom.cdf(np.asarray(cands)[:, None], b, p_row[None])        # [C, steps]
  share = np.diff(np.concatenate([np.zeros((1, steps)), cdf]), axis=0).sum(1)
  keep = [c for c, e in zip(cands, share) if c == b or e >= max(1.0, min_share * steps)]
  return tuple(keep)


def _cached_model_log_probs(model_log_probs, x, sigma, lp, stale, buckets):
  """Refreshes the rows of ``lp`` whose sequence changed (``stale [batch]``).

  The changed rows are gathered into the smallest bucket that holds them (padded with
  unchanged rows, which are recomputed too) and the network runs on that many rows only.
  Returns ``(lp, rows)`` with ``rows`` the batch size the network saw (0: no call).
  """
  b = x.shape[0]
  order = jnp.argsort(~stale, stable=True)               # changed rows first
  branch = jnp.searchsorted(jnp.asarray(buckets), stale.sum(), side="left")

  def run(m):
    def f(lp):
      if m == 0:
        return lp
      if m == b:
        return model_log_probs(x, sigma)
      rows = order[:m]
      return lp.at[rows].set(model_log_probs(x[rows], sigma[rows]))
    return f

  lp = jax.lax.switch(branch, [run(m) for m in buckets], lp)
  return lp, jnp.asarray(buckets)[branch]


def sample(key, denoise_fn: Callable, process: Process, schedule: Schedule, shape,
           *, steps: int, sampler: str = "analytic", temperature: float = 1.0,
           top_p: float = 1.0, clamp_tokens=None, clamp_mask=None, t_end: float = 1e-5,
           final_denoise: bool = True, return_path: bool = False,
           progress: Optional[Callable] = None, cache_buckets=None):
  """Draws ``shape = (batch, length)`` sequences by running the reverse chain.

  Args:
    key: PRNG key.
    denoise_fn: ``(x_t, sigma_bar [batch]) -> logits [batch, length, V]``.
    process, schedule: the forward corruption the model was trained on.
    shape: ``(batch, length)``.
    steps: number of reverse steps between ``t = 1`` and ``t_end``.
    sampler: ``euler``, ``analytic`` or ``ancestral``.
    temperature, top_p: applied to the denoiser logits.
    clamp_tokens, clamp_mask: ``[batch, length]``; where ``clamp_mask`` is True the
      token is held at ``clamp_tokens`` (prompting, infilling).
    t_end: last time of the chain (> 0).
    final_denoise: draw ``x0 ~ p_theta(. | x_{t_end})`` at the end.
    return_path: also return every intermediate state ``[steps + 1, batch, length]``.
    progress: host callback ``f(step)`` called after each step (progress bars).
    cache_buckets: ``ancestral`` only: the batch sizes the network is compiled for
      (increasing, ending with ``batch``; see ``ancestral_cache_buckets``, the default).
      ``(batch,)`` turns the cache off.
  Returns:
    ``(tokens [batch, length], info)`` with ``info['nfe']`` the number of network calls,
    ``info['nfe_rows']`` the number of sequences they evaluated in all (``nfe * batch``
    unless the ancestral cache evaluated only the changed ones), and ``info['path']`` if
    requested.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if temperature <= 0 or not 0 < top_p <= 1:
    raise ValueError("temperature must be > 0 and top_p in (0, 1]")
  if sampler == "ancestral" and not isinstance(process, Absorbing):
    raise ValueError("the ancestral (cached) sampler needs the absorbing process")
  b, length = shape
  clamp_given = clamp_mask                 # before conversion: host values if concrete
  if (clamp_mask is None) != (clamp_tokens is None):
    raise ValueError("clamp_mask and clamp_tokens go together")
  if clamp_mask is None:
    clamp_mask = jnp.zeros(shape, bool)
    clamp_tokens = jnp.zeros(shape, jnp.int32)
  clamp_mask, clamp_tokens = jnp.asarray(clamp_mask, bool), jnp.asarray(clamp_tokens,
                                                                         jnp.int32)
  if clamp_mask.shape != tuple(shape) or clamp_tokens.shape != tuple(shape):
    raise ValueError(f"clamp arrays must have shape {tuple(shape)}")
  _checks.check_tokens(jnp.where(clamp_mask, clamp_tokens, 0), process.vocab_size,
                       "clamp_tokens")
  clamp = lambda x: jnp.where(clamp_mask, clamp_tokens, x)

  def model_log_probs(x, sigma):
    logits = denoise_fn(x, sigma).astype(jnp.float32) / temperature
    logits = top_p_filter(logits, top_p)
    return scores.model_log_probs(logits, process, x, sigma)

  ts = jnp.linspace(1.0, t_end, steps + 1)
  k_init, k_loop, k_final = jax.random.split(key, 3)
  sigma1 = schedule.sigma_bar(1.0)
  x = jax.random.categorical(k_init, process.prior_log_probs(sigma1), shape=shape)
  x = clamp(x.astype(jnp.int32))
  full = lambda v: jnp.full((b,), v)
  if sampler == "ancestral" and cache_buckets is None:
    try:
      free = None if clamp_given is None else (~np.asarray(clamp_given, bool)).sum(-1)
    except jax.errors.TracerArrayConversionError:      # clamp given as a traced value
      free = None
    cache_buckets = ancestral_cache_buckets(schedule, shape, steps, t_end, free)
  cached = sampler == "ancestral" and tuple(cache_buckets) != (b,)
  if cached and (list(cache_buckets) != sorted(set(cache_buckets))
                 or cache_buckets[-1] != b or cache_buckets[0] < 0):
    raise ValueError(f"cache_buckets must increase and end with the batch size {b}, "
                     f"got {cache_buckets}")

  def body(carry, k):
    x, lp, fresh, nfe, rows = carry
    t, s = ts[k], ts[k + 1]
    sig_t, dsig_t = schedule(full(t))
    sig_s = schedule.sigma_bar(full(s))
    if cached:       # per-sequence cache: the network sees only the changed sequences
      lp, m = _cached_model_log_probs(model_log_probs, x, sig_t, lp, ~fresh,
                                      tuple(cache_buckets))
      nfe, rows = nfe + (m > 0), rows + m
    else:
      lp, nfe, rows = model_log_probs(x, sig_t), nfe + 1, rows + b
    if sampler == "euler":
      logq = _euler_log_probs(process, lp, x, sig_t, dsig_t, full(t - s))
    else:
      logq = reverse_transition_log_probs(process, lp, x, sig_t, sig_s)
    new = clamp(jax.random.categorical(jax.random.fold_in(k_loop, k), logq).astype(
        jnp.int32))
    fresh = jnp.all(new == x, axis=-1)     # per sequence: cached logits stay valid
    if progress is not None:
      jax.debug.callback(progress, k)
    return (new, lp, fresh, nfe, rows), (new if return_path else None)

  lp0 = jnp.zeros(shape + (process.vocab_size,), jnp.float32)
  (x, lp, fresh, nfe, rows), path = jax.lax.scan(
      body, (x, lp0, jnp.zeros((b,), bool), jnp.asarray(0), jnp.asarray(0)),
      jnp.arange(steps))
  if final_denoise:
    s_end = schedule.sigma_bar(full(t_end))
    lp_end = model_log_probs(x, s_end)
    x = clamp(jax.random.categorical(k_final, lp_end).astype(jnp.int32))
    nfe, rows = nfe + 1, rows + b
  info = {"nfe": nfe, "nfe_rows": rows}
  if return_path:
    info["path"] = path
  return x, info


def jit_sampler(apply_fn: Callable, process: Process, schedule: Schedule, shape,
                **kwargs) -> Callable:
  """``fn(params, key) -> (tokens, info)``: ``sample`` jitted with the model's
  parameters as an argument of the executable.

  ``apply_fn(params, x_t, sigma_bar) -> logits``; ``kwargs`` go to ``sample``. Passing
  the parameters (instead of closing over them) lets one compile serve every
  checkpoint, and avoids NaN results seen with jax 0.10.2 on multi-device CPU hosts
  when jitted closures captured parameters.
  """
  return jax.jit(lambda params, key: sample(
      key, lambda x, s: apply_fn(params, x, s), process, schedule, shape, **kwargs))


def clamp_from_template(template, vocab_size: int, hole: int = -1):
  """``(clamp_tokens, clamp_mask)`` from a ``[batch, length]`` template with ``hole`` ids."""
  template = jnp.asarray(template, jnp.int32)
  mask = template != hole
  _checks.check_tokens(jnp.where(mask, template, 0), vocab_size, "template")
  return jnp.where(mask, template, 0), mask
