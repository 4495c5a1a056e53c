"""NLL bound: Monte Carlo estimator vs exact enumeration, and bound >= true NLL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from tcsm_jax import exact, likelihood, processes, schedules
from tcsm_jax.data import synthetic


def _setup(kind, v=3, length=2, seed=0):
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  p0 = exact.random_distribution(np.random.default_rng(seed), v, length, 1.0)
  return proc, p0


def _exact_bound(x0, proc, sched, denoise, length, n_nodes=400):
  """E_{x_t}[integrand] enumerated exactly, integrated by Gauss-Legendre in t."""
  xts = exact.all_sequences(proc.num_states, length)
  nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
  ts, ws = 0.5 * (nodes + 1), 0.5 * weights
  xt_j = jnp.asarray(xts)
  x0_b = jnp.broadcast_to(jnp.asarray(x0), xts.shape)

  @jax.jit
  def at(t):
    sigma, dsigma = sched(jnp.full((len(xts),), t))
    val = likelihood.integrand(denoise(xt_j, sigma), x0_b, xt_j, sigma, dsigma, proc)
    lq = proc.transition_log_probs(x0_b, sigma)              # [N, L, S]
    logq = jnp.take_along_axis(lq, xt_j[..., None], -1)[..., 0].sum(-1)
    return jnp.sum(jnp.where(logq > -jnp.inf, jnp.exp(logq) * val, 0.0))

  diff = sum(w * float(at(t)) for t, w in zip(ts, ws))
  prior = float(likelihood.prior_term(jnp.asarray(x0)[None], proc,
                                      sched.sigma_bar(1.0))[0])
  return diff + prior


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_mc_bound_matches_exact_enumeration(kind):
  v, length = 3, 2
  proc, p0 = _setup(kind, v, length)
  sched = schedules.get("log_linear") if kind == "absorbing" else schedules.get(
      "linear", sigma_max=8.0)
  # An arbitrary (not optimal) denoiser: the bound must hold for any model.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(proc.num_states, v)), jnp.float32)
  denoise = lambda x_t, sigma: w[x_t] + 0.1 * jnp.log1p(sigma)[:, None, None]
  x0 = np.array([1, 2])
  want = _exact_bound(x0, proc, sched, denoise, length)
  n = 4000
  out = jax.jit(lambda k: likelihood.nll_bound(
      k, denoise, jnp.tile(jnp.asarray(x0)[None], (n, 1)), proc, sched, num_t=8))(
          jax.random.PRNGKey(0))
  got = np.asarray(out["bound"])
  se = got.std() / np.sqrt(n)
  assert abs(got.mean() - want) < 4 * se + 1e-3, (got.mean(), want, se)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_bound_with_true_denoiser_is_tight_and_never_below_nll(kind):
  """With the Bayes-optimal denoiser the bound equals -log p0(x0) up to the prior term.

  Exact (enumeration over x_t + quadrature over t) for every x0, then the Monte Carlo
  estimator agrees within its standard error.
  """
  v, length = 3, 2
  proc, p0 = _setup(kind, v, length, seed=3)
  sched = schedules.get("log_linear") if kind == "absorbing" else schedules.get(
      "linear", sigma_max=12.0)
  denoise = exact.true_denoiser(p0, proc, length)
  x0s = exact.all_sequences(v, length)
  nll = -np.log(p0)
  ex = np.array([_exact_bound(x, proc, sched, denoise, length, 300) for x in x0s])
  # Absorbing: tokens still unmasked at t = 1 (prob eps) pay log V in the prior term.
  slack = length * 1e-3 * np.log(v) if kind == "absorbing" else 0.0
  # float32 quadrature of a 1/t-weighted integrand is good to ~2e-3 nats.
  assert np.all(ex - nll > -2.5e-3), ex - nll
  assert np.all(ex - nll < slack + 2.5e-3), ex - nll
  assert abs(float((p0 * (ex - nll)).sum())) < slack + 1e-3
  reps = 400
  x = jnp.asarray(np.repeat(x0s, reps, 0))
  out = jax.jit(lambda k: likelihood.nll_bound(k, denoise, x, proc, sched, num_t=16))(
      jax.random.PRNGKey(2))
  b = np.asarray(out["bound"]).reshape(len(x0s), reps)
  mean, var = b.mean(1), b.var(1) / reps
  gap, gap_se = float((p0 * (mean - ex)).sum()), float(np.sqrt((p0 ** 2 * var).sum()))
  assert abs(gap) < 4 * gap_se + 1e-3, (gap, gap_se)


def test_prior_term_closed_forms():
  proc = processes.Absorbing(27)
  sched = schedules.get("log_linear", eps=1e-3)
  x0 = jnp.zeros((1, 10), jnp.int32)
  got = float(likelihood.prior_term(x0, proc, sched.sigma_bar(1.0))[0])
  np.testing.assert_allclose(got, 10 * 1e-3 * np.log(27), rtol=2e-3)
  uni = processes.Uniform(5)
  s = 2.0
  k = exact.kernel(uni, s)[0]
  np.testing.assert_allclose(float(likelihood.prior_term(jnp.zeros((1, 1), jnp.int32),
                                                         uni, s)[0]),
                             (k * np.log(k * 5)).sum(), rtol=1e-4)
  dense = processes.Dense(np.asarray(proc.rate_matrix()), vocab_size=27)
  np.testing.assert_allclose(np.exp(dense.prior_log_probs(1.3)),
                             np.exp(proc.prior_log_probs(1.3)), atol=1e-6)


def test_summary_statistics():
  rep = likelihood.summarize(np.array([10.0, 12.0, 14.0]), np.zeros(3), seq_len=4)
  np.testing.assert_allclose(rep.nats_per_token, 3.0)
  np.testing.assert_allclose(rep.stderr, np.std([2.5, 3.0, 3.5], ddof=1) / np.sqrt(3))
  np.testing.assert_allclose(rep.bits_per_token, 3.0 / np.log(2))
  np.testing.assert_allclose(rep.perplexity, np.exp(3.0))


def test_markov_chain_entropy_is_exact():
  chain = synthetic.MarkovChain.random(3, order=2, concentration=0.5, seed=4)
  length = 4
  seqs = exact.all_sequences(3, length)
  lp = chain.log_prob(seqs)
  np.testing.assert_allclose(scipy.special.logsumexp(lp), 0.0, atol=1e-9)
  h = -(np.exp(lp) * lp).sum()
  np.testing.assert_allclose(chain.chunk_entropy(length), h, rtol=1e-9)
  # Samples follow the chain: empirical bigram-given-context frequencies.
  path = chain.sample(200_000, seed=1)
  ctx = path[:-2] * 3 + path[1:-1]
  for s in range(9):
    sel = path[2:][ctx == s]
    freq = np.bincount(sel, minlength=3) / len(sel)
    np.testing.assert_allclose(freq, chain.trans[s], atol=0.02)


def test_evaluate_sharded_over_eight_devices_equals_one_device():
  from tcsm_jax.training import partition
  assert jax.device_count() == 8
  proc, sched = processes.Absorbing(5), schedules.get("log_linear")
  w = jnp.asarray(np.random.default_rng(2).normal(size=(6, 5)), jnp.float32)
  denoise = lambda x_t, sigma: w[x_t] * jnp.exp(-sigma)[:, None, None]
  batches = [np.random.default_rng(i).integers(0, 5, (16, 6)) for i in range(3)]
  one = likelihood.evaluate(jax.random.PRNGKey(0), denoise, batches, proc, sched, 4)
  mesh = partition.make_mesh(1)
  w8 = jax.device_put(w, partition.replicated(mesh))
  eight = likelihood.evaluate(jax.random.PRNGKey(0),
                              lambda p, x_t, s: p[x_t] * jnp.exp(-s)[:, None, None],
                              batches, proc, sched, 4, params=w8,
                              batch_sharding=partition.batch_sharding(mesh))
  assert one.num_sequences == eight.num_sequences == 48
  np.testing.assert_allclose(eight.nats_per_token, one.nats_per_token, rtol=1e-5)
  np.testing.assert_allclose(eight.stderr, one.stderr, rtol=1e-4)
