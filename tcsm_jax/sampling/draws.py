"""Exact categorical and Bernoulli draws in float32, down to probabilities of 2^-105.

``jax.random.categorical`` is Gumbel-max with float32 uniforms of 23 random bits: its
Gumbel noise lies in about ``[-4.47, 15.9]``, so an outcome whose log-probability is more
than about 20 nats below the most likely one is never drawn, and in a many-step sampler
every token whose per-step probability falls below that floor is cut off. The draws
here consume a uniform variate on a 2^-23 *relative* grid at every scale down to
``2^-105 ~ 2.5e-32`` (four 32-bit words: 23 mantissa bits and a geometric exponent read
off the leading zeros of the other 105 bits). Each scale keeps its exact probability;
within it, the float32 ``log U`` handed on carries ``U`` to about 2^-23 relative near
1, 2^-19 at ``U ~ 2^-40`` and 2^-17 in the deepest buckets (the ulp of ``|log U|`` up
to 73.5; measured per bucket in ``experiments/results/draws_precision_speed.md``). So:

* ``bernoulli_log(key, log_p)`` is ``True`` with probability ``p`` for every
  ``p >= 2^-105`` (to float32 rounding of ``log p``);
* ``categorical(key, log_probs, "exact")`` is an exponential race,
  ``argmin_i log E_i - log p_i`` with ``E_i ~ Exp(1)`` drawn at that precision, which
  draws outcome ``i`` with probability ``p_i / sum_j p_j`` for every outcome down to
  ``2^-105`` of the largest. For more than ``BLOCK_MIN`` outcomes it races first over
  blocks of about ``sqrt(V)`` outcomes (their log-sum-exp masses) and then inside the
  chosen block: the same law (a block, then an outcome given the block) with
  ``O(sqrt(V))`` random words per draw instead of ``O(V)``.

Cost against ``jax.random.categorical`` (each row its own law, 2-core CPU,
``draws_precision_speed.md``): 3.1-3.7x slower at V = 27 (four words per outcome
against one), 3.0x faster at V = 2,048, 4.4-5.1x faster at V = 50,257.

A row with a NaN or with no finite log-probability has no law: ``categorical`` draws
``NO_LAW = -1`` there and reports it through ``checkify`` (see ``categorical``).

``categorical(key, log_probs, "gumbel32")`` is ``jax.random.categorical`` itself: the
draw of older versions, kept to reproduce their numbers.

The draws are pure functions of their key; ``*_from_bits`` variants take the random
words explicitly so a test can feed the extreme variates a draw can consume.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import checkify

DRAWS = ("exact", "gumbel32")
WORDS = 4                                    # uint32 words per uniform variate
MIN_LOG_UNIFORM = -106 * math.log(2.0)       # log of the smallest uniform drawn
BLOCK_MIN = 32                               # outcomes above which the race is two-level


def _exponent_and_mantissa(bits):
  """``(k, m)`` of a uniform variate from ``bits [..., 4]`` uint32 (see below)."""
  bits = jnp.asarray(bits, jnp.uint32)
  w0, w1, w2, w3 = (bits[..., i] for i in range(WORDS))
  low = w0 & jnp.uint32(0x1FF)                               # 9 bits
  clz = lambda w: jax.lax.clz(w).astype(jnp.int32)
  k = clz(low) - 23
  k = k + jnp.where(low == 0, clz(w1), 0)
  k = k + jnp.where((low == 0) & (w1 == 0), clz(w2), 0)
  k = k + jnp.where((low == 0) & (w1 == 0) & (w2 == 0), clz(w3), 0)
  return k, (w0 >> 9).astype(jnp.float32)


def log_uniform_from_bits(bits):
  """``log U`` for ``U`` uniform on ``(0, 1)`` from ``bits [..., 4]`` uint32 words.

  ``U = 2^-(k+1) (1 + (m + 1/2) / 2^23)`` with ``m`` the top 23 bits of word 0 and ``k``
  the number of leading zeros of the remaining 105 bits (``P(k = j) = 2^-(j+1)``), so
  ``P(U < x) = x`` up to the 2^-23 relative grid for all ``x >= 2^-105``; ``k = 105``
  (all zero, probability 2^-105) is the last bucket. Returns ``[...]`` float32 in
  ``[-73.5, 0)``, rounded to float32's ulp of ``|log U|``: a relative error of ``U``
  up to about 2^-17 in the deepest buckets (2^-23 near 1).
  """
  return _log_uniform(*_exponent_and_mantissa(bits))


def _one_minus_top(mant):
  """``1 - U`` for ``k = 0`` (``U`` in ``[1/2, 1)``): ``(2^23 - m - 1/2) 2^-24``, exact."""
  return (2.0 ** 23 - mant - 0.5) * (2.0 ** -24)


def _log_uniform(k, mant):
  frac = (mant + 0.5) * (2.0 ** -23)
  deep = jnp.log1p(frac) - (k + 1).astype(jnp.float32) * jnp.float32(math.log(2.0))
  # k = 0: log U = log1p(-(1 - U)) with 1 - U exact, so U < 1 stays below 1 in log
  # space (log1p(frac) would round to log 2 for the top mantissas).
  top = jnp.log1p(-_one_minus_top(mant))
  return jnp.where(k == 0, top, deep)


def log_uniform(key, shape):
  """``[*shape]`` float32 ``log U``, ``U ~ Uniform(0, 1)`` at full relative precision."""
  return log_uniform_from_bits(jax.random.bits(key, tuple(shape) + (WORDS,), jnp.uint32))


def log_exponential_from_bits(bits):
  """``log E`` for ``E ~ Exp(1)``: ``E = -log(1 - U)``, precise where ``E`` is small.

  ``U < 1/2`` (``k >= 1``): ``E = -log1p(-U)``, relative precision down to
  ``E ~ 2^-106``. ``U >= 1/2`` (``k = 0``): ``1 - U = (2^23 - m - 1/2) 2^-24`` exactly,
  so the upper tail (``E`` up to ``25 log 2``) is not rounded away.
  """
  k, mant = _exponent_and_mantissa(bits)
  u = jnp.exp(_log_uniform(k, mant))                         # >= 2^-106: a normal float
  top = k == 0
  one_minus = jnp.where(top, _one_minus_top(mant), 1.0)
  e = jnp.where(top, -jnp.log(one_minus), -jnp.log1p(-jnp.where(top, 0.0, u)))
  return jnp.log(e)


def bernoulli_log(key, log_p, shape=None):
  """``True`` with probability ``exp(log_p)`` for ``p >= 2^-105`` (to float32 rounding of
  ``log p`` and ``log U``: about 2^-17 relative at the smallest ``p``).

  Args:
    log_p: log-probabilities, any shape (``-inf`` never, ``>= 0`` always fires).
    shape: output shape (default ``log_p``'s).
  """
  log_p = jnp.asarray(log_p, jnp.float32)
  shape = log_p.shape if shape is None else tuple(shape)
  return log_uniform(key, shape) < log_p


def _race(log_e, log_probs):
  """Index of ``argmin_i log_e_i - log_probs_i`` (``-inf`` outcomes never win)."""
  keys = jnp.where(log_probs > -jnp.inf, log_e - log_probs, jnp.inf)
  return jnp.argmin(keys, axis=-1).astype(jnp.int32)


def categorical_from_bits(bits, log_probs):
  """One-level exact race: ``bits [..., V, 4]``, ``log_probs [..., V]`` -> ``[...]``."""
  return _race(log_exponential_from_bits(bits), jnp.asarray(log_probs, jnp.float32))


def _exact_categorical(key, log_probs, lead):
  """``[*lead]`` draws from ``log_probs [..., V]`` (its leading axes broadcast to
  ``lead``; a single law ``[V]`` is never copied ``len(lead)`` times)."""
  v = log_probs.shape[-1]
  if v <= BLOCK_MIN:
    bits = jax.random.bits(key, lead + (v, WORDS), jnp.uint32)
    return categorical_from_bits(bits, log_probs)
  size = int(math.ceil(math.sqrt(v)))
  nblocks = -(-v // size)
  own = log_probs.shape[:-1]
  padded = jnp.pad(log_probs, [(0, 0)] * len(own) + [(0, nblocks * size - v)],
                   constant_values=-jnp.inf)
  blocks = padded.reshape(own + (nblocks, size))
  k_block, k_inner = jax.random.split(key)
  mass = jax.nn.logsumexp(blocks, axis=-1)                   # [..., nblocks]
  bits_b = jax.random.bits(k_block, lead + (nblocks, WORDS), jnp.uint32)
  block = categorical_from_bits(bits_b, mass)                # [*lead]
  if not own:                                                # one law for every draw
    inner_lp = blocks[block]                                 # [*lead, size]
  else:
    inner_lp = jnp.take_along_axis(jnp.broadcast_to(blocks, lead + blocks.shape[-2:]),
                                   block[..., None, None], axis=-2)[..., 0, :]
  bits_i = jax.random.bits(k_inner, lead + (size, WORDS), jnp.uint32)
  inner = categorical_from_bits(bits_i, inner_lp)
  return block * size + inner


NO_LAW = -1     # what a row without a law draws (see ``categorical``)


def categorical(key, log_probs, draw: str = "exact", shape=None):
  """Draws an index from unnormalized ``log_probs [..., V]`` -> ``[...]`` int32.

  ``draw="exact"``: exact for outcomes down to ``2^-105`` of the largest (module
  docstring); ``"gumbel32"``: ``jax.random.categorical`` (cuts off outcomes about 20
  nats below the largest). ``-inf`` entries are never drawn. ``shape``: the output
  shape, into which ``log_probs``'s leading axes broadcast (default: those axes).

  A row with a NaN, or with no finite entry, has no law: it draws ``NO_LAW = -1``
  (never an index), and ``checkify.checkify`` callers get an error saying so
  (``jit_sampler`` does this for every sampler). A NaN is never read as ``-inf``.
  """
  if draw not in DRAWS:
    raise ValueError(f"unknown draw {draw!r}; choose one of {DRAWS}")
  log_probs = jnp.asarray(log_probs, jnp.float32)
  lead = log_probs.shape[:-1] if shape is None else tuple(shape)
  if draw == "exact":
    out = _exact_categorical(key, log_probs, lead)
  else:
    out = jax.random.categorical(key, log_probs, shape=lead).astype(jnp.int32)
  bad = jnp.broadcast_to(jnp.any(jnp.isnan(log_probs), -1)
                         | ~jnp.any(log_probs > -jnp.inf, -1), lead)
  checkify.debug_check(~jnp.any(bad), "categorical draw: {n} row(s) of log-probabilities "
                       "with a NaN or no finite entry", n=jnp.sum(bad))
  return jnp.where(bad, NO_LAW, out).astype(jnp.int32)
