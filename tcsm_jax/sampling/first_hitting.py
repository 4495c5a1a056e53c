"""First-hitting sampler for the absorbing process (Zheng et al., ICLR 2025).

In the model's continuous-time reverse chain a masked position unmasks at rate
``-d log(1 - alpha_t) / dt`` whatever the denoiser says (its token probabilities sum to
one), so with ``n`` free masked positions at noise ``sigma_t`` the next unmasking event
comes at the ``s`` with ``((1 - a_s) / (1 - a_t))^n = U``, ``U ~ Uniform(0, 1)``; it hits
one of the ``n`` positions uniformly, and its token is drawn from
``p_theta(. | x, sigma_s)``, the denoiser at the event's own noise level. Drawing the
event times, positions and tokens this way is exact for a factorized denoiser: no time
discretization, and at most ``length`` network calls (one per event) plus the final
denoising call. Events later than ``t_end`` are left to the final step, which draws every
position still masked from ``p_theta(. | x, sigma(t_end))`` as the other samplers do.

``events_per_call = k > 1`` is the stated approximation: the next ``k`` event times are
drawn exactly, ``k`` distinct positions uniformly, and their tokens independently from one
network call at the first of the ``k`` times (``ceil(length / k)`` calls). ``k = 1`` is
exact. The noise levels are the denoiser's own input (``sigma_bar``), so the schedule
is never inverted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tcsm_jax.processes import Absorbing
from tcsm_jax.sampling import draws


def run(key, model_log_probs, process: Absorbing, schedule, x, clamp_mask, *,
        t_end: float, final_denoise: bool = True, draw: str = "exact",
        events_per_call: int = 1, return_path: bool = False):
  """Runs the first-hitting chain from ``x [b, l]`` at ``t = 1``; see ``sample``.

  ``model_log_probs(x [b, l], sigma [b]) -> [b, l, V]`` (``steps.model_log_probs_fn``);
  ``clamp_mask [b, l]``: positions that never change.
  Returns ``(tokens [b, l], info)``: ``info['nfe']`` network calls, ``info['nfe_rows']``
  rows evaluated, ``info['event_sigma'] [ceil(l / k), b]`` the noise level of each
  call's first event (``inf`` where the row had no event left), and ``info['path']``
  (states after each call) if requested.
  """
  k = int(events_per_call)
  if k < 1:
    raise ValueError(f"events_per_call must be >= 1, got {k}")
  b, length = x.shape
  k = min(k, length)
  calls = -(-length // k)
  sig_end = jnp.full((b,), schedule.sigma_bar(jnp.float32(t_end)))
  sig1 = schedule.sigma_bar(jnp.float32(1.0))
  log_1ma = jnp.full((b,), jnp.log(-jnp.expm1(-sig1)))        # log(1 - alpha_t)

  def body(carry, j):
    x, log_1ma, nfe = carry
    kj = jax.random.fold_in(key, j)
    k_time, k_pos, k_tok = jax.random.split(kj, 3)
    free = (x == process.mask_id) & ~clamp_mask
    n = free.sum(-1).astype(jnp.float32)                      # [b]
    # Event times: after i events n - i positions remain; each time is a fresh U.
    sigma_of = lambda l1ma: -jnp.log(-jnp.expm1(l1ma))      # alpha = 1 - exp(l1ma)
    log_u = draws.log_uniform(k_time, (k, b))
    levels = [log_1ma + log_u[0] / jnp.maximum(n, 1.0)]
    for i in range(1, k):
      levels.append(levels[-1] + log_u[i] / jnp.maximum(n - i, 1.0))
    sig_first = sigma_of(levels[0])
    active = (n > 0) & (sig_first >= sig_end)                 # [b]
    # No network call once every row is done (e.g. a long prompt leaves few events).
    lp = jax.lax.cond(
        jnp.any(active),
        lambda: model_log_probs(x, jnp.where(active, sig_first, sig_end)),  # [b, l, V]
        lambda: jnp.zeros(x.shape + (process.vocab_size,), jnp.float32))
    # k distinct positions, uniform among the free ones: the k smallest race keys.
    keys = jnp.where(free, draws.log_exponential_from_bits(
        jax.random.bits(k_pos, (b, length, draws.WORDS), jnp.uint32)), jnp.inf)
    _, pos = jax.lax.top_k(-keys, k)                          # [b, k]
    # Event i happens when it is before t_end and a free position is left for it.
    ok = jnp.stack([(n > i) & (sigma_of(levels[i]) >= sig_end) for i in range(k)], -1)
    ok = ok & active[:, None]                                 # [b, k]
    tok_lp = jnp.take_along_axis(lp, pos[..., None], axis=1)  # [b, k, V]
    tok = draws.categorical(k_tok, tok_lp, draw)              # [b, k]
    cur = jnp.take_along_axis(x, pos, axis=1)
    rows = jnp.arange(b)[:, None]
    x = x.at[rows, pos].set(jnp.where(ok, tok, cur))
    # Every row moves on to its last drawn level, also a row whose next event fell
    # after t_end: levels only decrease, so that row stays past t_end and stops (keeping
    # its old level would draw a fresh event on the next pass and unmask again).
    log_1ma = levels[-1]
    nfe = nfe + jnp.any(active)
    return (x, log_1ma, nfe), (x if return_path else None,
                               jnp.where(active, sig_first, jnp.inf))

  (x, _, nfe), (path, event_sigma) = jax.lax.scan(
      body, (x, log_1ma, jnp.asarray(0)), jnp.arange(calls))
  rows_eval = nfe * b
  if final_denoise:
    lp = model_log_probs(x, sig_end)
    fill = draws.categorical(jax.random.fold_in(key, calls), lp, draw)
    x = jnp.where(x == process.mask_id, fill, x).astype(jnp.int32)
    nfe, rows_eval = nfe + 1, rows_eval + b
  info = {"nfe": nfe, "nfe_rows": rows_eval, "event_sigma": event_sigma}
  if return_path:
    info["path"] = path
  return x, info
