"""Adaptive unmasking for the absorbing process: schedules of *which* positions to
reveal per network call, over the shared core (the denoiser's law from
``steps.model_log_probs_fn`` and the exact categorical draw of ``draws.py``).

Every call evaluates the denoiser once on the current state, ranks the free masked
positions by their **confidence** ``c_i = max_y p_theta(y | x)_i`` (the largest
probability of the denoiser's law at the position, after temperature and top-p), and
reveals a prefix of that ranking; the revealed tokens are **drawn** from
``p_theta(. | x)_i`` with the project's exact draw (never the argmax):

* ``confidence`` (a fixed number per call; LLaDA's low-confidence remasking with
  ``k = L / steps`` tokens per step): the ``k`` most confident positions;
  ``ceil(n / k)`` calls for ``n`` free positions.
* ``entropy_bound`` (EB-Sampler, Ben-Hamu et al., arXiv 2505.24857): the longest
  prefix ``U`` of the ranking with ``sum_{i in U} H_i - max_{i in U} H_i <= gamma``,
  ``H_i`` the entropy of ``p_theta(. | x)_i`` in nats (the paper's bound on the error of
  drawing ``U`` jointly from the product of its marginals; the first position always
  qualifies).
* ``confidence_threshold`` (Fast-dLLM, Wu et al., arXiv 2505.22618): every position
  with ``c_i > tau``, and the most confident one when none is.

**Draws, not argmax.** LLaDA and Fast-dLLM decode the argmax at the chosen positions;
EB-Sampler draws from the model's law. Here every sampler draws (the project's exact
draw), so that the limits below are samplers of the model's law; ``temperature -> 0``
recovers the greedy variants. The ranking is a function of the laws only, never of the
draws.

**Limits (tested).** One position per call (``k = 1``, ``gamma = 0``, ``tau = 1``) is an
adaptive-order autoregressive sampler: each call draws one position from its law given
everything revealed, so with the Bayes denoiser (exact conditionals) the sample law is
the data law whatever the order (chain rule over any order that depends only on what
is revealed), in ``n`` calls. For a product denoiser (one that ignores the context) the
sample law is the product law for every ``k``, ``gamma`` and ``tau``. With ``gamma = 0``
several positions are revealed together only when all but one have zero entropy
(determined tokens: exact too); ``tau = 1`` reveals exactly one per call (no probability
exceeds 1).

**Noise level.** The denoiser takes ``sigma_bar``; these samplers have no time grid,
so each call passes the level whose masked fraction ``1 - alpha`` equals the share of
free positions still masked (the level at which the forward process would leave that
share masked; the first-hitting sampler's expected level), clipped to
``[sigma_bar(t_end), sigma_bar(1)]``. The Bayes denoiser of the absorbing process does
not depend on it.

Prompts and infilling: clamped positions are never free, never revealed, never
changed. Calls are counted per batch (``info['nfe']``: the network runs on the whole
batch while any row has a free masked position) and per row
(``info['calls_per_row'] [b]``: the calls in which that row revealed something).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tcsm_jax.processes import Absorbing
from tcsm_jax.sampling import draws

ADAPTIVE = ("confidence", "entropy_bound", "confidence_threshold")


def validate(sampler: str, unmask_per_call: int, eb_gamma: float,
             confidence_tau: float) -> None:
  """Raises ``ValueError`` naming a bad adaptive-sampler option."""
  if sampler == "confidence" and int(unmask_per_call) < 1:
    raise ValueError(f"unmask_per_call must be >= 1, got {unmask_per_call}")
  if sampler == "entropy_bound" and not eb_gamma >= 0:
    raise ValueError(f"eb_gamma must be >= 0, got {eb_gamma}")
  if sampler == "confidence_threshold" and not 0 < confidence_tau <= 1:
    raise ValueError(f"confidence_tau must lie in (0, 1], got {confidence_tau}")


def select(sampler: str, log_probs, free, *, unmask_per_call: int = 1,
           eb_gamma: float = 0.0, confidence_tau: float = 1.0):
  """``[b, l]`` bool: the positions one call reveals.

  Args:
    sampler: one of ``ADAPTIVE``.
    log_probs: ``[b, l, V]`` normalized denoiser log-probabilities.
    free: ``[b, l]`` bool, masked and not clamped.
  Returns:
    A prefix of each row's confidence ranking of its free positions: at least one
    position where the row has any, none where it has none.
  """
  lp = jnp.asarray(log_probs, jnp.float32)
  b, length = free.shape
  conf = jnp.where(free, jnp.exp(jnp.max(lp, -1)), -jnp.inf)          # [b, l]
  order = jnp.argsort(-conf, axis=-1, stable=True)                   # most confident first
  rank_free = jnp.take_along_axis(free, order, -1)                    # [b, l]
  ranks = jnp.arange(length)[None]
  if sampler == "confidence":
    keep = ranks < int(unmask_per_call)
  elif sampler == "entropy_bound":
    p = jnp.exp(lp)
    ent = -jnp.sum(jnp.where(p > 0, p * lp, 0.0), -1)                 # [b, l] nats
    ent = jnp.take_along_axis(jnp.where(free, jnp.maximum(ent, 0.0), 0.0), order, -1)
    bound = jnp.cumsum(ent, -1) - jax.lax.cummax(ent, axis=1)
    keep = bound <= eb_gamma
  elif sampler == "confidence_threshold":
    keep = jnp.take_along_axis(conf, order, -1) > confidence_tau
  else:
    raise ValueError(f"unknown adaptive sampler {sampler!r}; choose one of {ADAPTIVE}")
  keep = (keep | (ranks == 0)) & rank_free
  out = jnp.zeros((b, length), bool)
  return out.at[jnp.arange(b)[:, None], order].set(keep)


def run(key, model_log_probs, process: Absorbing, schedule, x, clamp_mask, *,
        sampler: str, t_end: float = 1e-5, draw: str = "exact", unmask_per_call: int = 1,
        eb_gamma: float = 0.0, confidence_tau: float = 1.0):
  """Reveals every free masked position of ``x [b, l]``, a prefix of the confidence
  ranking per call (module docstring).

  ``model_log_probs(x [b, l], sigma [b]) -> [b, l, V]`` (``steps.model_log_probs_fn``);
  ``clamp_mask [b, l]``: positions that never change.
  Returns ``(tokens [b, l], info)``: ``info['nfe']`` network calls (batch),
  ``info['nfe_rows']`` rows evaluated, ``info['calls_per_row'] [b]``.
  """
  validate(sampler, unmask_per_call, eb_gamma, confidence_tau)
  if not isinstance(process, Absorbing):
    raise ValueError(f"the {sampler} sampler needs the absorbing process")
  b, length = x.shape
  free0 = (x == process.mask_id) & ~clamp_mask
  n_free = jnp.maximum(free0.sum(-1), 1).astype(jnp.float32)          # [b]
  sig_lo = jnp.float32(schedule.sigma_bar(jnp.float32(t_end)))
  sig_hi = jnp.float32(schedule.sigma_bar(jnp.float32(1.0)))

  def cond(carry):
    return jnp.any((carry[0] == process.mask_id) & ~clamp_mask)

  def body(carry):
    x, nfe, per_row = carry
    free = (x == process.mask_id) & ~clamp_mask
    frac = free.sum(-1).astype(jnp.float32) / n_free                  # 1 - alpha
    sigma = jnp.clip(-jnp.log1p(-jnp.minimum(frac, 1.0)), sig_lo, sig_hi)
    lp = model_log_probs(x, sigma)                                    # [b, l, V]
    pick = select(sampler, lp, free, unmask_per_call=unmask_per_call,
                  eb_gamma=eb_gamma, confidence_tau=confidence_tau)
    tok = draws.categorical(jax.random.fold_in(key, nfe), lp, draw)   # [b, l]
    x = jnp.where(pick, tok, x).astype(jnp.int32)
    return x, nfe + 1, per_row + jnp.any(pick, -1).astype(jnp.int32)

  x, nfe, per_row = jax.lax.while_loop(
      cond, body, (x.astype(jnp.int32), jnp.asarray(0), jnp.zeros((b,), jnp.int32)))
  return x, {"nfe": nfe, "nfe_rows": nfe * b, "calls_per_row": per_row}
