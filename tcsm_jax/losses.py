"""TCSM objectives and the classical special cases they contain.

Per position ``i`` let ``p = p_theta(x0^i = . | x_t)`` be the model's denoising
posterior (``scores.model_log_probs``), ``q`` the target posterior at that position
(``scores.posterior_log_probs`` of a clean-space target, or, for the *data* target,
known only through the sample ``x = x0^i ~ q``), and ``N`` the posterior support
(``scores.support``). With ``V = vocab_size``:

* **score form** ``E_{x ~ q} (1/V) sum_{y in N} D(q(y)/q(x), p(y)/p(x))``: a Bregman
  divergence between concrete scores on the 1-Hamming neighbourhood of the clean
  sample, the centre drawn from the posterior (the proposal is the posterior).
* **distribution form** ``sum_{y in N} D(q(y), p(y))`` (``kl``: ``KL(q || p)``).

**Scale.** Every divergence of the score form carries the paper's ``L_score`` factor
``1/V`` (``V = vocab_size``, whatever the support ``N``), ``kl`` included: for ``kl``
the ``sum_y`` is the one inside KL between the concrete-score vectors normalized over
``N`` (which are ``q`` and ``p`` whatever the centre ``x``), so
``score_kl = KL(q || p) / V = distribution_kl / V``. Loss values of the four score-form
divergences are therefore on one scale; the distribution form has no ``1/V``.

With the data target the estimators are unbiased up to a theta-independent constant
(``divergences.py`` explains why every Bregman divergence allows this); positions
whose posterior is determined (support of one token) contribute exactly 0. In
particular, per undetermined position:

* score form, ``gkl``: ``-(|N|/V) log p(x) + 1/(V p(x)) + (1/V) sum_{y in N} log p(y)``
  (``|N| = V`` wherever the structured processes leave a choice);
* score form, ``kl``: ``-log p(x) / V``;
* distribution form, ``kl``: ``-log p(x)`` (cross-entropy).

With exact targets, per position, ``n = |N|``, ``E`` the expectation over the centre
``x ~ q`` and ``IS(q, p) = sum_{y in N} IS(q(y), p(y))`` (tested):

  ``V E[score_gkl] = V E[score_itakura_saito] = n KL(q || p) + IS(q, p)
                   = n V E[score_kl] + IS(q, p)``,

i.e. ``V * score_gKL = V * KL + IS`` (``KL`` the distribution form) on a full support.

Special cases, implemented independently so that tests can compare them:

* ``masked_elbo``: MDLM/MD4's continuous-time ELBO integrand; equals the ``kl``
  distribution form with ``time_weight('masked_elbo')``.
* ``score_entropy``: SEDD's denoising score entropy for a noisy-space score model;
  equals a ``gkl`` Bregman divergence between noisy-space concrete scores.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from tcsm_jax import _checks, divergences, scores
from tcsm_jax.processes import Process

FORMS = ("score", "distribution")
WEIGHTINGS = ("constant", "dsigma", "masked_elbo")


def _take(x, idx):
  return jnp.take_along_axis(x, jnp.asarray(idx)[..., None], -1)[..., 0]


def _mask(values, keep):
  return jnp.where(keep, values, 0.0)


def _undetermined(keep):
  """Positions whose posterior has more than one possible value.

  Where the support is a single token (an unmasked absorbing position, or
  ``sigma_bar = 0``) both concrete scores are the vector ``[1]`` and every divergence
  is exactly 0; the Monte Carlo estimators would return a theta-independent constant
  there, which is dropped so that loss values are not inflated by clean positions.
  """
  return jnp.sum(keep, -1) > 1


def score_loss(log_p, x0, divergence: str = "gkl", *, log_q=None, support=None):
  """Score-form TCSM loss at every position, on the ``1/V`` scale (module docstring).

  Args:
    log_p: ``[..., V]`` model posterior log-probabilities.
    x0: ``[...]`` clean tokens: the neighbourhood centre, a sample of the posterior.
    divergence: ``gkl``, ``kl``, ``lsif`` or ``itakura_saito``.
    log_q: ``[..., V]`` target posterior log-probabilities; ``None`` for the data
      (Monte Carlo) target.
    support: ``[..., V]`` bool neighbourhood; defaults to ``log_p > -inf``.
  Returns:
    ``[...]`` per-position losses (float32).
  """
  div = divergences.get(divergence)
  log_p = log_p.astype(jnp.float32)
  v = log_p.shape[-1]
  keep = (log_p > -jnp.inf) if support is None else support
  safe_p = jnp.where(keep, log_p, 0.0)
  lp_x = _take(safe_p, x0)[..., None]
  lb = safe_p - lp_x                                   # log model ratios p(y)/p(x)
  if log_q is None:
    if div.name == "kl":
      return -lp_x[..., 0] / v
    u = _mask(div.mc_u(lb), keep).sum(-1)
    swap = _mask(div.mc_dphi(-lb), keep).sum(-1)       # sum_u phi'(p(x)/p(u))
    return _mask((u - swap) / v, _undetermined(keep))
  log_q = log_q.astype(jnp.float32)
  if div.name == "kl":
    return divergences.kl_log(jnp.where(keep, log_q, -jnp.inf),
                              jnp.where(keep, log_p, -jnp.inf)) / v
  la = jnp.where(keep, log_q, -jnp.inf) - _take(log_q, x0)[..., None]
  return _mask(div.log_fn(la, jnp.where(keep, lb, -jnp.inf)), keep).sum(-1) / v


def distribution_loss(log_p, x0, divergence: str = "kl", *, log_q=None, support=None):
  """Distribution-form TCSM loss at every position (arguments as ``score_loss``)."""
  div = divergences.get(divergence)
  log_p = log_p.astype(jnp.float32)
  keep = (log_p > -jnp.inf) if support is None else support
  safe_p = jnp.where(keep, log_p, 0.0)
  if log_q is None:
    if div.name == "kl":
      return -_take(safe_p, x0)
    mc = _mask(div.mc_u(safe_p), keep).sum(-1) - div.mc_dphi(_take(safe_p, x0))
    return _mask(mc, _undetermined(keep))
  log_q = jnp.where(keep, log_q.astype(jnp.float32), -jnp.inf)
  log_p = jnp.where(keep, log_p, -jnp.inf)
  if div.name == "kl":
    return divergences.kl_log(log_q, log_p)
  return _mask(div.log_fn(log_q, log_p), keep).sum(-1)


def model_posterior(logits, x0, x_t, sigma_bar, process: Process):
  """Checked ``(log p_theta(x0^i = . | x_t) [b, L, V], posterior support [b, L, V])``
  from logits, after validating the clean and noisy tokens (shared by the 1- and
  2-Hamming losses)."""
  _checks.check_tokens(x0, process.vocab_size, "x0")
  _checks.check_tokens(x_t, process.num_states, "x_t")
  if jnp.shape(x0) != jnp.shape(x_t):
    raise ValueError(f"x0 {jnp.shape(x0)} and x_t {jnp.shape(x_t)} must have one shape")
  return (scores.model_log_probs(logits, process, x_t, sigma_bar),
          scores.support(process, x_t, sigma_bar))


def tcsm_loss(logits, x0, x_t, sigma_bar, process: Process, *, form: str = "score",
              divergence: str = "gkl", target_log_cond=None, target_log_posterior=None):
  """TCSM loss per position from network logits.

  Args:
    logits: ``[batch, length, V]`` denoiser logits (any float dtype).
    x0: ``[batch, length]`` clean tokens.
    x_t: ``[batch, length]`` noisy tokens, a forward sample from ``x0``.
    sigma_bar: scalar or ``[batch]`` noise level of ``x_t``.
    process: the forward process.
    form: ``score`` or ``distribution``.
    divergence: a name from ``divergences.DIVERGENCES``.
    target_log_cond: ``None`` for the data target, else ``[batch, length, V]`` clean-
      space target log-conditionals ``log p_1(x0^i = y | x0^{-i})`` (up to a constant
      per position), e.g. from ``targets.py``.
    target_log_posterior: alternatively the target *posterior* ``[batch, length, V]``
      log-probabilities directly (already conditioned on ``x_t``), as in reward
      fine-tuning where it is the reference denoiser tilted by the reward.
  Returns:
    ``[batch, length]`` float32 losses.
  """
  if form not in FORMS:
    raise ValueError(f"unknown TCSM form {form!r}; choose one of {FORMS}")
  log_p, keep = model_posterior(logits, x0, x_t, sigma_bar, process)
  log_q = None
  if target_log_cond is not None and target_log_posterior is not None:
    raise ValueError("give target_log_cond or target_log_posterior, not both")
  if target_log_posterior is not None:
    if target_log_posterior.shape != logits.shape:
      raise ValueError(f"target_log_posterior {target_log_posterior.shape} must match "
                       f"logits {logits.shape}")
    log_q = jnp.where(keep, target_log_posterior.astype(jnp.float32), -jnp.inf)
  if target_log_cond is not None:
    if target_log_cond.shape != logits.shape:
      raise ValueError(f"target_log_cond {target_log_cond.shape} must match logits "
                       f"{logits.shape}")
    log_q = scores.posterior_log_probs(target_log_cond, process, x_t, sigma_bar)
  fn = score_loss if form == "score" else distribution_loss
  return fn(log_p, x0, divergence, log_q=log_q, support=keep)


def chunk_rows(n: int, chunk_size: int) -> int:
  """The chunk ``per_position`` uses for ``n`` rows: the largest divisor of ``n`` that
  is at most ``chunk_size`` (``n`` itself when ``chunk_size`` is 0 or >= n), so that
  the rows reshape into chunks without a padded copy of the logits."""
  if chunk_size <= 0 or chunk_size >= n:
    return n
  for c in range(int(chunk_size), 0, -1):
    if n % c == 0:
      return c
  return 1


def per_position(fn: Callable, chunk_size: int, per_example, *arrays,
                 head: Optional[Callable] = None):
  """``fn`` applied to every position, optionally in chunks of rows (memory at large V).

  ``fn(*per_example_rows, *rows) -> [n]`` is a per-position loss (every function of
  this module is one: per-example quantities align with the leading axes, here the
  ``n`` rows): ``per_example`` is a tuple of scalars, ``[batch]`` or ``[batch, length]``
  quantities (``sigma_bar``, ``dsigma``), given to ``fn`` as ``[n]`` rows; ``arrays``
  are ``[batch, length, ...]`` (logits ``[b, L, V]``, tokens ``[b, L]``, targets
  ``[b, L, V]``), given as ``[n, ...]`` rows.

  With ``chunk_size = 0`` (or at least ``batch * length``) this is one call on all
  positions. Otherwise the ``batch * length`` rows are cut into chunks of
  ``chunk_rows(batch * length, chunk_size)`` rows and mapped with ``lax.map`` under
  ``jax.checkpoint``: the float32 log-softmax, target terms and their gradients exist
  for one chunk at a time, and the backward pass recomputes them chunk by chunk; only
  the logits (any dtype) and their gradient stay ``[b, L, V]``. Values and gradients
  equal the unchunked ones up to float32 rounding (tested to 1e-6).

  With ``head`` (vocabulary tiling), ``arrays[0]`` are hidden states ``[b, L, D]`` and
  ``head(rows [c, D]) -> logits [c, V]`` (the model's output layer) runs inside each
  chunk: full ``[b, L, V]`` logits never exist, in the forward or the backward pass
  (the head's matmul is recomputed per chunk; its weight gradient sums over chunks).

  Returns:
    ``[batch, length]`` float32.
  """
  b, length = arrays[0].shape[:2]
  n = b * length

  def as_rows(v):
    v = jnp.asarray(v, jnp.float32)
    v = v.reshape(v.shape + (1,) * (2 - v.ndim))
    return jnp.broadcast_to(v, (b, length)).reshape(n)

  lead = tuple(as_rows(v) for v in per_example)
  rows = tuple(a.reshape((n,) + a.shape[2:]) for a in arrays)
  if head is not None:
    inner, m = fn, len(lead)
    fn = lambda *a: inner(*a[:m], head(a[m]), *a[m + 1:])
  c = chunk_rows(n, int(chunk_size or 0))
  if c == n:
    return fn(*lead, *rows).reshape(b, length)
  k = n // c
  xs = (tuple(v.reshape(k, c) for v in lead)
        + tuple(r.reshape((k, c) + r.shape[1:]) for r in rows))
  body = jax.checkpoint(lambda args: fn(*args))
  return jax.lax.map(body, xs).reshape(b, length)


def time_weight(name: str, sigma_bar, dsigma):
  """Weighting ``w(t)`` of the per-time loss.

  * ``constant``: 1.
  * ``dsigma``: ``d sigma_bar / dt``.
  * ``masked_elbo``: ``dsigma / (exp(sigma_bar) - 1) = -alpha' / (1 - alpha)``, which turns
    the ``kl`` distribution form into the MDLM/MD4 continuous-time ELBO.
  """
  if name == "constant":
    return jnp.ones_like(jnp.asarray(sigma_bar, jnp.float32))
  if name == "dsigma":
    return jnp.asarray(dsigma, jnp.float32)
  if name == "masked_elbo":
    return dsigma / jnp.expm1(sigma_bar)
  raise ValueError(f"unknown time weighting {name!r}; choose one of {WEIGHTINGS}")


def masked_nll(logits, x0, x_t, mask_id: int):
  """``-log p_theta(x0^i | x_t)`` at masked positions, 0 elsewhere (``[...]`` float32):
  the per-position term of ``masked_elbo``."""
  logits = logits.astype(jnp.float32)
  log_p = logits - jnp.max(logits, -1, keepdims=True)
  log_p = log_p - jnp.log(jnp.sum(jnp.exp(log_p), -1, keepdims=True))
  return jnp.where(jnp.asarray(x_t) == mask_id, -_take(log_p, x0), 0.0)


def masked_elbo(logits, x0, x_t, sigma_bar, dsigma, mask_id: int):
  """MDLM/MD4 continuous-time negative ELBO integrand, per sequence.

  ``dsigma / expm1(sigma_bar) * sum_{i: x_t^i = mask} -log p_theta(x0^i | x_t)``; its
  integral over ``t in [0, 1]`` bounds ``-log p(x0)`` (plus the prior term).

  Args:
    logits: ``[batch, length, V]``; x0, x_t: ``[batch, length]``; sigma_bar, dsigma:
      ``[batch]``; mask_id: the mask token.
  Returns:
    ``[batch]`` float32.
  """
  w = jnp.asarray(dsigma, jnp.float32) / jnp.expm1(jnp.asarray(sigma_bar, jnp.float32))
  return w * jnp.sum(masked_nll(logits, x0, x_t, mask_id), -1)


def score_entropy(log_score, x0, x_t, sigma_bar, dsigma, process: Process):
  """SEDD's denoising score entropy per position (Lou et al., 2024, eq. 10 + ELBO).

  ``sum_{y != x_t} dsigma Q[y, x_t] (s_y - a_y log s_y + K(a_y))`` with the model's
  noisy-space score ``s_y ~ p_t(x^{i<-y}) / p_t(x)``, the conditional target
  ``a_y = P(x0, y) / P(x0, x_t)`` and ``K(a) = a (log a - 1)``.

  Args:
    log_score: ``[batch, length, S]`` log of the model's noisy-space concrete score.
    x0, x_t: ``[batch, length]``; sigma_bar, dsigma: scalar or ``[batch]``.
  Returns:
    ``[batch, length]`` float32; summed over positions and integrated over ``t`` it is
    SEDD's NLL bound (without the prior term).
  """
  x_t = jnp.asarray(x_t)
  _checks.check_last_dim(log_score, process.num_states, "log_score")
  lt = process.transition_log_probs(x0, sigma_bar)               # [..., S]
  log_a = lt - _take(lt, x_t)[..., None]
  w = _checks.expand_leading(dsigma, log_score.ndim) * process.rates_into(x_t)
  not_self = jnp.arange(process.num_states) != x_t[..., None]
  keep = not_self & (w > 0)
  la = jnp.where(keep, log_a, 0.0)
  a = jnp.where(keep & (log_a > -jnp.inf), jnp.exp(la), 0.0)
  ls = jnp.where(keep, log_score.astype(jnp.float32), 0.0)
  k_term = jnp.where(a > 0, a * (la - 1.0), 0.0)
  terms = jnp.exp(ls) - a * ls + k_term
  return jnp.sum(jnp.where(keep, w * terms, 0.0), -1)
