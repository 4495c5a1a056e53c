"""Schedules (derivatives, endpoints, stability) and Bregman divergences."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import divergences, schedules

NAMES = ["log_linear", "linear_alpha", "cosine", "geometric", "linear"]


@pytest.mark.parametrize("name", NAMES)
def test_schedule_derivative_matches_autodiff(name):
  sched = schedules.get(name)
  t = jnp.linspace(0.0, 1.0, 101)
  sigma, dsigma = sched(t)
  auto = jax.vmap(jax.grad(lambda s: sched.sigma_bar(s)))(t)
  np.testing.assert_allclose(dsigma, auto, rtol=1e-4, atol=1e-6)
  assert np.all(np.diff(np.asarray(sigma)) > 0), "sigma_bar must increase with t"
  assert np.all(np.isfinite(sigma)) and np.all(np.isfinite(dsigma))


@pytest.mark.parametrize("name", ["log_linear", "cosine"])
def test_alpha_schedules_endpoints_and_small_t(name):
  eps = 1e-3
  sched = schedules.get(name, eps=eps)
  assert float(sched.sigma_bar(0.0)) == 0.0
  np.testing.assert_allclose(float(sched.sigma_bar(1.0)), -np.log(eps), rtol=1e-5)
  # Near t = 0 the relative error stays small (no cancellation): compare with float64.
  t = 1e-6
  if name == "log_linear":
    want = -np.log1p(-(1 - eps) * t)
  else:
    want = -np.log1p(-(1 - eps) * (1 - np.cos(np.pi * t / 2)))
  np.testing.assert_allclose(float(sched.sigma_bar(t)), want, rtol=1e-4)


def test_log_linear_matches_md4_linear_alpha():
  t = jnp.linspace(0, 1, 11)
  np.testing.assert_allclose(schedules.get("log_linear").alpha(t),
                             1.0 - (1 - 1e-3) * t, atol=1e-6)


def test_schedule_errors():
  with pytest.raises(ValueError, match="unknown schedule"):
    schedules.get("sigmoid")
  with pytest.raises(ValueError, match="unknown"):
    schedules.get("cosine", sigma_max=3.0)
  with pytest.raises(ValueError, match="eps"):
    schedules.get("log_linear", eps=0.0)


# ---- divergences ----------------------------------------------------------------------
VALUE_FNS = {"gkl": divergences.generalized_kl, "lsif": divergences.lsif,
             "itakura_saito": divergences.itakura_saito}


def test_known_values():
  np.testing.assert_allclose(divergences.generalized_kl(2.0, 1.0), 2 * np.log(2) - 1)
  np.testing.assert_allclose(divergences.lsif(3.0, 1.0), 2.0)
  np.testing.assert_allclose(divergences.itakura_saito(2.0, 1.0), 1 - np.log(2))
  np.testing.assert_allclose(divergences.kl(jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75])),
                             0.5 * np.log(2) + 0.5 * np.log(2 / 3), rtol=1e-6)
  np.testing.assert_allclose(divergences.generalized_kl(0.0, 1.5), 1.5)


positive = hnp.arrays(np.float64, 8, elements=st.floats(1e-4, 1e4))
EPS32 = float(np.finfo(np.float32).eps)


def _float64_divergence(name, a, b):
  if name == "gkl":
    return a * np.log(a / b) - a + b
  if name == "lsif":
    return 0.5 * (a - b) ** 2
  return a / b - np.log(a / b) - 1.0


def _float32_scale(name, a, b):
  """Per element: the size of the terms each float32 formula adds, in units of eps.

  Inputs pass through ``log`` (relative error ``eps (1 + |log a|)`` after ``exp``), and
  the formulas cancel terms of size ``|a log(a/b)| + a + b`` (gkl), ``|a - b| (a + b)``
  (lsif) and ``a/b + |log(a/b)| + 1`` (Itakura-Saito); near ``a == b`` the result is
  far smaller than those terms, and so is its float32 accuracy.
  """
  la, lb = np.abs(np.log(a)), np.abs(np.log(b))
  if name == "gkl":
    return a * (1 + la + lb) + b * (1 + lb)
  if name == "lsif":
    return np.abs(a - b) * (a * (1 + la) + b * (1 + lb))
  d = np.log(a / b)
  return (np.abs(np.expm1(d)) + np.abs(d)) * (1 + la + lb) + a / b + 1.0


@hypothesis.given(positive, positive)
def test_divergences_value_log_agree_nonnegative(a, b):
  """Value and log forms both equal a float64 reference, element by element.

  Tolerance per element: 1e-5 relative plus 16 eps times the element's own float32
  error scale (``_float32_scale``), never a tolerance borrowed from the largest value.
  """
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  a64, b64 = np.asarray(a32, np.float64), np.asarray(b32, np.float64)
  for name, fn in VALUE_FNS.items():
    ref = _float64_divergence(name, a64, b64)
    tol = 1e-5 * np.abs(ref) + 16 * EPS32 * _float32_scale(name, a64, b64)
    val = np.asarray(fn(a32, b32), np.float64)
    lg = np.asarray(divergences.get(name).log_fn(jnp.log(a32), jnp.log(b32)), np.float64)
    for form, out in [("value", val), ("log", lg)]:
      err = np.abs(out - ref)
      assert np.all(err <= tol), (name, form, a64[err > tol], b64[err > tol],
                                  out[err > tol], ref[err > tol])
      assert np.all(out >= -tol), (name, form)
    same = np.asarray(divergences.get(name).log_fn(jnp.log(a32), jnp.log(a32)))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_bregman_generators_match_definitions():
  """mc_u(b) = b phi'(b) - phi(b) and D(a, b) = phi(a) + u(b) - phi'(b) a."""
  phis = {"gkl": lambda a: a * np.log(a) - a, "lsif": lambda a: 0.5 * a ** 2,
          "itakura_saito": lambda a: -np.log(a)}
  a, b = np.array([0.3, 2.0, 5.0]), np.array([1.5, 0.2, 5.0])
  for name, phi in phis.items():
    div = divergences.get(name)
    lb = jnp.log(jnp.asarray(b))
    rebuilt = phi(a) + np.asarray(div.mc_u(lb)) - np.asarray(div.mc_dphi(lb)) * a
    want = np.asarray(div.log_fn(jnp.log(jnp.asarray(a)), lb))
    np.testing.assert_allclose(rebuilt, want, rtol=1e-5, atol=1e-6)


def test_log_space_zeros_and_gradients_are_safe():
  la = jnp.array([-jnp.inf, -jnp.inf, 0.5, 0.0])
  lb = jnp.array([-jnp.inf, 0.3, -jnp.inf, 0.0])
  for name in ["gkl", "lsif", "itakura_saito"]:
    fn = divergences.get(name).log_fn
    val = np.asarray(fn(la, lb))
    assert val[0] == 0.0 and val[3] == 0.0, name
    assert not np.any(np.isnan(val)), name
    g = jax.grad(lambda x: fn(la, x)[jnp.array([0, 1, 3])].sum())(lb)
    assert not np.any(np.isnan(np.asarray(g))), name
  assert np.isinf(divergences.generalized_kl_log(la, lb)[2])
  assert np.isinf(divergences.itakura_saito_log(la, lb)[1])
  g = jax.grad(lambda x: divergences.kl_log(la[:2], x))(lb[:2])
  assert not np.any(np.isnan(np.asarray(g)))


def test_unknown_divergence():
  with pytest.raises(ValueError, match="unknown divergence"):
    divergences.get("wasserstein")
