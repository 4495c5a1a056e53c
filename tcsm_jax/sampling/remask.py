"""ReMDM remasking schedules (Schiff et al., ICLR 2025, arXiv 2503.00307).

The remasking sampler is the absorbing process's analytic step in which an unmasked
token is remasked with probability ``rho`` and a masked one unmasked with probability
``(a_s - (1 - rho) a_t) / (1 - a_t)`` (``steps.remask_unmask_log_prob``), which keeps
the forward marginal of unmasked tokens as long as ``rho <= rho_max = min(1, (1 - a_s)
/ a_t)``. The schedules choose ``rho`` per step:

* ``cap``: ``rho = min(eta, rho_max)``;
* ``rescale``: ``rho = eta * rho_max``;
* ``loop``: the reverse chain reaches ``t_on`` at the usual pace, holds ``alpha`` at
  ``alpha(t_on)`` for the steps whose grid time lies in ``[t_off, t_on)`` while
  remasking with ``rho = min(eta, rho_max)`` (a corrector that keeps the marginal at
  ``alpha(t_on)``: a masked token unmasks with ``rho a / (1 - a)``), then runs from
  ``t_on`` to ``t_end`` in the steps left (no remasking).

``eta = 0`` is the analytic sampler for ``cap`` and ``rescale`` (same draws, tested), and
the analytic sampler on the warped time grid for ``loop``.
"""

from __future__ import annotations

import jax.numpy as jnp

REMASK_SCHEDULES = ("cap", "rescale", "loop")


def effective_times(ts, schedule_kind: str, t_on: float, t_off: float, t_end: float):
  """``[steps + 1]`` times at which the denoiser and the noise levels are evaluated."""
  if schedule_kind != "loop":
    return ts
  late = t_end + (ts - t_end) * (t_on - t_end) / (t_off - t_end)
  return jnp.where(ts >= t_on, ts, jnp.where(ts >= t_off, t_on, late))


def log_remask_probs(sig_t, sig_s, schedule_kind: str, eta: float, held=None):
  """``log rho`` per step from the noise levels ``sig_t > sig_s`` (any shape).

  ``held``: bool, steps in the loop phase (``loop`` remasks only there).
  """
  if schedule_kind not in REMASK_SCHEDULES:
    raise ValueError(f"unknown remask schedule {schedule_kind!r}; choose one of "
                     f"{REMASK_SCHEDULES}")
  if not 0 <= eta <= 1:
    raise ValueError(f"remask eta must lie in [0, 1], got {eta}")
  sig_t, sig_s = jnp.asarray(sig_t, jnp.float32), jnp.asarray(sig_s, jnp.float32)
  log_max = jnp.minimum(0.0, jnp.log(-jnp.expm1(-sig_s)) + sig_t)
  log_eta = jnp.log(jnp.float32(eta)) if eta > 0 else jnp.float32(-jnp.inf)
  if schedule_kind == "rescale":
    return log_eta + log_max
  capped = jnp.minimum(log_eta, log_max)
  if schedule_kind == "loop":
    return jnp.where(held, capped, -jnp.inf)
  return capped
