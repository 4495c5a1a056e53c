"""Forward continuous-time Markov chains on tokens: Uniform, Absorbing, Dense(Q).

Conventions (see README):

* Row convention: ``Q[i, j]`` (``i != j``) is the rate of jumping from state ``i`` to
  ``j``; rows sum to zero. The kernel is ``P = expm(sigma_bar * Q)`` with
  ``P[i, j] = p(x_t = j | x_0 = i)`` where ``sigma_bar >= 0`` is the integrated noise.
* Clean (data) tokens are ``0 .. vocab_size - 1``. ``Absorbing`` adds the mask state
  ``vocab_size`` (``num_states = vocab_size + 1``); ``Uniform`` has ``num_states =
  vocab_size``; ``Dense`` has ``num_states = Q.shape[0]`` and by default every state
  is a clean token.
* Every position of a sequence is corrupted independently by the same chain.
* Per-example noise levels (``[batch]``) align with the *leading* axes of token
  arrays (``[batch, length]``); scalars broadcast everywhere.

Both structured processes have ``alpha = exp(-sigma_bar)`` as the probability that a
token is untouched:

* ``Uniform``: ``Q = 11^T / V - I``, ``P = alpha I + (1 - alpha) 11^T / V``;
* ``Absorbing``: ``Q[i, mask] = 1``, ``Q[i, i] = -1`` for data ``i``; the mask row is 0;
  ``P[i, i] = alpha``, ``P[i, mask] = 1 - alpha``, ``P[mask, mask] = 1``.

Their methods are closed forms that never build an ``[S, S]`` array except
``rate_matrix``/``transition_matrix``, which exist to be compared with ``expm``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tcsm_jax import _checks

NEG_INF = -jnp.inf


def log1mexp(x):
  """``log(1 - exp(x))`` for ``x <= 0``, accurate near 0 and for very negative x."""
  x = jnp.asarray(x)
  return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _log_one_minus_alpha(sigma):
  """``log(1 - exp(-sigma))``; ``-inf`` at ``sigma = 0``."""
  return jnp.log(-jnp.expm1(-sigma))


def _log_expm1(sigma):
  """``log(exp(sigma) - 1)`` without overflow for large ``sigma`` (``-inf`` at 0)."""
  return sigma + _log_one_minus_alpha(sigma)


class Process:
  """Interface shared by all forward processes (see module docstring)."""

  num_states: int
  vocab_size: int
  mask_id: Optional[int] = None

  # ---- matrices (small state spaces; tests compare them with expm) ----------------
  def rate_matrix(self) -> jnp.ndarray:
    """``[S, S]`` rate matrix ``Q`` (row convention, rows sum to 0)."""
    raise NotImplementedError

  def transition_matrix(self, sigma_bar) -> jnp.ndarray:
    """``[..., S, S] = expm(sigma_bar * Q)`` for ``sigma_bar`` of shape ``[...]``."""
    raise NotImplementedError

  # ---- closed forms on token ids -------------------------------------------------
  def transition_log_probs(self, x0, sigma_bar) -> jnp.ndarray:
    """``[..., S]``: ``log p(x_t = . | x_0)``, row ``x0`` of the log kernel."""
    raise NotImplementedError

  def transition_probs(self, x0, sigma_bar) -> jnp.ndarray:
    """``[..., S]``: ``p(x_t = . | x_0)`` for token ids ``x0`` of shape ``[...]``."""
    return jnp.exp(self.transition_log_probs(x0, sigma_bar))

  def likelihood_log_probs(self, x_t, sigma_bar) -> jnp.ndarray:
    """``[..., V]``: ``log p(x_t | x_0 = y)`` for every clean token ``y``.

    Column ``x_t`` of the log kernel restricted to clean rows: the likelihood that
    turns a clean-space target into the denoising posterior (``scores.py``).
    """
    raise NotImplementedError

  def rates_into(self, x) -> jnp.ndarray:
    """``[..., S]``: ``Q[y, x]`` for all ``y``, the column of ``Q`` at state ``x``."""
    raise NotImplementedError

  def prior_log_probs(self, sigma_bar) -> jnp.ndarray:
    """``[S]``: the reverse process's starting law at noise ``sigma_bar`` (scalar).

    The forward marginal at ``sigma_bar`` of uniformly random clean tokens:
    ``(1/V) sum_a P[a, .]``. It is uniform for ``Uniform`` and, for ``Absorbing``,
    ``1 - alpha`` on the mask and ``alpha / V`` on each data token, so the prior term
    of the NLL bound stays finite when the schedule ends at ``alpha(1) = eps > 0``.
    """
    raise NotImplementedError

  def sample_forward(self, key, x0, sigma_bar) -> jnp.ndarray:
    """Samples ``x_t ~ p(. | x0)``; same shape and dtype as ``x0``."""
    raise NotImplementedError

  def noisy_log_score(self, log_probs, x_t, sigma_bar) -> jnp.ndarray:
    """Concrete score in the noisy space from a factorized denoiser.

    ``p_t(x^{i<-y}) / p_t(x) = sum_a p(x_0^i = a | x_t) P[a, y] / P[a, x_t^i]``, which
    is exact for the true posterior marginals (only the marginal at position ``i``
    enters) on every entry the reverse rates use (``Q[y, x_t^i] != 0``); where the
    kernel column has zeros (an unmasked absorbing token) the other entries are not
    identified by the denoiser and are returned as the posterior average. Args: ``log_probs [..., V]`` denoiser log-probabilities over clean
    tokens, ``x_t [...]``, ``sigma_bar`` aligned with leading axes. Returns
    ``[..., S]`` log-ratios (``0`` at ``y = x_t``, ``-inf`` where the ratio is 0).
    """
    raise NotImplementedError

  # ---- shared code ----------------------------------------------------------------
  def reverse_rates(self, x_t, log_score, dsigma) -> jnp.ndarray:
    """Reverse-time jump rates from a noisy-space concrete score.

    ``R_rev(x -> y) = dsigma * Q[y, x] * p_t(y) / p_t(x)`` for ``y != x``; the entry at
    ``y = x`` is minus the sum of the others, so each row sums to zero.

    Args:
      x_t: ``[...]`` current states.
      log_score: ``[..., S]`` log concrete score ``log p_t(x^{i<-y}) / p_t(x)``.
      dsigma: ``d sigma_bar / dt`` at the current time, aligned with leading axes.
    Returns:
      ``[..., S]`` rates (per unit of time).
    """
    x_t = jnp.asarray(x_t)
    _checks.check_last_dim(log_score, self.num_states, "log_score")
    onehot = jax.nn.one_hot(x_t, self.num_states, dtype=bool)
    q_in = self.rates_into(x_t)
    dsig = _checks.expand_leading(dsigma, log_score.ndim)
    off = jnp.where(onehot | (q_in <= 0), 0.0,
                    dsig * q_in * jnp.exp(jnp.where(onehot, 0.0, log_score)))
    return off - onehot * off.sum(-1, keepdims=True)

  def _sigma(self, sigma_bar, ndim):
    _checks.check_sigma(sigma_bar)
    return _checks.expand_leading(jnp.asarray(sigma_bar, jnp.float32), ndim)


@dataclasses.dataclass(frozen=True)
class Uniform(Process):
  """Uniform process on ``vocab_size`` states: jump to a uniform token at rate 1."""

  vocab_size: int

  def __post_init__(self):
    if int(self.vocab_size) < 2:
      raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")

  @property
  def num_states(self) -> int:
    return self.vocab_size

  def rate_matrix(self):
    v = self.vocab_size
    return jnp.full((v, v), 1.0 / v) - jnp.eye(v)

  def transition_matrix(self, sigma_bar):
    sigma = jnp.asarray(sigma_bar, jnp.float32)[..., None, None]
    _checks.check_sigma(sigma_bar)
    v = self.vocab_size
    # 1 - alpha from expm1: the off-diagonal entries keep their relative accuracy at
    # small sigma (``1 - exp(-sigma)`` in float32 is off by ~6e-8 absolute).
    return jnp.exp(-sigma) * jnp.eye(v) + (-jnp.expm1(-sigma)) / v

  def _log_diag_off(self, sigma):
    """``log P[x, x] = log(alpha + (1 - alpha) / V)`` and ``log P[x, y != x]``.

    The diagonal is ``log1p(-(1 - 1/V)(1 - alpha))`` while that argument is small (no
    rounding of ``alpha`` near 1), and the ``logaddexp`` of its two summands otherwise
    (no cancellation in ``1 + x`` when ``alpha -> 0`` and ``V`` is large).
    """
    v = self.vocab_size
    off = _log_one_minus_alpha(sigma) - jnp.log(v)
    moved = (1.0 - 1.0 / v) * -jnp.expm1(-sigma)       # 1 - P[x, x], in [0, 1 - 1/V)
    diag = jnp.where(moved < 0.5, jnp.log1p(-moved),
                     jnp.logaddexp(-sigma + jnp.log1p(-1.0 / v), -jnp.log(v)))
    return diag, off

  def transition_log_probs(self, x0, sigma_bar):
    x0 = jnp.asarray(x0)
    _checks.check_tokens(x0, self.num_states, "x0")
    sigma = self._sigma(sigma_bar, x0.ndim + 1)
    diag, off = self._log_diag_off(sigma)
    onehot = jax.nn.one_hot(x0, self.num_states, dtype=bool)
    return jnp.where(onehot, diag, off)

  def likelihood_log_probs(self, x_t, sigma_bar):
    # The kernel is symmetric, so the column equals the row.
    return self.transition_log_probs(x_t, sigma_bar)

  def rates_into(self, x):
    x = jnp.asarray(x)
    v = self.vocab_size
    onehot = jax.nn.one_hot(x, v)
    return jnp.full(x.shape + (v,), 1.0 / v) - onehot

  def prior_log_probs(self, sigma_bar):
    return jnp.full((self.vocab_size,), -jnp.log(self.vocab_size))

  def sample_forward(self, key, x0, sigma_bar):
    x0 = jnp.asarray(x0)
    _checks.check_tokens(x0, self.num_states, "x0")
    sigma = self._sigma(sigma_bar, x0.ndim)
    k_jump, k_tok = jax.random.split(key)
    jump = jax.random.uniform(k_jump, x0.shape) < -jnp.expm1(-sigma)
    new = jax.random.randint(k_tok, x0.shape, 0, self.vocab_size, dtype=x0.dtype)
    return jnp.where(jump, new, x0)

  def noisy_log_score(self, log_probs, x_t, sigma_bar):
    # For y != x: r_y = (1 - p(x) a / (a + b)) + (a / b) p(y), a = alpha,
    # b = (1 - alpha) / V; both summands are >= 0 so the log is computed stably.
    x_t = jnp.asarray(x_t)
    _checks.check_last_dim(log_probs, self.vocab_size, "log_probs")
    v = self.vocab_size
    sigma = self._sigma(sigma_bar, log_probs.ndim)
    log_probs = log_probs.astype(jnp.float32)
    log_px = jnp.take_along_axis(log_probs, x_t[..., None], -1)
    log_em1 = _log_expm1(sigma)                          # log(e^sigma - 1)
    # 1 - p(x) a/(a+b) = (1 - p(x)) + p(x) * (e/V) / (1 + e/V), e = e^sigma - 1.
    log_c = jnp.logaddexp(
        log1mexp(jnp.minimum(log_px, 0.0)),
        log_px + jax.nn.log_sigmoid(log_em1 - jnp.log(v)))
    log_r = jnp.logaddexp(log_c, jnp.log(v) - log_em1 + log_probs)
    onehot = jax.nn.one_hot(x_t, v, dtype=bool)
    return jnp.where(onehot, 0.0, log_r)


@dataclasses.dataclass(frozen=True)
class Absorbing(Process):
  """Absorbing (masking) process: each data token jumps to ``mask_id = vocab_size``."""

  vocab_size: int

  def __post_init__(self):
    if int(self.vocab_size) < 1:
      raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")

  @property
  def num_states(self) -> int:
    return self.vocab_size + 1

  @property
  def mask_id(self) -> int:  # type: ignore[override]
    return self.vocab_size

  def rate_matrix(self):
    s = self.num_states
    q = jnp.zeros((s, s)).at[:, self.mask_id].set(1.0) - jnp.eye(s)
    return q.at[self.mask_id].set(0.0)

  def transition_matrix(self, sigma_bar):
    _checks.check_sigma(sigma_bar)
    sigma = jnp.asarray(sigma_bar, jnp.float32)[..., None, None]
    s, m = self.num_states, self.mask_id
    alpha = jnp.exp(-sigma)
    eye = jnp.eye(s)
    to_mask = jnp.zeros((s, s)).at[:, m].set(1.0)
    data_rows = (jnp.arange(s) < m)[:, None]
    p = jnp.where(data_rows, alpha * eye + (-jnp.expm1(-sigma)) * to_mask, eye)
    return p

  def transition_log_probs(self, x0, sigma_bar):
    x0 = jnp.asarray(x0)
    _checks.check_tokens(x0, self.num_states, "x0")
    sigma = self._sigma(sigma_bar, x0.ndim + 1)
    s, m = self.num_states, self.mask_id
    onehot = jax.nn.one_hot(x0, s, dtype=bool)
    is_mask_col = (jnp.arange(s) == m)
    is_mask_row = (x0 == m)[..., None]
    data = jnp.where(onehot, -sigma,
                     jnp.where(is_mask_col, _log_one_minus_alpha(sigma), NEG_INF))
    return jnp.where(is_mask_row, jnp.where(is_mask_col, 0.0, NEG_INF), data)

  def likelihood_log_probs(self, x_t, sigma_bar):
    x_t = jnp.asarray(x_t)
    _checks.check_tokens(x_t, self.num_states, "x_t")
    sigma = self._sigma(sigma_bar, x_t.ndim + 1)
    v = self.vocab_size
    onehot = jax.nn.one_hot(x_t, v, dtype=bool)  # all False at the mask
    masked = (x_t == self.mask_id)[..., None]
    return jnp.where(masked, jnp.broadcast_to(_log_one_minus_alpha(sigma),
                                              x_t.shape + (v,)),
                     jnp.where(onehot, -sigma, NEG_INF))

  def rates_into(self, x):
    x = jnp.asarray(x)
    s = self.num_states
    onehot = jax.nn.one_hot(x, s)
    into_mask = (jnp.arange(s) < self.mask_id).astype(jnp.float32)
    is_mask = (x == self.mask_id)[..., None]
    return jnp.where(is_mask, into_mask, -onehot)

  def prior_log_probs(self, sigma_bar):
    sigma = jnp.asarray(sigma_bar, jnp.float32)
    data = jnp.full((self.vocab_size,), -sigma - jnp.log(self.vocab_size))
    return jnp.concatenate([data, _log_one_minus_alpha(sigma)[None]])

  def sample_forward(self, key, x0, sigma_bar):
    x0 = jnp.asarray(x0)
    _checks.check_tokens(x0, self.num_states, "x0")
    sigma = self._sigma(sigma_bar, x0.ndim)
    masked = jax.random.uniform(key, x0.shape) < -jnp.expm1(-sigma)
    return jnp.where(masked, jnp.asarray(self.mask_id, x0.dtype), x0)

  def noisy_log_score(self, log_probs, x_t, sigma_bar):
    x_t = jnp.asarray(x_t)
    _checks.check_last_dim(log_probs, self.vocab_size, "log_probs")
    sigma = self._sigma(sigma_bar, log_probs.ndim)
    log_em1 = _log_expm1(sigma)
    s = self.num_states
    pad = jnp.zeros(log_probs.shape[:-1] + (1,), jnp.float32)
    # At a masked position: p(y) * alpha / (1 - alpha) for data y, 1 for the mask.
    at_mask = jnp.concatenate([log_probs.astype(jnp.float32) - log_em1, pad], -1)
    # At a data token z: 1 at z, (1 - alpha) / alpha at the mask, 0 elsewhere.
    onehot = jax.nn.one_hot(x_t, s, dtype=bool)
    is_mask_col = jnp.arange(s) == self.mask_id
    at_data = jnp.where(onehot, 0.0, jnp.where(is_mask_col, log_em1, NEG_INF))
    return jnp.where((x_t == self.mask_id)[..., None], at_mask, at_data)


class Dense(Process):
  """Any valid rate matrix ``Q [S, S]``; the general ``expm`` path for small ``S``.

  Args:
    q: ``[S, S]`` rate matrix (row convention).
    vocab_size: number of clean tokens (states ``0 .. vocab_size - 1``); defaults
      to ``S`` (every state may be clean data).
    atol: tolerance of the row-sum check.

  Raises:
    ValueError: if ``q`` is not square, has a negative off-diagonal entry, is not
      finite, or has a row that does not sum to zero.
  """

  def __init__(self, q, vocab_size: Optional[int] = None, atol: float = 1e-5):
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1]:
      raise ValueError(f"rate matrix Q must be square [S, S], got shape {q.shape}")
    if not np.all(np.isfinite(q)):
      raise ValueError("rate matrix Q has non-finite entries")
    off = q - np.diag(np.diag(q))
    if off.min() < 0:
      i, j = np.unravel_index(np.argmin(off), off.shape)
      raise ValueError(f"rate matrix Q has a negative off-diagonal rate Q[{i}, {j}] = "
                       f"{q[i, j]}")
    rows = q.sum(1)
    if np.abs(rows).max() > atol * max(1.0, np.abs(q).max()):
      i = int(np.argmax(np.abs(rows)))
      raise ValueError(f"rows of rate matrix Q must sum to 0; row {i} sums to {rows[i]}")
    self._q = jnp.asarray(q, jnp.float32)
    self.num_states = q.shape[0]
    self.vocab_size = self.num_states if vocab_size is None else int(vocab_size)
    if not 1 <= self.vocab_size <= self.num_states:
      raise ValueError(f"vocab_size must be in [1, {self.num_states}], got {vocab_size}")

  def rate_matrix(self):
    return self._q

  def transition_matrix(self, sigma_bar):
    _checks.check_sigma(sigma_bar)
    sigma = jnp.asarray(sigma_bar, jnp.float32)
    flat = sigma.reshape(-1)
    mats = jax.vmap(lambda s: jax.scipy.linalg.expm(s * self._q))(flat)
    mats = jnp.clip(mats, 0.0, 1.0)
    return mats.reshape(sigma.shape + mats.shape[-2:])

  def transition_log_probs(self, x0, sigma_bar):
    x0 = jnp.asarray(x0)
    _checks.check_tokens(x0, self.num_states, "x0")
    sigma = jnp.broadcast_to(self._sigma(sigma_bar, x0.ndim), x0.shape)
    kern = jnp.log(self.transition_matrix(sigma))          # [..., S, S]
    return jnp.take_along_axis(kern, x0[..., None, None], -2)[..., 0, :]

  def likelihood_log_probs(self, x_t, sigma_bar):
    x_t = jnp.asarray(x_t)
    _checks.check_tokens(x_t, self.num_states, "x_t")
    sigma = jnp.broadcast_to(self._sigma(sigma_bar, x_t.ndim), x_t.shape)
    kern = jnp.log(self.transition_matrix(sigma))
    col = jnp.take_along_axis(kern, x_t[..., None, None], -1)[..., 0]
    return col[..., :self.vocab_size]

  def rates_into(self, x):
    return jnp.take(self._q.T, jnp.asarray(x), axis=0)

  def prior_log_probs(self, sigma_bar):
    kern = self.transition_matrix(jnp.asarray(sigma_bar, jnp.float32))
    return jnp.log(kern[:self.vocab_size].mean(0))

  def sample_forward(self, key, x0, sigma_bar):
    logp = self.transition_log_probs(x0, sigma_bar)
    return jax.random.categorical(key, logp).astype(jnp.asarray(x0).dtype)

  def noisy_log_score(self, log_probs, x_t, sigma_bar):
    x_t = jnp.asarray(x_t)
    _checks.check_last_dim(log_probs, self.vocab_size, "log_probs")
    sigma = jnp.broadcast_to(self._sigma(sigma_bar, x_t.ndim), x_t.shape)
    kern = jnp.log(self.transition_matrix(sigma))[..., :self.vocab_size, :]  # [..,V,S]
    col = jnp.take_along_axis(kern, x_t[..., None, None], -1)                 # [..,V,1]
    terms = log_probs.astype(jnp.float32)[..., :, None] + kern - col
    terms = jnp.where(jnp.isfinite(col), terms, NEG_INF)
    out = jax.nn.logsumexp(terms, axis=-2)
    onehot = jax.nn.one_hot(x_t, self.num_states, dtype=bool)
    return jnp.where(onehot, 0.0, out)


def get(name: str, vocab_size: int) -> Process:
  """Builds a structured process from a config string ('uniform' or 'absorbing')."""
  table = {"uniform": Uniform, "absorbing": Absorbing}
  if name not in table:
    raise ValueError(f"unknown process {name!r}; choose one of {sorted(table)} "
                     "(use processes.Dense(Q) for a custom rate matrix)")
  return table[name](vocab_size)
