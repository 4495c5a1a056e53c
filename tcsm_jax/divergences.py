"""Bregman divergences on positive ratios / probabilities, in value and log space.

A Bregman divergence ``D_phi(a, b) = phi(a) - phi(b) - phi'(b) (a - b)`` is >= 0 with
equality iff ``a == b``. The ones used by TCSM:

=================  ===============================  ===========================
name               ``D(a, b)``                      generator ``phi(a)``
=================  ===============================  ===========================
``gkl``            ``a log(a / b) - a + b``         ``a log a - a``
``kl``             ``sum p log(p / q)``             ``sum p log p`` (on simplex)
``lsif``           ``(a - b)^2 / 2``                ``a^2 / 2``
``itakura_saito``  ``a / b - log(a / b) - 1``       ``-log a``
=================  ===============================  ===========================

The ``*_log`` variants take ``log a`` and ``log b`` (``-inf`` allowed for a zero) and
never produce NaN values or NaN gradients: zero-against-zero is 0, and a positive
``a`` against ``b = 0`` (or ``a = 0`` against ``b > 0`` for Itakura-Saito) is ``+inf``,
which is the correct value of the divergence.

``Divergence.mc_u`` and ``Divergence.mc_dphi`` give the two pieces that Monte Carlo
estimators need when the first argument is only known through samples: since
``D(a, b) = phi(a) + u(b) - phi'(b) a`` with ``u(b) = b phi'(b) - phi(b)`` is linear in
``a`` up to the constant ``phi(a)``, an unbiased estimate of ``a`` gives an unbiased
loss (``losses.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
from jax.scipy.special import xlogy

_NEG_INF = -jnp.inf


# ---- value space --------------------------------------------------------------------
def generalized_kl(a, b):
  """Elementwise ``a log(a / b) - a + b`` for ``a, b >= 0`` (``0 log 0 = 0``)."""
  return xlogy(a, a) - xlogy(a, b) - a + b


def kl(p, q, axis=-1):
  """``sum_axis p log(p / q)`` between (normalized) distributions."""
  return jnp.sum(xlogy(p, p) - xlogy(p, q), axis=axis)


def lsif(a, b):
  """Elementwise least-squares ``(a - b)^2 / 2``."""
  return 0.5 * jnp.square(a - b)


def itakura_saito(a, b):
  """Elementwise ``a / b - log(a / b) - 1`` for ``a, b > 0``."""
  r = a / b
  return r - jnp.log(r) - 1.0


# ---- log space ----------------------------------------------------------------------
def _split(log_a):
  pos = log_a > _NEG_INF
  la = jnp.where(pos, log_a, 0.0)
  return pos, la, jnp.where(pos, jnp.exp(la), 0.0)


def generalized_kl_log(log_a, log_b):
  """``generalized_kl(exp(log_a), exp(log_b))`` computed from logs."""
  pos, la, a = _split(log_a)
  return jnp.where(pos, a * (la - log_b), 0.0) - a + jnp.exp(log_b)


def kl_log(log_p, log_q, axis=-1):
  """``kl(exp(log_p), exp(log_q))`` computed from log-probabilities."""
  pos, lp, p = _split(log_p)
  return jnp.sum(jnp.where(pos, p * (lp - log_q), 0.0), axis=axis)


def lsif_log(log_a, log_b):
  """``lsif(exp(log_a), exp(log_b))`` computed from logs."""
  return 0.5 * jnp.square(jnp.exp(log_a) - jnp.exp(log_b))


def itakura_saito_log(log_a, log_b):
  """``itakura_saito(exp(log_a), exp(log_b))``; ``expm1(d) - d`` with ``d = log(a/b)``."""
  both_zero = (log_a == _NEG_INF) & (log_b == _NEG_INF)
  b_zero = (log_b == _NEG_INF) & ~both_zero
  a_zero = (log_a == _NEG_INF) & ~both_zero
  ok = ~(both_zero | a_zero | b_zero)
  d = jnp.where(ok, log_a - jnp.where(ok, log_b, 0.0), 0.0)
  val = jnp.expm1(d) - d
  return jnp.where(ok, val, jnp.where(both_zero, 0.0, jnp.inf))


# ---- registry -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Divergence:
  """A Bregman divergence with the pieces the TCSM losses need.

  Attributes:
    name: registry name.
    log_fn: elementwise ``D(a, b)`` from ``(log a, log b)``.
    mc_u: ``u(b) = b phi'(b) - phi(b)`` from ``log b``.
    mc_dphi: ``phi'(b)`` from ``log b``.
  """

  name: str
  log_fn: Callable
  mc_u: Callable
  mc_dphi: Callable


_GKL = Divergence("gkl", generalized_kl_log, jnp.exp, lambda lb: lb)
DIVERGENCES = {
    "gkl": _GKL,
    "kl": dataclasses.replace(_GKL, name="kl"),
    "lsif": Divergence("lsif", lsif_log, lambda lb: 0.5 * jnp.exp(2.0 * lb), jnp.exp),
    "itakura_saito": Divergence("itakura_saito", itakura_saito_log,
                                lambda lb: lb - 1.0, lambda lb: -jnp.exp(-lb)),
}


def get(name: str) -> Divergence:
  if name not in DIVERGENCES:
    raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
  return DIVERGENCES[name]
