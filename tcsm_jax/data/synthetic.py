"""Synthetic data with a known answer: a seeded random Markov chain of order ``k``.

The chain's next-token law given the previous ``k`` tokens is drawn from a Dirichlet
(``concentration``), so the data have structure a model can learn, and the exact
entropy of a length-``L`` chunk is known in closed form:

  ``H(X_1..X_L) = H(pi_k) + (L - k) h``,

where ``pi_k`` is the stationary law of ``k``-tuples and ``h`` the entropy rate. A
likelihood bound that falls below ``H / L`` nats per token is a bug; a well trained
model approaches it from above.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tcsm_jax import targets
from tcsm_jax.data import base


@dataclasses.dataclass(frozen=True)
class MarkovChain:
  """Order-``k`` chain over ``vocab`` symbols; ``trans[s, y] = p(y | tuple s)``."""

  vocab: int
  order: int
  trans: np.ndarray            # [vocab ** order, vocab]

  @classmethod
  def random(cls, vocab: int, order: int = 1, concentration: float = 0.3,
             seed: int = 0) -> "MarkovChain":
    if vocab < 2 or order < 1:
      raise ValueError(f"need vocab >= 2 and order >= 1, got {vocab}, {order}")
    if vocab ** order > 1 << 20:
      raise ValueError(f"vocab ** order = {vocab ** order} states is too many")
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, concentration), size=vocab ** order)
    trans = np.maximum(trans, 1e-6)   # irreducible and aperiodic
    return cls(vocab, order, trans / trans.sum(1, keepdims=True))

  def _tuple_transition(self) -> np.ndarray:
    """``[S, S]`` transition between k-tuples (``S = vocab ** order``)."""
    s = self.vocab ** self.order
    t = np.zeros((s, s))
    for state in range(s):
      for y in range(self.vocab):
        t[state, (state * self.vocab + y) % s] += self.trans[state, y]
    return t

  def stationary(self) -> np.ndarray:
    """Stationary law of k-tuples ``[vocab ** order]``."""
    t = self._tuple_transition()
    w, v = np.linalg.eig(t.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    return pi / pi.sum()

  def entropy_rate(self) -> float:
    """``h = -sum_s pi(s) sum_y p(y|s) log p(y|s)`` in nats."""
    pi = self.stationary()
    return float(-(pi[:, None] * self.trans * np.log(self.trans)).sum())

  def chunk_entropy(self, length: int) -> float:
    """Exact entropy (nats) of a stationary chunk of ``length >= order`` tokens."""
    pi = self.stationary()
    h0 = float(-(pi[pi > 0] * np.log(pi[pi > 0])).sum())
    return h0 + (length - self.order) * self.entropy_rate()

  def sample(self, num_tokens: int, seed: int = 0) -> np.ndarray:
    """A stationary sample path ``[num_tokens]`` (uint8/int32)."""
    rng = np.random.default_rng(seed)
    s = self.vocab ** self.order
    state = int(rng.choice(s, p=self.stationary()))
    first = [(state // self.vocab ** (self.order - 1 - j)) % self.vocab
             for j in range(self.order)]
    out = np.empty(num_tokens, np.int32)
    out[:self.order] = first[:num_tokens]
    cdf = np.cumsum(self.trans, 1)
    u = rng.random(num_tokens)
    for i in range(self.order, num_tokens):
      y = min(int(np.searchsorted(cdf[state], u[i])), self.vocab - 1)
      out[i] = y
      state = (state * self.vocab + y) % s
    return out

  def log_prob(self, seqs: np.ndarray) -> np.ndarray:
    """Exact ``log p(x)`` of stationary chunks ``[batch, length]``."""
    seqs = np.asarray(seqs)
    s = self.vocab ** self.order
    pi = self.stationary()
    state = np.zeros(len(seqs), np.int64)
    for j in range(self.order):
      state = state * self.vocab + seqs[:, j]
    lp = np.log(pi[state])
    for i in range(self.order, seqs.shape[1]):
      lp += np.log(self.trans[state, seqs[:, i]])
      state = (state * self.vocab + seqs[:, i]) % s
    return lp


def jax_log_prob_fn(chain: MarkovChain):
  """Jittable ``tokens [n, L] -> log p(tokens) [n]`` of stationary chunks (``L >= k``).

  The exact sequence law, usable as an oracle teacher: ``targets.ar_exact`` of it gives
  the true clean-space concrete score on the 1-Hamming neighbourhood.
  """
  log_pi = jnp.asarray(np.log(np.maximum(chain.stationary(), 1e-30)), jnp.float32)
  log_t = jnp.asarray(np.log(chain.trans), jnp.float32)
  v, k = chain.vocab, chain.order
  s = v ** k

  def fn(tokens):
    tokens = jnp.asarray(tokens)
    state = jnp.zeros(tokens.shape[:1], jnp.int32)
    for j in range(k):
      state = state * v + tokens[:, j]

    def step(carry, y):
      st, lp = carry
      return ((st * v + y) % s, lp + log_t[st, y]), None

    (_, lp), _ = jax.lax.scan(step, (state, log_pi[state]), tokens[:, k:].T)
    return lp

  return fn


def oracle_teacher(chain: MarkovChain):
  """Target function ``x0 [b, L] -> [b, L, V]``: the chain's exact neighbour log-ratios
  (``log p(x^{i<-y}) - log p(x)``), a perfect parametric target for TCSM."""
  lp = jax_log_prob_fn(chain)
  return lambda x0: targets.ar_exact(lp, x0, chain.vocab)


def _decode(ids):
  ids = np.asarray(ids)
  if ids.ndim > 1:
    return [_decode(r) for r in ids]
  return " ".join(str(int(i)) for i in ids)


def load(data_cfg: ml_collections.ConfigDict, workdir: str = "") -> base.TokenDataset:
  """Train/validation paths of the chain described by ``config.data.markov_*``."""
  chain = chain_from_config(data_cfg)
  n = int(data_cfg.markov_tokens)
  del workdir  # nothing to cache
  return base.TokenDataset(chain.sample(n, seed=1), chain.sample(max(n // 10, 4096),
                                                                  seed=2),
                           chain.vocab, _decode, f"markov{chain.vocab}o{chain.order}",
                           lambda s: np.asarray([int(t) for t in s.split()], np.int32))


def chain_from_config(data_cfg: ml_collections.ConfigDict) -> MarkovChain:
  return MarkovChain.random(data_cfg.markov_vocab, data_cfg.markov_order,
                            data_cfg.markov_concentration, seed=0)
