"""Kernels, closed forms and forward samples against expm and enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from tcsm_jax import exact, processes, scores

SIGMAS = [1e-6, 0.05, 0.7, 3.0, 50.0]


def absorbing_q(v):
  q = np.zeros((v + 1, v + 1))
  q[:v, v] = 1.0
  q[np.arange(v), np.arange(v)] = -1.0
  return q


def all_processes(v=4):
  return [processes.Uniform(v), processes.Absorbing(v),
          processes.Dense(absorbing_q(v), vocab_size=v),
          processes.Dense(np.asarray(processes.Uniform(v).rate_matrix()))]


def random_dense(rng, s):
  q = rng.uniform(0.0, 2.0, (s, s))
  np.fill_diagonal(q, 0.0)
  np.fill_diagonal(q, -q.sum(1))
  return q


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: type(p).__name__)
def test_rate_matrix_rows_sum_to_zero(proc):
  q = np.asarray(proc.rate_matrix())
  assert q.shape == (proc.num_states,) * 2
  np.testing.assert_allclose(q.sum(1), 0.0, atol=1e-6)
  assert (q - np.diag(np.diag(q))).min() >= 0


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_transition_matrix_is_expm(proc, sigma):
  want = scipy.linalg.expm(sigma * np.asarray(proc.rate_matrix(), np.float64))
  got = np.asarray(proc.transition_matrix(sigma))
  np.testing.assert_allclose(got, want, atol=2e-6)
  np.testing.assert_allclose(
      np.asarray(jax.scipy.linalg.expm(sigma * proc.rate_matrix())), got, atol=1e-5)


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: type(p).__name__)
def test_closed_forms_match_kernel(proc):
  s, v = proc.num_states, proc.vocab_size
  sig = jnp.array([1e-6, 0.3, 2.0, 50.0])
  for b, sigma in enumerate(np.asarray(sig)):
    k = exact.kernel(proc, float(sigma))
    x0 = jnp.arange(s)
    np.testing.assert_allclose(np.asarray(proc.transition_probs(x0, sigma)), k, atol=2e-6)
    lik = np.exp(np.asarray(proc.likelihood_log_probs(x0, sigma)))
    np.testing.assert_allclose(lik, k[:v].T, atol=2e-6)
  # Per-example noise levels align with the leading (batch) axis.
  x0 = jnp.tile(jnp.arange(s)[None], (4, 1))
  batched = np.asarray(proc.transition_probs(x0, sig))
  for b in range(4):
    np.testing.assert_allclose(batched[b], exact.kernel(proc, float(sig[b])), atol=2e-6)


@pytest.mark.parametrize("proc", all_processes(), ids=lambda p: type(p).__name__)
def test_rates_into_is_column_of_q(proc):
  q = np.asarray(proc.rate_matrix())
  got = np.asarray(proc.rates_into(jnp.arange(proc.num_states)))
  np.testing.assert_allclose(got, q.T, atol=1e-7)


@pytest.mark.parametrize("proc", all_processes(3), ids=lambda p: type(p).__name__)
def test_forward_samples_match_kernel(proc):
  n, sigma = 60000, 0.8
  k = exact.kernel(proc, sigma)
  x0 = jnp.repeat(jnp.arange(proc.vocab_size), n)
  xt = np.asarray(proc.sample_forward(jax.random.PRNGKey(0), x0, sigma))
  for a in range(proc.vocab_size):
    freq = np.bincount(xt[a * n:(a + 1) * n], minlength=proc.num_states) / n
    tol = 5 * np.sqrt(k[a] * (1 - k[a]) / n) + 1e-9
    assert np.all(np.abs(freq - k[a]) <= tol), (a, freq, k[a])


def test_dense_absorbing_equals_absorbing():
  v = 3
  dense, absb = processes.Dense(absorbing_q(v), vocab_size=v), processes.Absorbing(v)
  logits = jax.random.normal(jax.random.PRNGKey(1), (v + 1, v))
  xt = jnp.arange(v + 1)
  for sigma in [0.01, 1.0, 20.0]:
    # A valid denoiser puts no mass outside the posterior support (carry-over).
    lp = scores.model_log_probs(logits[None], absb, xt[None], sigma)[0]
    np.testing.assert_allclose(np.exp(dense.noisy_log_score(lp, xt, sigma)),
                               np.exp(absb.noisy_log_score(lp, xt, sigma)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "dense"])
@pytest.mark.parametrize("sigma", [0.02, 0.9, 6.0])
def test_noisy_score_from_true_posterior_is_exact(kind, sigma):
  """Tweedie-style identity: the true posterior marginals give p_t's concrete score."""
  v, length = 3, 3
  rng = np.random.default_rng(0)
  proc = {"uniform": processes.Uniform(v), "absorbing": processes.Absorbing(v),
          "dense": processes.Dense(random_dense(rng, v))}[kind]
  p0 = exact.random_distribution(rng, v, length)
  pt, post = exact.posterior(p0, proc, sigma, length)
  marg = exact.position_marginals(post, v, length)             # [Nt, L, V]
  want = exact.noisy_concrete_score(pt, proc.num_states, length)
  xts = exact.all_sequences(proc.num_states, length)
  ok = pt > 1e-12
  log_marg = np.log(np.maximum(marg[ok], 1e-300))
  got = np.exp(np.asarray(proc.noisy_log_score(jnp.asarray(log_marg, jnp.float32),
                                               jnp.asarray(xts[ok]), sigma)))
  # The denoiser identifies the score on the entries the reverse rates use.
  used = np.asarray(proc.rates_into(jnp.asarray(xts[ok]))) != 0
  assert used.mean() > 0.3
  np.testing.assert_allclose(got[used], want[ok][used], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_noisy_score_has_no_nan_at_huge_noise(kind):
  """``exp(sigma)`` overflows float32 above ~88; the closed forms must not."""
  v = 5
  proc = processes.Uniform(v) if kind == "uniform" else processes.Absorbing(v)
  log_p = jax.nn.log_softmax(jnp.asarray(np.random.default_rng(3).normal(size=(4, v)),
                                         jnp.float32))
  x = jnp.asarray([0, 1, 2, proc.num_states - 1])
  ref = proc.noisy_log_score(log_p, x, 40.0)
  for sigma in (100.0, 300.0):
    got = np.asarray(proc.noisy_log_score(log_p, x, sigma))
    assert not np.isnan(got).any(), (sigma, got)
    if kind == "uniform":   # the score has converged to its sigma -> inf limit
      np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("proc", all_processes(3), ids=lambda p: type(p).__name__)
def test_reverse_rates(proc):
  rng = np.random.default_rng(2)
  s = proc.num_states
  x = jnp.arange(s)
  log_score = jnp.asarray(rng.normal(size=(s, s)), jnp.float32)
  rates = np.asarray(proc.reverse_rates(x, log_score, 2.5))
  q = np.asarray(proc.rate_matrix())
  want = 2.5 * q.T * np.exp(np.asarray(log_score))
  np.fill_diagonal(want, 0.0)
  np.fill_diagonal(want, -want.sum(1))
  np.testing.assert_allclose(rates, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rates.sum(1), 0.0, atol=1e-5)


def test_dense_rejects_invalid_rate_matrices():
  with pytest.raises(ValueError, match="square"):
    processes.Dense(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="negative off-diagonal"):
    processes.Dense(np.array([[1.0, -1.0], [1.0, -1.0]]))
  with pytest.raises(ValueError, match="sum to 0"):
    processes.Dense(np.array([[-1.0, 2.0], [1.0, -1.0]]))
  with pytest.raises(ValueError, match="non-finite"):
    processes.Dense(np.array([[-np.inf, np.inf], [1.0, -1.0]]))


@pytest.mark.parametrize("proc", all_processes(3), ids=lambda p: type(p).__name__)
def test_bad_tokens_and_noise_levels_raise(proc):
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="out of vocabulary"):
    proc.sample_forward(key, jnp.array([0, proc.num_states]), 0.5)
  with pytest.raises(ValueError, match="out of vocabulary"):
    proc.transition_probs(jnp.array([-1]), 0.5)
  with pytest.raises(ValueError, match="sigma_bar"):
    proc.sample_forward(key, jnp.array([0, 1]), -0.1)
  with pytest.raises(ValueError, match="integer"):
    proc.transition_probs(jnp.array([0.5]), 0.5)
  with pytest.raises(ValueError, match="unknown process"):
    processes.get("gaussian", 4)
