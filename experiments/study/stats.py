"""Statistics over seeds: mean and spread, steps to a threshold, paired effects.

Pure numpy. Every function takes plain sequences and returns floats (``nan`` where a
quantity is undefined: the spread of one seed, a threshold never reached).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
from scipy import stats as _sp


def mean_std(values: Iterable[float]):
  """``(mean, sample std (ddof 1), n)`` of the finite ``values``; std is ``nan`` for
  n < 2 and both are ``nan`` for n = 0."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return float("nan"), float("nan"), 0
  std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
  return float(v.mean()), std, int(v.size)


def steps_to_threshold(steps: Sequence[float], values: Sequence[float],
                       threshold: float) -> float:
  """First ``step`` at which a decreasing-is-better curve reaches ``threshold``,
  linearly interpolated between the two evaluations that straddle it; ``nan`` if it
  never does. ``steps`` may equally be wall-clock seconds."""
  s = np.asarray(steps, np.float64)
  v = np.asarray(values, np.float64)
  if s.shape != v.shape or s.ndim != 1:
    raise ValueError(f"steps {s.shape} and values {v.shape} must be equal 1-D shapes")
  order = np.argsort(s, kind="stable")
  s, v = s[order], v[order]
  for i in range(len(v)):
    if np.isfinite(v[i]) and v[i] <= threshold:
      if i == 0 or not np.isfinite(v[i - 1]):
        return float(s[i])
      # v[i-1] > threshold >= v[i]: the crossing between them.
      frac = (v[i - 1] - threshold) / (v[i - 1] - v[i])
      return float(s[i - 1] + frac * (s[i] - s[i - 1]))
  return float("nan")


@dataclasses.dataclass(frozen=True)
class Effect:
  """``b - a`` over seeds: mean, standard error and a two-sided t interval."""

  mean: float
  stderr: float
  low: float
  high: float
  n: int
  paired: bool
  level: float = 0.95

  def as_text(self, unit: str = "") -> str:
    u = f" {unit}" if unit else ""
    return (f"{self.mean:+.4f}{u} ({self.level:.0%} CI {self.low:+.4f} to "
            f"{self.high:+.4f}, "
            f"n={self.n}{', paired by seed' if self.paired else ''})")


def effect(a: Dict[int, float], b: Dict[int, float], level: float = 0.95) -> Effect:
  """Effect ``b - a`` from per-seed values ``{seed: value}``; a two-sided ``level``
  interval (lower it with Bonferroni, ``1 - 0.05 / m``, for ``m`` comparisons).

  Seeds present in both are paired (a variant with the same seed shares the data order,
  so the per-seed difference removes that noise): mean and standard error of the
  differences, t with n - 1 degrees of freedom. With fewer than two common seeds, the
  unpaired Welch interval. ``nan`` bounds when there is not enough data.
  """
  common = sorted(set(a) & set(b))
  common = [s for s in common if np.isfinite(a[s]) and np.isfinite(b[s])]
  if len(common) >= 2:
    d = np.asarray([b[s] - a[s] for s in common], np.float64)
    n = d.size
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    q = float(_sp.t.ppf(0.5 + level / 2, n - 1))
    return Effect(m, se, m - q * se, m + q * se, n, True, level)
  va = np.asarray([x for x in a.values() if np.isfinite(x)], np.float64)
  vb = np.asarray([x for x in b.values() if np.isfinite(x)], np.float64)
  if va.size == 0 or vb.size == 0:
    nan = float("nan")
    return Effect(nan, nan, nan, nan, 0, False)
  m = float(vb.mean() - va.mean())
  if va.size < 2 or vb.size < 2:
    return Effect(m, float("nan"), float("nan"), float("nan"), int(min(va.size, vb.size)),
                  False)
  sa, sb = va.var(ddof=1) / va.size, vb.var(ddof=1) / vb.size
  se = math.sqrt(sa + sb)
  # Welch-Satterthwaite degrees of freedom.
  dof = (sa + sb) ** 2 / (sa ** 2 / (va.size - 1) + sb ** 2 / (vb.size - 1)) if se else 1.0
  q = float(_sp.t.ppf(0.5 + level / 2, max(dof, 1.0)))
  return Effect(m, se, m - q * se, m + q * se, int(min(va.size, vb.size)), False,
                level)


def verdict(e: Effect, better: str = "lower", margin: float = 0.0,
            claim: str = "beats") -> str:
  """``holds`` / ``does not hold at this scale`` / ``inconclusive`` for a claim about
  ``e = b - a`` (b: the claimed-better variant).

  ``claim='beats'``: holds if the interval lies entirely on the better side of 0.
  ``claim='matches or beats'``: holds if the interval lies on the better side of
  ``margin`` (b is at most ``margin`` worse). Either: does not hold if the interval
  lies entirely on the worse side (of ``margin`` for 'matches or beats', of 0 for
  'beats'); inconclusive otherwise, or when there are too few seeds for an interval.
  """
  if better not in ("lower", "higher"):
    raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
  if claim not in ("beats", "matches or beats"):
    raise ValueError(f"claim must be 'beats' or 'matches or beats', got {claim!r}")
  if not (np.isfinite(e.low) and np.isfinite(e.high)):
    return "inconclusive"
  sign = 1.0 if better == "lower" else -1.0
  lo, hi = sorted((sign * e.low, sign * e.high))   # in "lower is better" units
  bar = margin if claim == "matches or beats" else 0.0
  if hi < bar:
    return "holds"
  if lo > bar:
    return "does not hold at this scale"
  return "inconclusive"


def fewer_failures(bad_a: int, n_a: int, bad_b: int, n_b: int, alpha: float = 0.05):
  """``(verdict, p)`` for the claim "b fails (diverges) less often than a": Fisher's
  exact two-sided test on the 2x2 table of failed/finished runs. ``holds`` when b's
  rate is lower and ``p < alpha``, ``does not hold at this scale`` when it is higher
  and ``p < alpha``, ``inconclusive`` otherwise (and with no runs: ``p = nan``)."""
  if min(n_a, n_b) == 0:
    return "inconclusive", float("nan")
  p = float(_sp.fisher_exact([[bad_a, n_a - bad_a], [bad_b, n_b - bad_b]])[1])
  if p < alpha:
    return ("holds" if bad_b / n_b < bad_a / n_a else "does not hold at this scale"), p
  return "inconclusive", p


def per_seed(rows, variant: str, key: str, step: Optional[int] = None) -> Dict[int, float]:
  """``{seed: value of key}`` at ``step`` (default: each seed's last row holding key)."""
  out = {}
  for r in sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["step"]):
    val = r.get(key)
    if val is None or val == "" or (step is not None and r["step"] != step):
      continue
    out[int(r["seed"])] = float(val)
  return out
