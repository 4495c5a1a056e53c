"""Clean-space targets for TCSM: teachers that return log-conditionals / log-ratios.

A *target function* maps clean tokens ``x0 [batch, length]`` to ``[batch, length, V]``
target log-conditionals ``log p_1(x0^i = y | x0^{-i})`` up to an additive constant per
position -- equivalently the log concrete score ``log p_1(x0^{i<-y}) - log p_1(x0)``
on the 1-Hamming neighbourhood. ``losses.tcsm_loss(target_log_cond=...)`` turns it into
the posterior target through the path identity. ``-inf`` marks a neighbour the target
gives no mass (Top-K leaves the rest out).

* ``mlm_teacher``: a bidirectional (masked-LM / absorbing-diffusion) model; its output
  at position ``i`` with only ``i`` masked is ``p(x^i = . | x^{-i})`` directly
  (``length`` forward passes, mapped sequentially to bound memory).
* ``ar_exact``: ``log p_AR(x^{i<-y}) - log p_AR(x)`` for every neighbour
  (``length * V`` sequence evaluations: ground truth for small V and length).
* ``ar_top_k``: the same for the ``K`` most likely replacements at each position under
  the teacher's own next-token distribution ``p_AR(. | x_{<i})``; others ``-inf``.
* ``ar_top_k_tail`` (dense; issue 15, part 3): Top-K exact, and the tail kept instead of
  dropped. The log-ratio splits into a prefix factor ``log p(y | x_{<i}) -
  log p(x^i | x_{<i})``, known for every ``y`` from one forward pass, and a suffix factor
  ``log p(x_{>i} | x_{<i}, y) - log p(x_{>i} | x_{<i}, x^i)``. ``M`` tail tokens drawn
  from the teacher's next-token distribution restricted to the tail get their exact
  suffix factors; every tail token gets its own prefix factor times the sample mean of
  ``exp(suffix)``. The tail's total mass is then unbiased (over the draws); each tail
  token's share of it is exact when the suffix factor is constant over the tail (the last
  position, or a teacher that ignores the token) and otherwise biased toward the tail
  average. The normalized conditional the loss uses is a ratio of estimates: consistent
  in ``M``, not unbiased. ``(K + M) * L`` sequence evaluations.
* ``pair_exact``: ``log p(x^{i<-y, j<-z}) - log p(x)`` on pair blocks ``[b, P, V, V]``,
  the target of the 2-Hamming score form (``hamming.py``; ``P V^2`` evaluations).
* ``ar_taylor``: first order in the one-hot input, ``g[i, y] - g[i, x^i]`` with
  ``g = d log p_AR(X) / dX`` at ``X = onehot(x)``: one forward and backward pass; exact
  when ``log p_AR`` is linear in its one-hot input.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

MODES = ("exact", "top_k", "top_k_tail", "taylor")


def accepts_key(fn: Callable) -> bool:
  """Whether a target function takes a ``key`` argument (a stochastic target)."""
  try:
    return "key" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def call_target(fn: Callable, x0, key=None):
  """``fn(x0, key=key)`` for a target that takes a key, ``fn(x0)`` otherwise."""
  return fn(x0, key=key) if accepts_key(fn) else fn(x0)


# ---- causal-model adapters ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CausalLM:
  """A causal LM as the AR teacher sees it: one adapter per model family, so nothing
  below branches on where a teacher came from.

  Attributes:
    logits_fn: ``(params, inputs [n, T]) -> [n, T, V]`` next-token logits.
    soft_logits_fn: ``(params, soft [n, T, num_inputs]) -> [n, T, V]``, the same with
      the embedding lookup replaced by a weighted sum (differentiable in the input).
    vocab_size: ``V``, the predicted tokens (the student's vocabulary).
    bos_id: the id fed before the first token (a project causal model: its own BOS
      row ``V``; GPT-2: ``<|endoftext|>``).
    num_inputs: input embedding rows (``V + 1`` with a BOS row of its own, ``V`` for
      GPT-2).
  """

  logits_fn: Callable
  soft_logits_fn: Callable
  vocab_size: int
  bos_id: int
  num_inputs: int


def as_causal_lm(model) -> CausalLM:
  """``model`` itself if a ``CausalLM``; a project ``CausalTransformer`` adapted."""
  if isinstance(model, CausalLM):
    return model
  v = model.cfg.vocab_size
  return CausalLM(
      logits_fn=lambda p, t: model.apply({"params": p}, t),
      soft_logits_fn=lambda p, s: model.apply(
          {"params": p}, jnp.zeros(s.shape[:2], jnp.int32), soft_tokens=s),
      vocab_size=v, bos_id=v, num_inputs=v + 1)


def _with_bos(lm: CausalLM, tokens):
  return jnp.concatenate([jnp.full(tokens.shape[:1] + (1,), lm.bos_id, tokens.dtype),
                          tokens[:, :-1]], 1)


def ar_log_prob_fn(model, params) -> Callable:
  """``tokens [n, L] -> log p_AR(tokens) [n]`` (BOS prepended, every token scored) for a
  ``CausalLM`` or a ``CausalTransformer`` (BOS = V)."""
  lm = as_causal_lm(model)

  def fn(tokens):
    logits = lm.logits_fn(params, _with_bos(lm, tokens)).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits, -1)
    return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0].sum(-1)

  return fn


def ar_soft_log_prob_fn(model, params) -> Callable:
  """``onehot [n, L, V] -> log p_AR [n]``, differentiable in the one-hot input.

  The one-hot matrix enters twice, as in the exact function: shifted right (after a
  BOS row) as the network input, and as the selector of each position's
  log-probability.
  """
  lm = as_causal_lm(model)

  def fn(onehot):
    n, _, v = onehot.shape
    padded = jnp.pad(onehot, ((0, 0), (0, 0), (0, lm.num_inputs - v)))   # input rows
    bos = jax.nn.one_hot(jnp.full((n, 1), lm.bos_id), lm.num_inputs)
    soft = jnp.concatenate([bos, padded[:, :-1]], 1)
    logits = lm.soft_logits_fn(params, soft)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return jnp.sum(onehot * lp, (-1, -2))

  return fn


# ---- neighbour log-ratios ---------------------------------------------------------
def _at_position(x0, i, values):
  """``[K, b, L]``: ``x0`` with position ``i`` set to each of ``values [K, b]``."""
  return jax.vmap(lambda val: x0.at[:, i].set(val))(values)


def ar_exact(log_prob_fn: Callable, x0, vocab_size: int):
  """``[b, L, V]`` exact neighbour log-ratios of a sequence model.

  Args:
    log_prob_fn: ``tokens [n, L] -> [n]`` log-probabilities.
    x0: ``[b, L]`` clean tokens.
  """
  b, length = x0.shape
  base = log_prob_fn(x0)
  ys = jnp.broadcast_to(jnp.arange(vocab_size)[:, None], (vocab_size, b))

  def per_position(i):
    seqs = _at_position(x0, i, ys).reshape(vocab_size * b, length)
    return log_prob_fn(seqs).reshape(vocab_size, b).T                # [b, V]

  lp = jax.lax.map(per_position, jnp.arange(length))                 # [L, b, V]
  return jnp.transpose(lp, (1, 0, 2)) - base[:, None, None]


def pair_exact(log_prob_fn: Callable, x0, vocab_size: int, pairs):
  """``[b, P, V, V]`` exact pair log-ratios ``log p(x^{i<-y, j<-z}) - log p(x)``.

  The clean-space target of the 2-Hamming score form (``hamming.py``).

  Args:
    log_prob_fn: ``tokens [n, L] -> [n]`` log-probabilities.
    x0: ``[b, L]`` clean tokens.
    vocab_size: ``V``.
    pairs: ``[P, 2]`` int positions ``(i, j)``, ``i != j``.
  Cost: ``P V^2`` sequence evaluations per sequence, ``V^2 b`` at a time.
  """
  b, length = x0.shape
  v = vocab_size
  base = log_prob_fn(x0)
  ys = jnp.repeat(jnp.arange(v), v)
  zs = jnp.tile(jnp.arange(v), v)

  def per_pair(pair):
    seqs = jnp.broadcast_to(x0, (v * v, b, length))
    seqs = seqs.at[:, :, pair[0]].set(ys[:, None]).at[:, :, pair[1]].set(zs[:, None])
    return log_prob_fn(seqs.reshape(v * v * b, length)).reshape(v, v, b)

  lp = jax.lax.map(per_pair, jnp.asarray(pairs))                    # [P, V, V, b]
  return jnp.transpose(lp, (3, 0, 1, 2)) - base[:, None, None, None]


def next_token_log_probs(model, params, x0):
  """``[b, L, V]``: ``log p_AR(x^i = . | x^{<i})`` at every position (one pass)."""
  lm = as_causal_lm(model)
  logits = lm.logits_fn(params, _with_bos(lm, x0))
  return jax.nn.log_softmax(logits.astype(jnp.float32), -1)


def ar_top_k(log_prob_fn: Callable, x0, candidate_log_probs, k: int):
  """``[b, L, V]`` neighbour log-ratios for the top-``k`` candidates; others ``-inf``.

  Args:
    log_prob_fn: ``tokens [n, L] -> [n]``.
    x0: ``[b, L]``.
    candidate_log_probs: ``[b, L, V]`` scores ranking the replacements at each position
      (the teacher's next-token distribution).
    k: candidates per position; the clean token itself always gets ratio 1.
  """
  b, length = x0.shape
  v = candidate_log_probs.shape[-1]
  _, cand = jax.lax.top_k(candidate_log_probs, k)                     # [b, L, k]
  base = log_prob_fn(x0)

  def per_position(i):
    vals = cand[:, i].T                                               # [k, b]
    lp = log_prob_fn(_at_position(x0, i, vals).reshape(k * b, length)).reshape(k, b)
    out = jnp.full((b, v), -jnp.inf).at[jnp.arange(b)[:, None], vals.T].set(lp.T)
    return out.at[jnp.arange(b), x0[:, i]].set(base)

  lp = jax.lax.map(per_position, jnp.arange(length))                 # [L, b, V]
  return jnp.transpose(lp, (1, 0, 2)) - base[:, None, None]


def ar_top_k_tail(log_prob_fn: Callable, x0, next_log_probs, k: int, m: int, key):
  """``[b, L, V]`` dense neighbour log-ratios: Top-``k`` exact plus an importance-sampled
  tail of ``m`` draws per position (module docstring: unbiased tail mass).

  Args:
    log_prob_fn: ``tokens [n, L] -> [n]``.
    x0: ``[b, L]``.
    next_log_probs: ``[b, L, V]`` = ``log p_AR(x^i = . | x^{<i})`` (the prefix factor;
      ``next_token_log_probs``), also ranking the Top-K candidates.
    k, m: exact candidates and tail draws per position.
    key: a ``jax.random`` key for the tail draws.
  """
  b, length = x0.shape
  v = next_log_probs.shape[-1]
  nlp = next_log_probs.astype(jnp.float32)
  _, cand = jax.lax.top_k(nlp, k)                                     # [b, L, k]
  base = log_prob_fn(x0)                                              # [b]
  rows = jnp.arange(b)[:, None]

  def per_position(i):
    vals = cand[:, i].T                                               # [k, b]
    lp_k = log_prob_fn(_at_position(x0, i, vals).reshape(k * b, length)).reshape(k, b)
    xi = x0[:, i]
    prefix = nlp[:, i] - jnp.take_along_axis(nlp[:, i], xi[:, None], -1)   # [b, V]
    tail = jnp.ones((b, v), bool).at[rows, vals.T].set(False).at[jnp.arange(b), xi].set(
        False)
    has_tail = tail.any(-1)                                           # [b]
    logits_t = jnp.where(tail, nlp[:, i], -jnp.inf)
    logits_t = jnp.where(has_tail[:, None], logits_t, 0.0)           # keep draws finite
    draws = jax.random.categorical(jax.random.fold_in(key, i), logits_t,
                                   shape=(m, b))                      # [m, b]
    lp_m = log_prob_fn(_at_position(x0, i, draws).reshape(m * b, length)).reshape(m, b)
    # Suffix log-factors of the draws: total log-ratio minus the prefix factor.
    suffix = (lp_m - base[None]) - jnp.take_along_axis(prefix, draws.T, -1).T  # [m, b]
    s_hat = jax.nn.logsumexp(suffix, 0) - jnp.log(m)                  # [b]
    out = jnp.where(tail, prefix + s_hat[:, None], -jnp.inf)
    out = out.at[rows, vals.T].set((lp_k - base[None]).T)
    return out.at[jnp.arange(b), xi].set(0.0)

  lp = jax.lax.map(per_position, jnp.arange(length))                 # [L, b, V]
  return jnp.transpose(lp, (1, 0, 2))


def ar_taylor(soft_log_prob_fn: Callable, x0, vocab_size: int):
  """``[b, L, V]`` first-order (one-hot gradient) estimate of the neighbour log-ratios."""
  onehot = jax.nn.one_hot(x0, vocab_size)
  g = jax.grad(lambda x: soft_log_prob_fn(x).sum())(onehot)
  return g - jnp.take_along_axis(g, x0[..., None], -1)


def ar_teacher(model, params, mode: str = "taylor", top_k: int = 8,
               tail_samples: int = 4) -> Callable:
  """A target function from a causal model (a ``CausalTransformer`` or any
  ``CausalLM``: a Hugging Face GPT-2 through ``models.gpt2.causal_lm``; see the module
  docstring); ``top_k_tail`` returns ``fn(x0, key)`` (its tail draws need a key), the
  others ``fn(x0, key=None)``."""
  if mode not in MODES:
    raise ValueError(f"unknown AR teacher mode {mode!r}; choose one of {MODES}")
  model = as_causal_lm(model)
  v = model.vocab_size
  lp_fn = ar_log_prob_fn(model, params)
  if mode == "exact":
    return lambda x0, key=None: ar_exact(lp_fn, x0, v)
  if mode == "top_k_tail":
    if not 1 <= top_k <= v or tail_samples < 1:
      raise ValueError(f"top_k must lie in [1, {v}] and tail_samples >= 1, got "
                       f"{top_k}, {tail_samples}")

    def dense(x0, key):
      if key is None:
        raise ValueError("the top_k_tail teacher draws tail tokens: pass a key")
      return ar_top_k_tail(lp_fn, x0, next_token_log_probs(model, params, x0), top_k,
                           tail_samples, key)
    return dense
  if mode == "top_k":
    if not 1 <= top_k <= v:
      raise ValueError(f"top_k must lie in [1, {v}], got {top_k}")
    return lambda x0, key=None: ar_top_k(lp_fn, x0, next_token_log_probs(model, params, x0),
                                         top_k)
  return lambda x0, key=None: ar_taylor(ar_soft_log_prob_fn(model, params), x0, v)


def mlm_teacher(apply_fn: Callable, params, mask_id: int) -> Callable:
  """Target function of a bidirectional masked model: ``p(x^i = . | x^{-i})``.

  Args:
    apply_fn: ``(params, x_t [b, L], sigma_bar [b]) -> logits [b, L, V]``, e.g. an
      absorbing diffusion denoiser (``Experiment.apply_fn``).
    mask_id: the mask token.
  """

  def target(x0):
    b, length = x0.shape
    # One masked token out of L is the noise level where alpha = 1 - 1/L.
    sigma = jnp.full((b,), -jnp.log1p(-1.0 / length))

    def per_position(i):
      logits = apply_fn(params, x0.at[:, i].set(mask_id), sigma)
      return jax.nn.log_softmax(logits[:, i].astype(jnp.float32), -1)  # [b, V]

    out = jax.lax.map(per_position, jnp.arange(length))
    return jnp.transpose(out, (1, 0, 2))

  return target


def approximation_error(exact_log_ratios, approx_log_ratios):
  """Errors of approximate neighbour log-ratios against exact ones, per position mean.

  Returns a dict: ``kl`` = ``KL(exact conditional || approx conditional)`` (``inf`` if
  the approximation drops mass), ``mass_covered`` = exact conditional mass on the
  neighbours the approximation keeps, ``mae_kept`` = mean absolute log-ratio error on
  the kept neighbours.
  """
  p = jax.nn.softmax(exact_log_ratios, -1)
  kept = approx_log_ratios > -jnp.inf
  lq = jax.nn.log_softmax(jnp.where(kept, approx_log_ratios, -jnp.inf), -1)
  lp = jax.nn.log_softmax(exact_log_ratios, -1)
  kl = jnp.sum(jnp.where(p > 0, p * (lp - jnp.where(kept, lq, -jnp.inf)), 0.0), -1)
  mae = jnp.sum(jnp.where(kept, jnp.abs(exact_log_ratios - approx_log_ratios), 0.0), -1)
  mae = mae / jnp.maximum(kept.sum(-1), 1)
  return {"kl": jnp.mean(kl), "mass_covered": jnp.mean(jnp.sum(jnp.where(kept, p, 0), -1)),
          "mae_kept": jnp.mean(mae)}
