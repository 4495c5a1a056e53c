"""Samplers: exact small-space checks, clamping, caching, filtering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcsm_jax import exact, processes, sampling, schedules


def _setup(kind, v=3, length=2, seed=0):
  proc = {"uniform": processes.Uniform(v), "absorbing": processes.Absorbing(v)}[kind]
  p0 = exact.random_distribution(np.random.default_rng(seed), v, length, 1.0)
  sched = schedules.get("log_linear") if kind == "absorbing" else schedules.get(
      "geometric", sigma_min=1e-4, sigma_max=12.0)
  return proc, p0, sched


def _empirical(x, num_states, length):
  idx = exact.index_of(np.asarray(x), num_states)
  return np.bincount(idx, minlength=num_states ** length) / len(idx)


def _tv(p, q):
  return 0.5 * np.abs(p - q).sum()


@pytest.mark.parametrize("kind,sampler,steps", [
    ("absorbing", "analytic", 32), ("absorbing", "ancestral", 64),
    ("absorbing", "euler", 256), ("uniform", "analytic", 64), ("uniform", "euler", 512)])
def test_true_score_sampler_recovers_data_distribution(kind, sampler, steps):
  v, length, n = 3, 2, 40000
  proc, p0, sched = _setup(kind, v, length)
  den = exact.true_denoiser(p0, proc, length)
  fn = jax.jit(lambda k: sampling.sample(k, den, proc, sched, (n, length), steps=steps,
                                         sampler=sampler)[0])
  emp = _empirical(fn(jax.random.PRNGKey(0)), v, length)
  assert _tv(np.full(v ** length, v ** -length), p0) > 0.15   # the check can fail
  # Statistical tolerance: TV of n samples from 9 cells is ~ 0.01 here.
  assert _tv(emp, p0) < 0.03, (_tv(emp, p0), emp, p0)


@pytest.mark.parametrize("kind,sampler", [("absorbing", "euler"), ("uniform", "euler"),
                                          ("uniform", "analytic")])
def test_reverse_chain_reproduces_forward_marginals(kind, sampler):
  """Run from t = 1 to t = 0.4 and compare x_t with the exact forward marginal p_t."""
  v, length, n = 3, 2, 40000
  proc, p0, sched = _setup(kind, v, length, seed=1)
  den = exact.true_denoiser(p0, proc, length)
  x, _ = jax.jit(lambda k: sampling.sample(k, den, proc, sched, (n, length), steps=400,
                                           sampler=sampler, t_end=0.4,
                                           final_denoise=False))(jax.random.PRNGKey(1))
  pt, _ = exact.posterior(p0, proc, float(sched.sigma_bar(0.4)), length)
  emp = _empirical(x, proc.num_states, length)
  assert _tv(emp, pt) < 0.03, _tv(emp, pt)


@pytest.mark.parametrize("kind,sampler", [("absorbing", "analytic"),
                                          ("absorbing", "ancestral"),
                                          ("absorbing", "euler"), ("uniform", "analytic"),
                                          ("uniform", "euler")])
def test_clamped_positions_never_change(kind, sampler):
  v, length, b = 5, 8, 16
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  sched = schedules.get("log_linear")
  w = jax.random.normal(jax.random.PRNGKey(3), (proc.num_states, v))
  den = lambda x, s: w[x]
  template = np.full((b, length), -1)
  template[:, :2] = [1, 4]          # prefix
  template[:, -1] = 2               # suffix
  template[::2, 4] = 0              # middle, only some rows
  tokens, mask = sampling.clamp_from_template(template, v)
  x, info = sampling.sample(jax.random.PRNGKey(4), den, proc, sched, (b, length), steps=20,
                            sampler=sampler, clamp_tokens=tokens, clamp_mask=mask,
                            return_path=True)
  path = np.asarray(info["path"])
  for arr in list(path) + [np.asarray(x)]:
    np.testing.assert_array_equal(arr[np.asarray(mask)], np.asarray(tokens)[np.asarray(mask)])
  assert np.asarray(x).max() < v            # final samples hold no mask
  assert (np.asarray(x)[~np.asarray(mask)] >= 0).all()


def test_ancestral_cache_skips_network_and_matches_analytic():
  v, length, n = 3, 2, 30000
  proc, p0, sched = _setup("absorbing", v, length, seed=2)
  den = exact.true_denoiser(p0, proc, length)
  res = {}
  for sampler in ["analytic", "ancestral"]:
    x, info = jax.jit(lambda k: sampling.sample(k, den, proc, sched, (n, length),
                                                steps=200, sampler=sampler))(
                                                    jax.random.PRNGKey(5))
    res[sampler] = (_empirical(x, v, length), int(info["nfe"]))
  assert res["analytic"][1] == 201
  # With a batch of sequences the cache only fires when no sequence changed; with a
  # single sequence it fires on most of the 200 steps (length 2 => <= 2 changes).
  x1, info1 = jax.jit(lambda k: sampling.sample(k, den, proc, sched, (1, length),
                                                steps=200, sampler="ancestral"))(
                                                    jax.random.PRNGKey(6))
  assert int(info1["nfe"]) <= 4
  assert _tv(res["ancestral"][0], p0) < 0.03
  assert _tv(res["analytic"][0], p0) < 0.03


def test_top_p_and_temperature():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(sampling.top_p_filter(logits, 0.7)))
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = np.isfinite(np.asarray(sampling.top_p_filter(logits, 0.1)))
  np.testing.assert_array_equal(kept, [[True, False, False, False]])
  proc, sched = processes.Absorbing(4), schedules.get("log_linear")
  den = lambda x, s: jnp.broadcast_to(logits[0], x.shape + (4,))
  x, _ = sampling.sample(jax.random.PRNGKey(0), den, proc, sched, (2000, 3), steps=8,
                         top_p=0.7)
  assert set(np.unique(np.asarray(x))) <= {0, 1}
  x, _ = sampling.sample(jax.random.PRNGKey(0), den, proc, sched, (2000, 3), steps=8,
                         temperature=0.05)
  assert (np.asarray(x) == 0).mean() > 0.99


def test_sampler_errors():
  proc, sched = processes.Uniform(4), schedules.get("log_linear")
  den = lambda x, s: jnp.zeros(x.shape + (4,))
  with pytest.raises(ValueError, match="unknown sampler"):
    sampling.sample(jax.random.PRNGKey(0), den, proc, sched, (1, 3), steps=4, sampler="x")
  with pytest.raises(ValueError, match="absorbing"):
    sampling.sample(jax.random.PRNGKey(0), den, proc, sched, (1, 3), steps=4,
                    sampler="ancestral")
  with pytest.raises(ValueError, match="out of vocabulary"):
    sampling.sample(jax.random.PRNGKey(0), den, proc, sched, (1, 3), steps=4,
                    clamp_tokens=jnp.array([[9, 0, 0]]),
                    clamp_mask=jnp.array([[True, False, False]]))


def test_jit_sampler_takes_params_and_equals_sample():
  v, length = 4, 5
  proc, sched = processes.Absorbing(v), schedules.get("log_linear")
  w = jnp.asarray(np.random.default_rng(0).normal(size=(v + 1, v)), jnp.float32)
  apply_fn = lambda p, x_t, s: p[x_t] * jnp.exp(-s)[:, None, None]
  fn = sampling.jit_sampler(apply_fn, proc, sched, (3, length), steps=6)
  x, info = fn(w, jax.random.PRNGKey(2))
  want, _ = sampling.sample(jax.random.PRNGKey(2), lambda a, s: apply_fn(w, a, s), proc,
                            sched, (3, length), steps=6)
  np.testing.assert_array_equal(x, want)
  assert int(info["nfe"]) == 7
  x2, _ = fn(2.0 * w, jax.random.PRNGKey(2))    # params are an argument, not baked in
  want2, _ = sampling.sample(jax.random.PRNGKey(2), lambda a, s: apply_fn(2.0 * w, a, s),
                             proc, sched, (3, length), steps=6)
  np.testing.assert_array_equal(x2, want2)
