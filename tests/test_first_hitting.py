"""First-hitting sampler: its output law equals the model's exact reverse-chain law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from tcsm_jax import exact, processes, schedules
from tcsm_jax.sampling import samplers

V, L = 3, 3
T_END = 1e-3


def _table_denoiser(proc, seed=0, scale=1.5):
  """Random tables of the whole ``x_t`` and of ``sigma``: the law depends on both."""
  n = proc.num_states ** L
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=(n, L, V)) * scale, jnp.float32)
  b = jnp.asarray(rng.normal(size=(n, L, V)) * 2 * scale, jnp.float32)
  powers = proc.num_states ** jnp.arange(L - 1, -1, -1)

  def fn(x_t, sigma):
    idx = jnp.sum(x_t * powers, -1)
    return a[idx] + b[idx] * jnp.tanh(sigma - 1.0)[:, None, None]

  return fn


def _exact_law(den, proc, sched, frozen_sigma=None, substeps=3000, t_end=T_END):
  """Law over clean sequences of the model's continuous-time reverse chain + final step.

  In ``lambda = -log(1 - alpha)`` each masked position unmasks at rate 1, to token ``a``
  with probability ``p_theta(a | x, sigma(lambda))``: the generator on all ``S^L``
  states is integrated with midpoint ``expm`` steps (float64) from ``t = 1`` to
  ``T_END``, then every masked position is drawn from ``p_theta(. | x, sigma(T_END))``.
  """
  s = proc.num_states
  states = exact.all_sequences(s, L)                              # [N, L]
  index = {tuple(x): i for i, x in enumerate(states)}
  lam = lambda sig: -np.log(-np.expm1(-sig))
  sig_of = lambda lm: -np.log(-np.expm1(-lm))
  l0 = lam(float(sched.sigma_bar(1.0)))
  l1 = lam(float(sched.sigma_bar(t_end)))
  xs = jnp.asarray(states)

  def probs(sig):
    sig = sig if frozen_sigma is None else frozen_sigma
    logits = den(xs, jnp.full((len(states),), sig, jnp.float32))
    return np.asarray(jax.nn.softmax(logits.astype(jnp.float32), -1), np.float64)

  def generator(sig):
    p = probs(sig)
    g = np.zeros((len(states), len(states)))
    for n, x in enumerate(states):
      for i in np.nonzero(x == proc.mask_id)[0]:
        for a in range(V):
          y = x.copy()
          y[i] = a
          g[n, index[tuple(y)]] += p[n, i, a]
        g[n, n] -= 1.0
    return g

  pi = np.zeros(len(states))
  pi[index[(proc.mask_id,) * L]] = 1.0
  grid = np.linspace(l0, l1, substeps + 1)
  for a, b in zip(grid[:-1], grid[1:]):
    pi = pi @ scipy.linalg.expm((b - a) * generator(sig_of(0.5 * (a + b))))
  p_end = probs(float(sched.sigma_bar(t_end)))
  law = np.zeros(V ** L)
  for n, x in enumerate(states):
    if pi[n] < 1e-15:
      continue
    for m, x0 in enumerate(exact.all_sequences(V, L)):
      ok = (x == proc.mask_id) | (x == x0)
      if ok.all():
        w = np.prod([p_end[n, i, x0[i]] if x[i] == proc.mask_id else 1.0
                     for i in range(L)])
        law[m] += pi[n] * w
  return law


@pytest.fixture(scope="module")
def setup():
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  den = _table_denoiser(proc)
  return proc, sched, den, _exact_law(den, proc, sched, substeps=600)


def test_first_hitting_law_is_the_exact_reverse_chain_law(setup):
  proc, sched, den, law = setup
  np.testing.assert_allclose(law.sum(), 1.0, atol=1e-6)
  # The denoiser's time dependence matters: evaluating it at a frozen noise level
  # (a sampler that got the event times wrong) gives a clearly different law.
  frozen = _exact_law(den, proc, sched, frozen_sigma=2.0, substeps=20)
  assert 0.5 * np.abs(frozen - law).sum() > 0.05
  n = 60_000
  fn = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (n, L), steps=1,
                                         sampler="first_hitting", t_end=T_END))
  x, info = fn(jax.random.PRNGKey(0))
  assert int(info["nfe"]) <= L + 1
  counts = np.bincount(exact.index_of(np.asarray(x), V), minlength=V ** L)
  assert exact.chisquare_pvalue(counts, law) > 1e-3
  assert exact.chisquare_pvalue(counts, frozen) < 1e-6


def test_first_hitting_law_at_a_large_t_end():
  """At ``t_end = 0.5`` about half the positions are left to the final step: a row whose
  next event falls after ``t_end`` must stop (it once drew a fresh event on the next
  pass and unmasked again: chi2 = 635 at ``t_end = 0.2``). The law with the chain run to
  ``1e-3`` instead (what the old code approached) is rejected, so the check can fail."""
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  den = _table_denoiser(proc, seed=1)
  t_end = 0.5
  law = _exact_law(den, proc, sched, substeps=200, t_end=t_end)
  too_far = _exact_law(den, proc, sched, substeps=60, t_end=1e-3)
  assert 0.5 * np.abs(too_far - law).sum() > 0.05
  n = 60_000
  fn = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (n, L), steps=1,
                                         sampler="first_hitting", t_end=t_end))
  x, _ = fn(jax.random.PRNGKey(1))
  counts = np.bincount(exact.index_of(np.asarray(x), V), minlength=V ** L)
  assert exact.chisquare_pvalue(counts, law) > 1e-3
  assert exact.chisquare_pvalue(counts, too_far) < 1e-6


@pytest.mark.parametrize("t_end", [0.1, 0.5, 0.9])
def test_first_hitting_masked_fraction_at_t_end(t_end):
  """Without the final step each position is still masked at ``t_end`` with probability
  ``1 - alpha(t_end)`` (every masked position unmasks at its own rate whatever the
  denoiser says), independently: a binomial count. The old code gave 0.074 / 0.378 /
  0.738 at 0.1 / 0.5 / 0.9."""
  v, b, length = 5, 256, 32
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(3), (proc.num_states, v))
  den = lambda x, s: w[x]
  x, _ = jax.jit(lambda k: samplers.sample(
      k, den, proc, sched, (b, length), steps=1, sampler="first_hitting", t_end=t_end,
      final_denoise=False))(jax.random.PRNGKey(4))
  masked = int((np.asarray(x) == proc.mask_id).sum())
  p = float(-np.expm1(-float(sched.sigma_bar(t_end))))       # 1 - alpha(t_end)
  n = b * length
  z = (masked - n * p) / np.sqrt(n * p * (1 - p))
  assert abs(z) < 5, (masked / n, p, z)


def test_first_hitting_with_clamps_and_several_events_per_call():
  v, length, b = 5, 12, 64
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(3), (proc.num_states, v))
  den = lambda x, s: w[x] * (1.0 + s[:, None, None])
  template = np.full((b, length), -1)
  template[:, :3] = [1, 4, 2]
  template[::2, 7] = 0
  tokens, mask = samplers.clamp_from_template(template, v)
  for k, calls in [(3, 4)]:        # k = 1 (exact): the law test above
    x, info = samplers.sample(jax.random.PRNGKey(k), den, proc, sched, (b, length),
                              steps=1, sampler="first_hitting", clamp_tokens=tokens,
                              clamp_mask=mask, events_per_call=k)
    x = np.asarray(x)
    np.testing.assert_array_equal(x[np.asarray(mask)], np.asarray(tokens)[np.asarray(mask)])
    assert x.max() < v and x.min() >= 0
    assert int(info["nfe"]) <= calls + 1
    ev = np.asarray(info["event_sigma"])        # [calls, b]: noise levels decrease
    fin = np.where(np.isfinite(ev), ev, 0.0)
    assert (np.diff(fin, axis=0) <= 1e-6).all()
  with pytest.raises(ValueError, match="absorbing"):
    samplers.sample(jax.random.PRNGKey(0), den, processes.Uniform(v), sched, (2, 4),
                    steps=1, sampler="first_hitting")
