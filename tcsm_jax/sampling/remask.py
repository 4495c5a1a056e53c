"""ReMDM remasking schedules (Schiff et al., ICLR 2025, arXiv 2503.00307).

The remasking sampler is the absorbing process's analytic step in which an unmasked
token is remasked with probability ``rho`` and a masked one unmasked with probability
``(a_s - (1 - rho) a_t) / (1 - a_t)`` (``steps.absorbing_unmask_log_prob``), which keeps
the forward marginal of unmasked tokens as long as ``rho <= rho_max = min(1, (1 - a_s)
/ a_t)``. The schedules choose ``rho`` per step:

* ``cap``: ``rho = min(eta, rho_max)``;
* ``rescale``: ``rho = eta * rho_max``;
* ``loop`` (the reference's ``remdm-loop``, github:kuleshov-group/remdm,
  ``scripts/remdm-loop.sh``): the chain runs on its own piecewise-linear ``alpha(t)``
  (``loop_schedule``), not the model's: linear from ``alpha(1)`` to ``alpha_on`` (0.9)
  over ``[t_on, 1]``, held at ``alpha_on`` over ``[t_off, t_on]`` while remasking with
  ``rho = min(eta, rho_max)`` (a corrector that keeps the marginal at ``alpha_on``: a
  masked token unmasks with ``rho alpha_on / (1 - alpha_on)``), then linear from
  ``alpha_on`` to 1 over ``[0, t_off]`` (no remasking outside the held phase). The
  denoiser sees the noise level ``-log alpha(t)`` of that schedule.

  Where ``loop`` differs from the reference, on purpose:
  - ``rho`` is capped at ``rho_max = (1 - alpha_on) / alpha_on`` (0.11 at 0.9): the
    reference uses ``eta`` as is, and above the cap its unmasking probability passes 1;
    at the reference's ``eta = 0.02`` the two agree;
  - ``alpha(1)`` is the model schedule's (1e-3 for ``log_linear``), not 0, so the
    denoiser never sees an infinite noise level;
  - ``alpha`` is continuous in ``t``: the step that crosses ``t_on`` ends at
    ``alpha_on`` (the reference's extrapolates past it, by up to one step's change),
    and the step that crosses ``t_off`` unmasks from ``alpha_on`` without remasking
    (the reference's holds and remasks). Every other step is the reference's
    (``tests/test_remask.py`` checks each step of its 1,024-step grid).

``eta = 0`` is the analytic sampler bit for bit for ``cap`` and ``rescale``, and for
``loop`` the analytic sampler on ``loop_schedule`` (the held steps move nothing), bit
for bit with the exact draw (tested).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from tcsm_jax import schedules
from tcsm_jax.schedules import Schedule

REMASK_SCHEDULES = ("cap", "rescale", "loop")


@dataclasses.dataclass(frozen=True)
class LoopSchedule(Schedule):
  """ReMDM loop's ``alpha(t)``: linear ``alpha_start -> alpha_on`` on ``[t_on, 1]``,
  ``alpha_on`` on ``[t_off, t_on]``, linear ``alpha_on -> 1`` on ``[0, t_off]``.

  ``1 - alpha`` is computed directly near ``t = 0`` (``t (1 - alpha_on) / t_off``), so
  ``sigma_bar`` keeps its relative precision there. Use ``loop_schedule`` to build one.
  """
  t_on: float = 0.55
  t_off: float = 0.05
  alpha_on: float = 0.9
  alpha_start: float = 0.0

  def _alphas(self, t):
    t = jnp.asarray(t, jnp.float32)
    a_on = jnp.float32(self.alpha_on)
    early = self.alpha_start + (a_on - self.alpha_start) * (1.0 - t) / (1.0 - self.t_on)
    late_1ma = t * (1.0 - a_on) / self.t_off
    alpha = jnp.where(t > self.t_on, early, jnp.where(t >= self.t_off, a_on, 1.0 - late_1ma))
    one_minus = jnp.where(t > self.t_on, 1.0 - early,
                          jnp.where(t >= self.t_off, 1.0 - a_on, late_1ma))
    return one_minus, alpha

  def sigma_bar(self, t):
    return schedules._neg_log_alpha(*self._alphas(t))  # pylint: disable=protected-access

  def dsigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    _, alpha = self._alphas(t)
    slope = jnp.where(t > self.t_on, (self.alpha_on - self.alpha_start) / (1.0 - self.t_on),
                      jnp.where(t >= self.t_off, 0.0, (1.0 - self.alpha_on) / self.t_off))
    return slope / alpha                                   # -d log(alpha) / dt


def loop_schedule(model_schedule: Schedule, t_on: float, t_off: float,
                  alpha_on: float = 0.9, alpha_start=None) -> LoopSchedule:
  """The loop's schedule; ``alpha_start`` (``alpha(1)``) defaults to the model's."""
  if alpha_start is None:
    alpha_start = jnp.exp(-model_schedule.sigma_bar(jnp.float32(1.0)))
  return LoopSchedule(t_on=t_on, t_off=t_off, alpha_on=alpha_on, alpha_start=alpha_start)


def loop_held(t, s, t_on: float, t_off: float):
  """bool, steps ``t -> s`` of the held phase (both ends in ``[t_off, t_on]``)."""
  return (jnp.asarray(t) <= t_on) & (jnp.asarray(s) >= t_off)


def log_remask_probs(sig_t, sig_s, schedule_kind: str, eta: float, held=None):
  """``log rho`` per step from the noise levels ``sig_t >= sig_s`` (any shape).

  ``held``: bool, steps in the loop's held phase (``loop`` remasks only there).
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
