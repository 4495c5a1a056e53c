"""The score form on the 2-Hamming neighbourhood: pair blocks (issue 15, part 4).

The 1-Hamming score form (``losses.score_loss``) compares concrete scores on the
sequences one token away from the centre ``x0``. Its 2-Hamming extension compares them
on the sequences at most two tokens away, organized in *pair blocks*: for a pair of
positions ``(i, j)`` the block holds the ``V x V`` ratios
``p(x0^{i<-y, j<-z} | x_t) / p(x0 | x_t)`` (distance 2 off the axes, distance 1 on them,
the centre at ``(x0^i, x0^j)``). The loss of a block is

  ``(1 / V^2) sum_{(y, z) in N_i x N_j} D(q-ratio, p-ratio)``,

the ``1/V`` of the 1-Hamming form squared, and a sequence's loss is the mean over pairs
scaled to ``L`` blocks, ``(L / P) sum_pairs``: for all ``L (L - 1) / 2`` pairs this is
``2 / (L - 1) sum_{i < j}``, and for ``P`` uniformly drawn pairs it is an unbiased
estimate of that.

*Model side.* A factorized denoiser's pair ratio is the product of its two 1-Hamming
ratios, ``lb_ij(y, z) = lb_i(y) + lb_j(z)``: the block is formed from ``[b, L, V]``.
*Target side.* The target's pair ratios are not products when the target couples the
two positions; they come from clean-space pair log-ratios
``log p_1(x0^{i<-y, j<-z}) - log p_1(x0)`` (``targets.pair_exact``) pushed through the
path identity, which multiplies in both positions' likelihoods. With the data target
(Monte Carlo) the pair ``(x0^i, x0^j)`` of a posterior sample is a sample of the
target's pair conditional, and the estimator of ``losses.score_loss`` applies with the
block as one variable of ``V^2`` values (unbiased up to a theta-independent constant;
tested by enumeration).

*What changes with k.* For ``kl`` a block's loss is a cross-entropy against the pair
conditional, whose minimizer over a factorized model is the same marginal as for k = 1;
for ``gkl``, ``lsif`` and ``itakura_saito`` the block couples the two positions' ratios
(``sum_{y,z} b_i(y) b_j(z)``), so the objective and its gradients differ.

Cost: ``[batch, P, V, V]`` per step (the block is materialized: this is for small ``V``
and ``L``, or few sampled pairs); a target from a sequence log-probability costs
``P V^2`` sequence evaluations per sequence.
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from tcsm_jax import _checks, divergences, losses, scores
from tcsm_jax.processes import Process


def all_pairs(length: int) -> jnp.ndarray:
  """``[L (L - 1) / 2, 2]`` int32: every pair ``(i, j)``, ``i < j``, row-major."""
  if length < 2:
    raise ValueError(f"pairs need a sequence length >= 2, got {length}")
  i, j = np.triu_indices(length, 1)
  return jnp.asarray(np.stack([i, j], 1), jnp.int32)


def sample_pairs(key, length: int, num: int) -> jnp.ndarray:
  """``[num, 2]`` int32 pairs ``i != j`` drawn uniformly (with replacement) from the
  ``L (L - 1) / 2`` unordered pairs (shared over the batch)."""
  if length < 2:
    raise ValueError(f"pairs need a sequence length >= 2, got {length}")
  k_i, k_d = jax.random.split(key)
  i = jax.random.randint(k_i, (num,), 0, length)
  j = (i + jax.random.randint(k_d, (num,), 1, length)) % length
  return jnp.stack([jnp.minimum(i, j), jnp.maximum(i, j)], 1).astype(jnp.int32)


def _gather(a, pairs):
  """``a [b, L, ...] -> ([b, P, ...], [b, P, ...])`` at the pairs' two positions."""
  return a[:, pairs[:, 0]], a[:, pairs[:, 1]]


def _block(a_i, a_j):
  """``[b, P, V] x [b, P, V] -> [b, P, V, V]``: ``a_i[y] + a_j[z]``."""
  return a_i[..., :, None] + a_j[..., None, :]


def _at_centre(block, x_i, x_j):
  """``block [b, P, V, V]`` at ``(x_i, x_j)`` -> ``[b, P, 1, 1]``."""
  row = jnp.take_along_axis(block, x_i[..., None, None], -2)           # [b, P, 1, V]
  return jnp.take_along_axis(row, x_j[..., None, None], -1)


def pair_posterior_log_ratios(target_pair_log_ratios, process: Process, x0, x_t, sigma_bar,
                              pairs):
  """The path identity on pair blocks.

  Args:
    target_pair_log_ratios: ``[b, P, V, V]`` clean-space
      ``log p_1(x0^{i<-y, j<-z}) - log p_1(x0)`` (``-inf`` for no mass).
    process, x0 ``[b, L]``, x_t ``[b, L]``, sigma_bar (scalar or ``[b]``): the forward
      corruption.
    pairs: ``[P, 2]`` int positions.
  Returns:
    ``[b, P, V, V]`` log ratios of the denoising posterior ``p(. | x_t)`` at ``x0``,
    ``-inf`` outside the posterior's pair support.
  """
  lik = process.likelihood_log_probs(x_t, sigma_bar)                   # [b, L, V]
  lik = scores.clean_log_ratios(lik, x0)
  l_i, l_j = _gather(lik, pairs)
  return target_pair_log_ratios.astype(jnp.float32) + _block(l_i, l_j)


