"""Exact quantities on small state spaces by enumeration (numpy, float64).

Ground truth for tests and notebooks: every sequence of ``length`` tokens over
``num_states`` states is enumerated, so keep ``num_states ** length`` small (< 10^4).
Kernels come from ``scipy.linalg.expm`` of the process's rate matrix, independently of
the closed forms in ``processes.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg

from tcsm_jax.processes import Process


def all_sequences(num_states: int, length: int) -> np.ndarray:
  """``[num_states ** length, length]`` int32, lexicographic order."""
  return np.array(list(itertools.product(range(num_states), repeat=length)), np.int32)


def index_of(seqs: np.ndarray, num_states: int) -> np.ndarray:
  """Row index in ``all_sequences`` of each sequence in ``seqs [..., length]``."""
  length = seqs.shape[-1]
  weights = num_states ** np.arange(length - 1, -1, -1)
  return (np.asarray(seqs) * weights).sum(-1)


def random_distribution(rng: np.random.Generator, vocab_size: int, length: int,
                        concentration: float = 0.5) -> np.ndarray:
  """A random Dirichlet distribution over all ``vocab_size ** length`` sequences."""
  return rng.dirichlet(np.full(vocab_size ** length, concentration))


def kernel(process: Process, sigma_bar: float) -> np.ndarray:
  """``[S, S] = expm(sigma_bar * Q)`` in float64 via scipy."""
  q = np.asarray(process.rate_matrix(), np.float64)
  return scipy.linalg.expm(sigma_bar * q)


def joint(p0: np.ndarray, process: Process, sigma_bar: float, length: int) -> np.ndarray:
  """``[N0, Nt]`` joint ``p(x0, x_t)`` over clean (``V^L``) and noisy (``S^L``) sequences."""
  v, s = process.vocab_size, process.num_states
  k = kernel(process, sigma_bar)[:v]                      # [V, S]
  x0s, xts = all_sequences(v, length), all_sequences(s, length)
  lik = np.ones((len(x0s), len(xts)))
  for i in range(length):
    lik *= k[x0s[:, i]][:, xts[:, i]]
  return p0[:, None] * lik


def posterior(p0, process, sigma_bar, length):
  """``(p_t [Nt], post [Nt, N0])``: noisy marginal and ``p(x0 | x_t)`` (0 where p_t = 0)."""
  j = joint(p0, process, sigma_bar, length)
  pt = j.sum(0)
  post = np.divide(j.T, pt[:, None], out=np.zeros_like(j.T), where=pt[:, None] > 0)
  return pt, post


def position_marginals(post: np.ndarray, vocab_size: int, length: int) -> np.ndarray:
  """``[Nt, L, V]``: ``p(x0^i = y | x_t)`` from a posterior ``[Nt, N0]``."""
  x0s = all_sequences(vocab_size, length)
  onehot = np.eye(vocab_size)[x0s]                        # [N0, L, V]
  return np.einsum("tn,nlv->tlv", post, onehot)


def conditionals(p0: np.ndarray, vocab_size: int, length: int) -> np.ndarray:
  """``[N0, L, V]``: ``p0(x^i = y | x^{-i})`` at every sequence and position."""
  x0s = all_sequences(vocab_size, length)
  out = np.zeros((len(x0s), length, vocab_size))
  for i in range(length):
    for y in range(vocab_size):
      nb = x0s.copy()
      nb[:, i] = y
      out[:, i, y] = p0[index_of(nb, vocab_size)]
  tot = out.sum(-1, keepdims=True)
  return np.divide(out, tot, out=np.zeros_like(out), where=tot > 0)


def noisy_concrete_score(pt: np.ndarray, num_states: int, length: int) -> np.ndarray:
  """``[Nt, L, S]``: ``p_t(x^{i<-y}) / p_t(x)`` (``nan`` where ``p_t(x) = 0``)."""
  xts = all_sequences(num_states, length)
  out = np.zeros((len(xts), length, num_states))
  for i in range(length):
    for y in range(num_states):
      nb = xts.copy()
      nb[:, i] = y
      with np.errstate(divide="ignore", invalid="ignore"):
        out[:, i, y] = pt[index_of(nb, num_states)] / pt
  return out


def entropy(p: np.ndarray) -> float:
  """Shannon entropy in nats."""
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def true_denoiser(p0: np.ndarray, process: Process, length: int):
  """Jittable exact denoiser ``(x_t [b, L], sigma [b]) -> log p(x0^i | x_t) [b, L, V]``.

  Marginals of the exact posterior ``p(x0 | x_t) ~ p0(x0) prod_i P(x0^i, x_t^i)`` over all
  ``V^L`` clean sequences (``-inf`` where a value is impossible): the Bayes-optimal
  factorized denoiser, used as ground truth for losses, bounds and samplers.
  """
  import jax
  import jax.numpy as jnp
  v = process.vocab_size
  x0s = jnp.asarray(all_sequences(v, length))                      # [N0, L]
  log_p0 = jnp.log(jnp.asarray(p0, jnp.float32))
  onehot = jax.nn.one_hot(x0s, v)                                  # [N0, L, V]

  def fn(x_t, sigma):
    lik = process.likelihood_log_probs(x_t, sigma)                 # [b, L, V]
    per = jnp.take_along_axis(lik[:, None], x0s[None, ..., None], -1)[..., 0]  # [b,N0,L]
    post = jax.nn.softmax(log_p0 + per.sum(-1), -1)                # [b, N0]
    marg = jnp.einsum("bn,nlv->blv", post, onehot, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(marg)

  return fn


def chisquare_pvalue(counts, probs, min_expected: float = 5.0) -> float:
  """Pearson chi-square p-value of ``counts [K]`` against the law ``probs [K]``.

  Cells expected below ``min_expected`` are pooled into one (dropped when the pool is
  empty), so sparse laws and zero-probability cells are handled.
  """
  from scipy import stats
  counts = np.asarray(counts, np.float64)
  probs = np.asarray(probs, np.float64)
  n = counts.sum()
  big = probs * n >= min_expected
  obs, exp = list(counts[big]), list(probs[big])
  if probs[~big].sum() > 0:
    obs.append(counts[~big].sum())
    exp.append(probs[~big].sum())
  elif counts[~big].sum() > 0:
    return 0.0                       # draws where the law puts no mass
  exp = np.asarray(exp) / np.sum(exp) * n
  return float(stats.chisquare(np.asarray(obs), exp).pvalue)
