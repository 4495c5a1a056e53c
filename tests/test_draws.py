"""Exact draws: the float32 Gumbel-max floor, and draws below it (tcsm_jax/sampling/draws.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tcsm_jax import exact, processes, schedules
from tcsm_jax.sampling import draws, samplers


def _bits(words):
  return jnp.asarray(np.asarray(words, np.uint64).astype(np.uint32))


def test_uniform_buckets_are_exact_down_to_2_pow_minus_105():
  """Leading zeros j of the 105 exponent bits put U in [2^-(j+1), 2^-j): P = 2^-(j+1)."""
  for j in [0, 1, 8, 9, 10, 40, 41, 73, 74, 104]:
    # Set bit j of the 105-bit string (9 low bits of word 0, then words 1..3).
    words = [0, 0, 0, 0]
    if j < 9:
      words[0] = 1 << (8 - j)
    else:
      w, b = divmod(j - 9, 32)
      words[w + 1] = 1 << (31 - b)
    for mant in [0, 2 ** 23 - 1]:
      w = list(words)
      w[0] |= mant << 9
      lu = float(draws.log_uniform_from_bits(_bits(w)))
      tol = 1e-6 + 1e-7 * (j + 1)           # float32 rounding of (j + 1) log 2
      assert -(j + 1) * math.log(2) - tol < lu < -j * math.log(2) + tol, (j, mant, lu)
      assert lu < 0
  lowest = float(draws.log_uniform_from_bits(_bits([0, 0, 0, 0])))
  assert lowest / math.log(2) < -105.9          # all zero: the last bucket, 2^-106


def _gumbel32_from_uniforms(u, log_probs):
  """jax.random.categorical as a function of the float32 uniforms it consumes."""
  return np.argmax(log_probs - np.log(-np.log(u)), -1)


def _extreme_uniforms():
  """The extreme values jax.random.uniform(minval=tiny, maxval=1) can return."""
  tiny = np.finfo(np.float32).tiny
  return np.float32(tiny), np.float32(1.0 - 2.0 ** -23)


@pytest.mark.parametrize("draw", [
    "exact", pytest.param("gumbel32", marks=pytest.mark.xfail(
        strict=True, reason="float32 Gumbel-max never draws 25 nats below the top"))])
def test_an_outcome_25_nats_down_can_be_drawn(draw):
  """The draw as a function of its variates: can outcome 1 (log-prob -25) ever win?

  Fails for float32 Gumbel-max: over the whole range of its uniforms the Gumbel
  difference is at most about 20.4 nats. The exact race reaches it when the rare
  outcome's exponential is small enough (probability exp(-25) ~ 1.4e-11, as it should).
  """
  log_probs = np.array([0.0, -25.0], np.float32)
  if draw == "gumbel32":
    lo, hi = _extreme_uniforms()
    u = np.array([lo, hi], np.float32)           # top outcome's noise lowest, rare's highest
    won = _gumbel32_from_uniforms(u, log_probs) == 1
  else:
    # Rare outcome: leading zeros 40 -> E ~ 2^-41 ~ 4.5e-13 < exp(-25) * E_top.
    rare = [0, 0, 1 << 22, 0]
    top = [0xFFFFFFFF, 0xFFFFFFFF, 0, 0]           # U near 1/2: E_top ~ 0.7
    won = int(draws.categorical_from_bits(_bits([top, rare]), jnp.asarray(log_probs))) == 1
  assert won


def test_exact_race_and_bernoulli_match_their_laws():
  key = jax.random.PRNGKey(0)
  n = 400_000
  # Tail of log U: counts below 2^-j follow Binomial(n, 2^-j).
  lu = np.asarray(jax.jit(lambda k: draws.log_uniform(k, (n,)))(key))
  for j in [1, 4, 8, 12, 16]:
    c = int((lu < -j * math.log(2)).sum())
    assert stats.binom(n, 2.0 ** -j).cdf(c) > 1e-4 and stats.binom(n, 2.0 ** -j).sf(c) > 1e-4
  # Two-level race (V > BLOCK_MIN) and one-level race: chi-square against the law.
  for v in [7, 1000]:
    lp = jnp.asarray(np.random.default_rng(v).normal(size=v) * 2.0, jnp.float32)
    x = jax.jit(lambda k: draws.categorical(k, jnp.broadcast_to(lp, (n // 4, v))))(key)
    p = np.asarray(jax.nn.softmax(lp), np.float64)
    obs = np.bincount(np.asarray(x), minlength=v)
    assert exact.chisquare_pvalue(obs, p) > 1e-3, v
  # Bernoulli at p = 1e-4.
  b = np.asarray(draws.bernoulli_log(key, jnp.full((n,), math.log(1e-4))))
  assert stats.binom(n, 1e-4).cdf(b.sum()) > 1e-4 and stats.binom(n, 1e-4).sf(b.sum()) > 1e-4


def test_exact_race_with_infinite_and_unnormalized_log_probs():
  lp = jnp.array([[-jnp.inf, 3.0, -jnp.inf], [5.0, -jnp.inf, -jnp.inf]])
  x = draws.categorical(jax.random.PRNGKey(1), jnp.broadcast_to(lp, (500, 2, 3)))
  assert (np.asarray(x)[:, 0] == 1).all() and (np.asarray(x)[:, 1] == 0).all()
  with pytest.raises(ValueError, match="unknown draw"):
    draws.categorical(jax.random.PRNGKey(1), lp, "float64")


def _rare_fraction(start, eps, b, length=64, steps=16):
  v = 51
  proc, sched = processes.Absorbing(v), schedules.LogLinear(eps=eps)
  logits = jnp.log(jnp.asarray([0.995] + [1e-4] * 50, jnp.float32))
  den = lambda x, s: jnp.broadcast_to(logits, x.shape + (v,))
  fn = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (b, length), steps=steps,
                                         start=start)[0])
  x = np.asarray(fn(jax.random.PRNGKey(2)))
  frac, n = (x > 0).mean(), x.size
  return frac, (frac - 0.005) / math.sqrt(0.005 * 0.995 / n)


@pytest.mark.parametrize("start,ok", [("mask", True), ("prior", False)])
def test_start_state_does_not_seed_random_tokens(start, ok):
  """Constant denoiser: token 0 at 0.995, 50 rare tokens at 1e-4 each: the exact
  rare-token fraction is 0.005. The prior start puts ``alpha(1) / V`` on every data
  token and those positions are never revised; with ``alpha(1) = 0.01`` the fraction
  rises by about 0.01 (z ~ +16 here): the old start state fails this test."""
  frac, z = _rare_fraction(start, eps=0.01, b=200)
  assert (abs(z) < 4) == ok, (frac, z)


@pytest.mark.parametrize("start,ok", [("mask", True), ("prior", False)])
def test_start_state_at_the_default_schedule(start, ok):
  """The same at ``alpha(1) = 1e-3`` and 204,800 positions (the issue's measurement:
  0.00609 against 0.00500, z = +7, with the prior start)."""
  frac, z = _rare_fraction(start, eps=1e-3, b=3200)
  assert (abs(z) < 4) == ok, (frac, z)


@pytest.mark.parametrize("v", [27, 64, 50257])     # one-level race, two-level, GPT-2
def test_nan_and_all_minus_inf_rows_are_an_error(v):
  """A row with a NaN, or without any finite log-probability, has no law. Before, a
  NaN outcome was treated as -inf (at V = 50,257 its whole block of ~224 outcomes
  became undrawable) and an all -inf row drew 0. Now such a row draws -1 (never an
  index), and under ``checkify`` (``jit_sampler``, every binary) it is an error."""
  from jax.experimental import checkify
  good = jnp.zeros((v,), jnp.float32)
  nan = good.at[v // 2].set(jnp.nan)
  none = jnp.full((v,), -jnp.inf)
  lp = jnp.stack([good, nan, none])                               # [3, V]
  for draw in draws.DRAWS:
    x = np.asarray(draws.categorical(jax.random.PRNGKey(0), lp, draw))
    assert 0 <= x[0] < v and x[1] == -1 and x[2] == -1, (draw, x)
  checked = jax.jit(checkify.checkify(lambda k, l: draws.categorical(k, l),
                                      errors=checkify.user_checks))
  err, _ = checked(jax.random.PRNGKey(0), lp)
  with pytest.raises(checkify.JaxRuntimeError, match="NaN or no finite"):
    err.throw()
  err, _ = checked(jax.random.PRNGKey(0), lp[:1])                 # a good row: no error
  err.throw()


def test_a_sampler_on_nan_logits_raises():
  """A denoiser that returns one NaN logit: ``jit_sampler`` raises one line instead of
  returning samples in which that outcome was silently never drawn."""
  from jax.experimental import checkify
  v = 27
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")

  def apply_fn(params, x, s):
    logits = jnp.broadcast_to(params, x.shape + (v,))
    return logits.at[:, 3, 5].set(jnp.nan)

  fn = samplers.jit_sampler(apply_fn, proc, sched, (2, 8), steps=4)
  with pytest.raises(checkify.JaxRuntimeError, match="NaN or no finite"):
    fn(jnp.zeros((v,)), jax.random.PRNGKey(0))
  x, _ = samplers.jit_sampler(lambda p, x, s: jnp.broadcast_to(p, x.shape + (v,)), proc,
                              sched, (2, 8), steps=4)(jnp.zeros((v,)), jax.random.PRNGKey(0))
  assert np.asarray(x).min() >= 0


def test_jit_sampler_composes_under_jit_vmap_and_the_callers_checkify():
  """``jit_sampler`` inside the caller's ``jax.jit`` / ``jax.vmap`` (a notebook, MD4's
  side-by-side bench) draws what it draws eagerly; under the caller's ``checkify`` a NaN
  network is still an error. Before, the checkified call raised "Cannot abstractly
  evaluate a checkify.check" under any outer transformation."""
  from jax.experimental import checkify
  v = 27
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  logits = jax.random.normal(jax.random.PRNGKey(1), (v,))
  apply_fn = lambda p, x, s: jnp.broadcast_to(p, x.shape + (v,))
  fn = samplers.jit_sampler(apply_fn, proc, sched, (2, 8), steps=4)
  key = jax.random.PRNGKey(0)
  eager = np.asarray(fn(logits, key)[0])
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda p, k: fn(p, k)[0])(logits, key)),
                                eager)
  keys = jax.random.split(key, 3)
  batched = np.asarray(jax.vmap(lambda k: fn(logits, k)[0])(keys))
  for i in range(3):
    np.testing.assert_array_equal(batched[i], np.asarray(fn(logits, keys[i])[0]))
  nan_fn = samplers.jit_sampler(lambda p, x, s: apply_fn(p, x, s).at[:, 3, 5].set(jnp.nan),
                                proc, sched, (2, 8), steps=4)
  err, _ = jax.jit(checkify.checkify(lambda p, k: nan_fn(p, k)[0],
                                     errors=checkify.user_checks))(logits, key)
  with pytest.raises(checkify.JaxRuntimeError, match="NaN or no finite"):
    err.throw()


