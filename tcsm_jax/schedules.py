"""Noise schedules: time ``t in [0, 1]`` -> ``(sigma_bar(t), d sigma_bar / dt)``.

``t = 0`` is clean data (``sigma_bar = 0``) and ``t = 1`` the most noised level. For
both structured processes ``alpha(t) = exp(-sigma_bar(t))`` is the probability that a
token is still untouched at time ``t``.

* ``log_linear`` (SEDD, MDLM): ``alpha(t) = 1 - (1 - eps) t``. This is also MD4's
  "linear" schedule (linear in alpha); ``linear_alpha`` is registered as its alias so
  configs ported from MD4 keep their name.
* ``cosine`` (MD4): ``alpha(t) = 1 - (1 - eps)(1 - cos(pi t / 2))``.
* ``geometric`` (SEDD, uniform process): ``sigma_bar(t) = s_min^(1-t) s_max^t``; note
  ``sigma_bar(0) = s_min > 0``.
* ``linear``: ``sigma_bar(t) = s_max t``.

``eps`` keeps ``sigma_bar(1) = -log(eps)`` finite. ``alpha`` and ``1 - alpha`` are each
computed without cancellation (``1 - t``, ``sin`` of the complementary angle) and
``sigma_bar`` from the accurate one, so float32 values are accurate to a few ulps near
``t = 0`` and ``t = 1`` alike (tests/test_precision.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import jax.numpy as jnp


class Schedule:
  """``schedule(t) -> (sigma_bar, dsigma)``, both with the shape of ``t``."""

  def sigma_bar(self, t):
    raise NotImplementedError

  def dsigma(self, t):
    raise NotImplementedError

  def alpha(self, t):
    """``exp(-sigma_bar(t))``: the probability that a token is untouched."""
    return jnp.exp(-self.sigma_bar(t))

  def __call__(self, t) -> Tuple[jnp.ndarray, jnp.ndarray]:
    t = jnp.asarray(t, jnp.float32)
    return self.sigma_bar(t), self.dsigma(t)


def _neg_log_alpha(one_minus_alpha, alpha):
  """``-log(alpha)`` from whichever of ``1 - alpha`` / ``alpha`` is the accurate one."""
  return jnp.where(one_minus_alpha < 0.5, -jnp.log1p(-one_minus_alpha), -jnp.log(alpha))


@dataclasses.dataclass(frozen=True)
class LogLinear(Schedule):
  eps: float = 1e-3

  def _alphas(self, t):
    # 1 - alpha = (1 - eps) t is accurate near t = 0, alpha = (1 - t) + eps t near 1.
    t = jnp.asarray(t, jnp.float32)
    return (1.0 - self.eps) * t, (1.0 - t) + self.eps * t

  def sigma_bar(self, t):
    return _neg_log_alpha(*self._alphas(t))

  def dsigma(self, t):
    return (1.0 - self.eps) / self._alphas(t)[1]


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
  eps: float = 1e-3

  def _alphas(self, t):
    # 1 - alpha = (1 - eps)(1 - cos(pi t / 2)) = (1 - eps) 2 sin^2(pi t / 4) (accurate
    # near t = 0); alpha = eps + (1 - eps) sin(pi (1 - t) / 2) (accurate near t = 1).
    t = jnp.asarray(t, jnp.float32)
    return ((1.0 - self.eps) * 2.0 * jnp.sin(jnp.pi * t / 4.0) ** 2,
            self.eps + (1.0 - self.eps) * jnp.sin(jnp.pi * (1.0 - t) / 2.0))

  def sigma_bar(self, t):
    return _neg_log_alpha(*self._alphas(t))

  def dsigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    return (1.0 - self.eps) * (jnp.pi / 2.0) * jnp.sin(jnp.pi * t / 2.0) / self._alphas(t)[1]


@dataclasses.dataclass(frozen=True)
class Geometric(Schedule):
  sigma_min: float = 1e-4
  sigma_max: float = 20.0

  def sigma_bar(self, t):
    t = jnp.asarray(t, jnp.float32)
    lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
    return jnp.exp(lo + t * (hi - lo))

  def dsigma(self, t):
    return self.sigma_bar(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
  sigma_max: float = 10.0

  def sigma_bar(self, t):
    return self.sigma_max * jnp.asarray(t, jnp.float32)

  def dsigma(self, t):
    return jnp.full_like(jnp.asarray(t, jnp.float32), self.sigma_max)


_REGISTRY = {"log_linear": LogLinear, "linear_alpha": LogLinear, "cosine": Cosine,
             "geometric": Geometric, "linear": Linear}


def get(name: str, **kwargs) -> Schedule:
  """Builds a schedule by name; unknown names or keyword arguments raise ValueError."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(_REGISTRY)}")
  cls = _REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  bad = set(kwargs) - fields
  if bad:
    raise ValueError(f"schedule {name!r} takes {sorted(fields)}, got unknown {sorted(bad)}")
  sched = cls(**kwargs)
  if "eps" in fields and not 0.0 < sched.eps < 1.0:
    raise ValueError(f"schedule eps must lie in (0, 1), got {sched.eps}")
  if isinstance(sched, Geometric) and not 0.0 < sched.sigma_min < sched.sigma_max:
    raise ValueError("geometric schedule needs 0 < sigma_min < sigma_max")
  return sched