def pair_score_loss(log_p, x0, pairs, divergence: str = "gkl", *, log_q_ratios=None,
                    support=None):
  """Score-form loss of every pair block, on the ``1/V^2`` scale.

  Args:
    log_p: ``[b, L, V]`` model posterior log-probabilities (factorized).
    x0: ``[b, L]`` clean tokens, the centre (a posterior sample).
    pairs: ``[P, 2]`` int positions ``(i, j)``, ``i != j``.
    divergence: ``gkl``, ``kl``, ``lsif`` or ``itakura_saito``.
    log_q_ratios: ``[b, P, V, V]`` target posterior log-ratios at ``x0``
      (``pair_posterior_log_ratios``); ``None`` for the data (Monte Carlo) target.
    support: ``[b, L, V]`` bool posterior support; defaults to ``log_p > -inf``.
  Returns:
    ``[b, P]`` float32. A block whose support is one pair of values (both positions
    determined) contributes 0.
  """
  div = divergences.get(divergence)
  log_p = log_p.astype(jnp.float32)
  v = log_p.shape[-1]
  if log_p.ndim != 3 or jnp.shape(x0) != log_p.shape[:2]:
    raise ValueError(f"log_p {log_p.shape} must be [batch, length, V] over x0 "
                     f"{jnp.shape(x0)}")
  pairs = jnp.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != 2:
    raise ValueError(f"pairs must be [P, 2], got {pairs.shape}")
  if _checks.is_concrete(pairs) and pairs.size:
    p = np.asarray(pairs)
    bad = (p.min(1) < 0) | (p.max(1) >= log_p.shape[1]) | (p[:, 0] == p[:, 1])
    if np.any(bad):
      raise ValueError(f"pairs must hold two different positions in [0, "
                       f"{log_p.shape[1]}) per row, got row {int(np.argmax(bad))}: "
                       f"{p[np.argmax(bad)].tolist()}")
  keep = (log_p > -jnp.inf) if support is None else support
  safe = jnp.where(keep, log_p, 0.0)
  lb1 = scores.clean_log_ratios(safe, x0)                              # [b, L, V]
  k_i, k_j = _gather(keep, pairs)
  keep2 = k_i[..., :, None] & k_j[..., None, :]                        # [b, P, V, V]
  live = jnp.sum(keep2, (-2, -1)) > 1
  lb = _block(*_gather(lb1, pairs))                                    # [b, P, V, V]
  scale = 1.0 / (v * v)
  if log_q_ratios is None:
    if div.name == "kl":
      x_i, x_j = _gather(x0, pairs)
      lp_i, lp_j = _gather(safe, pairs)
      take = lambda a, x: jnp.take_along_axis(a, x[..., None], -1)[..., 0]
      return jnp.where(live, -(take(lp_i, x_i) + take(lp_j, x_j)) * scale, 0.0)
    u = jnp.where(keep2, div.mc_u(lb), 0.0).sum((-2, -1))
    swap = jnp.where(keep2, div.mc_dphi(-lb), 0.0).sum((-2, -1))
    return jnp.where(live, (u - swap) * scale, 0.0)
  if log_q_ratios.shape != lb.shape:
    raise ValueError(f"log_q_ratios {log_q_ratios.shape} must be [batch, P, V, V] = "
                     f"{lb.shape}")
  la = jnp.where(keep2, log_q_ratios.astype(jnp.float32), -jnp.inf)
  x_i, x_j = _gather(x0, pairs)
  la = la - _at_centre(jnp.where(keep2, la, 0.0), x_i, x_j)            # centre at 0
  lb = jnp.where(keep2, lb, -jnp.inf)
  flat = lambda a: a.reshape(a.shape[:2] + (-1,))
  if div.name == "kl":
    return divergences.kl_log(jax.nn.log_softmax(flat(la), -1),
                              jax.nn.log_softmax(flat(lb), -1)) * scale
  return jnp.where(keep2, div.log_fn(la, lb), 0.0).sum((-2, -1)) * scale


def pair_tcsm_loss(logits, x0, x_t, sigma_bar, process: Process, pairs, *,
                   divergence: str = "gkl", target_pair_log_ratios=None):
  """2-Hamming score-form TCSM loss per pair block from network logits.

  Args:
    logits: ``[b, L, V]`` denoiser logits.
    x0, x_t: ``[b, L]`` clean and noisy tokens; sigma_bar: scalar or ``[b]``.
    process: the forward process.
    pairs: ``[P, 2]`` int positions (``all_pairs`` or ``sample_pairs``).
    divergence: a name from ``divergences.DIVERGENCES``.
    target_pair_log_ratios: ``None`` for the data target, else ``[b, P, V, V]``
      clean-space target pair log-ratios (``targets.pair_exact``).
  Returns:
    ``[b, P]`` float32 (sum over pairs times ``L / P`` for a per-sequence loss on the
    scale of ``L`` blocks).
  """
  log_p, keep = losses.model_posterior(logits, x0, x_t, sigma_bar, process)
  log_q = None
  if target_pair_log_ratios is not None:
    log_q = pair_posterior_log_ratios(target_pair_log_ratios, process, x0, x_t, sigma_bar,
                                      pairs)
  return pair_score_loss(log_p, x0, pairs, divergence, log_q_ratios=log_q, support=keep)