def test_two_level_race_at_gpt2_vocabulary():
  """V = 50,257 (blocks of 225; the last one padded): 20,000 draws from one law with
  known mass (Zipf s = 1.1 plus 5% on the very last outcome) against it by chi-square,
  the law given once (``shape``: no [n, V] copy)."""
  v, n = 50257, 20_000
  logp = -1.1 * np.log(np.arange(1, v + 1, dtype=np.float64))
  p = np.exp(logp - np.logaddexp.reduce(logp)) * 0.95
  p[-1] += 0.05
  lp = jnp.asarray(np.log(p), jnp.float32)
  x = np.asarray(jax.jit(lambda k: draws.categorical(k, lp, shape=(n,)))(
      jax.random.PRNGKey(5)))
  obs = np.bincount(x, minlength=v)
  assert exact.chisquare_pvalue(obs, p) > 1e-3
  assert abs(obs[-1] / n - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)
  # The check can fail: the law with the last block's mass moved elsewhere is rejected.
  q = p.copy()
  q[0] += q[-1]
  q[-1] = 0.0
  assert exact.chisquare_pvalue(obs, q) < 1e-6


def test_log_uniform_precision_is_what_the_docs_say():
  """draws.py and the README: float32 ``log U`` carries ``U`` to about 2^-23 relative
  near 1 and about 2^-17 in the deepest buckets (not 2^-23 throughout), as
  ``experiments/results/draws_precision_speed.md`` measured per bucket (the same
  computation: float64 ``log U`` from the same words)."""
  mant = np.random.default_rng(0).integers(0, 1 << 23, 4096).astype(np.uint64)
  err = {}
  for k in [0, 104]:
    words = np.zeros((mant.size, 4), np.uint64)
    words[:, 0] = mant << np.uint64(9)
    if k == 0:
      words[:, 0] |= np.uint64(1 << 8)
      want = np.log1p(-(2.0 ** 23 - mant - 0.5) * 2.0 ** -24)
    else:
      w, b = divmod(k - 9, 32)
      words[:, w + 1] = np.uint64(1 << (31 - b))
      want = np.log1p((mant + 0.5) * 2.0 ** -23) - (k + 1) * math.log(2.0)
    got = np.asarray(draws.log_uniform_from_bits(_bits(words)), np.float64)
    err[k] = np.abs(got - want).max()            # |d log U| = relative error of U
  assert 2.0 ** -24 < err[0] < 2.0 ** -22
  assert 2.0 ** -18 < err[104] < 2.0 ** -16.5
