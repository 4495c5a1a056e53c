"""Adaptive unmasking (confidence k, entropy bound, confidence threshold): exact limits,
call counts, clamps (``tcsm_jax/sampling/adaptive.py``)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import exact, processes, schedules
from tcsm_jax.sampling import adaptive, samplers

V, L = 3, 3
N = 20_000
# One token per call: the exact limits of each sampler.
ONE_PER_CALL = [("confidence", dict(unmask_per_call=1)),
                ("entropy_bound", dict(eb_gamma=0.0)),
                ("confidence_threshold", dict(confidence_tau=1.0))]
PARALLEL = [("confidence", dict(unmask_per_call=L)),
            ("entropy_bound", dict(eb_gamma=10.0)),
            ("confidence_threshold", dict(confidence_tau=0.05))]


@pytest.fixture(scope="module")
def setup():
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  rng = np.random.default_rng(0)
  p0 = exact.random_distribution(rng, V, L, concentration=0.7)
  return proc, sched, p0


def _draw(den, proc, sched, sampler, n=N, seed=0, **kw):
  fn = jax.jit(lambda k: samplers.sample(k, den, proc, sched, (n, L), steps=1,
                                         sampler=sampler, **kw))
  x, info = fn(jax.random.PRNGKey(seed))
  return np.asarray(x), info


def _counts(x):
  return np.bincount(exact.index_of(x, V), minlength=V ** L)


def test_product_denoiser_gives_the_product_law_for_every_setting(setup):
  proc, sched, _ = setup
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(L, V)) * 1.5, jnp.float32)
  den = lambda x, s: jnp.broadcast_to(logits, x.shape + (V,))
  marg = np.asarray(jax.nn.softmax(logits, -1), np.float64)
  law = np.array([np.prod([marg[i, a] for i, a in enumerate(seq)])
                  for seq in itertools.product(range(V), repeat=L)])
  # (The one-per-call settings: the stronger Bayes-denoiser test below.)
  for j, (sampler, kw) in enumerate(PARALLEL):
    x, info = _draw(den, proc, sched, sampler, seed=j, **kw)
    assert exact.chisquare_pvalue(_counts(x), law) > 1e-3, (sampler, kw)


def test_one_token_per_call_samples_the_data_law_with_the_bayes_denoiser(setup):
  """In the one-per-call limit each sampler is an adaptive-order autoregressive sampler:
  with exact conditionals its law is the data law; revealing all positions in one call
  (the parallel settings) draws the product of the marginals instead, and the
  chi-square test sees it."""
  proc, sched, p0 = setup
  den = exact.true_denoiser(p0, proc, L)
  for j, (sampler, kw) in enumerate(ONE_PER_CALL):
    x, info = _draw(den, proc, sched, sampler, seed=10 + j, **kw)
    assert int(info["nfe"]) == L
    np.testing.assert_array_equal(np.asarray(info["calls_per_row"]), L)
    assert exact.chisquare_pvalue(_counts(x), p0) > 1e-3, sampler
  x, info = _draw(den, proc, sched, "confidence", seed=20, unmask_per_call=L)
  assert int(info["nfe"]) == 1
  assert exact.chisquare_pvalue(_counts(x), p0) < 1e-6


def test_infilling_with_the_bayes_denoiser_samples_the_conditional_law(setup):
  proc, sched, p0 = setup
  den = exact.true_denoiser(p0, proc, L)
  seqs = exact.all_sequences(V, L)
  cond = np.where(seqs[:, 1] == 2, p0, 0.0)
  cond /= cond.sum()
  n = N // 2
  tokens = np.zeros((n, L), np.int32)
  tokens[:, 1] = 2
  mask = np.zeros((n, L), bool)
  mask[:, 1] = True
  for j, (sampler, kw) in enumerate(ONE_PER_CALL):
    x, info = _draw(den, proc, sched, sampler, n=n, seed=30 + j, clamp_tokens=tokens,
                    clamp_mask=mask, **kw)
    assert (x[:, 1] == 2).all()
    assert int(info["nfe"]) == L - 1
    assert exact.chisquare_pvalue(_counts(x), cond) > 1e-3, sampler


def test_calls_counted_and_clamps_respected():
  v, length, b = 5, 12, 16
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(3), (proc.num_states, v)) * 2.0
  den = lambda x, s: w[x] + jnp.roll(w[x], 1, axis=1)          # depends on the context
  template = np.full((b, length), -1)
  template[:, :3] = [1, 4, 2]
  tokens, mask = samplers.clamp_from_template(template, v)
  free = length - 3
  for k in (2, 4, 20):
    x, info = samplers.sample(jax.random.PRNGKey(k), den, proc, sched, (b, length),
                              steps=1, sampler="confidence", unmask_per_call=k,
                              clamp_tokens=tokens, clamp_mask=mask)
    x = np.asarray(x)
    np.testing.assert_array_equal(x[:, :3], np.tile([1, 4, 2], (b, 1)))
    assert x.max() < v and x.min() >= 0
    assert int(info["nfe"]) == -(-free // k)
    np.testing.assert_array_equal(np.asarray(info["calls_per_row"]), -(-free // k))
  counts = {}
  for sampler, lo, hi in [("entropy_bound", 0.0, 50.0),
                          ("confidence_threshold", 1.0, 0.01)]:
    key = "eb_gamma" if sampler == "entropy_bound" else "confidence_tau"
    for val in (lo, hi):
      x, info = samplers.sample(jax.random.PRNGKey(0), den, proc, sched, (b, length),
                                steps=1, sampler=sampler, clamp_tokens=tokens,
                                clamp_mask=mask, **{key: val})
      np.testing.assert_array_equal(np.asarray(x)[:, :3], np.tile([1, 4, 2], (b, 1)))
      assert (np.asarray(x) < v).all()
      counts[sampler, val] = int(info["nfe"])
    assert counts[sampler, lo] == free            # the exact limit: one per call
    assert counts[sampler, hi] == 1               # everything at once


def test_selection_rules():
  # One row, 4 free positions with known confidences and entropies.
  p = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.98, 0.01, 0.01],
                [0.34, 0.33, 0.33]])
  lp = jnp.log(jnp.asarray(p, jnp.float32))[None]
  free = jnp.asarray([[True, True, True, True]])
  h = -(p * np.log(p)).sum(-1)                       # ranking by confidence: 2, 0, 1, 3
  sel = lambda s, **kw: np.asarray(adaptive.select(s, lp, free, **kw))[0]
  np.testing.assert_array_equal(sel("confidence", unmask_per_call=2), [1, 0, 1, 0])
  np.testing.assert_array_equal(sel("confidence_threshold", confidence_tau=0.8),
                                [1, 0, 1, 0])
  np.testing.assert_array_equal(sel("confidence_threshold", confidence_tau=0.99),
                                [0, 0, 1, 0])             # none above: the top one
  g = h[2] + h[0] + h[1] - h[1] + 1e-4                      # sum - max over {2, 0, 1}
  np.testing.assert_array_equal(sel("entropy_bound", eb_gamma=g), [1, 1, 1, 0])
  np.testing.assert_array_equal(sel("entropy_bound", eb_gamma=h[2] - 1e-4),
                                [0, 0, 1, 0])
  # Nothing free: nothing selected.
  none = np.asarray(adaptive.select("confidence", lp, ~free, unmask_per_call=2))
  assert not none.any()


def test_adaptive_option_errors():
  proc, sched = processes.Absorbing(V), schedules.get("log_linear")
  den = lambda x, s: jnp.zeros(x.shape + (V,))
  for sampler, kw, msg in [("confidence", dict(unmask_per_call=0), "unmask_per_call"),
                           ("entropy_bound", dict(eb_gamma=-1.0), "eb_gamma"),
                           ("confidence_threshold", dict(confidence_tau=0.0),
                            "confidence_tau"),
                           ("confidence_threshold", dict(confidence_tau=1.5),
                            "confidence_tau")]:
    with pytest.raises(ValueError, match=msg):
      samplers.sample(jax.random.PRNGKey(0), den, proc, sched, (2, L), steps=1,
                      sampler=sampler, **kw)
  with pytest.raises(ValueError, match="absorbing"):
    samplers.sample(jax.random.PRNGKey(0), den, processes.Uniform(V), sched, (2, L),
                    steps=1, sampler="entropy_bound")
